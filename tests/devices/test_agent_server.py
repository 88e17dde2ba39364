"""The agent API's own server (devices.agent_server, `manage.py serve_agent_api`), as a real process
on the test database and Redis: reports answered in its event loop and batched into Redis, every
other request answered by Django with the views' own rules."""

import http.client
import json
import re
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devices import ingest
from devices.models import Device
from fleets.services import provisioning_key_create
from tests.devices.test_agent_fast_path import REPORT
from tests.factories import make_fleet

BASE_DIR = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def fleet():
    return make_fleet(device_type="raspberrypi3")


def request(port, method, path, body=None, key=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    all_headers = {"Host": "127.0.0.1"} | (headers or {})
    if key:
        all_headers["Authorization"] = f"Bearer {key}"
    if body is not None:
        body = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    connection.request(method, path, body=body, headers=all_headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def register(port, fleet) -> tuple[str, str]:
    uuid = secrets.token_hex(16)
    body = {"uuid": uuid, "device_type": "raspberrypi3", "os_version": "2.58.3", "agent_version": "1.4.0"}
    status, _, data = request(
        port, "POST", "/api/v1/devices/register", body, provisioning_key_create(fleet=fleet)
    )
    assert status == 201, data
    return uuid, json.loads(data)["api_key"]


def test_a_report_is_buffered_and_written_like_the_views(agent_server, fleet):
    uuid, key = register(agent_server, fleet)
    for _ in range(2):  # the first goes through Django and caches the key; the second is the fast path
        status, headers, body = request(agent_server, "PATCH", "/api/v1/device/state", REPORT, key)
        assert (status, body) == (204, b"")
        assert headers["X-Content-Type-Options"] == "nosniff"
    device = Device.objects.get(uuid=uuid)
    assert ingest.redis_client().zscore(ingest.DIRTY, device.pk) is not None
    ingest.flush()
    device.refresh_from_db()
    assert (device.os_version, device.agent_version, device.ip_address) == ("2.95.12", "1.5.0", "10.0.0.7")
    assert device.is_online


def test_bad_reports_get_the_views_answers_and_change_nothing(agent_server, fleet):
    uuid, key = register(agent_server, fleet)
    request(agent_server, "PATCH", "/api/v1/device/state", REPORT, key)  # the key is cached now
    status, _, body = request(agent_server, "PATCH", "/api/v1/device/state", REPORT | {"uptime_s": -5}, key)
    assert status == 400 and json.loads(body)["fields"].keys() == {"uptime_s"}
    status, _, body = request(agent_server, "PATCH", "/api/v1/device/state", b"{not json", key)
    assert status == 400 and json.loads(body)["error"] == "invalid"
    status, _, body = request(agent_server, "PATCH", "/api/v1/device/state", REPORT, "wrong-key")
    assert status == 401 and json.loads(body)["error"] == "invalid_api_key"
    status, _, _ = request(agent_server, "PATCH", "/api/v1/device/state", b"x" * (70 * 1024), key)
    assert status == 413
    ingest.flush()
    assert Device.objects.get(uuid=uuid).agent_version == "1.5.0"  # only the one good report


def test_a_target_poll_is_answered_304_until_the_target_changes(agent_server, fleet):
    uuid, key = register(agent_server, fleet)
    status, headers, body = request(agent_server, "GET", "/api/v1/device/target", key=key)
    assert status == 200 and json.loads(body)["fleet"]["id"] == fleet.pk
    etag = {"If-None-Match": headers["ETag"]}
    for _ in range(2):  # the view remembered the ETag: the server answers the second from Redis
        status, not_modified, body = request(
            agent_server, "GET", "/api/v1/device/target", key=key, headers=etag
        )
        assert (status, body, not_modified["ETag"]) == (304, b"", headers["ETag"])
        assert not_modified["X-Content-Type-Options"] == "nosniff"
    Device.objects.filter(uuid=uuid).update(name="renamed")  # in this process, on the same Redis
    status, _, body = request(agent_server, "GET", "/api/v1/device/target", key=key, headers=etag)
    assert status == 200 and json.loads(body)["name"] == "renamed"


def raw_report(key: str) -> bytes:
    """A whole state report as the bytes of one HTTP/1.1 request, to send several without waiting."""
    report = json.dumps(REPORT).encode()
    return (
        f"PATCH /api/v1/device/state HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(report)}\r\n\r\n"
    ).encode() + report


def test_requests_on_one_connection_are_answered_in_order(agent_server, fleet):
    _, key = register(agent_server, fleet)
    one = raw_report(key)
    poll = f"GET /api/v1/device/target HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", agent_server), timeout=10) as sock:
        sock.sendall(one + poll + one + one)  # pipelined: a slow Django answer between fast ones
        received = b""
        while len(re.findall(rb"HTTP/1\.1 \d{3}", received)) < 4 or not received.endswith(b"\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3})", received)
    assert statuses == [b"204", b"200", b"204", b"204"]


