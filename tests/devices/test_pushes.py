"""Pushes over kept-alive connections (devices.services.pushes): reuse per address, the one retry
of a push whose reused connection the agent had closed, hung agents, addresses of one device,
TLS. Real pushes (engine._push_all on the process's push loop) to the device simulator, most
through a relay here that counts connections and requests and can break one. No database.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import ssl
import subprocess
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from django.utils.crypto import salted_hmac

from devices.addresses import address_refusal
from devices.keys import push_secret_for, verify_push
from devices.models import DeliveryState
from devices.services import engine, pushes
from devices.simulator import SimulatorThread
from tests.conftest import wait_until


@dataclass
class Request:
    connection: int  # 1, 2, ... in the order the relay accepted them
    on_connection: int  # 1 for the first request on its connection
    line: str
    headers: dict[str, str]


@dataclass
class Relay:
    """An HTTP/1.1 keep-alive relay in front of the simulator, one request at a time per
    connection. `sabotage(request)` may return "drop" (close the client's connection without
    forwarding the request) or "lose_answer" (forward it, then close the client's connection
    without a byte of the agent's answer)."""

    upstream_port: int
    port: int = 0
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    sabotage: object = None
    server: asyncio.AbstractServer | None = None
    open: set = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the relay and every connection through it (so none stays pooled for later tests)."""
        self.server.close()
        for writer in list(self.open):
            writer.close()

    @staticmethod
    async def _message(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str]] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        return head + body, headers | {":line": lines[0]}

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, on_connection = self.connections, 0
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.open |= {client_w, up_w}
        try:
            while (message := await self._message(client_r)) is not None:
                raw, headers = message
                on_connection += 1
                request = Request(number, on_connection, headers.pop(":line"), headers)
                self.requests.append(request)
                what = self.sabotage(request) if self.sabotage else None
                if what == "drop":
                    return
                up_w.write(raw)
                answer = await self._message(up_r)
                if answer is None or what == "lose_answer":
                    return
                client_w.write(answer[0])
                if headers.get("connection", "").lower() == "close":
                    return
        finally:
            self.open -= {client_w, up_w}
            client_w.close()
            up_w.close()


@pytest.fixture
def sim():
    """The simulator, nothing but its agent APIs in use (no server: reports never start)."""
    thread = SimulatorThread(
        "http://127.0.0.1:9", report_interval=3600.0, poll_interval=3600.0, start_spread=10**6
    )
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def relay(sim):
    relays = []

    def start() -> Relay:
        made = Relay(upstream_port=sim.simulator.port)
        sim.call(made.start())
        relays.append(made)
        return made

    yield start
    for made in relays:
        sim.call(made.stop())


def add_devices(sim, n: int, *, slow: bool = False) -> list[str]:
    """`slow`: its service ignores SIGTERM, so a restart takes the simulator's 10 s until SIGKILL
    and a repeated push finds it still running (answered as a duplicate without a result)."""
    uuids = []
    for _ in range(n):
        uuid = secrets.token_hex(16)
        sim.add_device(device_type="raspberrypi3", os_version="2.58.3", agent_version="1.4.0", uuid=uuid,
                       api_key=secrets.token_hex(16), push_secret=push_secret_for(uuid), fleet_id=1,
                       services=["main"], holds_lock=False, ignores_sigterm="main" if slow else None)  # fmt: skip
        uuids.append(uuid)
    return uuids


def targets(uuids: list[str], port: int, first_pk: int = 1) -> list[dict]:
    return [
        {"pk": first_pk + i, "uuid": uuid, "api_address": f"http://127.0.0.1:{port}/d/{uuid}"}
        for i, uuid in enumerate(uuids)
    ]


_action_ids = iter(range(10**6, 10**7))


def push(batch: list[dict], kind: str = "restart") -> dict[int, tuple[str, str]]:
    """One batch, as deliver_batch pushes it: {device pk: (state, reason)}."""
    results = pushes.run(engine._push_all(kind, {}, next(_action_ids), batch))
    return {r.device_id: (r.state, r.reason) for r in results}


def executed(sim, uuid: str, kind: str = "restart") -> int:
    return sim.snapshot(uuid)["actions_executed"].get(kind, 0)


def test_devices_at_one_address_share_a_few_connections_across_batches(sim, relay, settings):
    settings.AGENT_PUSH_CONCURRENCY = 4
    via = relay()
    uuids = add_devices(sim, 40)
    for start in range(0, 40, 10):  # four batches of ten
        outcomes = push(targets(uuids[start : start + 10], via.port, first_pk=start + 1))
        assert set(outcomes.values()) == {(DeliveryState.SENT, "")}
    assert len(via.requests) == 40
    # At most four in flight: four connections, kept from batch to batch (each batch's last push
    # closes its connection: one new connection per later batch at most).
    assert via.connections <= 4 + 3, via.connections
    assert all(executed(sim, uuid) == 1 for uuid in uuids)


@pytest.mark.parametrize("sabotage", ["drop", "lose_answer"])
def test_a_push_on_a_reused_connection_the_agent_closed_is_sent_again_on_a_new_one_and_acted_on_once(
    sim, relay, settings, sabotage
):
    """With "drop" the agent closed the idle connection as the push went out on it (the keep-alive
    race); with "lose_answer" it took the push, then the connection died before its answer. Either
    way the push is sent once more, on a new connection, and the agent acts once (its key)."""
    settings.AGENT_PUSH_CONCURRENCY = 1
    via = relay()
    first, second = add_devices(sim, 2, slow=True)
    via.sabotage = lambda r: sabotage if r.on_connection == 2 else None
    outcomes = push(targets([first, second], via.port))

    assert outcomes == {1: (DeliveryState.SENT, ""), 2: (DeliveryState.SENT, "")}
    by_connection = [(r.connection, r.on_connection) for r in via.requests]
    assert by_connection == [(1, 1), (1, 2), (2, 1)]  # the second push, sent again on a new connection
    assert via.requests[1].headers["idempotency-key"] == via.requests[2].headers["idempotency-key"]
    assert (executed(sim, first), executed(sim, second)) == (1, 1)


def test_a_push_on_a_new_connection_that_closes_unanswered_is_not_sent_again(sim, relay):
    via = relay()
    (uuid,) = add_devices(sim, 1)
    via.sabotage = lambda r: "drop"
    assert push(targets([uuid], via.port)) == {
        1: (DeliveryState.FAILED, "Unreachable: the agent closed the connection without answering")
    }
    assert len(via.requests) == 1
    assert executed(sim, uuid) == 0


def test_a_reused_connection_closed_twice_fails_the_push_with_the_agent_s_disconnect(sim, relay, settings):
    """Retried once only: when the new connection also closes unanswered, the push fails."""
    settings.AGENT_PUSH_CONCURRENCY = 1
    via = relay()
    first, second = add_devices(sim, 2)
    via.sabotage = lambda r: "drop" if len(via.requests) > 1 else None
    outcomes = push(targets([first, second], via.port))
    assert outcomes[2] == (
        DeliveryState.FAILED,
        "Unreachable: the agent closed the connection without answering",
    )
    assert len(via.requests) == 3
    assert executed(sim, second) == 0


def test_a_dark_device_behind_a_shared_address_fails_as_unreachable(sim, settings):
    settings.AGENT_PUSH_CONCURRENCY = 1
    uuids = add_devices(sim, 3)
    sim.power_off(uuids[1])
    outcomes = push(targets(uuids, sim.simulator.port))
    assert outcomes == {
        1: (DeliveryState.SENT, ""),
        2: (DeliveryState.FAILED, "Unreachable: the agent closed the connection without answering"),
        3: (DeliveryState.SENT, ""),
    }


def test_hung_agents_at_a_shared_address_time_out_and_the_others_are_sent(sim, settings):
    """Hung agents at the address healthy ones use too, more of them than push slots, on
    connections already pooled: each fails after its own time limit, from when its request
    started; the healthy ones behind them are sent as soon as a slot frees."""
    settings.AGENT_PUSH_CONCURRENCY, settings.AGENT_PUSH_TIMEOUT_S = 2, 1.0
    port = sim.simulator.port
    warm = add_devices(sim, 4)
    assert {s for s, _ in push(targets(warm, port)).values()} == {DeliveryState.SENT}
    hung, healthy = add_devices(sim, 3), add_devices(sim, 4)
    for uuid in hung:
        sim.hang(uuid)
    started = time.monotonic()
    outcomes = push(targets(hung + healthy, port, first_pk=100))
    took = time.monotonic() - started

    assert [outcomes[100 + i] for i in range(3)] == [(DeliveryState.FAILED, "No answer within 1 s")] * 3
    assert [outcomes[103 + i][0] for i in range(4)] == [DeliveryState.SENT] * 4
    assert 2.0 <= took < 2.0 + 1.5, took  # two slot-fulls of hung agents, one time limit each
    waits = []
    for uuid in hung:  # each hung request was given up (its connection closed) after about a limit
        events = wait_until(
            lambda uuid=uuid: (
                (e := sim.snapshot(uuid)["events"])
                and any(x["kind"] == "hung_request_abandoned" for x in e)
                and e
            ),
            timeout=3,
            message="the simulator to see the hung request abandoned",
        )
        arrived = [e["at"] for e in events if e["kind"] == "hung_request"]
        abandoned = [e["at"] for e in events if e["kind"] == "hung_request_abandoned"]
        assert len(arrived) == len(abandoned) == 1
        waits.append(abandoned[0] - arrived[0])
    assert all(0.8 <= wait <= 1.5 for wait in waits), waits
    assert all(executed(sim, uuid) == 1 for uuid in healthy)


def test_the_last_push_of_a_batch_to_an_address_closes_its_connection(sim, relay, settings):
    """Devices with an address each leave no idle connection behind; a shared address keeps its
    connections for the next batch but the last one."""
    settings.AGENT_PUSH_CONCURRENCY = 1
    own = [relay() for _ in range(3)]
    shared = relay()
    lone = add_devices(sim, 3)
    together = add_devices(sim, 3)
    batch = [
        targets([uuid], r.port, first_pk=i + 1)[0] for i, (uuid, r) in enumerate(zip(lone, own, strict=True))
    ]
    batch += targets(together, shared.port, first_pk=10)
    assert {s for s, _ in push(batch).values()} == {DeliveryState.SENT}
    for r in own:
        assert [req.headers.get("connection") for req in r.requests] == ["close"]
    assert [req.headers.get("connection") for req in shared.requests] == [None, None, "close"]


async def serve(transports: list | None = None, delay: float = 0.0) -> tuple[web.AppRunner, int]:
    """A bare agent API answering 202 to any POST after `delay`, noting each request's connection."""

    async def accept(request):
        if transports is not None:
            transports.append(request.transport.get_extra_info("peername"))
        await asyncio.sleep(delay)
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/", accept)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


def pool_scenario(steps):
    """Run `steps(post, pool)` against a pool of at most two idle connections."""

    async def scenario():
        async with pushes.PushPool(max_idle=lambda: 2) as pool:

            async def post(port):
                target = pushes.agent_target(f"http://127.0.0.1:{port}")[0]
                data = f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n".encode()
                return (await pool.request(target, data)).status

            return await steps(post, pool)

    return asyncio.run(scenario())


def test_the_pool_keeps_at_most_its_bound_of_idle_connections():
    async def steps(post, pool):
        runner, port = await serve(delay=0.2)
        statuses = await asyncio.gather(*(post(port) for _ in range(5)))  # five connections at once
        idle = pool.idle()
        await runner.cleanup()
        return statuses, idle

    assert pool_scenario(steps) == ([202] * 5, 2)


def test_a_full_pool_closes_the_connection_idle_the_longest_for_the_next_one():
    """Idle connections to an address no longer pushed to do not keep a busy one from pooling."""

    async def steps(post, pool):
        transports = []
        (first, first_port), (second, second_port) = await serve(delay=0.1), await serve(transports)
        await asyncio.gather(post(first_port), post(first_port))  # the pool is full with these two
        for _ in range(3):
            await post(second_port)
        pooled = sorted(address.port for address in pool.idle_addresses())
        await first.cleanup()
        await second.cleanup()
        return len(set(transports)), pooled, first_port, second_port

    connections, pooled, first_port, second_port = pool_scenario(steps)
    assert connections == 1  # the three went over one connection
    assert pooled == sorted([first_port, second_port])


def test_a_connection_idle_longer_than_the_keep_alive_is_closed_and_not_reused():
    async def scenario():
        async with pushes.PushPool(max_idle=lambda: 2, keepalive_s=0.1) as pool:
            runner, port = await serve(transports := [])

            async def post():
                target = pushes.agent_target(f"http://127.0.0.1:{port}")[0]
                data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                return (await pool.request(target, data)).status

            await post()
            await asyncio.sleep(0.3)
            idle_after = pool.idle()
            assert await post() == 202
            await runner.cleanup()
            return idle_after, len(set(transports))

    assert asyncio.run(scenario()) == (0, 2)


def test_an_answer_longer_than_the_pool_takes_fails_the_push(sim):
    """A device answering a push with megabytes is not read into the worker's memory."""

    async def huge(request):
        return web.Response(status=202, body=b"x" * (pushes.MAX_ANSWER + 1))

    async def scenario():
        app = web.Application()
        app.router.add_post("/d/{uuid}/{tail:.*}", huge)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = sim.call(scenario())
    try:
        uuid = secrets.token_hex(16)
        outcome = push(targets([uuid], runner.addresses[0][1]))
        assert outcome == {1: (DeliveryState.FAILED, "Unreachable: the agent's answer is longer than 64 KiB")}
    finally:
        sim.call(runner.cleanup())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"no openssl to make a test certificate: {error}")
    return cert, key


