"""Faults: Redis down when an action is posted, a worker killed mid-action, agents that hang, and a
database error in the middle of a request. Real worker, Redis and simulator throughout."""

import secrets
import time

import pytest
from django.utils import timezone
from kombu import pools

from dashboard.celery import app as celery_app
from dashboard.embedded_redis import EmbeddedRedis
from devices.keys import hash_secret, push_secret_for
from devices.models import ActionDelivery, Device, DeviceAction
from devices.simulator import SimulatorThread
from devices.versions import version_key
from tests.conftest import wait_until
from tests.factories import Personas

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def p():
    return Personas()


@pytest.fixture
def own_broker(tmp_path, celery_worker, settings):
    """A Redis only this test uses as its broker, so it can be stopped and brought back."""
    broker = EmbeddedRedis(tmp_path / "broker").start()
    previous = celery_app.conf.broker_url
    _use_broker(broker.url, settings)
    celery_worker.restart(env={"REDIS_URL": broker.url})
    yield broker
    broker.stop()
    _use_broker(previous, settings)


def _use_broker(url, settings):
    """Point this process's Celery producer at another broker (dropping its pooled connections)."""
    settings.CELERY_BROKER_URL = url
    celery_app.conf.broker_url = url
    pools.reset()  # kombu keeps producer pools per connection in a registry of its own
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


class TestRedisDown:
    def test_an_action_posted_while_redis_is_down_waits_and_is_delivered_when_it_returns(
        self, client, p, provision, simulator, celery_worker, own_broker, celery_beat_factory
    ):
        device = provision(p.fleet)
        port = own_broker.port
        own_broker.stop()
        client.force_login(p.operator)

        started = time.monotonic()
        response = client.post(f"/devices/{device.uuid}/actions/reboot/")
        assert response.status_code == 302 and time.monotonic() - started < 10  # no hanging request
        action = DeviceAction.objects.get()
        assert action.state == "queued"
        html = client.get(f"/fleets/{p.fleet.pk}/activity/").content.decode()
        assert "Waiting for dispatch" in html
        assert client.get(f"/fleets/{p.fleet.pk}/").status_code == 200  # pages still work

        own_broker.start(port=port)
        celery_beat_factory(env={"REDIS_URL": own_broker.url, "SWEEP_INTERVAL_S": "1"})
        wait_until(lambda: ActionDelivery.objects.filter(state="succeeded").exists(), timeout=60,
                   message="the reboot to be delivered after Redis came back")
        assert simulator.snapshot(device.uuid)["actions_executed"]["reboot"] == 1
        assert ActionDelivery.objects.count() == 1


class TestWorkerKilled:
    DEVICES = 10_000

    def test_every_device_gets_exactly_one_outcome_and_acts_once(self, client, p, live_server, celery_worker):
        """SIGKILL the worker in the middle of a 10,000-device restart; after a restart of the
        worker (late acks bring its messages back) each device has one outcome and restarted once."""
        sim = SimulatorThread(live_server.url, report_interval=120.0, poll_interval=120.0, start_spread=600.0,
                              sigkill_after=0.0, seed=3, connection_limit=200)
        sim.start()
        try:
            self._bulk_register(sim, p.fleet)
            celery_worker.restart(env={"CELERY_VISIBILITY_TIMEOUT_S": "5", "AGENT_PUSH_TIMEOUT_S": "20"})
            client.force_login(p.operator)
            assert client.post(f"/fleets/{p.fleet.pk}/actions/restart/", {"confirm": p.fleet.name}).status_code == 302
            action = DeviceAction.objects.get()

            def progressed():
                a = DeviceAction.objects.get(pk=action.pk)
                return a.target_count == self.DEVICES and a.sent_count + a.succeeded_count >= 2_000

            wait_until(progressed, timeout=120, interval=0.2, message="a good part of the batches to be sent")
            celery_worker.kill()
            killed_at = DeviceAction.objects.get(pk=action.pk)
            assert killed_at.pending_count + killed_at.sending_count > 0, "killed too late to prove anything"

            celery_worker.start()
            try:
                wait_until(lambda: DeviceAction.objects.get(pk=action.pk).state == "done", timeout=300, interval=1,
                           message="every outcome to be final")
            except AssertionError:
                a = DeviceAction.objects.get(pk=action.pk)
                counts = {s: a.count_of(s) for s in ("pending", "sending", "sent", "succeeded", "failed", "waiting")}
                raise AssertionError(f"not done: {a.state} {counts}") from None
            action.refresh_from_db()
            assert ActionDelivery.objects.filter(action=action).count() == self.DEVICES
            assert action.succeeded_count == self.DEVICES, {
                s: action.count_of(s) for s in ("failed", "blocked", "missed", "unsupported", "sent")
            }
            executed = [d["actions_executed"].get("restart", 0) for d in sim.run(self._all_snapshots, sim)]
            assert max(executed) == 1 and sum(executed) == self.DEVICES
        finally:
            sim.stop()

    @staticmethod
    def _all_snapshots(sim):
        return [sim.simulator.snapshot(uuid) for uuid in sim.simulator.devices]

    def _bulk_register(self, sim, fleet):
        """Provision the devices the fast way: rows in bulk first, then agents given their keys."""
        now = timezone.now()
        agents, rows = [], []
        for i in range(self.DEVICES):
            uuid, api_key = secrets.token_hex(16), secrets.token_hex(16)
            agents.append((uuid, api_key))
            rows.append(Device(
                uuid=uuid, name=f"bulk-{i:05d}", fleet=fleet, device_type=fleet.default_device_type,
                os_version="2.58.3", os_version_key=version_key("2.58.3"), agent_version="1.4.0",
                agent_version_key=version_key("1.4.0"), last_seen_at=now, api_key_hash=hash_secret(api_key),
                api_address=f"{sim.url}/d/{uuid}",
            ))
        Device.objects.bulk_create(rows, batch_size=2000)
        for uuid, api_key in agents:
            sim.add_device(device_type="raspberrypi3", os_version="2.58.3", agent_version="1.4.0", uuid=uuid,
                           api_key=api_key, push_secret=push_secret_for(uuid), fleet_id=fleet.pk,
                           services=["main"], holds_lock=False, ignores_sigterm=False)


