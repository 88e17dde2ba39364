"""The state report's fast path (devices.agent_wsgi): same answer and same stored state as the
Django view, and everything it does not handle reaches Django unchanged."""

import io
import json
import sys
import time
from datetime import timedelta

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import override_settings
from django.utils import timezone

from devices import ingest
from devices.agent_wsgi import AgentReportFastPath
from devices.keys import hash_secret
from devices.models import Device
from devices.services.device_actions import delete_devices
from tests.devices.test_agent_api import STATE, auth, registered  # noqa: F401 (fixture)
from tests.factories import make_device, make_fleet

pytestmark = pytest.mark.django_db

REPORT = {"status": "idle", "os_version": "2.95.12", "agent_version": "1.5.0", "ip_address": "10.0.0.7",
          "api_address": "http://127.0.0.1:48484/d/x", "uptime_s": 60, "update_lock_held": True,
          "update_blocked": "host OS 5.1.20: service web holds the update lock",
          "services": [{"name": "web", "image": "web:1", "status": "running", "container_id": "ab" * 32}],
          "volumes": [{"name": "resin-data", "files": 3, "bytes": 2**40}]}  # fmt: skip


@pytest.fixture
def fleet():
    return make_fleet(device_type="raspberrypi3")


class Recorder:
    """The WSGI app behind the fast path: Django, counting the requests it gets."""

    def __init__(self):
        self.django, self.calls = WSGIHandler(), 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.django(environ, start_response)


def call(app, key, body, *, method="PATCH", path=STATE, host="127.0.0.1:8000", headers=None):
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "HTTP_HOST": host, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json", "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "wsgi.errors": sys.stderr,
    }  # fmt: skip
    if key:
        environ["HTTP_AUTHORIZATION"] = auth(key)["HTTP_AUTHORIZATION"]
    environ.update(headers or {})
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer.update(status=int(status.split()[0]), headers=dict(headers))

    # As Django's test client does: a request must not close the test's database connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        content = b"".join(app(environ, start_response))
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return answer["status"], answer["headers"], content


@pytest.fixture
def app():
    return AgentReportFastPath(Recorder())


def test_a_known_device_is_answered_without_django_and_stored_like_through_the_view(app, registered):  # noqa: F811
    device, key = registered
    call(app, key, {})  # the first report goes through Django, which caches the identity
    app.app.calls = 0
    status, headers, _ = call(app, key, REPORT)
    assert status == 204 and app.app.calls == 0
    ingest.flush()
    fast = Device.objects.filter(pk=device.pk).values().get()
    assert fast["os_version"] == "2.95.12" and fast["volumes"][0]["bytes"] == 2**40
    assert fast["api_address"] == "http://127.0.0.1:48484/d/x"
    assert fast["update_blocked"] == "host OS 5.1.20: service web holds the update lock"

    direct = Recorder()  # Django alone: the view's 204
    status, view_headers, _ = call(direct, key, REPORT)
    assert status == 204 and direct.calls == 1
    assert headers == view_headers


def test_a_later_report_keeps_the_fields_an_earlier_one_left(app, registered):  # noqa: F811
    device, key = registered
    call(app, key, {})
    call(app, key, {"status": "updating", "os_update_progress": 10})
    call(app, key, {"os_update_progress": 60})
    ingest.flush()
    device.refresh_from_db()
    assert (device.agent_status, device.os_update_progress) == ("updating", 60)


@pytest.mark.parametrize(
    "case",
    ["unknown key", "malformed", "not json", "no key", "GET", "other path", "public url host", "bad host"],
)
def test_everything_else_reaches_django_and_gets_its_answer(app, registered, case):  # noqa: F811
    device, key = registered
    call(app, key, {})  # identity cached
    app.app.calls = 0
    kwargs = {
        "unknown key": {"key": "wrong", "body": REPORT},
        "malformed": {"body": {"uptime_s": "soon"}},
        "not json": {"body": b"{not json"},
        "no key": {"key": "", "body": REPORT},
        "GET": {"method": "GET", "body": b""},
        "other path": {"path": "/api/v1/device/target", "method": "GET", "body": b""},
        "public url host": {"host": f"{device.uuid}.devices.localhost:8000", "body": REPORT},
        "bad host": {"host": "evil.example.com", "body": REPORT},
    }[case]
    status, _, content = call(
        app, kwargs.get("key", key), kwargs["body"], method=kwargs.get("method", "PATCH"),
        path=kwargs.get("path", STATE), host=kwargs.get("host", "127.0.0.1:8000"),
    )  # fmt: skip
    assert app.app.calls == 1
    expected = {"unknown key": 401, "malformed": 400, "not json": 400, "no key": 401, "GET": 405,
                "other path": 200, "bad host": 400}  # fmt: skip
    if case in expected:
        assert status == expected[case], content
    if case == "malformed":
        assert json.loads(content)["fields"] == {"uptime_s": "must be an integer from 0 to 315360000"}


