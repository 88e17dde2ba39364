"""The general actions and the engine's guarantees, end to end: a real Celery worker through Redis
pushes to the simulated devices, which report their results to the live server."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from devices import services
from devices.models import ActionDelivery, Device, DeviceAction
from devices.tasks import deliver_batch
from tests.conftest import wait_until
from tests.factories import Personas

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def p():
    return Personas()


def outcome(device, state, timeout=30):
    return wait_until(
        lambda: ActionDelivery.objects.filter(device_id=device.pk, state=state).first(),
        timeout=timeout,
        message=f"{device.name} to reach {state}",
    )


def go_offline(simulator, device):
    """The device loses power without telling, and the server's last report of it is old."""
    simulator.power_off(device.uuid)
    Device.objects.filter(pk=device.pk).update(last_seen_at=timezone.now() - timedelta(minutes=10))


class TestRestart:
    def test_it_recreates_every_container_and_the_page_shows_the_new_ones(self, client, p, celery_worker, provision,
                                                                           simulator):
        device = provision(p.fleet, services=["web", "worker"])
        before = {s["name"]: s["container_id"] for s in simulator.snapshot(device.uuid)["services"]}
        client.force_login(p.operator)
        assert client.post(f"/devices/{device.uuid}/actions/restart/").status_code == 302

        delivery = outcome(device, "succeeded")
        after = {s["name"]: s["container_id"] for s in simulator.snapshot(device.uuid)["services"]}
        assert after.keys() == before.keys()
        assert all(after[name] != before[name] for name in before)
        assert "recreated" in delivery.reason
        new_id = after["web"][:12]
        wait_until(lambda: new_id in client.get(f"/devices/{device.uuid}/").content.decode(),
                   message="the device page to show the new container")

    def test_a_service_ignoring_sigterm_is_killed_after_the_grace_period(self, client, p, celery_worker, provision,
                                                                         simulator):
        device = provision(p.fleet, services=[{"name": "stubborn", "ignores_sigterm": True}])
        client.force_login(p.operator)
        client.post(f"/devices/{device.uuid}/actions/restart/")
        delivery = outcome(device, "succeeded")
        assert "killed" in delivery.reason

    def test_the_update_lock_blocks_it(self, client, p, celery_worker, provision, simulator):
        device = provision(p.fleet, holds_lock=True)
        client.force_login(p.operator)
        client.post(f"/devices/{device.uuid}/actions/restart/")
        delivery = outcome(device, "blocked")
        assert "lock" in delivery.reason.lower()
        assert simulator.snapshot(device.uuid)["actions_executed"].get("restart", 0) == 0

    def test_a_fleet_wide_restart_reaches_every_online_device(self, client, p, celery_worker, provision, simulator):
        devices = [provision(p.fleet) for _ in range(3)]
        client.force_login(p.operator)
        assert client.post(f"/fleets/{p.fleet.pk}/actions/restart/", {"confirm": p.fleet.name}).status_code == 302
        action = DeviceAction.objects.get()
        wait_until(lambda: DeviceAction.objects.get(pk=action.pk).state == "done", timeout=40, message="done")
        action.refresh_from_db()
        assert (action.target_count, action.succeeded_count) == (3, 3)
        for device in devices:
            assert simulator.snapshot(device.uuid)["actions_executed"]["restart"] == 1

    def test_a_large_restart_s_results_ride_on_the_devices_heartbeats(self, client, p, celery_worker, provision,
                                                                      simulator):
        # Three devices count as a large action at one result a second: each may hold its result
        # 3 s, and its heartbeat (every second here) carries it.
        celery_worker.restart(env={"ACTION_RESULTS_PER_S": "1"})
        devices = [provision(p.fleet) for _ in range(3)]
        client.force_login(p.operator)
        client.post(f"/fleets/{p.fleet.pk}/actions/restart/", {"confirm": p.fleet.name})
        action = DeviceAction.objects.get()
        wait_until(lambda: DeviceAction.objects.get(pk=action.pk).state == "done", timeout=40, message="done")
        action.refresh_from_db()
        assert (action.target_count, action.succeeded_count) == (3, 3)
        for device in devices:
            (restart,) = [e for e in simulator.snapshot(device.uuid)["events"] if e["kind"] == "restart"]
            assert restart["detail"].endswith("the result may wait 3 s")
            assert "1 service recreated" in ActionDelivery.objects.get(device=device).reason


