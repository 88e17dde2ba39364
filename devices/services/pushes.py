"""The HTTP side of pushes to agents (action pushes and nudges, engine._push_all): the event loop
they run on and the connections they go out on.

Every batch of a process runs on one long-lived uvloop event loop in a thread of its own (`run`),
with one `PushPool` kept on it. Its connections are devices.http1.Connection (asyncio.Protocol and
httptools): a fleet-wide action is one push per device, and aiohttp's client spent about 0.3 ms of
CPU on each (dashboard/bench/push_fanout.py measures it).

- Connections are kept alive and reused per address (scheme, host, port), across batches: many
  devices can share an address, behind a gateway or in the simulator (one port per process). A
  batch's last push to an address closes its connection after the answer (`Connection: close`,
  engine._closes_after), so devices that each have an address of their own leave no idle
  connection behind, as with a connection per push; and the pool keeps at most `max_idle()` idle
  connections (beyond that the one idle the longest is closed), each for at most KEEPALIVE_S.
- A push whose reused connection the peer closed before any byte of the answer is sent once more
  on a new connection. That is the keep-alive race (the agent closed an idle connection while the
  request was on its way, or just before) and it is safe to retry: every push carries an
  idempotency key and the agent acts once per key. A new connection that closes unanswered is not
  retried.
- There is no connection limit and no time limit here: engine._PushSlot bounds the requests in
  flight and starts each push's time limit when its request starts (a cancelled request closes its
  connection). A hung push holds its own connection (and nothing else) until then.
- https:// addresses are verified against the system's CAs (`tls_context`), the certificate's
  IP address against the address pushed to.
"""

import asyncio
import atexit
import contextlib
import functools
import os
import ssl
import threading
from collections import OrderedDict
from typing import NamedTuple
from urllib.parse import SplitResult

import uvloop
from django.conf import settings

from devices.addresses import split_address
from devices.http1 import AnswerTooLarge, Connection, ConnectionClosed, Response

# How long a pooled connection may wait for its next push (during a fan-out the next batch comes
# within milliseconds); how many may wait at once is max_idle().
KEEPALIVE_S = 5.0
# An agent's answer to a push is a line of JSON; one longer than this fails the push.
MAX_ANSWER = 64 * 1024


def max_idle() -> int:
    """One idle connection per push a batch may have in flight."""
    return settings.AGENT_PUSH_CONCURRENCY


@functools.cache
def tls_context() -> ssl.SSLContext:
    """How https:// agent addresses are verified: the system's CAs, host names and IP addresses."""
    return ssl.create_default_context()


