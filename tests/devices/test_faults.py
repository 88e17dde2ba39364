"""Faults: Redis down when an action is posted, a worker killed mid-action, agents that hang, and a
database error in the middle of a request. Real worker, Redis and simulator throughout."""

import contextlib
import json
import secrets
import time

import pytest
from django.db import connection
from django.db.utils import OperationalError
from django.utils import timezone
from kombu import pools

from dashboard.celery import app as celery_app
from dashboard.embedded_redis import EmbeddedRedis
from devices import ingest
from devices.keys import hash_secret, push_secret_for
from devices.models import ActionDelivery, Device, DeviceAction
from devices.simulator import SimulatorThread
from devices.versions import version_key
from tests.conftest import wait_until
from tests.factories import Personas, make_device

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

    def test_every_device_gets_exactly_one_outcome_and_acts_once(self, client, p, agent_server, celery_worker):
        """SIGKILL the worker in the middle of a 10,000-device restart; after a restart of the
        worker (late acks bring its messages back) each device has one outcome and restarted once.

        The agents talk to the agent API server, as in a deployment: Django's threaded test server
        spends a thread and a database connection per agent connection, and 30,000 reports and
        results in two minutes (each device reports stopping and running, then its result) are more
        than it answers in the test's time."""
        sim = SimulatorThread(f"http://127.0.0.1:{agent_server}", report_interval=120.0, poll_interval=120.0,
                              start_spread=600.0, sigkill_after=0.0, seed=3)
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
                raise AssertionError(f"not done: {a.state} {counts}; {self._stuck(sim, action)}") from None
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
    def _stuck(sim, action):
        """What the simulator knows of a few deliveries still open: the agent's last events, the
        results it remembers and those still waiting for a report."""
        open_ones = ActionDelivery.objects.filter(action=action, state__in=["sent", "sending"])

        def known(sim, uuid):
            agent = sim.simulator.agents[uuid]
            return {"events": list(agent.device.events)[-6:], "results": dict(agent.device.results),
                    "riding": dict(agent._riding)}  # fmt: skip

        return {uuid: sim.run(known, sim, uuid) for uuid in open_ones.values_list("device__uuid", flat=True)[:3]}

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


WRITES = ("INSERT", "UPDATE", "DELETE")


@contextlib.contextmanager
def database_fails_at_write(n: int, during=None):
    """Fault injection in this process's connection: its n-th INSERT/UPDATE/DELETE raises as a
    database that lost its disk or connection would (`during` runs just before, e.g. a report
    arriving meanwhile). Yields a list that holds the failed statement once it has failed."""
    writes, failed = 0, []

    def fail(execute, sql, params, many, context):
        nonlocal writes
        if sql.lstrip().upper().startswith(WRITES):
            writes += 1
            if writes == n:
                failed.append(sql)
                if during:
                    during()
                raise OperationalError("disk I/O error (injected)")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(fail):
        yield failed


def broker_messages(test_redis) -> int:
    """Messages waiting in every Celery queue of the test Redis (no worker runs to take them)."""
    with test_redis.client() as r:
        return sum(r.llen(key) for key in r.scan_iter() if r.type(key) == b"list")


def device_rows(fleet):
    return list(Device.objects.filter(fleet=fleet).order_by("pk").values())