class TestPurge:
    @pytest.mark.parametrize(("os_version", "volumes"), [("2.9.7", {"/data"}), ("2.58.3", None)])
    def test_it_clears_persistent_storage_for_the_os_version(self, client, p, celery_worker, provision, simulator,
                                                             os_version, volumes):
        device = provision(p.fleet, os_version=os_version)
        before = simulator.snapshot(device.uuid)["volumes"]
        assert any(v["files"] for v in before)
        if volumes:
            assert {v["name"] for v in before} == volumes
        client.force_login(p.operator)
        client.post(f"/devices/{device.uuid}/actions/purge/", {"confirm": device.name})
        outcome(device, "succeeded")
        after = simulator.snapshot(device.uuid)["volumes"]
        assert {v["name"] for v in after} == {v["name"] for v in before}
        assert all(v["files"] == 0 and v["bytes"] == 0 for v in after)
        wait_until(lambda: all(v["files"] == 0 for v in Device.objects.get(pk=device.pk).volumes),
                   message="the purged volumes on the device page")


class TestShutdown:
    def test_the_device_stays_off_until_powered_on_at_the_device(self, client, p, celery_worker, provision, simulator):
        device = provision(p.fleet)
        client.force_login(p.operator)
        client.post(f"/devices/{device.uuid}/actions/shutdown/", {"confirm": device.name})
        outcome(device, "succeeded")
        wait_until(lambda: not Device.objects.get(pk=device.pk).is_online, message="the device to be offline")
        assert not simulator.snapshot(device.uuid)["powered"]

        simulator.power_on(device.uuid)
        wait_until(lambda: Device.objects.get(pk=device.pk).is_online, message="the device to be back")


class TestOfflinePolicy:
    def test_queued_actions_are_delivered_when_the_device_comes_back(self, client, p, celery_worker, provision,
                                                                     simulator):
        device = provision(p.fleet)
        go_offline(simulator, device)
        client.force_login(p.operator)
        client.post(f"/devices/{device.uuid}/actions/reboot/", {"offline_policy": "queue", "ttl_hours": "1"})
        outcome(device, "waiting")
        assert simulator.snapshot(device.uuid)["actions_executed"].get("reboot", 0) == 0

        simulator.power_on(device.uuid)
        outcome(device, "succeeded", timeout=40)
        assert simulator.snapshot(device.uuid)["actions_executed"]["reboot"] == 1

    def test_queued_actions_expire_after_their_time_limit(self, client, p, celery_worker, provision, simulator):
        device = provision(p.fleet)
        go_offline(simulator, device)
        client.force_login(p.operator)
        client.post(f"/devices/{device.uuid}/actions/reboot/", {"offline_policy": "queue", "ttl_hours": "1"})
        delivery = outcome(device, "waiting")

        stats = services.actions_sweep(now=timezone.now() + timedelta(hours=1, minutes=1))
        assert stats["expired"] == 1
        delivery.refresh_from_db()
        assert delivery.state == "expired"

        simulator.power_on(device.uuid)  # back too late: nothing is sent
        wait_until(lambda: Device.objects.get(pk=device.pk).is_online, message="the device to be back")
        assert simulator.snapshot(device.uuid)["actions_executed"].get("reboot", 0) == 0


def pushes(simulator) -> int:
    """Every action push the simulated agents received, first or repeated."""
    totals = simulator.run(lambda: dict(simulator.simulator.metrics.totals))
    return totals.get("pushes", 0) + totals.get("pushes_duplicate", 0)


def died_while_sending(delivery):
    """As if the worker was killed after claiming and pushing the row, before recording the push."""
    ActionDelivery.objects.filter(pk=delivery.pk).update(state="sending")
    DeviceAction.objects.filter(pk=delivery.action_id).update(succeeded_count=0, sending_count=1, state="dispatching")