def test_pushes_to_https_agent_addresses_are_verified_and_reuse_their_connection(
    sim, certificate, monkeypatch, settings
):
    """An agent API at an https:// address: the certificate is verified (here against the test's
    own CA) and the connection is kept alive like a plain one."""
    settings.AGENT_PUSH_CONCURRENCY = 1
    cert, key = certificate
    trusted = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(pushes, "tls_context", lambda: trusted)
    uuids = [secrets.token_hex(16) for _ in range(3)]
    seen = []

    async def agent_api(request):
        uuid = request.match_info["uuid"]
        body = await request.read()
        ok = verify_push(
            push_secret_for(uuid), int(request.headers["X-Fleet-Timestamp"]), request.method,
            "/" + request.match_info["tail"], body, request.headers["X-Fleet-Signature"],
        )  # fmt: skip
        seen.append((uuid, id(request.transport), ok))
        return web.json_response({"accepted": True}, status=202)

    async def start():
        app = web.Application()
        app.router.add_post("/d/{uuid}/{tail:.*}", agent_api)
        runner = web.AppRunner(app)
        await runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        return runner

    runner = sim.call(start())
    try:
        port = runner.addresses[0][1]
        batch = [
            {"pk": i + 1, "uuid": uuid, "api_address": f"https://127.0.0.1:{port}/d/{uuid}"}
            for i, uuid in enumerate(uuids)
        ]
        assert set(push(batch).values()) == {(DeliveryState.SENT, "")}
        assert [(uuid, ok) for uuid, _, ok in seen] == [(uuid, True) for uuid in uuids]
        assert len({transport for _, transport, _ in seen}) == 1  # one TLS connection for the three

        monkeypatch.setattr(pushes, "tls_context", ssl.create_default_context)
        untrusted = [{"pk": 9, "uuid": uuids[0], "api_address": f"https://127.0.0.1:{port}/d/{uuids[0]}"}]
        assert push(untrusted)[9] == (
            DeliveryState.FAILED,
            "Unreachable: TLS certificate not trusted (self-signed certificate)",
        )
    finally:
        sim.call(runner.cleanup())


