"""The simulator's HTTP/1.1 client to the server: keep-alive connections shared by all its devices.

100,000 devices reporting every 20 s are 5,000 requests a second from a few simulator processes on
the same two cores as the server. aiohttp's client spends about 0.3 ms of CPU on each; this one
writes the request in one buffer and reads the answer with one parser call per chunk (httptools),
about a third of that, so the simulator leaves the cores to the server it is meant to load. It
speaks plain HTTP/1.1 over TCP (Content-Length or chunked bodies, or a body up to the close), as
any agent would.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class _Parsing:
    """httptools callbacks collecting one response."""

    def __init__(self) -> None:
        self.response = Response()
        self.chunks: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = False

    def close(self) -> None:
        self.writer.close()


class ServerClient:
    def __init__(self, base_url: str, *, limit: int, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError(f"the simulator speaks plain HTTP to the server, not {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.host_header = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []

    async def request(
        self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        async with self._slots, asyncio.timeout(self.timeout):
            for attempt in (1, 2):
                connection = self._idle.pop() if self._idle else await self._connect()
                reused = connection.used
                try:
                    response, keep_alive = await self._exchange(connection, method, path, body, headers or {})
                except (ConnectionError, asyncio.IncompleteReadError) as error:
                    connection.close()
                    # A kept-alive connection the server closed meanwhile: once more on a new one.
                    if reused and attempt == 1 and getattr(error, "nothing_read", False):
                        continue
                    raise ConnectionError(str(error) or error.__class__.__name__) from error
                except BaseException:
                    connection.close()
                    raise
                if keep_alive:
                    connection.used = True
                    self._idle.append(connection)
                else:
                    connection.close()
                return response
        raise AssertionError("unreachable")

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=2**20)
        return _Connection(reader, writer)

    async def _exchange(self, connection, method, path, body, headers) -> tuple[Response, bool]:
        lines = [f"{method} {self.prefix}{path} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        connection.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        parsing = _Parsing()
        parser = httptools.HttpResponseParser(parsing)
        first = True
        while not parsing.complete:
            data = await connection.reader.read(65536)
            if not data:
                if parsing.headers_done:  # no Content-Length, not chunked: the body ends with the connection
                    parsing.complete, parsing.keep_alive = True, False
                    break
                error = ConnectionResetError("the server closed the connection")
                error.nothing_read = first
                raise error
            first = False
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as error:
                raise ConnectionResetError(f"unreadable answer: {error}") from error
        response = parsing.response
        response.status = parser.get_status_code()
        response.body = b"".join(parsing.chunks)
        keep_alive = parsing.keep_alive and parser.should_keep_alive()
        return response, keep_alive

    async def close(self) -> None:
        while self._idle:
            connection = self._idle.pop()
            connection.close()
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()
