"""Device-specific actions as the simulated agent lives them: target state polled (and nudged),
the update lock, a move, an OS update, local mode, and a deleted device orphaned."""

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
    wait_until(lambda: simulator.snapshot(device.uuid)["target_os_version"] == "5.1.20", message="target seen")
    assert Device.objects.get(pk=device.pk).os_version == "2.58.3"
    assert ActionDelivery.objects.get(action__kind="os_update").state == "sent"

    client.post(f"/devices/{device.uuid}/actions/lock_override/", {"enabled": "1"})
    outcome(device, "succeeded", "os_update", timeout=40)


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