def test_the_answers_to_pipelined_reports_come_together(agent_server, fleet):
    """Eight reports sent without waiting: their eight answers arrive in one piece, not eight."""
    _, key = register(agent_server, fleet)
    with socket.create_connection(("127.0.0.1", agent_server), timeout=10) as sock:
        sock.sendall(raw_report(key) * 8)
        first = sock.recv(65536)
    assert re.findall(rb"HTTP/1\.1 (\d{3})", first) == [b"204"] * 8


def test_pipelined_reports_of_several_devices_go_to_redis_together(agent_server, fleet):
    keys = [register(agent_server, fleet)[1] for _ in range(8)]
    for key in keys:  # the first report of each goes through Django and caches its key
        assert request(agent_server, "PATCH", "/api/v1/device/state", REPORT, key)[0] == 204
    redis = ingest.redis_client()
    calls_before = redis.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    with socket.create_connection(("127.0.0.1", agent_server), timeout=10) as sock:
        sock.sendall(b"".join(raw_report(key) for key in keys))
        first = sock.recv(65536)
    assert re.findall(rb"HTTP/1\.1 (\d{3})", first) == [b"204"] * 8
    calls = redis.info("commandstats")["cmdstat_evalsha"]["calls"] - calls_before
    assert calls == 1  # one script call for the eight, not eight round trips one after the other
    assert redis.zcard(ingest.DIRTY) >= 8