class TestSweepSendsWaiting:
    def test_a_queued_action_waiting_for_a_device_that_is_already_back_is_sent_by_the_sweep(
        self, client, p, live_server, agent_flusher, celery_worker, celery_beat_factory
    ):
        """A device's report normally sends what waited for it; one flushed while the expansion that
        made its row was still uncommitted does not see the row, and the device, online from then
        on, never "comes back" again. The sweeper sends it. Agents here report only every 2 min, so
        nothing but the sweep can send it."""
        from devices.simulator import SimulatorThread
        from fleets.services import provisioning_key_create

        sim = SimulatorThread(live_server.url, report_interval=120.0, poll_interval=120.0, reboot_seconds=2.0,
                              sigkill_after=0.5, start_spread=0.0, seed=5)
        sim.start()
        try:
            virtual = sim.add_device(provisioning_key=provisioning_key_create(fleet=p.fleet),
                                     device_type=p.fleet.default_device_type.slug, os_version="2.58.3",
                                     agent_version="1.4.0")
            device = wait_until(lambda: Device.objects.filter(uuid=virtual.uuid, booted_at__isnull=False).first(),
                                message="the device to register and report")
            Device.objects.filter(pk=device.pk).update(last_seen_at=timezone.now() - timedelta(minutes=10))
            client.force_login(p.operator)
            client.post(f"/devices/{device.uuid}/actions/reboot/", {"offline_policy": "queue", "ttl_hours": "1"})
            outcome(device, "waiting")
            # Its report, flushed before the waiting row was visible: online, nothing sent.
            Device.objects.filter(pk=device.pk).update(last_seen_at=timezone.now())
            time.sleep(1)
            assert ActionDelivery.objects.get(device_id=device.pk).state == "waiting"

            celery_beat_factory(env={"SWEEP_INTERVAL_S": "1"})
            delivery = outcome(device, "succeeded", timeout=40)
            assert delivery.attempts == 1
            assert sim.snapshot(device.uuid)["actions_executed"]["reboot"] == 1
            assert DeviceAction.objects.get(pk=delivery.action_id).state == "done"
        finally:
            sim.stop()


class TestIdempotency:
    def test_a_duplicated_delivery_reboots_once(self, client, p, celery_worker, provision, simulator):
        """A worker that dies after pushing but before recording leaves the row "sending"; the
        redelivered batch (the same message: its task id is the row's claim) pushes again with the
        same key, and the agent acts once."""
        device = provision(p.fleet)
        client.force_login(p.operator)
        client.post(f"/devices/{device.uuid}/actions/reboot/")
        delivery = outcome(device, "succeeded")

        died_while_sending(delivery)
        deliver_batch.apply_async((delivery.action_id, device.pk, device.pk), task_id=delivery.claim)

        wait_until(lambda: ActionDelivery.objects.get(pk=delivery.pk).attempts == 2, message="the second push")
        delivery = outcome(device, "succeeded")
        assert simulator.snapshot(device.uuid)["actions_executed"]["reboot"] == 1

    def test_another_batch_over_the_same_devices_leaves_rows_a_batch_holds_alone(
        self, client, p, celery_worker, provision, simulator
    ):
        """A redispatch or a duplicate message covering rows that another batch claimed (and is
        still sending) pushes none of them: only pending rows, or its own, are a batch's to send."""
        device = provision(p.fleet)
        client.force_login(p.operator)
        client.post(f"/devices/{device.uuid}/actions/reboot/")
        delivery = outcome(device, "succeeded")
        pushed = pushes(simulator)

        died_while_sending(delivery)
        other = deliver_batch.delay(delivery.action_id, device.pk, device.pk)
        celery_worker.wait_for(f"{other.id}] succeeded", timeout=20)

        delivery.refresh_from_db()
        assert (delivery.state, delivery.attempts) == ("sending", 1)
        assert pushes(simulator) == pushed

    def test_a_redelivered_batch_of_an_action_cancelled_meanwhile_pushes_nothing(
        self, client, p, celery_worker, provision, simulator
    ):
        device = provision(p.fleet)
        client.force_login(p.operator)
        client.post(f"/devices/{device.uuid}/actions/reboot/")
        delivery = outcome(device, "succeeded")
        pushed = pushes(simulator)
        died_while_sending(delivery)
        assert client.post(f"/fleets/{p.fleet.pk}/activity/{delivery.action_id}/cancel/").status_code == 302

        since = celery_worker.log_path.stat().st_size  # the first run of this task id logged it too
        redelivered = deliver_batch.apply_async((delivery.action_id, device.pk, device.pk), task_id=delivery.claim)
        celery_worker.wait_for(f"{redelivered.id}] succeeded", timeout=20, since=since)

        delivery.refresh_from_db()
        assert (delivery.state, delivery.attempts) == ("cancelled", 1)
        assert "may have received it" in delivery.reason
        action = DeviceAction.objects.get(pk=delivery.action_id)
        assert (action.state, action.sending_count, action.cancelled_count) == ("cancelled", 0, 1)
        assert pushes(simulator) == pushed


