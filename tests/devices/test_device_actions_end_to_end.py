"""Device-specific actions as the simulated agent lives them: target state polled (and nudged),
the update lock, a move, an OS update, local mode, and a deleted device orphaned."""

import time

import pytest

from devices.models import ActionDelivery, Device, DeviceAction
from fleets.models import Release
from tests.conftest import wait_until
from tests.factories import Personas, make_fleet

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def p():
    return Personas(device_type="raspberrypi3")


def outcome(device, state, kind=None, timeout=30):
    rows = ActionDelivery.objects.filter(device_id=device.pk, state=state)
    if kind:
        rows = rows.filter(action__kind=kind)
    return wait_until(rows.first, timeout=timeout, message=f"{device.name}: {kind or 'action'} {state}")


def test_the_lock_override_lets_a_blocked_restart_through(client, p, celery_worker, provision, simulator):
    device = provision(p.fleet, holds_lock=True)
    client.force_login(p.operator)
    client.post(f"/devices/{device.uuid}/actions/restart/")
    blocked = outcome(device, "blocked", "restart")
    assert "update lock" in blocked.reason.lower()

    client.post(f"/devices/{device.uuid}/actions/lock_override/", {"enabled": "1"})
    wait_until(lambda: simulator.snapshot(device.uuid)["lock_override"], message="the agent to see the override")
    client.post(f"/devices/{device.uuid}/actions/restart/")
    outcome(device, "succeeded", "restart")
    assert simulator.snapshot(device.uuid)["actions_executed"]["restart"] == 1


def test_an_os_update_shows_progress_and_ends_with_the_new_version(client, p, celery_worker, provision, simulator):
    device = provision(p.fleet, os_version="2.58.3")
    client.force_login(p.operator)
    assert client.post(f"/devices/{device.uuid}/actions/os_update/", {"version": "5.1.20"}).status_code == 302
    wait_until(lambda: Device.objects.get(pk=device.pk).agent_status == "updating", message="the update to start")
    assert "Updating" in client.get(f"/devices/{device.uuid}/").content.decode()
    delivery = outcome(device, "succeeded", "os_update", timeout=40)
    assert delivery.reason == "Now running 5.1.20"
    device.refresh_from_db()
    assert device.os_version == "5.1.20" and device.target_os_version == ""
    assert DeviceAction.objects.get(kind="os_update").state == "done"


def test_a_held_lock_delays_the_os_update_until_overridden(client, p, celery_worker, provision, simulator):
    device = provision(p.fleet, os_version="2.58.3", holds_lock=True)
    client.force_login(p.operator)
    client.post(f"/devices/{device.uuid}/actions/os_update/", {"version": "5.1.20"})
    blocked = wait_until(
        lambda: ActionDelivery.objects.filter(action__kind="os_update", reason__startswith="Blocked by update lock")
        .first(),
        message="the outcome to say the update lock blocks it",
    )
    # Still open, not the final "blocked": the update stays in the target state for the override.
    assert blocked.state == "sent" and blocked.reason.endswith("holds the update lock")
    assert "host OS 5.1.20" in blocked.reason
    assert Device.objects.get(pk=device.pk).os_version == "2.58.3"
    assert "Blocked by update lock" in client.get(f"/devices/{device.uuid}/").content.decode()

    client.post(f"/devices/{device.uuid}/actions/lock_override/", {"enabled": "1"})
    delivery = outcome(device, "succeeded", "os_update", timeout=40)
    assert delivery.reason == "Now running 5.1.20"
    assert outcome(device, "succeeded", "lock_override").reason == "Lock override on: the device has fetched it"


@pytest.mark.parametrize(("os_version", "purged"), [("2.58.3", True), ("2.9.7", False)])
def test_a_move_is_applied_by_the_device_at_its_next_poll(client, p, celery_worker, provision, simulator,
                                                          os_version, purged):
    device = provision(p.fleet, os_version=os_version)
    target = make_fleet(p.org, name="bbb-fleet", device_type="beaglebone-black")
    before = simulator.snapshot(device.uuid)
    assert any(v["files"] for v in before["volumes"])
    client.force_login(p.org_admin)
    assert client.post(f"/devices/{device.uuid}/actions/move/", {"target_fleet": target.pk}).status_code == 302
    assert Device.objects.get(pk=device.pk).fleet == target  # in the target fleet at once

    wait_until(lambda: simulator.snapshot(device.uuid)["fleet_id"] == target.pk, message="the device to move")
    after = simulator.snapshot(device.uuid)
    if purged:  # named volumes purged on the move
        assert all(v["files"] == 0 for v in after["volumes"])
    else:  # /data of the new fleet is a fresh one; the old fleet's stays on the device, out of sight
        assert [v["name"] for v in after["volumes"]] == ["/data"] and after["volumes"][0]["files"] == 0
        assert str(p.fleet.pk) in {str(k) for k in after["data_by_fleet"]}


