"""Staged rollouts: a fleet-wide action sent a stage at a time, halting when a stage fails too much.

The engine's stages are driven here in-process (expansion, then the results agents would report),
so each stage boundary can be inspected; the end-to-end path is the same as any batch action."""

import pytest

from devices import services
from devices.models import ActionDelivery, DeviceAction
from devices.services.engine import record_results
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


def start(client, p, size=2, halt=40, **extra):
    client.force_login(p.operator)
    data = {"confirm": p.fleet.name, "staged": "1", "stage_size": size, "halt_failure_pct": halt} | extra
    response = client.post(f"/fleets/{p.fleet.pk}/actions/restart/", data)
    assert response.status_code == 302, response.content.decode()[-500:]
    action = DeviceAction.objects.get()
    services.action_expand(action.pk)  # the worker's part
    return action


def states(action):
    return dict(ActionDelivery.objects.filter(action=action).values_list("device_name", "state"))


def report(action, names_outcomes):
    """The stage's devices were sent the action and now report how it went."""
    groups = {}
    for name, outcome in names_outcomes.items():
        delivery = ActionDelivery.objects.get(action=action, device_name=name)
        groups.setdefault((action.pk, outcome, ""), []).append(delivery.device_id)
    record_results(groups)


def send_pending(action):
    """What a batch does before pushing: pending -> sending -> sent (the pushes are accepted)."""
    from devices.models import DeliveryState
    from devices.services.engine import _transition

    rows = ActionDelivery.objects.filter(action=action)
    _transition(action.pk, rows, [DeliveryState.PENDING], DeliveryState.SENT)


def test_the_first_stage_is_sent_and_the_rest_held(client, p):
    for i in range(5):
        make_device(p.fleet, name=f"d{i}")
    action = start(client, p, size=2)
    assert states(action) == {"d0": "pending", "d1": "pending", "d2": "held", "d3": "held", "d4": "held"}
    action.refresh_from_db()
    assert (action.pending_count, action.held_count, action.params["rollout"]["stage"]) == (2, 3, 1)


def test_each_settled_stage_releases_the_next(client, p):
    for i in range(5):
        make_device(p.fleet, name=f"d{i}")
    action = start(client, p, size=2)
    send_pending(action)
    report(action, {"d0": "succeeded", "d1": "succeeded"})
    assert states(action)["d2"] == "pending" and states(action)["d4"] == "held"
    send_pending(action)
    report(action, {"d2": "succeeded", "d3": "succeeded"})
    send_pending(action)
    report(action, {"d4": "succeeded"})
    action.refresh_from_db()
    assert (action.state, action.succeeded_count, action.held_count) == ("done", 5, 0)


def test_a_stage_failing_too_much_halts_the_rollout(client, p):
    for i in range(6):
        make_device(p.fleet, name=f"d{i}")
    action = start(client, p, size=2, halt=40)
    send_pending(action)
    report(action, {"d0": "succeeded", "d1": "failed"})  # 50% > 40%
    action.refresh_from_db()
    assert action.state == "halted" and "1 of 2 devices failed (limit 40%)" in action.summary
    assert [states(action)[f"d{i}"] for i in range(2, 6)] == ["cancelled"] * 4
    html = client.get(f"/fleets/{p.fleet.pk}/activity/{action.pk}/").content.decode()
    assert "The rollout stopped." in html


def test_staged_rollouts_skip_offline_devices_rather_than_wait(client, p):
    make_device(p.fleet)
    client.force_login(p.operator)
    response = client.post(f"/fleets/{p.fleet.pk}/actions/restart/", {
        "confirm": p.fleet.name, "staged": "1", "stage_size": "2", "halt_failure_pct": "10",
        "offline_policy": "queue", "ttl_hours": "6"})
    assert response.status_code == 400
    assert "reaches the devices online at each stage" in response.content.decode()
    assert not DeviceAction.objects.exists()


def test_cancel_also_cancels_the_held_devices(client, p):
    for i in range(4):
        make_device(p.fleet, name=f"d{i}")
    action = start(client, p, size=1)
    client.post(f"/fleets/{p.fleet.pk}/activity/{action.pk}/cancel/")
    assert sorted(states(action).values()) == ["cancelled"] * 4