class TestDatabaseErrorMidRequest:
    """No worker runs here, so whatever a request enqueued is still in Redis to be counted."""

    @pytest.mark.parametrize(
        ("kind", "data"),
        [
            ("reboot", {}),
            ("restart", {"confirm": "{fleet}"}),
            ("reboot", {"ids": "{ids}"}),
            ("public_url_on", {"ids": "{ids}"}),
        ],
        ids=["fleet-reboot", "fleet-restart", "selected-reboot", "selected-public-url"],
    )
    def test_an_action_whose_recording_fails_leaves_nothing_behind_and_can_be_retried(
        self, client, p, test_redis, kind, data
    ):
        devices = [make_device(p.fleet) for _ in range(3)]
        data = {
            name: p.fleet.name if value == "{fleet}" else [d.pk for d in devices[:2]] if value == "{ids}" else value
            for name, value in data.items()
        }
        client.force_login(p.operator)
        client.raise_request_exception = False
        before, queued = device_rows(p.fleet), broker_messages(test_redis)

        with database_fails_at_write(1) as failed:
            response = client.post(f"/fleets/{p.fleet.pk}/actions/{kind}/", data)

        assert failed and "devices_deviceaction" in failed[0]
        assert response.status_code == 503
        html = response.content.decode()
        assert "The action was not recorded." in html and "you can try again" in html
        assert not DeviceAction.objects.exists() and not ActionDelivery.objects.exists()
        assert device_rows(p.fleet) == before
        assert broker_messages(test_redis) == queued

        # The retry is recorded once and enqueued once: the count above would have seen a message.
        assert client.post(f"/fleets/{p.fleet.pk}/actions/{kind}/", data).status_code == 302
        assert DeviceAction.objects.count() == 1
        assert broker_messages(test_redis) == queued + 1

    @pytest.mark.parametrize("failing_write", range(1, 8))
    def test_a_device_setting_fails_at_any_of_its_writes_and_nothing_is_half_recorded(
        self, client, p, test_redis, failing_write
    ):
        """A device-scope setting is recorded and applied in the request itself: the action, its
        delivery, the device's change, the counters, the state. Whichever write fails, none stays."""
        device = make_device(p.fleet, public_url_enabled=False)
        client.force_login(p.operator)
        client.raise_request_exception = False
        before, queued = device_rows(p.fleet), broker_messages(test_redis)

        with database_fails_at_write(failing_write) as failed:
            response = client.post(f"/devices/{device.uuid}/actions/public_url_on/")

        assert failed, f"the request made fewer than {failing_write} writes"
        assert response.status_code == 503 and "Nothing was recorded" in response.content.decode()
        assert not DeviceAction.objects.exists() and not ActionDelivery.objects.exists()
        assert device_rows(p.fleet) == before
        assert broker_messages(test_redis) == queued

        assert client.post(f"/devices/{device.uuid}/actions/public_url_on/").status_code == 302
        device.refresh_from_db()
        assert device.public_url_enabled and ActionDelivery.objects.get().state == "succeeded"

    def test_a_database_error_anywhere_else_gets_the_server_error_page(self, client, p):
        make_device(p.fleet)
        client.force_login(p.operator)
        client.raise_request_exception = False

        def fail_on_devices(execute, sql, params, many, context):
            if '"devices_device"' in sql:
                raise OperationalError("server closed the connection unexpectedly (injected)")
            return execute(sql, params, many, context)

        with connection.execute_wrapper(fail_on_devices):
            response = client.post(f"/fleets/{p.fleet.pk}/actions/reboot/")

        assert response.status_code == 500
        html = response.content.decode()
        assert "Something went wrong on our side" in html and "You can try again" in html
        assert "Traceback" not in html and "OperationalError" not in html
        assert 'class="topbar"' in html  # the shared layout
        assert not DeviceAction.objects.exists()


class TestDatabaseErrorDuringFlush:
    def test_reports_a_failed_flush_had_taken_are_written_by_the_next_one(self, client, p):
        key = secrets.token_hex(16)
        device = make_device(p.fleet, api_key=key, online=False, os_version="2.58.3")
        auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

        def report(**fields):
            response = client.patch("/api/v1/device/state", json.dumps(fields), content_type="application/json", **auth)
            assert response.status_code == 204

        report(status="idle", os_version="2.95.12", ip_address="10.0.0.7")
        before = Device.objects.filter(pk=device.pk).values().get()

        # A newer report arrives while the failing flush is writing: its fields must win.
        with database_fails_at_write(1, during=lambda: report(ip_address="10.0.0.8")) as failed, pytest.raises(OperationalError):
            ingest.flush()

        assert failed and "devices_device" in failed[0]
        assert Device.objects.filter(pk=device.pk).values().get() == before
        assert ingest.redis_client().zscore(ingest.DIRTY, device.pk) is not None

        assert ingest.flush().reports == 1
        device.refresh_from_db()
        assert (device.agent_status, device.os_version, device.ip_address) == ("idle", "2.95.12", "10.0.0.8")
        assert device.is_online