class TestCancel:
    def test_cancel_stops_what_has_not_been_sent(self, client, p, celery_worker, provision, simulator):
        online = provision(p.fleet)
        offline = provision(p.fleet)
        go_offline(simulator, offline)
        client.force_login(p.operator)
        client.post(f"/fleets/{p.fleet.pk}/actions/reboot/", {"offline_policy": "queue", "ttl_hours": "6"})
        action = DeviceAction.objects.get()
        outcome(offline, "waiting")
        outcome(online, "succeeded")

        response = client.post(f"/fleets/{p.fleet.pk}/activity/{action.pk}/cancel/")
        assert response.status_code == 302
        assert ActionDelivery.objects.get(device_id=offline.pk).state == "cancelled"
        action.refresh_from_db()
        assert (action.state, action.cancelled_count, action.succeeded_count, action.waiting_count) == (
            "cancelled", 1, 1, 0)
        simulator.power_on(offline.uuid)
        wait_until(lambda: Device.objects.get(pk=offline.pk).is_online, message="the device to be back")
        assert simulator.snapshot(offline.uuid)["actions_executed"].get("reboot", 0) == 0

    def test_an_action_cancelled_before_dispatch_sends_nothing(self, client, p, provision, simulator, celery_worker):
        device = provision(p.fleet)
        celery_worker.stop()
        client.force_login(p.operator)
        client.post(f"/devices/{device.uuid}/actions/reboot/")
        action = DeviceAction.objects.get()
        client.post(f"/fleets/{p.fleet.pk}/activity/{action.pk}/cancel/")
        celery_worker.start()
        celery_worker.wait_for("expand_action", timeout=20)
        assert not ActionDelivery.objects.exists()
        assert DeviceAction.objects.get().state == "cancelled"

    def test_observers_cannot_cancel(self, client, p):
        action = services.action_record(actor=p.operator, kind="reboot", fleet=p.fleet, summary="x")
        DeviceAction.objects.filter(pk=action.pk).update(state="dispatching")
        client.force_login(p.observer)
        assert client.post(f"/fleets/{p.fleet.pk}/activity/{action.pk}/cancel/").status_code == 403
        assert DeviceAction.objects.get().state == "dispatching"


@pytest.mark.parametrize("kind", ["restart", "purge", "reboot", "shutdown", "public_url_on", "public_url_off"])
def test_every_general_action_is_refused_to_observers_and_developers(client, p, kind):
    from tests.factories import make_device

    device = make_device(p.fleet)
    for user in (p.observer, p.developer):
        client.force_login(user)
        assert client.post(f"/devices/{device.uuid}/actions/{kind}/", {"confirm": device.name}).status_code == 403
        assert client.post(f"/fleets/{p.fleet.pk}/actions/{kind}/",
                           {"ids": [device.pk], "confirm": "1"}).status_code == 403
    client.force_login(p.outsider)
    assert client.post(f"/devices/{device.uuid}/actions/{kind}/").status_code == 404
    assert not DeviceAction.objects.exists()


class TestStagedRollout:
    def test_a_device_that_does_not_come_back_halts_the_rollout(self, client, p, celery_worker, provision,
                                                                 simulator):
        celery_worker.restart(env={"AGENT_PUSH_TIMEOUT_S": "3"})
        devices = [provision(p.fleet, name=f"stage-{i}") for i in range(4)]
        simulator.hang(devices[0].uuid)  # the first stage's first device never answers
        client.force_login(p.operator)
        response = client.post(f"/fleets/{p.fleet.pk}/actions/reboot/",
                               {"staged": "1", "stage_size": "2", "halt_failure_pct": "25"})
        assert response.status_code == 302
        action = DeviceAction.objects.get()
        wait_until(lambda: DeviceAction.objects.get(pk=action.pk).state == "halted", timeout=60,
                   message="the rollout to halt")
        outcomes = dict(ActionDelivery.objects.filter(action=action).values_list("device_name", "state"))
        assert outcomes == {"stage-0": "failed", "stage-1": "succeeded", "stage-2": "cancelled",
                            "stage-3": "cancelled"}
        for device in devices[2:]:
            assert simulator.snapshot(device.uuid)["actions_executed"].get("reboot", 0) == 0