def test_push_secrets_are_the_ones_agents_were_given_at_registration(settings):
    """push_secret_for keys its HMAC once per SECRET_KEY: still salted_hmac's secret, for any key."""
    for secret_key in ("first-secret-key", "ünïcode SECRET_KEY", "first-secret-key"):
        settings.SECRET_KEY = secret_key
        for uuid in ("0" * 32, secrets.token_hex(16)):
            expected = salted_hmac(
                "devices.agent-push", uuid, secret=secret_key, algorithm="sha256"
            ).hexdigest()
            assert push_secret_for(uuid) == expected


def test_a_push_body_is_the_json_of_its_key_params_and_how_long_the_result_may_wait():
    key = engine.delivery_key(123456789012, 987654321)
    for params in ({}, {"version": "5.1.20", "lock_override": True}):
        assert json.loads(engine._action_body(key, engine._body_rest(params))) == {
            "key": key,
            "params": params,
        }
        assert json.loads(engine._action_body(key, engine._body_rest(params, 12))) == {
            "key": key,
            "params": params,
            "report_within_s": 12,
        }


def test_a_large_action_lets_its_results_wait_for_the_devices_reports_up_to_one_interval(settings):
    settings.ACTION_RESULTS_PER_S, settings.AGENT_REPORT_INTERVAL_S = 1000, 20
    # Up to a second's worth of results: at once, as for one device.
    assert [engine.report_window_s("restart", n) for n in (1, 999)] == [0, 0]
    assert [engine.report_window_s("restart", n) for n in (1000, 10_000, 19_999)] == [1, 10, 19]
    assert [engine.report_window_s("purge", n) for n in (20_000, 100_000)] == [20, 20]
    # A reboot or a shutdown reports at once: the device goes dark.
    assert [engine.report_window_s(kind, 100_000) for kind in ("reboot", "shutdown")] == [0, 0]
    settings.ACTION_RESULTS_PER_S = 0  # turned off
    assert engine.report_window_s("restart", 100_000) == 0


def test_a_batch_near_the_end_of_the_fan_out_lets_its_results_wait_no_longer_than_the_rest(settings):
    settings.ACTION_RESULTS_PER_S, settings.AGENT_REPORT_INTERVAL_S = 1000, 20
    window = functools.partial(engine.report_window_s, "restart", 100_000)
    # 40 s in, 60,000 claimed (1,500/s): the other 40,000 take about 27 s more, longer than a report
    # interval, so the results may wait a whole interval.
    assert window(pending=40_000, elapsed_s=40) == 20
    # 10,000 left (about 7 s at that pace): the results may wait that long, not 20 s.
    assert window(pending=10_000, elapsed_s=60) == 6
    # The last batch: at once.
    assert window(pending=0, elapsed_s=66) == 0
    # Nothing to measure a pace on yet (nothing claimed, no time passed), or not every delivery
    # exists yet (pending None): one interval.
    assert window(pending=100_000, elapsed_s=5) == window(pending=500, elapsed_s=0) == window() == 20
    assert engine.report_window_s("reboot", 100_000, pending=0, elapsed_s=60) == 0
    # Nor do a batch's own results come faster than ACTION_RESULTS_PER_S: 3,000 devices, 3 s.
    assert window(batch=3_000, pending=0, elapsed_s=66) == 3


def test_the_address_check_follows_the_setting_for_addresses_seen_before(settings):
    url = f"http://10.1.2.3:48484/d/{secrets.token_hex(16)}"
    assert address_refusal(url, schemes=("http", "https")) == ""
    settings.DEVICE_ALLOWED_NETWORKS = ["192.168.0.0/16"]
    assert "outside the networks" in address_refusal(url.replace("/d/", "/d/x"), schemes=("http", "https"))
    assert address_refusal("https://10.1.2.3:48484/d/x", schemes=("http",)) == "must be an http URL"
    assert address_refusal("http://10.1.2.3:99999/d/x") == "is not a valid URL"


def test_pushes_after_the_push_loop_was_closed_run_on_a_new_one(sim):
    (uuid,) = add_devices(sim, 1)
    assert push(targets([uuid], sim.simulator.port)) == {1: (DeliveryState.SENT, "")}
    closed = pushes._the_loop()
    closed.close()  # what happens at exit
    assert push(targets([uuid], sim.simulator.port, first_pk=2)) == {2: (DeliveryState.SENT, "")}
    assert pushes._the_loop() is not closed and not closed.thread.is_alive()
