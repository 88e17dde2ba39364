"""The simulator's own HTTP client, its wake-ups and its encoded reports."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from devices.simulator import Simulator
from devices.simulator.client import ServerClient, header_lines
from devices.simulator.model import encode_json
from devices.simulator.wakeups import RESOLUTION_S, Wakeups

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"

# A connection's script: its reader, writer, and its number (0 for the first connection, ...).
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """A TCP server playing `script(server)` on each connection; it keeps the requests it read."""

    def __init__(self, script: Callable[[RawServer], Script]) -> None:
        self.play = script(self)
        self.connections = 0
        self.requests: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number, self.connections = self.connections, self.connections + 1
        try:
            await self.play(reader, writer, number)
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The next request (head and Content-Length body); b"" once the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
        request = head + await reader.readexactly(int(lengths[0].split(b":")[1]) if lengths else 0)
        self.requests.append(request)
        return request


@asynccontextmanager
async def serving(
    script: Callable[[RawServer], Script], *, limit: int = 4, timeout: float = 5.0, depth: int = 16
) -> AsyncIterator[tuple[RawServer, ServerClient]]:
    """A RawServer and a ServerClient for it, closed after."""
    server = RawServer(script)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = ServerClient(f"http://127.0.0.1:{port}/base", limit=limit, timeout=timeout, depth=depth)
    try:
        yield server, client
    finally:
        await client.close()
        listener.close()


def answering(*answers: bytes, then_close: bool = False) -> Callable[[RawServer], Script]:
    """Each connection answers its requests with these answers in turn, then waits for the client
    to close it (or closes it itself)."""

    def script(server: RawServer) -> Script:
        async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
            for answer in answers:
                if not await server.read_request(reader):
                    return
                writer.write(answer)
            if not then_close:
                await reader.read()

        return play

    return script


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


# -- requests and answers ------------------------------------------------------------------------


def test_a_request_goes_out_with_the_given_header_lines_and_its_answer_is_parsed():
    answer = (
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: "7"\r\nContent-Length: 8\r\n\r\n{"a": 1}'
    )

    async def scenario():
        async with serving(answering(answer)) as (server, client):
            headers = header_lines({"Authorization": "Bearer k", "Content-Type": "application/json"})
            response = await client.request("PATCH", "/v1/state", body=b"{}", headers=headers)
        assert server.requests == [
            b"PATCH /base/v1/state HTTP/1.1\r\nHost: " + client.host_header.encode()
            + b"\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        ]  # fmt: skip
        assert (response.status, response.body, response.content_type) == (
            200,
            b'{"a": 1}',
            "application/json",
        )
        assert response.headers["etag"] == '"7"'

    run(scenario)


def test_chunked_answers_and_answers_that_end_with_the_connection_are_read_whole():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    to_the_close = b"HTTP/1.1 200 OK\r\n\r\nall of it"

    async def scenario():
        async with serving(answering(chunked, to_the_close, then_close=True)) as (server, client):
            first = await client.request("GET", "/one")
            second = await client.request("GET", "/two")
            third = await client.request("GET", "/three")  # the server closed the connection: a new one
        assert (first.status, first.body) == (200, b"abcde")
        assert (second.status, second.body) == (200, b"all of it")
        assert third.body == b"abcde"
        assert server.connections == 2

    run(scenario)


def slow_no_content(delay: float):
    """A server script answering every request on a connection with 204, `delay` seconds after it."""

    def script(server: RawServer) -> Script:
        async def play(reader, writer, number):
            while await server.read_request(reader):
                await asyncio.sleep(delay)
                writer.write(NO_CONTENT)

        return play

    return script


def echoing_paths(delay: float = 0.0):
    """A server script answering each request with its path as the body, `delay` seconds after it,
    in order; it keeps what each of its reads got (`server.reads`: connection number, bytes)."""

    def script(server: RawServer) -> Script:
        server.reads = []

        async def play(reader, writer, number):
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                server.reads.append((number, data))
                for request in data.split(b"\r\n\r\n")[:-1]:
                    server.requests.append(request)
                    await asyncio.sleep(delay)
                    path = request.split(b" ")[1]
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))

        return play

    return script


def test_requests_that_leave_together_go_on_one_connection_in_one_write_and_get_their_own_answers():
    async def scenario():
        async with serving(echoing_paths(0.01), limit=8, depth=4) as (server, client):
            paths = [f"/{i}" for i in range(6)]
            answers = await asyncio.gather(*(client.request("GET", path) for path in paths))
            assert [answer.body.decode() for answer in answers] == [f"/base{path}" for path in paths]
            # Four on the first connection (its room), in one write; the other two on a second one.
            assert [(number, data.count(b"GET ")) for number, data in server.reads] == [(0, 4), (1, 2)]
            await client.request("GET", "/again")
            assert server.connections == 2

    run(scenario)


def test_no_more_requests_are_in_flight_than_the_connections_have_room_for():
    async def scenario():
        unanswered: list[int] = []  # requests read and not answered, at each read

        def script(server: RawServer) -> Script:
            async def play(reader, writer, number):
                read = answered = 0
                pending = b""
                while data := await reader.read(65536):
                    pending += data
                    *requests, pending = pending.split(b"\r\n\r\n")
                    read += len(requests)
                    unanswered.append(read - answered)
                    await asyncio.sleep(0.02)  # more may come meanwhile, if the client sends them
                    writer.write(NO_CONTENT * len(requests))
                    answered += len(requests)

            return play

        async with serving(script, limit=2, depth=2) as (server, client):
            statuses = await asyncio.gather(*(client.request("GET", f"/{i}") for i in range(7)))
            assert [r.status for r in statuses] == [204] * 7
            assert server.connections == 1 and max(unanswered) == 2

    run(scenario)


def test_requests_behind_an_answer_the_server_hung_up_after_are_retried_once_on_a_new_connection():
    async def scenario():
        def script(server: RawServer) -> Script:
            async def play(reader, writer, number):
                data = await reader.read(65536)
                server.requests.extend(data.split(b"\r\n\r\n")[:-1])
                if number == 0:  # the first answered, the others dropped with the connection
                    writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    return
                writer.write(NO_CONTENT * data.count(b"GET "))
                await reader.read()

            return play

        async with serving(script) as (server, client):
            answers = await asyncio.gather(*(client.request("GET", f"/{i}") for i in range(3)))
            assert [answer.status for answer in answers] == [204, 204, 204]
            assert [r.split(b" ")[1] for r in server.requests] == [
                b"/base/0", b"/base/1", b"/base/2", b"/base/1", b"/base/2"
            ]  # fmt: skip
            assert server.connections == 2

    run(scenario)


def test_a_request_cancelled_while_waiting_for_a_slot_leaves_the_slots_to_the_others():
    async def scenario():
        async with serving(slow_no_content(0.1), limit=1, depth=1) as (server, client):
            first = asyncio.ensure_future(client.request("GET", "/first"))
            waiting = asyncio.ensure_future(client.request("GET", "/waiting"))
            last = asyncio.ensure_future(client.request("GET", "/last"))
            await asyncio.sleep(0.02)
            waiting.cancel()
            assert (await first).status == 204 and (await last).status == 204
            assert waiting.cancelled()
            assert [r.split(b" ")[1] for r in server.requests] == [b"/base/first", b"/base/last"]

    run(scenario)


def test_a_request_carrying_a_result_takes_the_next_free_slot_before_the_heartbeats_waiting():
    async def scenario():
        async with serving(slow_no_content(0.05), limit=1, depth=1) as (server, client):
            busy = asyncio.ensure_future(client.request("PATCH", "/busy", body=b"{}"))
            await asyncio.sleep(0)
            heartbeats = [
                asyncio.ensure_future(client.request("PATCH", f"/hb{i}", body=b"{}")) for i in range(3)
            ]
            await asyncio.sleep(0)
            result = asyncio.ensure_future(client.request("PATCH", "/result", body=b"{}", first=True))
            answers = await asyncio.gather(busy, *heartbeats, result)
            assert [answer.status for answer in answers] == [204] * 5
            assert [r.split(b" ")[1] for r in server.requests] == [
                b"/base/busy", b"/base/result", b"/base/hb0", b"/base/hb1", b"/base/hb2"
            ]  # fmt: skip

    run(scenario)


# -- timeouts and closed connections -------------------------------------------------------------


def test_a_request_the_server_never_answers_times_out_and_its_connection_is_closed():
    async def scenario():
        closed_by_client = asyncio.Event()

        def script(server: RawServer) -> Script:
            async def play(reader, writer, number):
                await server.read_request(reader)
                if number == 0:  # hang, until the client gives up on the connection
                    await reader.read()
                    closed_by_client.set()
                    return
                writer.write(NO_CONTENT)
                await reader.read()

            return play

        async with serving(script, timeout=0.6) as (server, client):
            started = time.monotonic()
            try:
                await asyncio.wait_for(client.request("GET", "/hangs"), 3)  # not forever, if broken
            except TimeoutError:
                waited = time.monotonic() - started
            else:
                raise AssertionError("no timeout")
            assert 0.6 <= waited < 0.6 * 1.5, waited  # checked every timeout / 20
            await asyncio.wait_for(closed_by_client.wait(), 1)
            assert (await client.request("GET", "/answers")).status == 204  # on a new connection
            assert server.connections == 2

    run(scenario)


def test_a_kept_alive_connection_the_server_closed_while_idle_is_not_lent_again():
    async def scenario():
        async with serving(answering(NO_CONTENT, then_close=True)) as (server, client):
            assert (await client.request("GET", "/one")).status == 204
            await asyncio.sleep(0.05)  # the server closed it meanwhile
            assert client._ready == []
            assert (await client.request("GET", "/two")).status == 204
            assert server.connections == 2

    run(scenario)


def test_a_kept_alive_connection_the_server_closes_on_a_request_is_retried_once_on_a_new_one():
    async def scenario():
        def script(server: RawServer) -> Script:
            async def play(reader, writer, number):
                await server.read_request(reader)
                writer.write(NO_CONTENT)
                if number == 0:  # the next request on it comes as the server hangs up: unanswered
                    await server.read_request(reader)
                    return
                await reader.read()

            return play

        async with serving(script) as (server, client):
            assert (await client.request("GET", "/one")).status == 204
            assert (await client.request("GET", "/two")).status == 204
            assert server.connections == 2
            assert [r.split(b" ")[1] for r in server.requests] == [b"/base/one", b"/base/two", b"/base/two"]

    run(scenario)


def test_a_new_connection_closed_without_an_answer_is_a_connection_error():
    async def scenario():
        def script(server: RawServer) -> Script:
            async def play(reader, writer, number):
                await server.read_request(reader)  # and hang up

            return play

        async with serving(script) as (server, client):
            try:
                await client.request("GET", "/one")
            except ConnectionError as error:
                assert "closed" in str(error)
            else:
                raise AssertionError("no error")
            assert server.connections == 1  # not retried: only a kept-alive connection may have gone stale

    run(scenario)


# -- wake-ups ------------------------------------------------------------------------------------


def test_sleepers_wake_in_order_never_early_and_at_most_a_tick_late():
    async def scenario():
        loop = asyncio.get_running_loop()
        wakeups = Wakeups()
        start = loop.time()
        wakeups.sleep_until(start + 0.1).cancel()  # its task was cancelled: dropped at its tick
        delays = [0.3, 0.05, 0.2, 0.05, 0.0, 0.11]
        woke: dict[int, float] = {}

        async def sleeper(index: int) -> None:
            await wakeups.sleep_until(start + delays[index])
            woke[index] = loop.time() - start

        await asyncio.gather(*(sleeper(i) for i in range(len(delays))))
        assert list(woke) == [4, 1, 3, 5, 2, 0]  # equal times in the order they slept
        for index, delay in enumerate(delays):
            assert delay <= woke[index] < delay + RESOLUTION_S + 0.05, (index, woke[index])
        wakeups.close()

    run(scenario)


def test_a_sleeper_due_before_the_armed_tick_is_not_kept_waiting_for_it():
    async def scenario():
        loop = asyncio.get_running_loop()
        wakeups = Wakeups()
        late = wakeups.sleep_until(loop.time() + 5)
        started = loop.time()
        await wakeups.sleep_until(started + 0.05)
        assert loop.time() - started < 1
        assert not late.done()
        wakeups.close()

    run(scenario)


# -- the encoded report --------------------------------------------------------------------------


def test_the_report_body_is_the_encoded_payload_whatever_changed_since_the_last_one():
    sim = Simulator("http://127.0.0.1:1", seed=5)
    sim.add_random_devices(60, {"raspberrypi3": "key"})
    rng = random.Random(5)
    changes = [
        lambda d: d.write_some_data(rng),
        lambda d: setattr(d, "status", rng.choice(["idle", "updating", "rebooting"])),
        lambda d: setattr(d.services[0], "holds_update_lock", not d.services[0].holds_update_lock),
        lambda d: setattr(d.services[-1], "status", rng.choice(["running", "stopping", "exited"])),
        lambda d: d.recreate_containers(rng),
        lambda d: d.clear_persistent_data(),
        lambda d: d.upgrade_os("5.1.20"),
        lambda d: d.move_to_fleet(rng.randint(1, 3), "other"),
        lambda d: d.use_release("c0ffee" * 6, [{"name": "main"}, {"name": "extra"}], rng),
        lambda d: setattr(d, "os_update_progress", rng.choice([None, 20, 60])),
        lambda d: setattr(d, "blocked_update", rng.choice(["", 'host OS 5.1.20: "uptime_s":0 held'])),
        lambda d: setattr(d, "local_mode", not d.local_mode),
        lambda d: setattr(d, "release", rng.choice(["", "abc123"])),
        lambda d: setattr(d, "booted_at", d.booted_at - rng.randint(1, 10_000)),
    ]
    for _ in range(30):
        for device in sim.devices.values():
            for url in ("http://10.0.0.1:48484", "http://10.0.0.2:48484"):
                assert device.report_body(url) == encode_json(device.report_payload(url)).encode()
            rng.choice(changes)(device)


def test_a_report_after_an_accepted_one_says_only_what_changed_and_adds_up_to_the_whole_state():
    """What the server holds, every report merged over the previous ones as PATCH merges them, is
    the device's whole state whatever changed in between; nothing changed is a heartbeat `{}`."""
    sim = Simulator("http://127.0.0.1:1", seed=6)
    sim.add_random_devices(40, {"raspberrypi3": "key"})
    rng = random.Random(6)
    changes = [
        lambda d: None,  # nothing: a heartbeat
        lambda d: None,
        lambda d: d.write_some_data(rng),
        lambda d: setattr(d, "status", rng.choice(["idle", "updating", "rebooting"])),
        lambda d: setattr(d.services[-1], "status", rng.choice(["running", "stopping", "exited"])),
        lambda d: d.recreate_containers(rng),
        lambda d: d.clear_persistent_data(),
        lambda d: d.upgrade_os("5.1.20"),
        lambda d: setattr(d, "local_mode", not d.local_mode),
        lambda d: setattr(d, "booted_at", d.booted_at - rng.randint(10, 10_000)),  # it rebooted
    ]
    url = "http://10.0.0.1:48484"
    kinds = Counter()
    for device in sim.devices.values():
        body, accepted = device.report_update(url, None)
        assert body == device.report_body(url)
        held = json.loads(body)
        booted = time.time() - held["uptime_s"]  # what the server makes of the uptime
        for _ in range(25):
            rng.choice(changes)(device)
            body, reported = device.report_update(url, accepted)
            update = json.loads(body)
            kinds["heartbeat" if update == {} else "partial" if len(update) < len(held) else "full"] += 1
            if len(update) < len(held):
                assert set(update) <= {"volumes", "uptime_s"}, update
            held |= update
            expected = device.report_payload(url)
            assert {k: v for k, v in held.items() if k != "uptime_s"} == {
                k: v for k, v in expected.items() if k != "uptime_s"
            }
            if "uptime_s" in update:
                booted = time.time() - update["uptime_s"]
            assert abs(booted - device.booted_at) <= 2  # a reboot is reported, the same boot is not
            accepted = reported
    assert kinds["heartbeat"] and kinds["partial"] and kinds["full"], kinds
