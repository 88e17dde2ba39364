"""The simulator's port at the byte level (devices.simulator.agent_api): agent-API requests read and
answered on its own protocol, every other request handed to aiohttp from that request on, on one
connection, pipelined or split across writes. Raw sockets, so what a client sends is exactly what
the test says."""

from __future__ import annotations

import asyncio
import json
import time

from devices.keys import sign_push
from tests.devices.test_simulator import action, new_device, online, run, running


def signed_push(device, kind: str, key: str, *, close: bool = False) -> bytes:
    path, body = f"/v1/actions/{kind}", json.dumps({"key": key, "params": {}}).encode()
    ts = int(time.time())
    return (
        f"POST /d/{device.uuid}{path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: {key}\r\nX-Fleet-Timestamp: {ts}\r\n"
        f"X-Fleet-Signature: {sign_push(device.push_secret, ts, 'POST', path, body)}\r\n"
        f"{'Connection: close' + chr(13) + chr(10) if close else ''}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def answers(reader: asyncio.StreamReader, n: int) -> list[tuple[int, dict]]:
    """The next `n` answers on the connection: (status, JSON body)."""
    got = []
    for _ in range(n):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        body = await reader.readexactly(int(headers["content-length"]))
        got.append((int(head[0].split()[1]), json.loads(body)))
    return got


def test_pipelined_pushes_and_a_control_request_on_one_connection_are_answered_in_order():
    async def scenario():
        async with running() as (server, sim, _):
            first, second = new_device(sim), new_device(sim)
            await online(server, sim, first, second)
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
            writer.write(
                signed_push(first, "restart", "7-1")
                + signed_push(second, "restart", "7-2")
                + f"GET /sim/devices/{first.uuid} HTTP/1.1\r\nHost: sim\r\n\r\n".encode()
                + signed_push(first, "restart", "7-1")  # served by aiohttp now: the same answers
            )
            await writer.drain()
            (a, b, control, again) = await answers(reader, 4)
            writer.close()
            assert a == b == (202, {"accepted": True})
            assert control[0] == 200 and control[1]["uuid"] == first.uuid
            assert again[0] == 200 and again[1]["duplicate"] is True
            assert first.actions_executed == second.actions_executed == {"restart": 1}

    run(scenario)


def test_a_push_split_across_writes_is_read_whole():
    async def scenario():
        async with running() as (server, sim, _):
            device = new_device(sim)
            await online(server, sim, device)
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
            request = signed_push(device, "restart", "8-1")
            cuts = [0, 5, 40, len(request) - 3]  # in the request line, the headers, the body
            for start, end in zip(cuts, cuts[1:], strict=False):
                writer.write(request[start:end])
                await writer.drain()
                await asyncio.sleep(0.02)
                assert not reader._buffer  # nothing answered for a part of a request
            writer.write(request[cuts[-1] :])
            assert await answers(reader, 1) == [(202, {"accepted": True})]
            writer.close()

    run(scenario)


def test_connection_close_is_honoured_and_a_body_over_64_kib_is_refused_unread():
    async def scenario():
        async with running() as (server, sim, _):
            device = new_device(sim)
            await online(server, sim, device)
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
            writer.write(signed_push(device, "restart", "9-1", close=True))
            assert await answers(reader, 1) == [(202, {"accepted": True})]
            assert await reader.read() == b""  # closed after the answer

            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
            writer.write(
                f"POST /d/{device.uuid}/v1/actions/restart HTTP/1.1\r\nHost: sim\r\n"
                f"Content-Length: {64 * 1024 + 1}\r\n\r\n".encode()
            )
            ((status, body),) = await answers(reader, 1)
            assert (status, body["error"]) == (413, "too_large")
            assert await reader.read() == b""
            assert device.actions_executed == {"restart": 1}

    run(scenario)


def test_the_agent_api_answers_alike_on_its_own_connections_and_on_aiohttp_s():
    """A wrong signature, an unknown action and a GET, first on a fresh connection (read by the
    simulator's protocol), then after a control request handed the connection to aiohttp."""

    async def scenario():
        async with running() as (server, sim, session):
            device = new_device(sim)
            await online(server, sim, device)
            bad = [
                f"POST /d/{device.uuid}/v1/actions/restart HTTP/1.1\r\nHost: sim\r\nX-Fleet-Timestamp: 1\r\n"
                "X-Fleet-Signature: 00\r\nContent-Length: 2\r\n\r\n{}".encode(),
                f"GET /d/{device.uuid}/v1/nothing HTTP/1.1\r\nHost: sim\r\n\r\n".encode(),
                f"POST /d/{'0' * 32}/v1/actions/restart HTTP/1.1\r\nHost: sim\r\nContent-Length: 0\r\n\r\n".encode(),
            ]
            seen = []
            for lead in (b"", b"GET /sim/stats HTTP/1.1\r\nHost: sim\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
                writer.write(lead + b"".join(bad))
                got = await answers(reader, len(bad) + (1 if lead else 0))
                seen.append(got[-len(bad) :])
                writer.close()
            assert seen[0] == seen[1]
            assert [status for status, _ in seen[0]] == [401, 401, 404]
            assert await action(session, sim, device, "restart", "10-1") == (202, {"accepted": True})

    run(scenario)
