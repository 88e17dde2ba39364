"""The simulator's HTTP/1.1 client to the server: keep-alive connections shared by all its devices.

100,000 devices reporting every 20 s are 5,000 requests a second from a few simulator processes on
the same two cores as the server, so every microsecond the client spends is taken from the server
it is meant to load. Each connection is a devices.http1.Connection (asyncio.Protocol and httptools,
not aiohttp's client at about 0.3 ms of CPU a request). Time limits are not an `asyncio.timeout()`
per request (a timer armed, rescheduled and cancelled each time) but one sweep over the
connections now and then, which fails the future of a request past its deadline. The request is
written in one buffer whose header lines the caller encodes once (see `header_lines`).

Requests are pipelined: those that leave in one turn of the event loop (the devices woken by one
tick of devices.simulator.wakeups) go on one connection, in one write, up to `depth` in flight on
it, and the server answers them in one write too (devices.agent_server): one system call each way
instead of one per request, on both sides.

It speaks plain HTTP/1.1 over TCP (Content-Length or chunked bodies, or a body up to the close), as
any agent would.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

from devices.http1 import Connection, Response

BODY_METHODS = ("POST", "PUT", "PATCH")
# How often a request's time limit is checked, per limit: a 10 s one times out within 10.5 s.
SWEEPS_PER_TIMEOUT = 20
# Requests in flight on one connection at most: half of what the agent API server reads ahead on a
# connection before it waits (devices.agent_server.MAX_QUEUED).
DEPTH = 16


def header_lines(headers: Mapping[str, str]) -> bytes:
    """Header lines as `ServerClient.request` sends them. A device's User-Agent and Authorization
    change only with its agent version or key, so its agent encodes them once, not per request."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")


class ServerClient:
    """At most `limit` requests in flight to one server, up to `depth` of them on one connection.

    A request goes on the connection that took one last, while that one has room: requests that
    leave together share a connection and its write. Time limits are checked by one timer for the
    whole client, every `timeout / SWEEPS_PER_TIMEOUT` seconds, over the connections: an event-loop
    timer per request (armed, then cancelled) cost more than the rest of the client's work on it. A
    request times out that much late at most; the requests behind it on its connection with it.
    """

    def __init__(self, base_url: str, *, limit: int, timeout: float, depth: int = DEPTH) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError(f"the simulator speaks plain HTTP to the server, not {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.host_header = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.depth = depth
        self.loop = asyncio.get_running_loop()
        # Slots for requests in flight (the server's backlog, when it falls behind, is bounded by
        # them): free ones, and requests waiting in line.
        self._free_slots = limit
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._first: deque[asyncio.Future[None]] = deque()  # waiting too, served before `_waiting`
        # Connections with room for another request (`pooled`), the one that took a request last at
        # the end; a full one leaves the list until one of its answers comes.
        self._ready: list[Connection] = []
        self._connections: set[Connection] = set()  # open or opening
        # Request line and Host header by (method, path): a simulator calls only a handful of paths.
        self._starts: dict[tuple[str, str], bytes] = {}
        self._sweeper = self.loop.call_later(timeout / SWEEPS_PER_TIMEOUT, self._sweep)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: bytes = b"",
        first: bool = False,
    ) -> Response:
        """One request: `headers` are encoded header lines (`header_lines`); the client adds Host and
        Content-Length. Waiting for a free slot is not limited; the exchange itself, connecting
        included, is limited to `timeout` seconds (TimeoutError). A request `first` in line (one
        carrying an action's result) takes the next free slot before every other one waiting: the
        devices of a real fleet each have their own connection, and one device's result never
        waits behind thousands of other devices' heartbeats as it would in this shared line."""
        start = self._starts.get((method, path))
        if start is None:
            start = f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n".encode("latin-1")
            self._starts[(method, path)] = start
        if body is not None or method in BODY_METHODS:
            body = body or b""
            data = b"%s%sContent-Length: %d\r\n\r\n%s" % (start, headers, len(body), body)
        else:
            data = b"%s%s\r\n" % (start, headers)
        if self._free_slots:
            self._free_slots -= 1
        else:
            await self._wait_for_slot(self._first if first else self._waiting)
        try:
            deadline = self.loop.time() + self.timeout
            for attempt in (1, 2):
                connection = self._lend(deadline)
                # Not its connection's first request: the server may have closed it before reading it.
                reused = connection.used or connection.in_flight > 0
                try:
                    response, keep_alive = await connection.exchange(data, deadline)
                except ConnectionError as error:
                    connection.close()
                    # The keep-alive race, or a request behind one the server hung up after: once
                    # more on a new connection.
                    if reused and attempt == 1 and getattr(error, "nothing_read", False):
                        continue
                    raise ConnectionError(str(error) or error.__class__.__name__) from error
                except BaseException:
                    connection.close()  # an answer may still come: the connection cannot serve another
                    raise
                if not keep_alive:
                    connection.close()
                elif not connection.closed and not connection.pooled and connection.in_flight < self.depth:
                    connection.pooled = True
                    self._ready.append(connection)
                return response
            raise AssertionError("unreachable")
        finally:
            self._release_slot()

    def _lend(self, deadline: float) -> Connection:
        """The connection for one more request: the last that took one, if it has room, else a new
        one (connecting; the request leaves once it is connected)."""
        if self._ready:
            connection = self._ready[-1]
            if connection.in_flight + 1 >= self.depth:  # full with this one
                self._ready.pop()
                connection.pooled = False
            return connection
        connection = Connection(self.loop, self._forget)
        self._connections.add(connection)
        if self.depth > 1:
            connection.pooled = True
            self._ready.append(connection)
        self.loop.create_task(self._connect(connection, deadline))
        return connection

    async def _connect(self, connection: Connection, deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                await self.loop.create_connection(lambda: connection, self.host, self.port)
        except (OSError, TimeoutError) as error:
            failure = error
            connection.close()
            self._connections.discard(connection)
            connection.fail(lambda: _copy(failure))
            return
        except BaseException:
            connection.close()
            self._connections.discard(connection)
            raise
        connection.lost.add_done_callback(lambda _: self._connections.discard(connection))

    async def _wait_for_slot(self, line: deque[asyncio.Future[None]]) -> None:
        """Wait in `line`: a request that ends hands its slot to the first one waiting."""
        waiter = self.loop.create_future()
        line.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed the slot just as it was cancelled: pass it on
            raise

    def _release_slot(self) -> None:
        for line in (self._first, self._waiting):
            while line:
                waiter = line.popleft()
                if not waiter.done():  # not cancelled meanwhile
                    waiter.set_result(None)
                    return
        self._free_slots += 1

    def _forget(self, connection: Connection) -> None:
        """Never lend `connection` again (it is closed or closing)."""
        if connection.pooled:
            connection.pooled = False
            self._ready.remove(connection)

    def _sweep(self) -> None:
        now = self.loop.time()
        for connection in list(self._connections):
            connection.time_out(now)
        self._sweeper = self.loop.call_later(self.timeout / SWEEPS_PER_TIMEOUT, self._sweep)

    async def close(self) -> None:
        """Close every connection and wait until they are closed."""
        self._sweeper.cancel()
        connections = list(self._connections)
        for connection in connections:
            connection.close()
        await asyncio.gather(*(connection.lost for connection in connections if connection.transport))


def _copy(error: BaseException) -> BaseException:
    """An exception like `error`, for each request that failed with it (each raises its own)."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy
