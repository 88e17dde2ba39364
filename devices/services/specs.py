"""The action kinds the dashboard offers: what each does, who may run it, what it asks first, and
how the engine carries it out (pushed to the agent, or written to the target state)."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import F, Q, Value
from django.db.models.functions import Concat

from devices.models import ActionKind, ActionScope, DeliveryState, HostOSRelease
from devices.versions import AGENT_API_MIN
from fleets.models import FleetRole


class ActionError(Exception):
    """A refused action: the message is shown to the user; nothing was changed."""


@dataclass(frozen=True)
class Rule:
    """Devices matching `when` get `state` with `reason` instead of the action's normal outcome."""

    when: Q
    state: DeliveryState
    reason: object  # an expression, so the reason can quote the device's own versions
    label: str  # for the preview: "12 skipped: <label>"


NO_AGENT_API = Rule(
    Q(agent_version_key__lt=AGENT_API_MIN),
    DeliveryState.UNSUPPORTED,
    Concat(Value("Agent "), F("agent_version"), Value(" has no action API (1.1.0 or newer needed)")),
    "agent older than 1.1.0",
)

APPLIES_AT_POLL = "In the target state; applies at the device's next poll"
NUDGED = "In the target state; the device was nudged to poll it now"

PUSH_KINDS = (ActionKind.RESTART, ActionKind.PURGE, ActionKind.REBOOT, ActionKind.SHUTDOWN)
ALL_SCOPES = frozenset(ActionScope)
DEVICE_AND_SELECTION = frozenset({ActionScope.DEVICE, ActionScope.SELECTION})


@dataclass(frozen=True)
class ActionSpec:
    """What the dashboard says about an action kind and how the engine carries it out.

    A kind either is pushed to the agent API (`sets` is None) or changes device fields, the
    target state the agents poll (`sets`: a dict, or a function of the parameters and the time).
    """

    kind: ActionKind
    min_role: FleetRole
    description: str
    warning: str = ""
    typed_confirmation: frozenset = frozenset()  # scopes in which the user types the name or count
    danger: bool = False
    scopes: frozenset = ALL_SCOPES
    fleet_role: FleetRole | None = None  # the role a fleet-wide run needs, when higher
    sets: dict | Callable[[dict, object], dict] | None = None
    done_reason: str | Callable[[dict], str] = ""
    # Outcome stays "sent" until the device reports the change done (e.g. a new OS version).
    tracked: bool = False
    # Outcome stays "sent" until the device has fetched a target state with the change in it (its
    # agent applies fleet and config changes as soon as it has them): no "Succeeded" for a device
    # that is offline and has not seen it yet.
    applied_on_poll: bool = False
    # Poke online agents to poll their target state now instead of at their next poll.
    nudge: bool = False
    rules: Callable[[dict], list[Rule]] | None = None  # kind-specific skips, from the parameters
    applies_to_deactivated: bool = False
    # Lock the devices' rows before classifying them, so two actions racing on the same devices
    # (two deactivate clicks) see each other's change: the second finds the device deactivated.
    lock_devices: bool = False
    needs_api_for_setting: bool = False  # a setting only agents with the API understand
    form: str = ""  # dotted path of the parameters form, if the kind takes parameters
    after: Callable | None = None  # after(action, devices): extra work on the devices it applied to
    check: Callable | None = None  # check(device) -> why it is refused, for single-device actions
    # False: support staff acting under a support grant may not run it (a grant must not extend itself).
    support_may_run: bool = True

    @property
    def label(self) -> str:
        return self.kind.label

    @property
    def needs_agent_api(self) -> bool:
        return self.sets is None

    @property
    def requires_agent_api(self) -> bool:
        """Devices with agents older than 1.1.0 cannot take it at all."""
        return self.needs_agent_api or self.needs_api_for_setting

    def refusal_for(self, access) -> str:
        """Why someone with `access` (fleets.selectors.Access) may not run this kind at all ("" if they may)."""
        if access.via_support and not self.support_may_run:
            return f"Support staff cannot {self.label.lower()}: their access must end when the grant does."
        return ""

    def role_for(self, scope: str) -> FleetRole:
        return self.fleet_role if scope == ActionScope.FLEET and self.fleet_role else self.min_role

    def changes(self, params: dict, now) -> dict:
        return self.sets(params, now) if callable(self.sets) else dict(self.sets or {})

    def reason(self, params: dict) -> str:
        return self.done_reason(params) if callable(self.done_reason) else self.done_reason

    def default_outcome(self, params: dict) -> tuple[DeliveryState, str]:
        """What a device that no rule skips gets: pushed later, waited for, or applied now."""
        if self.needs_agent_api:
            return DeliveryState.PENDING, ""
        if self.tracked:
            return DeliveryState.SENT, self.reason(params)
        if self.applied_on_poll:
            return DeliveryState.SENT, APPLIES_AT_POLL
        return DeliveryState.SUCCEEDED, self.reason(params)

    def skip_rules(self, params: dict) -> list[Rule]:
        rules = (
            []
            if self.applies_to_deactivated
            else [
                Rule(
                    Q(is_active=False),
                    DeliveryState.UNSUPPORTED,
                    Value("Device is deactivated"),
                    "deactivated",
                )
            ]
        )
        if self.requires_agent_api:
            rules.append(NO_AGENT_API)
        if self.rules and params:  # no parameters chosen yet: preview the common skips only
            rules.extend(self.rules(params))
        return rules