class PushError(ConnectionError):
    """A push that got no answer: `reason` says why, for the delivery's outcome."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(error: BaseException) -> str:
    """What an operator reads after "Unreachable: " when a push got no answer."""
    if isinstance(error, AnswerTooLarge):
        return f"the agent's answer is longer than {MAX_ANSWER // 1024} KiB"
    if isinstance(error, ConnectionClosed):
        if str(error).startswith("unreadable answer"):
            return "the agent's answer is not HTTP/1.1"
        if error.nothing_read:
            return "the agent closed the connection without answering"
        return "the agent closed the connection during its answer"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or error.__class__.__name__})"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[0].lower() + error.strerror[1:]
    return error.__class__.__name__


class Address(NamedTuple):
    """Where a connection goes: what picks a pooled one."""

    scheme: str
    host: str
    port: int


class Target(NamedTuple):
    """An agent API base URL, parsed: its address, its Host header and its path prefix."""

    address: Address
    host_header: str
    prefix: str


# Where pushes may go (devices.addresses): an agent API over TLS, or plain on a private network.
AGENT_API_SCHEMES = ("http", "https")


def agent_target(url: str) -> tuple[Target | None, str]:
    """An agent API base URL checked against the addresses the server connects to, and parsed:
    (its target, "") or (None, why the server does not connect there)."""
    scheme, netloc, prefix, refusal = split_address(url, schemes=AGENT_API_SCHEMES)
    if refusal:
        return None, refusal
    return Target(_address(scheme, netloc), netloc, prefix), ""


@functools.lru_cache(maxsize=4096)
def _address(scheme: str, netloc: str) -> Address:
    parts = SplitResult(scheme, netloc, "", "", "")
    return Address(scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80))


class PushPool:
    """Kept-alive connections to agents, per address (see the module docstring); created on the
    running loop, closed with `close()` (or as an async context manager)."""

    def __init__(self, *, max_idle=max_idle, keepalive_s: float = KEEPALIVE_S) -> None:
        self.loop = asyncio.get_running_loop()
        self._max_idle = max_idle
        self._keepalive_s = keepalive_s
        self._idle: dict[Address, list[Connection]] = {}  # the newest last
        self._idle_order: OrderedDict[Connection, Address] = OrderedDict()  # the oldest first
        self._open: set[Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> "PushPool":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def idle(self) -> int:
        return len(self._idle_order)

    def idle_addresses(self) -> list[Address]:
        """The address of each idle connection, the one idle the longest first."""
        return list(self._idle_order.values())

    async def request(self, target: Target, data: bytes) -> Response:
        """Send one request (`data`, whole) to `target`'s address and read its answer. Raises
        PushError when it got none."""
        address = target.address
        connection = self._take(address)
        try:
            if connection is not None:
                try:
                    return await self._exchange(address, connection, data)
                except ConnectionClosed as error:
                    if not error.nothing_read or isinstance(error, AnswerTooLarge):
                        raise
                    # The keep-alive race: once more on a new connection.
            return await self._exchange(address, await self._connect(address), data)
        except (OSError, ssl.SSLError) as error:
            raise PushError(_reason(error)) from error

    async def _exchange(self, address: Address, connection: Connection, data: bytes) -> Response:
        try:
            response, keep_alive = await connection.exchange(data)
        except BaseException:
            connection.close()  # closed by the peer, or an answer may still come: of no further use
            raise
        if keep_alive and not connection.closed:
            connection.used = True
            self._give_back(address, connection)
        else:
            connection.close()
        return response

    async def _connect(self, address: Address) -> Connection:
        tls = tls_context() if address.scheme == "https" else None
        _, connection = await self.loop.create_connection(
            lambda: Connection(self.loop, self._forget, max_body=MAX_ANSWER),
            address.host,
            address.port,
            ssl=tls,
            server_hostname=address.host if tls else None,
        )
        self._open.add(connection)
        connection.lost.add_done_callback(lambda _: self._open.discard(connection))
        return connection

    def _take(self, address: Address) -> Connection | None:
        """The address's connection given back last, if one is idle and not past its keep-alive."""
        idle = self._idle.get(address)
        taken = None
        while idle and taken is None:
            connection = idle.pop()
            del self._idle_order[connection]
            if self.loop.time() - connection.idle_since < self._keepalive_s:
                taken = connection
            else:
                connection.close()
        if idle is not None and not idle:
            del self._idle[address]
        return taken

    def _give_back(self, address: Address, connection: Connection) -> None:
        connection.idle_since = self.loop.time()
        self._idle.setdefault(address, []).append(connection)
        self._idle_order[connection] = address
        while len(self._idle_order) > self._max_idle():
            oldest = next(iter(self._idle_order))
            oldest.close()  # _forget takes it out
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._keepalive_s, self._sweep)

    def _forget(self, connection: Connection) -> None:
        address = self._idle_order.pop(connection, None)
        if address is not None:
            idle = self._idle[address]
            idle.remove(connection)
            if not idle:
                del self._idle[address]

    def _sweep(self) -> None:
        """Close the connections idle for KEEPALIVE_S; again later while any stay idle."""
        self._sweeper = None
        expired = self.loop.time() - self._keepalive_s
        for connection in list(self._idle_order):
            if connection.idle_since > expired:
                break  # the rest were given back later
            connection.close()
        if self._idle_order:
            self._sweeper = self.loop.call_later(self._keepalive_s, self._sweep)

    async def close(self) -> None:
        """Close every connection and wait until they are closed."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        connections = list(self._open)
        for connection in connections:
            connection.close()
        await asyncio.gather(*(connection.lost for connection in connections))


class _PushLoop:
    """The process's push event loop, in a daemon thread, and the pool kept on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = uvloop.new_event_loop()
        self.pool: PushPool | None = None
        self.closed = False
        self.thread = threading.Thread(target=self.loop.run_forever, name="agent-pushes", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def close(self, timeout: float = 2.0) -> None:
        """Close the pooled connections and stop the loop (at exit: no unclosed-session warnings)."""
        if self.pid != os.getpid() or self.closed:
            return
        self.closed = True
        if self.pool is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.pool.close(), self.loop).result(timeout)
            self.pool = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


_push_loop: _PushLoop | None = None
_push_loop_lock = threading.Lock()


def _the_loop() -> _PushLoop:
    global _push_loop
    with _push_loop_lock:
        # A forked child (a prefork Celery worker) has the parent's loop object but not its thread.
        if _push_loop is None or _push_loop.pid != os.getpid() or _push_loop.closed:
            _push_loop = _PushLoop()
        return _push_loop


def run(coro):
    """Run a batch of pushes on the process's push loop (uvloop: the loop, sockets and transports in
    C) and wait for its result. Callable from any thread; batches of several threads share the
    loop and its connection pool."""
    future = asyncio.run_coroutine_threadsafe(coro, _the_loop().loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()  # e.g. a task time limit in the waiting thread: stop the batch's pushes too
        raise


@contextlib.asynccontextmanager
async def pool():
    """The pool of the push loop, when called on it; elsewhere (a test's own loop), one of this
    batch's own, closed at the end."""
    here = _push_loop
    if here is not None and here.pid == os.getpid() and asyncio.get_running_loop() is here.loop:
        if here.pool is None:
            here.pool = PushPool()
        yield here.pool
        return
    async with PushPool() as own:
        yield own