def test_a_deleted_device_is_refused_at_once(app, registered, django_capture_on_commit_callbacks):  # noqa: F811
    device, key = registered
    assert call(app, key, REPORT)[0] == 204
    with django_capture_on_commit_callbacks(execute=True):
        device.delete()
    assert call(app, key, REPORT)[0] == 401


def test_a_request_that_read_the_device_before_its_delete_cannot_cache_it_again(
    app,
    client,
    registered,  # noqa: F811
    django_capture_on_commit_callbacks,
):
    device, key = registered
    assert call(app, key, REPORT)[0] == 204
    key_hash, r = hash_secret(key), ingest.redis_client()
    r.delete(f"agent:key:{key_hash}")  # the cached identity expired: the next request reads the database
    # That request reads the device, as identity_for_api_key does on a miss...
    row = Device.objects.filter(api_key_hash=key_hash).values_list("id", "uuid").first()
    with django_capture_on_commit_callbacks(execute=True):  # ...the device is deleted and that commits...
        delete_devices(Device.objects.filter(pk=device.pk))
    assert not ingest.remember_identity(key_hash, row)  # ...then it caches what it read: refused
    assert r.get(f"agent:key:{key_hash}") == b"-"
    assert r.ttl(f"agent:key:{key_hash}") > ingest.IDENTITY_TTL_S - 60
    assert call(app, key, REPORT)[0] == 401  # the fast path leaves it to Django, which refuses it
    auth_header = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    report = client.patch(STATE, json.dumps(REPORT), content_type="application/json", **auth_header)
    assert report.status_code == 401 and report.json()["error"] == "invalid_api_key"
    assert client.get("/api/v1/device/target", **auth_header).status_code == 401