def _support_until(params: dict, now) -> dict:
    return {"support_access_until": now + timedelta(hours=params["hours"])}


def _os_rules(params: dict) -> list[Rule]:
    return [
        Rule(
            # A subquery, not a join: a join over the catalog would repeat each device per release.
            ~Q(
                device_type_id__in=HostOSRelease.objects.filter(version=params["version"]).values(
                    "device_type_id"
                )
            ),
            DeliveryState.UNSUPPORTED,
            Value(f"{params['version']} is not available for this device type"),
            f"{params['version']} not available for their device type",
        ),
        Rule(
            Q(os_version_key__gte=params["version_key"]),
            DeliveryState.UNSUPPORTED,
            Concat(Value("Already runs "), F("os_version"), Value(f", not older than {params['version']}")),
            f"already on {params['version']} or newer",
        ),
    ]


def _other_architecture(arch: str, consequence: str) -> Rule:
    """Devices of another CPU architecture are skipped; the reason ends with `consequence`."""
    return Rule(
        ~Q(device_type__arch=arch),
        DeliveryState.UNSUPPORTED,
        Concat(Value("A "), F("device_type__arch"), Value(f" device {consequence}")),
        f"CPU architecture is not {arch}",
    )


def _move_rules(params: dict) -> list[Rule]:
    return [_other_architecture(params["arch"], f"cannot run in {params['fleet_name']} ({params['arch']})")]


def _device_type_rules(params: dict) -> list[Rule]:
    return [_other_architecture(params["arch"], f"cannot become {params['device_type_name']}")]


def _deactivate_rules(params: dict) -> list[Rule]:
    from devices.selectors import online_q

    return [Rule(online_q(), DeliveryState.UNSUPPORTED, Value("Device is online"), "online")]


def _after_move(action, devices) -> None:
    from devices.selectors import forget_fleet_counts

    forget_fleet_counts(action.fleet_id, action.params["fleet_id"])


def _after_delete(action, devices) -> None:
    from devices.services.device_actions import delete_devices

    delete_devices(devices)
    from devices.selectors import forget_fleet_counts

    forget_fleet_counts(action.fleet_id)


def _deactivate_refusal(device) -> str | None:
    from devices.services.device_actions import deactivate_refusal

    return deactivate_refusal(device)


