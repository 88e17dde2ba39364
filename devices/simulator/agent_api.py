"""Every simulated device's agent API (`/d/<uuid>/...`): signed pushes from the server.

A fleet-wide action is a push to each device, and aiohttp's server spent about 0.2 ms of CPU on
each (dashboard/bench/push_fanout.py), as much as the dashboard's whole push. So the simulator's
port is served by `PortProtocol` on `asyncio.Protocol`: requests for `/d/` are answered there, and
a connection is handed to aiohttp's server (devices.simulator.server), from its first other
request on (the device's port-80 service under `/w/`, `/sim/` control). On a real device the agent
API is a port of its own; here it shares the simulator's one port, told apart by the path.

The answers are those of an agent (PROTOCOL.md, "Agent API"): 401 for a push whose signature or
timestamp is wrong, 202 for a new action, 200 for a repeated key, 409 while a service holds the
update lock; a powered-off device drops the connection, a hung one never answers until unhung.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from devices.keys import verify_push

from .model import ACTION_KINDS

if TYPE_CHECKING:
    from .agent import Agent
    from .core import Simulator

MAX_BODY = 64 * 1024
CLOCK_SKEW_S = 300
MAX_KEY_LENGTH = 200
# The longest a push may let its result wait for a report (PROTOCOL.md, report_within_s).
MAX_REPORT_WITHIN_S = 3600
MAX_HEAD = 8 * 1024  # request line and headers
PREFIX = b"/d/"
ACTION_PATH = re.compile(r"^/v1/actions/([^/]+)$")

ACCEPTED = {"accepted": True}


def _answer(status: int, payload: dict[str, Any], *, keep_alive: bool) -> bytes:
    body = json.dumps(payload).encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n%s\r\n%s"
        % (
            status,
            HTTPStatus(status).phrase.encode(),
            len(body),
            b"" if keep_alive else b"Connection: close\r\n",
            body,
        )
    )


# The answer to almost every push, made once.
_ACCEPTED = {keep_alive: _answer(202, ACCEPTED, keep_alive=keep_alive) for keep_alive in (False, True)}


def error(status: int, code: str, detail: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": code, "detail": detail}


class PortProtocol(asyncio.Protocol):
    """One connection to the simulator's port. Requests for `/d/` are read and answered here; at
    the first other one (another path, a chunked body, anything unusual) the connection is handed,
    from that request on, to `fallback` (aiohttp's server). The framing is read here rather than
    by a parser so that it is known where that request starts."""

    def __init__(
        self, sim: Simulator, fallback: Callable[[], asyncio.Protocol], connections: set[PortProtocol]
    ) -> None:
        self.sim = sim
        self.fallback = fallback
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self._buffer = b""  # from the start of the request not yet answered
        self._lost = False
        self._done = False  # no more requests are read: hung, or closing

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._buffer += data
        while self._buffer and not self._done:
            if not self._next_request():
                return

    def _next_request(self) -> bool:
        """Read and answer the request at the start of the buffer; False if it is not whole yet."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._hand_over()  # let aiohttp say what is wrong with it
            return False
        lines = buffer[:end].split(b"\r\n")
        request_line = lines[0].split(b" ")
        if len(request_line) != 3 or not request_line[1].startswith(PREFIX):
            self._hand_over()
            return False
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                self._hand_over()
                return False
            headers[name.strip().lower()] = value.strip()
        if b"transfer-encoding" in headers or b"expect" in headers or b"upgrade" in headers:
            self._hand_over()
            return False
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = -1
        version, connection = request_line[2], headers.get(b"connection", b"").lower()
        keep_alive = connection != b"close" if version == b"HTTP/1.1" else connection == b"keep-alive"
        if not 0 <= length <= MAX_BODY:
            self._done = True  # the body is not read: nothing after it could be either
            status, payload = (
                error(413, "too_large", f"The body is larger than {MAX_BODY // 1024} KiB.")
                if length > MAX_BODY
                else error(400, "invalid", "Content-Length is not a number.")
            )
            self._write(_answer(status, payload, keep_alive=False), keep_alive=False)
            return False
        start = end + 4
        if len(buffer) < start + length:
            return False
        body, self._buffer = buffer[start : start + length], buffer[start + length :]
        method = request_line[0].decode("latin-1")
        full_path = request_line[1].partition(b"?")[0].decode("latin-1")
        answer = respond(
            self.sim, method, full_path, lambda name: headers.get(name, b"").decode("latin-1"), body
        )
        if answer is NoAnswer.DROP:
            self.close()
            return False
        if answer is NoAnswer.HANG:
            self._done = True
            asyncio.get_running_loop().create_task(self._hang(full_path))
            return False
        status, payload = answer
        if status == 202 and payload is ACCEPTED:
            self._write(_ACCEPTED[keep_alive], keep_alive=keep_alive)
        else:
            self._write(_answer(status, payload, keep_alive=keep_alive), keep_alive=keep_alive)
        return True

    def _hand_over(self) -> None:
        """From now on the connection is aiohttp's, starting with the request at the buffer's start."""
        assert self.transport is not None
        self._done = True
        self.connections.discard(self)
        protocol = self.fallback()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(self._buffer)
        self._buffer = b""

    def close(self) -> None:
        self._done = True
        if self.transport is not None:
            self.transport.close()

    def _write(self, answer: bytes, *, keep_alive: bool) -> None:
        if self.transport is None or self._lost:
            return
        self.transport.write(answer)
        if not keep_alive:
            self.close()

    async def _hang(self, full_path: str) -> None:
        if await hang(
            self.sim, full_path, lambda: self._lost or self.transport is None or self.transport.is_closing()
        ):
            self.close()


# -- the agent API, whoever reads the request ---------------------------------------------------


class NoAnswer(enum.Enum):
    DROP = "the device is off: close the connection without a byte"
    HANG = "the agent hangs: answer nothing until unhung (`hang`), then close the connection"


def respond(
    sim: Simulator, method: str, full_path: str, header: Callable[[bytes], str], body: bytes
) -> tuple[int, dict[str, Any]] | NoAnswer:
    """The status and JSON answer of the agent API to a request for `full_path` (`/d/<uuid>/...`),
    or what to do instead. `header(lowercase name)` gives a request header ("" when absent)."""
    metrics = sim.metrics
    uuid, _, rest = full_path[len(PREFIX) :].partition("/")
    agent = sim.agents.get(uuid)
    if agent is None:
        return error(404, "not_found", "No such device.")
    dev = agent.device
    if not dev.is_up:
        metrics.count("dropped_connections")
        return NoAnswer.DROP
    if not dev.has_agent_api:
        # Agents older than 1.1.0 listen on nothing; the simulator's server answers for them.
        return error(404, "not_found", "This agent has no API (agent older than 1.1.0).")
    if dev.hung:
        return NoAnswer.HANG
    path = "/" + rest
    if not _signed(header, dev.push_secret or "", method, path, body):
        metrics.count("pushes_rejected")
        return error(401, "invalid_signature", "Missing or wrong X-Fleet-Signature or X-Fleet-Timestamp.")

    if path == "/v1/update" and method == "POST":
        metrics.count("nudges")
        agent.spawn(agent.poll())
        return 202, ACCEPTED
    match = ACTION_PATH.match(path)
    if match is None:
        return error(404, "not_found", f"No agent API at {path}.")
    if method != "POST":
        return error(405, "method_not_allowed", "Actions are POSTed.")
    kind = match.group(1)
    if kind not in ACTION_KINDS:
        return error(400, "unknown_action", f"Unknown action {kind!r}; one of {', '.join(ACTION_KINDS)}.")
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return error(400, "invalid", "The body is not JSON.")
    if not isinstance(payload, dict) or not isinstance(payload.get("params", {}), dict):
        return error(400, "invalid", 'The body must be {"key": ..., "params": {}}.')
    header_key = header(b"idempotency-key")
    key = header_key or payload.get("key") or ""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        return error(400, "invalid", "An idempotency key is required.")
    if header_key and payload.get("key") not in (None, header_key):
        return error(400, "invalid", "The Idempotency-Key header and the body's key differ.")
    within = payload.get("report_within_s", 0)
    if (
        isinstance(within, bool)
        or not isinstance(within, int | float)
        or not 0 <= within <= MAX_REPORT_WITHIN_S
    ):
        return error(400, "invalid", f"report_within_s must be a number of seconds, 0-{MAX_REPORT_WITHIN_S}.")
    status, answer = agent.accept_action(kind, key, float(within))
    return status, (ACCEPTED if answer == ACCEPTED else answer)


def _signed(header: Callable[[bytes], str], secret: str, method: str, path: str, body: bytes) -> bool:
    try:
        timestamp = int(header(b"x-fleet-timestamp"))
    except ValueError:
        return False
    signature = header(b"x-fleet-signature")
    if not secret or not signature or abs(time.time() - timestamp) > CLOCK_SKEW_S:
        return False
    return verify_push(secret, timestamp, method, path, body, signature)


async def hang(sim: Simulator, full_path: str, gone: Callable[[], bool]) -> bool:
    """Wait while the device of `full_path` hangs: True once unhung (then drop the connection),
    False when the client gave up first (`gone()`: it closed the connection). The device's events
    say when the request came and when the client gave up, so tests can see how long a push
    waited."""
    agent: Agent = sim.agents[full_path[len(PREFIX) :].partition("/")[0]]
    sim.metrics.count("hung_requests")
    agent.device.log_event("hung_request", full_path)
    while not agent.unhung.is_set():
        if gone():
            agent.device.log_event("hung_request_abandoned", full_path)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(agent.unhung.wait(), 0.05)
    return True
