"""Writes for devices. Views and tasks import from here: `from devices import services`.

- agent:  what the agent protocol changes (registration, state reports, the target state)
- specs:  the action kinds, their roles, descriptions and confirmations
- engine: the durable, batched dispatch path every action goes through
- saved_views: named filter sets of a fleet's device list
"""

from devices.keys import push_secret_for
from devices.models import ActionKind
from devices.services.agent import (
    AgentError,
    device_register,
    device_report_state,
    device_target_state,
    target_etag,
)
from devices.services.engine import (
    RESULT_STATES,
    Preview,
    action_cancel,
    action_create,
    action_deliver_range,
    action_deliver_waiting,
    action_expand,
    action_possible,
    action_preview,
    action_record,
    action_record_polled,
    action_record_result,
    actions_sweep,
    devices_nudge,
    scope_devices,
)
from devices.services.saved_views import saved_view_create, saved_view_delete
from devices.services.specs import ACTIONS, ALL_SCOPES, PUSH_KINDS, ActionError, ActionSpec, Rule

__all__ = [
    "ACTIONS",
    "ActionKind",
    "ALL_SCOPES",
    "PUSH_KINDS",
    "RESULT_STATES",
    "ActionError",
    "ActionSpec",
    "Rule",
    "AgentError",
    "Preview",
    "action_cancel",
    "action_create",
    "action_deliver_range",
    "action_deliver_waiting",
    "action_expand",
    "action_possible",
    "action_preview",
    "action_record",
    "action_record_polled",
    "action_record_result",
    "actions_sweep",
    "devices_nudge",
    "device_register",
    "device_report_state",
    "device_target_state",
    "push_secret_for",
    "saved_view_create",
    "saved_view_delete",
    "scope_devices",
    "target_etag",
]