def test_local_mode_makes_the_device_ignore_the_fleet_release(client, p, celery_worker, provision, simulator):
    device = provision(p.fleet)
    client.force_login(p.operator)
    client.post(f"/devices/{device.uuid}/actions/local_mode_on/")
    wait_until(lambda: simulator.snapshot(device.uuid)["local_mode"], message="local mode on the device")
    running = simulator.snapshot(device.uuid)["release"]

    release = Release.objects.create(fleet=p.fleet, commit="f" * 40, version="9.9.9",
                                     services=[{"name": "main", "image": "main:9"}])
    p.fleet.target_release = release
    p.fleet.save()
    def seen_release():
        target = simulator.snapshot(device.uuid).get("target") or {}
        return (target.get("release") or {}).get("commit") == "f" * 40

    wait_until(seen_release, timeout=20, message="the device to see the new release")
    assert simulator.snapshot(device.uuid)["release"] == running  # ignored while in local mode

    client.post(f"/devices/{device.uuid}/actions/local_mode_off/")
    wait_until(lambda: simulator.snapshot(device.uuid)["release"] == "f" * 40, timeout=20,
               message="the device to follow the release again")


def test_a_deleted_device_is_orphaned_and_keeps_running(client, p, celery_worker, provision, simulator):
    device = provision(p.fleet)
    services_before = simulator.snapshot(device.uuid)["services"]
    client.force_login(p.operator)
    client.post(f"/devices/{device.uuid}/actions/delete/", {"confirm": device.name})
    wait_until(lambda: simulator.snapshot(device.uuid)["orphaned"], message="the agent to be refused")
    snapshot = simulator.snapshot(device.uuid)
    assert snapshot["up"] and [s["container_id"] for s in snapshot["services"]] == [
        s["container_id"] for s in services_before
    ]
    assert not Device.objects.filter(uuid=device.uuid).exists()


def nudges(simulator) -> int:
    return simulator.run(lambda: simulator.simulator.metrics.totals["nudges"])


# Polls every 120 s: what reaches the device within seconds came by the nudge (or the poll on boot).
@pytest.mark.simulator(poll_interval=120.0)
def test_an_online_device_is_nudged_and_applies_local_mode_at_once(client, p, celery_worker, provision, simulator):
    assert simulator.simulator.poll_interval == 120.0
    device = provision(p.fleet)
    client.force_login(p.operator)
    assert client.post(f"/devices/{device.uuid}/actions/local_mode_on/").status_code == 302
    wait_until(lambda: simulator.snapshot(device.uuid)["local_mode"], timeout=15, message="local mode by the nudge")
    assert nudges(simulator) == 1
    delivery = outcome(device, "succeeded", "local_mode_on", timeout=15)
    assert delivery.reason == "Local mode on: the device has fetched it"


@pytest.mark.simulator(poll_interval=120.0)
def test_a_powered_off_device_gets_the_move_at_its_poll_on_boot(client, p, provision, simulator, settings):
    settings.DEVICE_OFFLINE_AFTER_S = 5
    device = provision(p.fleet)
    target = make_fleet(p.org, name="bbb-fleet", device_type="beaglebone-black")
    simulator.power_off(device.uuid)
    wait_until(lambda: not Device.objects.get(pk=device.pk).is_online, timeout=30, message="the device offline")

    client.force_login(p.org_admin)
    assert client.post(f"/devices/{device.uuid}/actions/move/", {"target_fleet": target.pk}).status_code == 302
    delivery = ActionDelivery.objects.get(action__kind="move")
    assert (delivery.state, delivery.reason) == ("sent", "In the target state; applies at the device's next poll")
    time.sleep(2)
    assert simulator.snapshot(device.uuid)["fleet_id"] == p.fleet.pk  # dark: nothing reached it
    assert ActionDelivery.objects.get(pk=delivery.pk).state == "sent"

    simulator.power_on(device.uuid)
    wait_until(lambda: simulator.snapshot(device.uuid)["fleet_id"] == target.pk, timeout=15,
               message="the move at the poll on boot")
    assert outcome(device, "succeeded", "move", timeout=15).reason == "Moved to bbb-fleet: the device has fetched it"
    assert nudges(simulator) == 0
