"""The action kinds the dashboard offers: what each does, who may run it, what it asks first."""

from dataclasses import dataclass

from devices.models import (
    ActionKind,
    ActionScope,
)
from fleets.models import FleetRole


class ActionError(Exception):
    """A refused action: the message is shown to the user; nothing was changed."""


# --- The action engine: what each kind needs ----------------------------------------------------

PUSH_KINDS = (ActionKind.RESTART, ActionKind.PURGE, ActionKind.REBOOT, ActionKind.SHUTDOWN)


@dataclass(frozen=True)
class ActionSpec:
    """What the dashboard says about an action kind and what it asks before running it."""

    kind: ActionKind
    min_role: FleetRole
    description: str
    warning: str = ""
    typed_confirmation: frozenset = frozenset()  # scopes in which the user types the name or count
    danger: bool = False
    # A setting is written to the devices' target state instead of being pushed.
    sets: dict | None = None
    done_reason: str = ""
    fleet_role: FleetRole | None = None  # the role a fleet-wide run needs, when higher

    @property
    def label(self) -> str:
        return self.kind.label

    @property
    def needs_agent_api(self) -> bool:
        return self.sets is None

    def role_for(self, scope: str) -> FleetRole:
        return self.fleet_role if scope == ActionScope.FLEET and self.fleet_role else self.min_role


ALL_SCOPES = frozenset(ActionScope)
ACTIONS = {
    spec.kind: spec
    for spec in [
        ActionSpec(
            ActionKind.RESTART,
            FleetRole.OPERATOR,
            "Removes every service container and recreates it from scratch. Each service gets SIGTERM, "
            "then SIGKILL after 10 seconds.",
            warning="Data outside /data and named volumes is lost. This is not a reboot.",
            typed_confirmation=frozenset({ActionScope.FLEET, ActionScope.SELECTION}),
        ),
        ActionSpec(
            ActionKind.PURGE,
            FleetRole.OPERATOR,
            "Clears persistent storage: /data on host OS before 2.12.0; from 2.12.0 every named volume is "
            "deleted and recreated empty.",
            warning="The data cannot be recovered.",
            typed_confirmation=ALL_SCOPES,
            danger=True,
        ),
        ActionSpec(
            ActionKind.REBOOT,
            FleetRole.OPERATOR,
            "Power-cycles the whole device, kernel included. It goes offline and comes back with its uptime reset.",
        ),
        ActionSpec(
            ActionKind.SHUTDOWN,
            FleetRole.OPERATOR,
            "Powers the device off safely.",
            warning="There is no remote power-on: someone has to switch the device on again where it stands.",
            typed_confirmation=ALL_SCOPES,
            danger=True,
        ),
        ActionSpec(
            ActionKind.PUBLIC_URL_ON,
            FleetRole.OPERATOR,
            "Serves each device's port 80 over HTTP at a public URL made from its UUID. Devices added to the "
            "fleet later keep the default (off).",
            sets={"public_url_enabled": True},
            done_reason="Public URL on",
            fleet_role=FleetRole.ADMINISTRATOR,
        ),
        ActionSpec(
            ActionKind.PUBLIC_URL_OFF,
            FleetRole.OPERATOR,
            "Stops serving the devices' port 80 at their public URLs.",
            sets={"public_url_enabled": False},
            done_reason="Public URL off",
            fleet_role=FleetRole.ADMINISTRATOR,
        ),
    ]
}
