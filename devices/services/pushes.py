"""The HTTP side of pushes to agents (action pushes and nudges, engine._push_all): the event loop
they run on and the clients they go out with.

Every batch of a process runs on one long-lived uvloop event loop in a thread of its own (`run`),
with one `PushClients` kept on it:

- `pooled` keeps connections alive and reuses them per address (scheme, host, port), across
  batches: many devices can share an address, behind a gateway or in the simulator (one port per
  process). A batch's last push to an address closes its connection after the answer
  (`Connection: close`, engine._closes_after), so devices that each have an address of their own
  leave no idle connection behind, as with a connection per push; and the pool keeps at most
  MAX_IDLE idle connections, each for at most KEEPALIVE_S.
- `fresh` opens a new connection per request: for the one retry of a push whose reused connection
  the peer closed before any byte of the answer (`StaleConnectionError`). That is the keep-alive
  race (the agent closed an idle connection while the request was on its way, or just before) and
  it is safe to retry: every push carries an idempotency key and the agent acts once per key.
  aiohttp retries such a request itself only for idempotent methods; pushes are POSTs.

Neither has a connection limit or a session-wide timeout: aiohttp's `total` timeout counts the
wait for a free pooled connection, so with a connector limit a batch with many hung agents would
fail healthy ones that were never contacted. engine._PushSlot bounds the requests in flight
instead, and starts each push's time limit when its request starts. A hung push holds its own
connection (and nothing else) until its time limit closes it.
"""

import asyncio
import atexit
import contextlib
import functools
import os
import threading
from collections.abc import Callable

import aiohttp
import uvloop
from aiohttp.client_proto import ResponseHandler
from django.conf import settings

# How long a pooled connection may wait for its next push (during a fan-out the next batch comes
# within milliseconds); how many may wait at once is max_idle().
KEEPALIVE_S = 5.0


def max_idle() -> int:
    """One idle connection per push a batch may have in flight."""
    return settings.AGENT_PUSH_CONCURRENCY


class StaleConnectionError(aiohttp.ServerDisconnectedError):
    """A reused connection closed (or reset) by the peer before any byte of this request's answer."""


class _PushProtocol(ResponseHandler):
    """aiohttp's client protocol, which also knows whether its connection carried a request before
    this one and whether any byte of this one's answer has arrived: a close before that answer, on
    a reused connection, is raised as StaleConnectionError instead of ServerDisconnectedError or
    ClientOSError (the peer's reset, or a failed write)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._requests = 0
        self._answered = False

    def set_response_params(self, **kwargs) -> None:
        # aiohttp calls this once per request on the connection, just before writing it.
        self._requests += 1
        self._answered = False
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        if data:
            self._answered = True
        super().data_received(data)

    def set_exception(self, exc: BaseException, *args) -> None:
        if (
            self._requests > 1
            and not self._answered
            and isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
            and not isinstance(exc, StaleConnectionError)
        ):
            stale = StaleConnectionError(f"reused connection closed before any answer: {exc}")
            stale.__cause__ = exc
            exc = stale
        super().set_exception(exc, *args)


class _PushConnector(aiohttp.TCPConnector):
    """A TCPConnector whose connections use _PushProtocol, and which pools at most `max_idle()`
    idle connections: beyond that, the one idle the longest is closed. Both through aiohttp
    internals, not public hooks: the tests of the retry and of the bound fail if a new aiohttp
    stops honouring them."""

    def __init__(self, *, max_idle: Callable[[], int], **kwargs) -> None:
        super().__init__(**kwargs)
        self._max_idle = max_idle
        self._factory = functools.partial(_PushProtocol, loop=self._loop)

    def idle(self) -> int:
        return sum(map(len, self._conns.values()))

    def _release(self, key, protocol, *, should_close: bool = False) -> None:
        super()._release(key, protocol, should_close=should_close)
        for _ in range(self.idle() - self._max_idle()):
            # Each address's idle connections are oldest first: the oldest of all heads one.
            oldest = min(self._conns, key=lambda k: self._conns[k][0][1])
            idle, _ = self._conns[oldest].popleft()
            if not self._conns[oldest]:
                del self._conns[oldest]
            idle.close()


def _session(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


class PushClients:
    """`pooled` and `fresh` (see the module docstring), created on the running loop; an async
    context manager that closes both."""

    def __init__(self) -> None:
        self.pooled = _session(_PushConnector(limit=0, keepalive_timeout=KEEPALIVE_S, max_idle=max_idle))
        self.fresh = _session(aiohttp.TCPConnector(limit=0, force_close=True))

    async def __aenter__(self) -> "PushClients":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.gather(self.pooled.close(), self.fresh.close())


def origin(url: str) -> str:
    """The part of an address that picks a pooled connection: scheme and host[:port]."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.partition('/')[0]}"


class _PushLoop:
    """The process's push event loop, in a daemon thread, and the clients kept on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = uvloop.new_event_loop()
        self.clients: PushClients | None = None
        self.closed = False
        self.thread = threading.Thread(target=self.loop.run_forever, name="agent-pushes", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def close(self, timeout: float = 2.0) -> None:
        """Close the pooled connections and stop the loop (at exit: no unclosed-session warnings)."""
        if self.pid != os.getpid() or self.closed:
            return
        self.closed = True
        if self.clients is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.clients.close(), self.loop).result(timeout)
            self.clients = None
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
async def clients():
    """The clients of the push loop, when called on it; elsewhere (a test's own loop), a pair of
    this batch's own, closed at the end."""
    here = _push_loop
    if here is not None and here.pid == os.getpid() and asyncio.get_running_loop() is here.loop:
        if here.clients is None:
            here.clients = PushClients()
        yield here.clients
        return
    async with PushClients() as own:
        yield own
