"""Reboot, end to end: the page, a real Celery worker through Redis, and the simulated device.

Nothing is eager or mocked on this path: the test process records the action, the worker
subprocess expands and pushes it over HTTP to the simulator, which goes dark and comes back, and
reports the result to the live server.
"""

import pytest

from devices.models import ActionDelivery, DeviceAction
from tests.conftest import wait_until
from tests.factories import Personas

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def p():
    return Personas()


def test_an_operator_reboots_a_device(client, p, celery_worker, provision, simulator):
    device = provision(p.fleet, name="lobby-kiosk")
    booted_before = simulator.call(_snapshot(simulator, device.uuid))["booted_at"]
    client.force_login(p.operator)

    response = client.post(f"/devices/{device.uuid}/actions/reboot/")
    assert response.status_code == 302

    def status_on_the_page():
        html = client.get(f"/devices/{device.uuid}/").content.decode()
        return html.split('id="device-status">', 1)[1].split("</div>", 1)[0]

    # The device page says Offline while the device reboots, and Online once it is back.
    wait_until(lambda: "Offline" in status_on_the_page(), timeout=30, interval=0.05,
               message="the device page to show the device offline while it reboots")  # fmt: skip
    action = DeviceAction.objects.get()
    delivery = wait_until(
        lambda: ActionDelivery.objects.filter(action=action, state="succeeded").first(),
        timeout=30,
        message="the reboot to succeed",
    )
    assert delivery.attempts == 1
    snapshot = simulator.call(_snapshot(simulator, device.uuid))
    assert snapshot["actions_executed"]["reboot"] == 1
    assert snapshot["booted_at"] > booted_before  # the uptime was reset
    action.refresh_from_db()
    assert (action.state, action.succeeded_count, action.target_count) == ("done", 1, 1)

    device.refresh_from_db()
    assert device.is_online  # back, and reporting again
    wait_until(lambda: "Online" in status_on_the_page(), message="the device page to show it online again")
    html = client.get(f"/devices/{device.uuid}/").content.decode()
    assert "Succeeded" in html and "Reboot" in html


def test_a_device_that_is_offline_misses_the_reboot(client, p, celery_worker, provision, simulator):
    device = provision(p.fleet)
    simulator.call(_power_off(simulator, device.uuid))
    device.__class__.objects.filter(pk=device.pk).update(last_seen_at=device.last_seen_at.replace(year=2020))
    client.force_login(p.operator)
    client.post(f"/devices/{device.uuid}/actions/reboot/")
    delivery = wait_until(lambda: ActionDelivery.objects.filter(state="missed").first(), message="missed")
    assert delivery.reason == "Offline when the action was sent"
    assert simulator.call(_snapshot(simulator, device.uuid))["actions_executed"].get("reboot", 0) == 0
    html = client.get(f"/devices/{device.uuid}/").content.decode()
    assert "Missed" in html and "Offline when the action was sent" in html


def test_an_agent_before_1_1_is_unsupported_and_nothing_is_sent(
    client, p, celery_worker, provision, simulator
):
    old = provision(p.fleet, agent_version="1.0.3")
    new = provision(p.fleet, agent_version="1.4.0")
    client.force_login(p.operator)
    assert client.post(f"/fleets/{p.fleet.pk}/actions/reboot/").status_code == 302
    delivery = wait_until(
        lambda: ActionDelivery.objects.filter(state="unsupported").first(), message="unsupported"
    )
    assert delivery.device_id == old.pk and "1.0.3" in delivery.reason
    wait_until(
        lambda: ActionDelivery.objects.filter(device_id=new.pk, state="succeeded").exists(),
        timeout=30,
        message="the other device to reboot",
    )
    assert simulator.call(_snapshot(simulator, old.uuid))["actions_executed"].get("reboot", 0) == 0
    assert "Unsupported" in client.get(f"/devices/{old.uuid}/").content.decode()


def test_a_single_device_without_action_api_is_refused_with_the_reason(client, p, celery_worker, provision):
    old = provision(p.fleet, agent_version="1.0.3")
    client.force_login(p.operator)
    html = client.get(f"/devices/{old.uuid}/").content.decode()
    assert "has no action API: needs 1.1.0 or newer" in html
    response = client.post(f"/devices/{old.uuid}/actions/reboot/")
    assert response.status_code == 400
    assert "Agent 1.0.3 has no action API: needs 1.1.0 or newer" in response.content.decode()
    assert not DeviceAction.objects.exists()


def test_an_agent_that_does_not_answer_fails_with_the_reason(
    client, p, celery_worker, provision, simulator, settings
):
    device = provision(p.fleet)
    simulator.call(_hang(simulator, device.uuid))
    client.force_login(p.operator)
    client.post(f"/devices/{device.uuid}/actions/reboot/")
    delivery = wait_until(
        lambda: ActionDelivery.objects.filter(state="failed").first(), timeout=30, message="failed"
    )
    assert "No answer within" in delivery.reason


async def _snapshot(simulator, uuid):
    return simulator.simulator.snapshot(uuid)


async def _power_off(simulator, uuid):
    simulator.simulator.power_off(uuid)


async def _hang(simulator, uuid):
    simulator.simulator.hang(uuid)