def _after_deactivate(action, devices) -> None:
    from devices.services.device_actions import charge_deactivations

    charge_deactivations(action, devices)


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
        ActionSpec(
            ActionKind.LOCK_OVERRIDE,
            FleetRole.OPERATOR,
            "Services can hold the update lock to keep restarts and updates away while they do critical "
            "work. The override lets the pending update or restart through the lock.",
            warning="A service that crashed while holding the lock is the usual reason; a service still "
            "working is interrupted.",
            scopes=DEVICE_AND_SELECTION,
            sets=lambda params, now: {"lock_override": params["enabled"]},
            done_reason=lambda params: "Lock override on" if params["enabled"] else "Lock override off",
            nudge=True,
            applied_on_poll=True,
            needs_api_for_setting=True,
            form="devices.forms.LockOverrideForm",
        ),
        ActionSpec(
            ActionKind.MOVE,
            FleetRole.OPERATOR,
            "Moves the devices to another fleet of the same CPU architecture. They show in the new fleet at "
            "once and switch to its release at their next poll.",
            warning="From host OS 2.12.0 the named volumes (persistent data) are purged by the move; on older "
            "OS versions the old /data stays on the device, invisible to the new fleet.",
            scopes=DEVICE_AND_SELECTION,
            sets=lambda params, now: {"fleet_id": params["fleet_id"], "local_mode": False},
            done_reason=lambda params: f"Moved to {params['fleet_name']}",
            rules=_move_rules,
            nudge=True,
            applied_on_poll=True,
            form="devices.forms.MoveForm",
            after=_after_move,
        ),
        ActionSpec(
            ActionKind.OS_UPDATE,
            FleetRole.OPERATOR,
            "Updates the host OS to a newer version from the catalog of the device type. The device "
            "downloads it, reboots into it and reports the new version. No downgrades.",
            warning="Devices reboot at the end of the update; a held update lock delays it.",
            scopes=DEVICE_AND_SELECTION,
            sets=lambda params, now: {"target_os_version": params["version"]},
            done_reason=lambda params: f"Update to {params['version']} requested: waiting for the device",
            tracked=True,
            rules=_os_rules,
            nudge=True,
            form="devices.forms.OSUpdateForm",
        ),
        ActionSpec(
            ActionKind.LOCAL_MODE_ON,
            FleetRole.OPERATOR,
            "The device ignores the fleet's release and runs what is pushed to it over the local network, "
            "for prototyping.",
            scopes=DEVICE_AND_SELECTION,
            sets={"local_mode": True},
            done_reason="Local mode on",
            nudge=True,
            applied_on_poll=True,
        ),
        ActionSpec(
            ActionKind.LOCAL_MODE_OFF,
            FleetRole.OPERATOR,
            "The device follows the fleet's release again.",
            scopes=DEVICE_AND_SELECTION,
            sets={"local_mode": False},
            done_reason="Local mode off",
            nudge=True,
            applied_on_poll=True,
        ),
        ActionSpec(
            ActionKind.SUPPORT_GRANT,
            FleetRole.OPERATOR,
            "Lets support staff see and act on the devices until the period ends. You can revoke it earlier.",
            scopes=DEVICE_AND_SELECTION,
            sets=_support_until,
            done_reason=lambda params: f"Support access for {params['label']}",
            form="devices.forms.SupportAccessForm",
            support_may_run=False,
        ),
        ActionSpec(
            ActionKind.SUPPORT_REVOKE,
            FleetRole.OPERATOR,
            "Ends support staff's access to the devices now.",
            scopes=DEVICE_AND_SELECTION,
            sets={"support_access_until": None},
            done_reason="Support access revoked",
        ),
        ActionSpec(
            ActionKind.DEVICE_TYPE,
            FleetRole.OPERATOR,
            "Corrects the device type of devices provisioned with the wrong one. Only types of the same CPU "
            "architecture are offered.",
            warning="This changes no software on the device: the host OS stays as it is.",
            danger=True,
            scopes=DEVICE_AND_SELECTION,
            sets=lambda params, now: {"device_type_id": params["device_type_id"]},
            done_reason=lambda params: f"Device type set to {params['device_type_name']}",
            rules=_device_type_rules,
            form="devices.forms.DeviceTypeForm",
        ),
        ActionSpec(
            ActionKind.DEACTIVATE,
            FleetRole.OPERATOR,
            "Deactivates an offline device and charges the one-time deactivation fee. A deactivated device "
            "gets no actions.",
            warning="Only for a device that is offline, outside a Starter fleet, with a valid billing account.",
            danger=True,
            scopes=frozenset({ActionScope.DEVICE}),
            sets=lambda params, now: {"is_active": False, "deactivated_at": now},
            done_reason="Deactivated; one-time fee charged",
            rules=_deactivate_rules,
            lock_devices=True,
            after=_after_deactivate,
            check=_deactivate_refusal,
        ),
        ActionSpec(
            ActionKind.DELETE,
            FleetRole.OPERATOR,
            "Removes the devices from the fleet. The physical device keeps running its last release, but the "
            "dashboard refuses it from now on: it is orphaned until provisioned again.",
            warning="This cannot be undone.",
            typed_confirmation=ALL_SCOPES,
            danger=True,
            scopes=DEVICE_AND_SELECTION,
            sets={},
            done_reason="Deleted; its agent is refused from now on",
            applies_to_deactivated=True,
            after=_after_delete,
        ),
    ]
}

POLL_KINDS = tuple(kind for kind, spec in ACTIONS.items() if spec.applied_on_poll)
