"""One HTTP/1.1 client connection on `asyncio.Protocol` and an httptools parser.

Both ends of the agent protocol that send many small requests use it: the simulator's agents to
the server (devices.simulator.client, 5,000 reports a second for 100,000 devices) and the server's
pushes to agents (devices.services.pushes, a fleet-wide action's one push per device). aiohttp's
client spends about 0.3 ms of CPU on a request; here a request in flight is one future that the
parser's callbacks complete, with no stream reader and writer between the socket and the parser.

A connection may carry several requests at once (HTTP/1.1 pipelining: their answers come in the
order they were sent). The requests given to it in one turn of the event loop leave in one write,
and a server that answers them together does so in one write too: one system call each way for
what would be one per request. A connection knows whether it carried a request before (`used`): a
close before any byte of an answer, for a request that was not the first on its connection, is the
keep-alive race (the peer closed it while idle) or a request the peer never read (it closed after
an earlier answer), which the pools retry once on a new connection. Plain HTTP/1.1 answers only:
Content-Length or chunked bodies, or a body up to the close.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import httptools


class ConnectionClosed(ConnectionResetError):
    """The connection ended, or its answer was not HTTP, before a whole answer arrived.
    `nothing_read`: not a byte of the answer had arrived."""

    def __init__(self, message: str, *, nothing_read: bool = False) -> None:
        super().__init__(message)
        self.nothing_read = nothing_read


class AnswerTooLarge(ConnectionClosed):
    """The answer's body is longer than the connection takes (`max_body`)."""


class Response:
    """One answer. Its headers are decoded only when asked for: nobody looks at those of a 204."""

    __slots__ = ("_headers", "body", "raw_headers", "status")

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.raw_headers = raw_headers
        self.body = body
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {
                name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self.raw_headers
            }
        return self._headers

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class Connection(asyncio.Protocol):
    """One keep-alive connection and the requests in flight on it, the oldest first.

    Made before it is connected (`loop.create_connection(lambda: connection, ...)`), it takes
    requests at once: they leave when it connects (`fail` them if it does not). The httptools parser
    lives as long as the connection (it reads one answer after the other); its callbacks are methods
    here and complete the oldest request's future. `forget` is called once when the connection can
    serve no further request (closed by either side), so that its pool never lends it again.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        forget: Callable[[Connection], None],
        *,
        max_body: int | None = None,
    ) -> None:
        self.loop = loop
        self._on_forget = forget
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.used = False  # answered a request already: the peer may have closed it since
        self.closed = False
        self.pooled = False  # for pools: whether it is in their list of connections to lend
        self.idle_since = 0.0  # for pools: when it was last given back
        self.lost: asyncio.Future[None] = loop.create_future()
        # Requests in flight, the oldest first: the future of each answer and its deadline.
        self._waiters: deque[tuple[asyncio.Future[tuple[Response, bool]], float]] = deque()
        self._unsent: list[bytes] = []  # requests given in this turn of the loop, or before it connected
        self._write_soon = False
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._length = 0
        self._headers_done = False
        self._read_any = False  # of the oldest request's answer

    @property
    def in_flight(self) -> int:
        """Requests sent (or to be sent) on it whose answers have not come yet."""
        return len(self._waiters)

    async def exchange(self, data: bytes, deadline: float = 0.0) -> tuple[Response, bool]:
        """Send one request (`data`, whole); its answer and whether the connection may serve another.

        Raises ConnectionClosed if the connection ends or the answer is not HTTP before a whole
        answer arrived, TimeoutError once past `deadline` if the pool sweeps (see `time_out`).
        Cancelled, the connection is left with an answer that may still come: close it.
        """
        if self.closed or (self.transport is not None and self.transport.is_closing()):
            raise ConnectionClosed("the connection is closed", nothing_read=True)
        waiter = self.loop.create_future()
        self._waiters.append((waiter, deadline))
        self._unsent.append(data)
        if self.transport is not None and not self._write_soon:
            self._write_soon = True
            self.loop.call_soon(self._write)
        return await waiter

    def _write(self) -> None:
        self._write_soon = False
        if self._unsent and self.transport is not None and not self.transport.is_closing():
            unsent, self._unsent = self._unsent, []
            self.transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))

    def time_out(self, now: float) -> None:
        """Fail the requests in flight if the oldest is past its deadline: the answers to the others
        come after its answer, if ever."""
        if self._waiters and now >= self._waiters[0][1]:
            self.fail(TimeoutError)

    def fail(self, error: Callable[[], BaseException]) -> None:
        """Fail every request in flight with an exception `error()` makes (one each: they are raised
        in different tasks), say that the connection could not be made."""
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error())

    def close(self) -> None:
        self._forget()
        if self.transport is not None:
            self.transport.close()

    def _forget(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_forget(self)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closed:
            transport.close()
        else:
            self._write()

    def data_received(self, data: bytes) -> None:
        if not self._waiters:
            self.close()  # nothing was asked (a server's 408 before it hangs up): not HTTP/1.1 for us
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            # A callback's exception comes out wrapped, the callback's own as its context.
            cause = error.__context__
            if not isinstance(cause, AnswerTooLarge):
                cause = ConnectionClosed(f"unreadable answer: {error}")
            waiter, _ = self._waiters.popleft()
            self._read_any = self._headers_done = False
            if not waiter.done():
                waiter.set_exception(cause)
            self.close()  # the answers after it cannot be read: those requests fail as never answered

    def eof_received(self) -> None:
        self._forget()  # the peer is done with it; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if not self.lost.done():
            self.lost.set_result(None)
        if not self._waiters:
            return
        if self._headers_done:  # no Content-Length, not chunked: the body ends with the connection
            self._complete(keep_alive=False)
        elif not self._waiters[0][0].done():
            closed = ConnectionClosed("the peer closed the connection", nothing_read=not self._read_any)
            self._waiters.popleft()[0].set_exception(closed)
        # Those after it were not answered at all: perhaps never read.
        self.fail(lambda: ConnectionClosed("the peer closed the connection", nothing_read=True))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._read_any = True
        self._raw_headers, self._chunks, self._length = [], [], 0
        self._headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._length += len(body)
        if self.max_body is not None and self._length > self.max_body:
            raise AnswerTooLarge(f"an answer longer than {self.max_body} bytes")
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._complete(keep_alive=self.parser.should_keep_alive())

    def _complete(self, *, keep_alive: bool) -> None:
        if not self._waiters:
            return  # an answer nobody waits for any more (timed out): the connection is closing
        waiter, _ = self._waiters.popleft()
        self._read_any = self._headers_done = False
        if keep_alive:
            self.used = True
        if not waiter.done():
            response = Response(self.parser.get_status_code(), self._raw_headers, b"".join(self._chunks))
            waiter.set_result((response, keep_alive))