def test_malformed_http_is_refused(agent_server):
    with socket.create_connection(("127.0.0.1", agent_server), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400")


def test_many_devices_reporting_at_once_are_all_buffered(agent_server, fleet):
    devices = [register(agent_server, fleet) for _ in range(40)]
    for _, key in devices:  # cache the keys
        request(agent_server, "PATCH", "/api/v1/device/state", REPORT, key)
    ingest.flush()
    reports = [REPORT | {"ip_address": f"10.0.1.{n}"} for n in range(len(devices))]
    with ThreadPoolExecutor(20) as pool:
        statuses = list(
            pool.map(
                lambda pair: request(agent_server, "PATCH", "/api/v1/device/state", pair[1], pair[0][1])[0],
                zip(devices, reports, strict=True),
            )
        )
    assert statuses == [204] * len(devices)
    ingest.flush()
    addresses = dict(
        Device.objects.filter(uuid__in=[u for u, _ in devices]).values_list("uuid", "ip_address")
    )
    assert [addresses[uuid] for uuid, _ in devices] == [f"10.0.1.{n}" for n in range(len(devices))]


class TestResults:
    def delivery(self, device):
        from devices.models import ActionDelivery, DeliveryState, DeviceAction

        action = DeviceAction.objects.create(
            organization=device.fleet.organization, fleet=device.fleet, fleet_name="x", actor_name="x",
            kind="reboot", scope="device", state="dispatching", sent_count=1, target_count=1,
        )  # fmt: skip
        return ActionDelivery.objects.create(
            action=action, device=device, device_uuid=device.uuid, device_name="x", state=DeliveryState.SENT
        )

    def test_a_result_of_a_pushed_delivery_is_taken_without_django(self, agent_server, fleet):
        uuid, key = register(agent_server, fleet)
        device = Device.objects.get(uuid=uuid)
        request(agent_server, "PATCH", "/api/v1/device/state", REPORT, key)  # the key is cached now
        delivery = self.delivery(device)
        ingest.remember_sent(delivery.action_id, [device.pk])  # as the batch that pushed it does
        body = {"key": f"{delivery.action_id}-{device.pk}", "state": "succeeded", "reason": "Rebooted"}
        status, _, _ = request(agent_server, "POST", "/api/v1/device/actions/result", body, key)
        assert status == 204
        ingest.flush()
        delivery.refresh_from_db()
        assert (delivery.state, delivery.reason) == ("succeeded", "Rebooted")
        # Taken in Redis alone: a delivery Redis knows is answered even once its row is gone (a
        # deleted action), and the flush then finds nothing to change.
        gone = self.delivery(device)
        ingest.remember_sent(gone.action_id, [device.pk])
        gone.action.delete()
        body = {"key": f"{gone.action_id}-{device.pk}", "state": "succeeded"}
        assert request(agent_server, "POST", "/api/v1/device/actions/result", body, key)[0] == 204
        ingest.flush()

    def test_results_a_report_carries_are_taken_with_it_and_those_redis_does_not_know_by_django(
        self, agent_server, fleet
    ):
        uuid, key = register(agent_server, fleet)
        other_uuid, _ = register(agent_server, fleet)
        device, other = Device.objects.get(uuid=uuid), Device.objects.get(uuid=other_uuid)
        request(agent_server, "PATCH", "/api/v1/device/state", REPORT, key)  # the key is cached now
        pushed, unknown, theirs = self.delivery(device), self.delivery(device), self.delivery(other)
        ingest.remember_sent(pushed.action_id, [device.pk])  # Redis knows of this one only
        report = {
            "uptime_s": 5,
            "results": [{"key": f"{pushed.action_id}-{device.pk}", "state": "succeeded"}],
        }
        assert request(agent_server, "PATCH", "/api/v1/device/state", report, key)[0] == 204
        carried = [
            {"key": f"{unknown.action_id}-{device.pk}", "state": "failed", "reason": "No"},
            {"key": f"{theirs.action_id}-{other.pk}", "state": "succeeded"},  # another device's: ignored
        ]
        assert request(agent_server, "PATCH", "/api/v1/device/state", {"results": carried}, key)[0] == 204
        ingest.flush()
        for delivery in (pushed, unknown, theirs):
            delivery.refresh_from_db()
        assert (pushed.state, unknown.state, unknown.reason, theirs.state) == (
            "succeeded",
            "failed",
            "No",
            "sent",
        )
        device.refresh_from_db()
        assert device.booted_at is not None  # the report itself was recorded too

        bad = {"uptime_s": 9, "results": [{"key": f"{theirs.action_id}-{device.pk}", "state": "great"}]}
        status, _, data = request(agent_server, "PATCH", "/api/v1/device/state", bad, key)
        assert status == 400 and "results" in json.loads(data)["fields"]

    def test_a_result_redis_does_not_know_gets_the_views_answer(self, agent_server, fleet):
        uuid, key = register(agent_server, fleet)
        other_uuid, _ = register(agent_server, fleet)
        device, other = Device.objects.get(uuid=uuid), Device.objects.get(uuid=other_uuid)
        request(agent_server, "PATCH", "/api/v1/device/state", REPORT, key)
        theirs = self.delivery(other)
        ingest.remember_sent(theirs.action_id, [other.pk])
        for result_key in (f"{theirs.action_id}-{other.pk}", f"{theirs.action_id}-{device.pk}", "999-1"):
            status, _, data = request(
                agent_server,
                "POST",
                "/api/v1/device/actions/result",
                {"key": result_key, "state": "succeeded"},
                key,
            )
            assert status == 404 and json.loads(data)["error"] == "unknown_action"
        status, _, data = request(
            agent_server, "POST", "/api/v1/device/actions/result", {"key": "1-1", "state": "great"}, key
        )
        assert status == 400
        ingest.flush()
        theirs.refresh_from_db()
        assert theirs.state == "sent"


class FakeTransport:
    def __init__(self):
        self.closed, self.written = False, b""

    def get_extra_info(self, name):
        return ("127.0.0.1", 5000)

    def is_closing(self):
        return self.closed

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def test_a_connection_quiet_for_the_keep_alive_is_closed_and_an_active_one_is_not():
    import asyncio

    from devices.agent_server import AgentConnection, AgentServer

    async def scenario():
        server = AgentServer(host="127.0.0.1", port=0, threads=1, keep_alive_s=0.5)
        quiet, active = AgentConnection(server), AgentConnection(server)
        quiet.connection_made(FakeTransport())
        active.connection_made(FakeTransport())
        active.data_received(b"GET /api/v1/device/target HTTP/1.1\r\n")
        for _ in range(8):  # a header every 0.1 s: never quiet for 0.5 s
            await asyncio.sleep(0.1)
            active.data_received(b"X-Slow: 1\r\n")
        states = quiet.transport.closed, active.transport.closed
        await asyncio.sleep(0.8)
        states += (active.transport.closed,)
        for connection in (quiet, active):
            connection.connection_lost(None)
        await server.redis.aclose()
        server.pool.shutdown()
        return states

    assert asyncio.run(scenario()) == (True, False, True)


def test_request_headers_reach_django_as_wsgi_servers_pass_them():
    """Names in any case, repeated headers joined, a name with an underscore dropped (it must not
    pass for its dashed twin), and the same again for the next request."""
    from devices.agent_server import AgentServer, Request

    server = AgentServer(host="127.0.0.1", port=0, threads=1)
    try:
        headers = [
            (b"host", b"127.0.0.1"),
            (b"AUTHORIZATION", b"Bearer k1 "),
            (b"Content-Type", b"application/json"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"x-forwarded-for", b"10.0.0.2"),
            (b"X_Forwarded_Host", b"evil.example"),
        ]
        for _ in range(2):
            environ = server.environ(
                Request("PATCH", b"/api/v1/device/state?x=1", list(headers), [b"{}"]), None
            )
            assert environ["HTTP_HOST"] == "127.0.0.1" and environ["HTTP_AUTHORIZATION"] == "Bearer k1"
            assert environ["CONTENT_TYPE"] == "application/json" and environ["CONTENT_LENGTH"] == "2"
            assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1,10.0.0.2"
            assert "HTTP_X_FORWARDED_HOST" not in environ
            assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/api/v1/device/state", "x=1")
    finally:
        server.pool.shutdown()