class TestAgentsThatHang:
    TIMEOUT_S = 2.0
    CONCURRENCY = 2

    def test_more_hung_agents_than_push_slots_fail_on_time_and_healthy_ones_are_still_sent(
        self, client, p, provision, simulator, celery_worker
    ):
        """Three hung agents and a bound of two pushes in flight: each hung push gets its own full
        time limit from when it reaches the agent (none fails while merely queued), and the healthy
        devices queued behind them are sent once a slot frees, not failed unreached."""
        celery_worker.restart(
            env={"AGENT_PUSH_TIMEOUT_S": f"{self.TIMEOUT_S:g}", "AGENT_PUSH_CONCURRENCY": str(self.CONCURRENCY)}
        )
        hung = [provision(p.fleet, name=f"hung-{i}") for i in range(3)]  # lowest ids: pushed first
        healthy = [provision(p.fleet, name=f"healthy-{i}") for i in range(3)]
        for device in hung:
            simulator.hang(device.uuid)
        client.force_login(p.operator)

        assert client.post(f"/fleets/{p.fleet.pk}/actions/reboot/").status_code == 302
        action = DeviceAction.objects.get()
        wait_until(lambda: DeviceAction.objects.get(pk=action.pk).state == "done", timeout=60,
                   message="every outcome to be final")

        outcomes = {d.device_name: (d.state, d.reason) for d in ActionDelivery.objects.filter(action=action)}
        for device in hung:
            assert outcomes[device.name] == ("failed", f"No answer within {self.TIMEOUT_S:g} s")
        for device in healthy:
            assert outcomes[device.name][0] == "succeeded"
            assert simulator.snapshot(device.uuid)["actions_executed"]["reboot"] == 1

        # Each hung agent was reached, and its push given up after about the time limit, counted
        # from when it arrived (the third waited for a slot first, which does not count).
        waits = {}
        for device in hung:
            events = simulator.snapshot(device.uuid)["events"]
            arrived = [e["at"] for e in events if e["kind"] == "hung_request"]
            abandoned = [e["at"] for e in events if e["kind"] == "hung_request_abandoned"]
            assert len(arrived) == len(abandoned) == 1, f"{device.name} was never contacted: {events}"
            waits[device.name] = abandoned[0] - arrived[0]
        assert all(self.TIMEOUT_S - 0.2 <= wait <= self.TIMEOUT_S + 2 for wait in waits.values()), waits

        # The whole batch, and so the healthy pushes queued in it, waits for at most one time limit
        # per slot-full of hung agents ahead of them: never a limit per hung agent.
        first_push = min(
            e["at"] for d in hung for e in simulator.snapshot(d.uuid)["events"] if e["kind"] == "hung_request"
        )
        slot_rounds = -(-len(hung) // self.CONCURRENCY)
        bound = slot_rounds * self.TIMEOUT_S + 2
        for device in healthy:
            executed = [e["at"] for e in simulator.snapshot(device.uuid)["events"] if e["kind"] == "reboot"]
            assert executed and executed[0] - first_push <= bound, (device.name, executed, first_push)
        failed_at = max(d.finished_at for d in ActionDelivery.objects.filter(action=action, state="failed"))
        assert failed_at.timestamp() - first_push <= bound