def test_a_deleted_device_cached_when_deleted_is_refused_on_both_paths(
    app,
    client,
    registered,  # noqa: F811
    django_capture_on_commit_callbacks,
):
    device, key = registered
    assert call(app, key, REPORT)[0] == 204  # through Django, which caches the identity
    assert call(app, key, REPORT)[0] == 204 and app.app.calls == 1  # the fast path
    with django_capture_on_commit_callbacks(execute=True):
        delete_devices(Device.objects.filter(pk=device.pk))
    assert call(app, key, REPORT)[0] == 401
    report = client.patch(
        STATE, json.dumps(REPORT), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert report.status_code == 401


def test_http_is_redirected_by_django_when_https_is_required(registered):  # noqa: F811
    _, key = registered
    with override_settings(SECURE_SSL_REDIRECT=True):
        app = AgentReportFastPath(Recorder())  # Django's middleware reads the setting when loaded
        call(app, key, {})
        status, _, _ = call(app, key, REPORT)
    assert status == 301 and app.app.calls == 2


HTTPS_BEHIND_PROXY = {"HTTP_X_FORWARDED_PROTO": "https"}


@override_settings(
    SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
    SECURE_HSTS_SECONDS=3600,
    SECURE_HSTS_INCLUDE_SUBDOMAINS=True,
)
def test_over_https_the_fast_answer_carries_the_views_hsts_header(registered):  # noqa: F811
    _, key = registered
    app = AgentReportFastPath(Recorder())
    call(app, key, {}, headers=HTTPS_BEHIND_PROXY)
    app.app.calls = 0
    status, fast, _ = call(app, key, REPORT, headers=HTTPS_BEHIND_PROXY)
    assert status == 204 and app.app.calls == 0
    assert fast["Strict-Transport-Security"] == "max-age=3600; includeSubDomains"
    _, view, _ = call(Recorder(), key, REPORT, headers=HTTPS_BEHIND_PROXY)
    assert fast == view
    _, plain, _ = call(app, key, REPORT)  # plain HTTP: no HSTS, as from the view
    assert "Strict-Transport-Security" not in plain


def test_a_host_taken_before_is_refused_once_allowed_hosts_no_longer_has_it(app, registered):  # noqa: F811
    """The fast path remembers its Host checks and headers, until a setting changes."""
    _, key = registered
    with override_settings(ALLOWED_HOSTS=["agents.example.com", "dashboard.example.com"]):
        call(app, key, {}, host="agents.example.com")  # Django caches the identity
        app.app.calls = 0
        assert call(app, key, REPORT, host="agents.example.com")[0] == 204 and app.app.calls == 0
        with override_settings(ALLOWED_HOSTS=["dashboard.example.com"], X_FRAME_OPTIONS="SAMEORIGIN"):
            status, _, _ = call(app, key, REPORT, host="agents.example.com")
            assert status == 400 and app.app.calls == 1  # Django's DisallowedHost answer
            status, headers, _ = call(app, key, REPORT, host="dashboard.example.com")
            assert status == 204 and app.app.calls == 1 and headers["X-Frame-Options"] == "SAMEORIGIN"


def known_devices(fleet, n: int) -> list[tuple[Device, str]]:
    """`n` offline devices and their api keys, their identities cached as after a first report."""
    pairs = []
    for i in range(n):
        key = f"key-{i}-" + "x" * 20
        device = make_device(fleet, api_key=key, online=False)
        ingest.remember_identity(hash_secret(key), (device.pk, device.uuid))
        pairs.append((device, key))
    return pairs


class TestDevicesComingBackFirst:
    """The flusher writes devices whose pages would change at once (back after a silence, another
    status) before the heartbeats of a backlog."""

    def report(self, devices, **changes):
        now = timezone.now()
        for _, key in devices:
            ingest.buffer_report_by_key(hash_secret(key), {"agent_status": "idle"} | changes, now)

    @pytest.fixture
    def devices(self, fleet):
        return known_devices(fleet, 6)

    def test_heartbeats_wait_and_devices_back_or_changing_go_first(self, devices):
        r = ingest.redis_client()
        self.report(devices)  # every first report is urgent: these devices were offline
        assert r.scard(ingest.URGENT) == len(devices)
        ingest.flush()
        assert all(device.is_online for device in Device.objects.filter(pk__in=[d.pk for d, _ in devices]))

        self.report(devices)  # heartbeats, same status: not urgent
        assert r.scard(ingest.URGENT) == 0 and r.zcard(ingest.DIRTY) == len(devices)
        (back, _), (rebooting, _) = devices[0], devices[1]
        r.delete(ingest._seen_key(back.pk))  # silent for the offline threshold: what expiry does
        self.report(devices[:1])
        self.report([devices[1]], agent_status="rebooting")
        assert {int(i) for i in r.smembers(ingest.URGENT)} == {back.pk, rebooting.pk}

        ingest.flush(limit=2)  # the two urgent ones, before four heartbeats
        assert Device.objects.get(pk=rebooting.pk).agent_status == "rebooting"
        waiting = [device.pk for device, _ in devices if r.exists(ingest._report_key(device.pk))]
        assert waiting == [device.pk for device, _ in devices[2:]]
        self.report([devices[1]], agent_status="rebooting")  # the same status again: a heartbeat
        assert r.scard(ingest.URGENT) == 0

    def test_a_report_without_a_status_counts_only_the_silence(self, devices):
        r = ingest.redis_client()
        now = timezone.now()
        (device, key), *_ = devices
        ingest.buffer_report_by_key(hash_secret(key), {"uptime_s": 5}, now)
        assert r.sismember(ingest.URGENT, device.pk)  # never seen: back
        ingest.flush()
        ingest.buffer_report_by_key(hash_secret(key), {"uptime_s": 6}, now)
        self.report(devices[:1])
        assert r.scard(ingest.URGENT) == 1  # "" then "idle": the status is new to what was seen
        ingest.flush()
        ingest.buffer_report_by_key(hash_secret(key), {"uptime_s": 7}, now)
        assert r.scard(ingest.URGENT) == 0


class TestBacklogOrder:
    """However long the backlog, the devices that have waited longest are written first: a device
    reporting all along never looks offline because its turn was drawn late."""

    def test_a_backlog_is_written_oldest_first(self, fleet):
        r = ingest.redis_client()
        devices = known_devices(fleet, 5)
        started = timezone.now()
        for n, (_, key) in enumerate(reversed(devices)):  # the last device made reports first
            at = started + timedelta(seconds=n)
            ingest.buffer_report_by_key(hash_secret(key), {"uptime_s": 5}, at)
        r.delete(ingest.URGENT)  # all of them are only heartbeats in the backlog now
        for _, key in devices:  # a later report keeps a device's place in the queue
            ingest.buffer_report_by_key(hash_secret(key), {"uptime_s": 9}, started + timedelta(seconds=9))
        r.delete(ingest.URGENT)

        written = []
        for _ in devices:
            ingest.flush(limit=1)
            online = {d.pk for d in Device.objects.filter(pk__in=[d.pk for d, _ in devices]) if d.is_online}
            written.append((online - set(written)).pop())
        assert written == [device.pk for device, _ in reversed(devices)]
        assert r.zcard(ingest.DIRTY) == 0

    def test_a_device_fresh_in_the_database_waits_behind_one_due_for_a_write(self, fleet, settings):
        """A fleet-wide restart has every device send a whole report (new containers): those of
        devices whose last_seen_at the database has recently wait behind the heartbeats of devices
        that need one written not to look offline, even when they came first."""
        settings.DEVICE_OFFLINE_AFTER_S = 60
        r = ingest.redis_client()
        (fresh, fresh_key), (due, due_key) = known_devices(fleet, 2)
        for _, key in ((fresh, fresh_key), (due, due_key)):
            ingest.buffer_report_by_key(hash_secret(key), {"agent_status": "idle"}, timezone.now())
        ingest.flush()
        r.delete(ingest._fresh_key(due.pk))  # its heartbeat is due to be written: what expiry does
        services = [{"name": "web", "image": "web:2", "status": "running", "container_id": "cd" * 32}]
        ingest.buffer_report_by_key(hash_secret(fresh_key), {"services": services}, timezone.now())
        ingest.buffer_report_by_key(hash_secret(due_key), {}, timezone.now())
        assert r.zcard(ingest.DIRTY) == 2 and r.scard(ingest.URGENT) == 0

        ingest.flush(limit=1)
        assert not r.exists(ingest._report_key(due.pk)) and r.exists(ingest._report_key(fresh.pk))
        ingest.flush(limit=1)
        assert Device.objects.get(pk=fresh.pk).services == services


class TestKeptSeenUnderABacklog:
    """Under a backlog, devices whose turn has come but that a flush does not reach get their
    last_seen_at written alone, so that a device reporting all along is never shown offline while
    the whole reports of a fleet-wide restart wait; their reports are written later."""

    @pytest.fixture
    def due(self, fleet, settings):
        settings.DEVICE_OFFLINE_AFTER_S = 60
        devices = known_devices(fleet, 4)
        for _, key in devices:
            ingest.buffer_report_by_key(hash_secret(key), {"agent_status": "idle"}, timezone.now())
        ingest.flush()
        r = ingest.redis_client()
        ids = [device.pk for device, _ in devices]
        # 40 s since they were last written: online still, no longer fresh, a heartbeat is due.
        Device.objects.filter(pk__in=ids).update(last_seen_at=timezone.now() - timedelta(seconds=40))
        r.delete(*[ingest._fresh_key(pk) for pk in ids])
        return devices

    def last_seen(self, device):
        return Device.objects.get(pk=device.pk).last_seen_at

    def test_the_devices_a_flush_does_not_reach_are_kept_seen_and_written_later(self, due):
        r = ingest.redis_client()
        (first, first_key), (second, second_key), (gone, gone_key), (urgent, urgent_key) = due
        # One the database already shows offline (its reports lost in the backlog): it waits for its
        # report, whose writing acts on its coming back.
        Device.objects.filter(pk=gone.pk).update(last_seen_at=timezone.now() - timedelta(minutes=2))
        before = {d.pk: self.last_seen(d) for d, _ in due}
        services = [{"name": "web", "image": "web:2", "status": "running", "container_id": "ef" * 32}]
        waited = timezone.now() - timedelta(seconds=20)  # past their turn by more than 15 s
        for _, key in (due[0], due[1], due[2]):
            ingest.buffer_report_by_key(hash_secret(key), {"services": services}, waited)
        ingest.buffer_report_by_key(hash_secret(urgent_key), {"agent_status": "updating"}, waited)
        assert r.smembers(ingest.URGENT) == {str(urgent.pk).encode()}
        assert ingest._keep_seen(r) == 2  # not the urgent one, nor the one shown offline
        assert self.last_seen(urgent) == before[urgent.pk] and self.last_seen(gone) == before[gone.pk]
        for device in (first, second):
            assert self.last_seen(device) > before[device.pk] and Device.objects.get(pk=device.pk).is_online
            assert r.exists(ingest._report_key(device.pk)) and r.exists(ingest._fresh_key(device.pk))
            assert Device.objects.get(pk=device.pk).services != services  # the report waits
        assert ingest._keep_seen(r) == 0  # scored by their new freshness: not due again
        while ingest.flush(limit=1).full:
            pass
        assert all(Device.objects.get(pk=d.pk).services == services for d in (first, second, gone))
        assert Device.objects.get(pk=urgent.pk).agent_status == "updating"
        assert all(Device.objects.get(pk=d.pk).is_online for d, _ in due)

    def test_a_flush_with_a_backlog_keeps_the_rest_seen_once_they_are_late(self, due):
        r = ingest.redis_client()
        (late, late_key), *others = due
        for _, key in others:  # just now: their turn has come, but the queue may reach them in time
            ingest.buffer_report_by_key(hash_secret(key), {"uptime_s": 99}, timezone.now())
        waited = timezone.now() - timedelta(seconds=20)
        ingest.buffer_report_by_key(hash_secret(late_key), {"uptime_s": 99}, waited)
        stats = ingest.flush(limit=1)  # the late one first, as the oldest
        assert (stats.reports, stats.kept_seen, stats.full) == (1, 0, True)
        assert not r.exists(ingest._report_key(late.pk))
        r.zadd(ingest.DIRTY, {device.pk: time.time() - 20 for device, _ in others}, xx=True)  # later
        stats = ingest.flush(limit=1)
        assert (stats.kept_seen, stats.full) == (2, True)
        r = ingest.redis_client()
        stats = ingest.flush(limit=10)  # no backlog: the rest taken, nothing kept seen apart
        assert stats.kept_seen == 0 and r.zcard(ingest.DIRTY) == 0
        assert not any(r.exists(ingest._report_key(device.pk)) for device, _ in due)
        # Nothing but uptime, and last_seen_at written just before: nothing more to write.
        assert stats.reports == 0 and all(Device.objects.get(pk=d.pk).is_online for d, _ in due)


class TestResultsBeforeReports:
    """While results keep coming (a fleet-wide restart), a flush writes batch after batch of them
    before the reports waiting behind, for up to RESULTS_FIRST_S; the reports are written after."""

    @pytest.fixture
    def pushed(self, fleet):
        from devices.models import ActionDelivery, DeliveryState, DeviceAction

        devices = known_devices(fleet, 5)
        action = DeviceAction.objects.create(
            organization=fleet.organization, fleet=fleet, fleet_name="x", actor_name="x", kind="restart",
            scope="fleet", state="dispatching", sent_count=5, target_count=5,
        )  # fmt: skip
        ActionDelivery.objects.bulk_create(
            ActionDelivery(action=action, device=d, device_uuid=d.uuid, device_name=d.name, state=DeliveryState.SENT)
            for d, _ in devices
        )  # fmt: skip
        now = timezone.now()
        for device, key in devices:
            ingest.buffer_report_by_key(hash_secret(key), {"agent_status": "idle"}, now)
            ingest.buffer_result(device.pk, f"{action.pk}-{device.pk}", "succeeded", "1 service recreated")
        return action, devices

    def outcomes(self, action, devices):
        states = dict(action.deliveries.values_list("device_id", "state"))
        online = {d.pk for d in Device.objects.filter(pk__in=states) if d.is_online}
        return sorted(states.values()), len(online)

    def test_every_waiting_batch_of_results_goes_before_the_reports(self, pushed):
        action, devices = pushed
        stats = ingest.flush(limit=2)  # results 2 + 2 + 1, then the first 2 devices' reports
        assert (stats.results, stats.reports) == (5, 2)
        assert self.outcomes(action, devices) == (["succeeded"] * 5, 2)
        action.refresh_from_db()
        assert (action.succeeded_count, action.sent_count) == (5, 0)

    def test_after_results_first_s_the_reports_get_their_turn(self, pushed, monkeypatch):
        action, devices = pushed
        monkeypatch.setattr(ingest, "RESULTS_FIRST_S", 0.0)
        stats = ingest.flush(limit=2)
        assert (stats.results, stats.reports, stats.full) == (2, 2, True)
        assert self.outcomes(action, devices) == (["sent"] * 3 + ["succeeded"] * 2, 2)
        while ingest.flush(limit=2).full:  # as the flusher's loop does
            pass
        assert self.outcomes(action, devices) == (["succeeded"] * 5, 5)


class TestHeartbeatsOfFreshDevices:
    """A heartbeat (`{}`: nothing but being there) of a device whose last_seen_at the database has
    recently is not buffered at all: the flusher would only drop it. Anything else still is."""

    @pytest.fixture
    def device(self, fleet, settings):
        settings.DEVICE_OFFLINE_AFTER_S = 60
        ((device, key),) = known_devices(fleet, 1)
        ingest.buffer_report_by_key(hash_secret(key), {"agent_status": "idle"}, timezone.now())
        ingest.flush()
        device.refresh_from_db()
        assert device.is_online
        return device, key

    def test_a_heartbeat_while_fresh_is_only_seen(self, device):
        device, key = device
        r = ingest.redis_client()
        ttl_ms = r.pttl(ingest._fresh_key(device.pk))
        assert 0.35 * 60_000 < ttl_ms <= 0.4 * 60_000  # until heartbeat_refresh_s after its last_seen_at
        r.expire(ingest._seen_key(device.pk), 5)
        assert ingest.buffer_report_by_key(hash_secret(key), {}, timezone.now()).id == device.pk
        assert r.zcard(ingest.DIRTY) == 0 and not r.exists(ingest._report_key(device.pk))
        assert r.ttl(ingest._seen_key(device.pk)) > 50  # still seen: online for the offline threshold

    def test_once_due_a_heartbeat_is_written(self, device):
        device, key = device
        r = ingest.redis_client()
        # Written 30 s ago, past heartbeat_refresh_s (24 s): the fresh key has expired.
        Device.objects.filter(pk=device.pk).update(last_seen_at=timezone.now() - timedelta(seconds=30))
        r.delete(ingest._fresh_key(device.pk))
        now = timezone.now()
        ingest.buffer_report_by_key(hash_secret(key), {}, now)
        assert r.zcard(ingest.DIRTY) == 1
        ingest.flush()
        assert Device.objects.get(pk=device.pk).last_seen_at == now
        assert r.pttl(ingest._fresh_key(device.pk)) > 0.35 * 60_000

    @pytest.mark.parametrize("report", [{"uptime_s": 99}, {"agent_status": "rebooting"}, {"volumes": []}])
    def test_a_report_with_anything_in_it_is_buffered_while_fresh(self, device, report):
        device, key = device
        ingest.buffer_report_by_key(hash_secret(key), report, timezone.now())
        assert ingest.redis_client().zcard(ingest.DIRTY) == 1

    def test_a_device_silent_past_the_threshold_is_buffered_and_urgent(self, device):
        device, key = device
        r = ingest.redis_client()
        r.delete(ingest._seen_key(device.pk))
        ingest.buffer_report_by_key(hash_secret(key), {}, timezone.now())
        assert r.zcard(ingest.DIRTY) == 1 and r.sismember(ingest.URGENT, device.pk)

    def test_a_deactivated_device_is_not_marked_fresh(self, device, fleet):
        device, key = device
        r = ingest.redis_client()
        Device.objects.filter(pk=device.pk).update(is_active=False)
        r.delete(ingest._fresh_key(device.pk))
        ingest.buffer_report_by_key(hash_secret(key), {}, timezone.now())
        ingest.flush()
        assert not r.exists(ingest._fresh_key(device.pk))
