from django.urls import path

from devices import agent_api

# Mounted at /api/v1/ (the protocol's version is its URL prefix; see devices/PROTOCOL.md).
urlpatterns = [
    path("devices/register", agent_api.register, name="agent-register"),
    path("device/state", agent_api.report_state, name="agent-state"),
    path("device/target", agent_api.target_state, name="agent-target"),
    path("device/actions/result", agent_api.action_result, name="agent-action-result"),
]
