"""The agent API's own HTTP server: agents' state reports answered in an asyncio event loop.

A fleet of 100,000 devices reporting every 20 s sends 5,000 reports a second. Under gunicorn each
one pays for a thread hand-off, a WSGI environ and a Redis round trip of its own: about 0.6 ms of
CPU, 1,900 reports a second on two cores. Here HTTP/1.1 keep-alive connections are served by uvloop
with httptools' parser; a report that the fast path takes (`AgentReportFastPath.takes` and
`.report`: the same checks and the same `agent_api.clean_report` as the view) is written to Redis
together with every other report that arrived meanwhile, in one script call
(`ingest.report_script`), and answered with the view's 204 and headers. Action results are taken
the same way (`ingest.results_script`) when Redis knows the delivery was pushed to that device
(`ingest.remember_sent`): the view's database read is not needed then; so are those a report
carries (`results`, PROTOCOL.md), with the report.

A target poll with the ETag the device was last answered is answered 304 the same way
(`targets`: the ETag the view remembered, while nothing a target is built from has changed).

Everything else (registration, a target poll the fast path does not answer, any report or result it
does not take: unknown or wrong key, invalid fields, a delivery Redis does not know, Redis unavailable) goes,
body included, to Django's WSGI application in a thread pool, so every other answer and rule stays
the views' own.

`manage.py serve_agent_api` runs it; in production the proxy routes /api/v1/ here (README,
Deployment). Several processes may listen on one port (SO_REUSEPORT).
"""

import asyncio
import io
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import httptools
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from dashboard.longlived import freeze_long_lived
from devices import ingest, targets
from devices.agent_wsgi import AgentReportFastPath

log = logging.getLogger(__name__)

# A request's body is held in memory: anything larger than the largest body Django itself accepts
# is refused before it is read to its end.
MAX_BODY = max(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0, 64 * 1024)
MAX_HEADERS = 100
# Requests read ahead on one connection (pipelining) before the server stops reading from it.
MAX_QUEUED = 32
BATCH = 1000  # reports in one script call


@dataclass
class Request:
    method: str = ""
    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    http_version: str = "1.1"
    keep_alive: bool = True


class ScriptBatcher:
    """Calls that arrive while a script call is in flight go together in the next one.

    `submit(key, args)` adds one item: its KEYS entry and its ARGV entries; the script answers one
    value per item. `prefix` and `suffix` are the ARGV before and KEYS after every item's."""

    def __init__(self, script, *, prefix=(), suffix_keys=()):
        self.script, self.prefix, self.suffix_keys = script, list(prefix), list(suffix_keys)
        self.waiting: list[tuple[str, tuple, asyncio.Future]] = []
        self.draining = False

    def submit(self, key: str, args: tuple) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((key, args, future))
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            while self.waiting:
                await asyncio.sleep(0)  # items parsed in this turn of the loop join the batch
                batch, self.waiting = self.waiting[:BATCH], self.waiting[BATCH:]
                keys = [key for key, _, _ in batch] + self.suffix_keys
                args = self.prefix + [arg for _, item_args, _ in batch for arg in item_args]
                try:
                    answers = await self.script(keys=keys, args=args)
                except (RedisError, OSError) as error:
                    log.warning(
                        "a batch of %d failed in Redis (%s): it goes through Django", len(batch), error
                    )
                    answers = [None] * len(batch)
                for (_, _, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self.draining = False


class AgentServer:
    def __init__(self, *, host: str, port: int, threads: int, keep_alive_s: float = 75.0):
        from dashboard.wsgi import django_application

        self.host, self.port, self.keep_alive_s = host, port, keep_alive_s
        self.django = django_application
        self.fast_path = AgentReportFastPath(django_application)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="django")
        self.redis = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5, max_connections=16
        )
        self.reports = ScriptBatcher(
            ingest.report_script(self.redis),
            prefix=ingest.report_script_prefix(),
            suffix_keys=[ingest.DIRTY, ingest.URGENT],
        )
        self.results = ScriptBatcher(ingest.results_script(self.redis), prefix=[ingest.RESULTS_MAXLEN])
        self.polls = ScriptBatcher(
            targets.not_modified_script(self.redis),
            prefix=[ingest.IDENTITY_TTL_S],
            suffix_keys=[targets.EPOCH],
        )
        self.connections: set[AgentConnection] = set()
        self._environ_base = {
            "SCRIPT_NAME": "",
            "SERVER_NAME": self.host,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        self.requests = 0
        self._no_content: dict[tuple, bytes] = {}

    # -- one request -------------------------------------------------------------------------

    def environ(self, request: Request, peer) -> dict:
        """The request's WSGI environ: what the fast path reads, and what Django gets otherwise. Built
        for every request (a tenth of this server's CPU per heartbeat, py-spy), so the parts that do
        not change are copied from one made at start, and each header name's environ key is
        worked out once (_environ_key)."""
        path, _, query = request.url.partition(b"?")
        environ = self._environ_base.copy()
        environ["REQUEST_METHOD"] = request.method
        environ["PATH_INFO"] = (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        if request.http_version != "1.1":
            environ["SERVER_PROTOCOL"] = f"HTTP/{request.http_version}"
        environ["REMOTE_ADDR"] = peer[0] if peer else ""
        keys = _ENVIRON_KEYS
        for raw_name, raw_value in request.headers:
            key = keys.get(raw_name)
            if key is None:
                key = _environ_key(raw_name)
            if not key:  # as gunicorn and runserver do: X_Forwarded_For must not pass for X-Forwarded-For
                continue
            value = raw_value.decode("latin-1").strip()
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        body = request.body[0] if len(request.body) == 1 else b"".join(request.body)
        environ["CONTENT_LENGTH"] = str(len(body)) if body else environ.get("CONTENT_LENGTH", "")
        environ["wsgi.input"] = io.BytesIO(body)
        return environ

    async def answer(self, request: Request, peer) -> bytes:
        self.requests += 1
        environ = self.environ(request, peer)
        if self.fast_path.takes(environ):
            report = self.fast_path.report(environ, environ["wsgi.input"].getvalue())
            if report is not None:
                key_hash, fields, now, results = report
                identity = ingest._identity_key(key_hash)
                answer = await self.reports.submit(identity, ingest.report_args(fields, now))
                taken = answer and ingest.identity_from_answer(answer) is not None
                # Results it carries that Redis does not take go to Django with the whole
                # request, and the report once more: the same state again.
                if taken and (not results or await self._results_taken(identity, results)):
                    return self.no_content(environ, request.keep_alive)
        elif self.fast_path.takes_target(environ):
            poll = self.fast_path.target(environ)
            if poll is not None:
                key_hash, etag = poll
                if await self.polls.submit(ingest._identity_key(key_hash), (etag,)) == 1:
                    headers = self.fast_path.not_modified_headers(environ, etag)
                    return response(304, headers, b"", request.keep_alive)
        elif self.fast_path.takes_result(environ):
            result = self.fast_path.result(environ, environ["wsgi.input"].getvalue())
            if result is not None:
                key_hash, action_id, device_id, entry = result
                taken = await self.results.submit(
                    ingest._identity_key(key_hash), (action_id, device_id, entry)
                )
                if taken == 1:
                    return self.no_content(environ, request.keep_alive)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._django, environ, request.keep_alive)

    async def _results_taken(self, identity: str, results: list) -> bool:
        """Whether Redis took every result a report carries (ingest.results_script: each a delivery
        pushed to this device); if not, the whole request goes to Django."""
        taken = await asyncio.gather(
            *(
                self.results.submit(
                    identity, (action_id, device_id, ingest.result_entry(device_id, key, state, reason))
                )
                for key, state, reason, action_id, device_id in results
            )
        )
        return all(answer == 1 for answer in taken)

    def no_content(self, environ: dict, keep_alive: bool) -> bytes:
        """The view's 204, as bytes made once per set of headers (fast_path.headers)."""
        key = (self.fast_path.headers(environ), keep_alive)
        data = self._no_content.get(key)
        if data is None:
            if len(self._no_content) >= 16:  # settings changed (tests): the old ones are never used
                self._no_content.clear()
            data = self._no_content[key] = response(204, key[0], b"", keep_alive)
        return data

    def _django(self, environ: dict, keep_alive: bool) -> bytes:
        started: dict = {}

        def start_response(status, headers, exc_info=None):
            started["status"], started["headers"] = status, headers

        result = self.django(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()  # request_finished: Django closes the thread's database connection if due
        code = int(started["status"].split(" ", 1)[0])
        return response(code, started["headers"], body, keep_alive)

    # -- serving -----------------------------------------------------------------------------

    async def serve(self, ready=None) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: AgentConnection(self), self.host, self.port, reuse_port=True, backlog=4096
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("agent API server on http://%s:%s", self.host, self.port)
        freeze_long_lived()
        if ready is not None:
            ready()
        try:
            await stop.wait()
        finally:
            server.close()
            for connection in list(self.connections):
                connection.close_when_idle()
            await asyncio.sleep(0.2)
            await server.wait_closed()
            self.pool.shutdown(wait=True, cancel_futures=False)
            await self.redis.aclose()


def response(status: int, headers, body: bytes, keep_alive: bool) -> bytes:
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {status} {reason}"]
    has_length = False
    for name, value in headers:
        lower = name.lower()
        if lower in ("connection", "transfer-encoding", "keep-alive"):
            continue
        if lower == "content-length":
            has_length = True
            value = str(len(body))
        lines.append(f"{name}: {value}")
    if not has_length:
        lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# Header name as sent -> its environ key ("" for a name with an underscore, which is dropped).
_ENVIRON_KEYS: dict[bytes, str] = {}


def _environ_key(raw_name: bytes) -> str:
    name = raw_name.decode("latin-1").upper()
    if "_" in name:
        key = ""
    else:
        key = name.replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = f"HTTP_{key}"
    if len(_ENVIRON_KEYS) >= 512:  # a client inventing names: start again rather than grow
        _ENVIRON_KEYS.clear()
    _ENVIRON_KEYS[raw_name] = key
    return key


def _authorization(request: Request) -> bytes | None:
    for name, value in request.headers:
        if len(name) == 13 and name.lower() == b"authorization":
            return value
    return None


def _error(status: int) -> bytes:
    body = f"{status} {HTTPStatus(status).phrase}\n".encode()
    return response(status, [("Content-Type", "text/plain")], body, keep_alive=False)


class AgentConnection(asyncio.Protocol):
    """One client connection: requests parsed as bytes arrive, answered one at a time, in order."""

    def __init__(self, server: AgentServer):
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = None
        self.current: Request | None = None
        self.queue: asyncio.Queue[Request] = asyncio.Queue()
        self.worker: asyncio.Task | None = None
        self.loop = asyncio.get_running_loop()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.last_active = self.loop.time()
        self.busy = False
        self.closing = False

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self.server.connections.add(self)
        self.worker = self.loop.create_task(self._answer_in_order())
        self.idle_timer = self.loop.call_later(self.server.keep_alive_s, self._idle)

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        self.closing = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()  # read by _idle: no timer is moved per read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400)
        except httptools.HttpParserError:
            if not self.closing:
                self._fail(400)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.current = Request()

    def on_url(self, url: bytes) -> None:
        self.current.url += url
        if len(self.current.url) > 8192:
            self._fail(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))
        if len(self.current.headers) > MAX_HEADERS:
            self._fail(431)

    def on_body(self, body: bytes) -> None:
        request = self.current
        request.size += len(body)
        if request.size > MAX_BODY:
            self._fail(413)
            return
        request.body.append(body)

    def on_message_complete(self) -> None:
        request, self.current = self.current, None
        if request is None or self.closing:
            return
        request.method = self.parser.get_method().decode("latin-1")
        request.http_version = self.parser.get_http_version()
        request.keep_alive = self.parser.should_keep_alive()
        self.queue.put_nowait(request)
        if self.queue.qsize() >= MAX_QUEUED:
            self.transport.pause_reading()

    # answering

    async def _answer_in_order(self) -> None:
        """Answer the requests of the connection in order. Those a client sent without waiting
        (pipelined) are answered together (`_answer_together`: their reports go to Redis in one
        script call), and their answers go out in one write once none is left waiting (at most
        MAX_QUEUED at a time): one system call instead of one per answer."""
        unsent: list[bytes] = []
        while True:
            requests = [await self.queue.get()]
            while requests[-1].keep_alive and not self.queue.empty():
                requests.append(self.queue.get_nowait())  # none after the last the client sends
            self.busy = True
            try:
                if len(requests) == 1:
                    answers = [await self._answer(requests[0])]
                else:
                    answers = await self._answer_together(requests)
            finally:
                self.busy = False
            if self.transport.is_closing():
                return
            self.last_active = self.loop.time()
            for request, data in zip(requests, answers, strict=True):
                unsent.append(data)
                if not request.keep_alive:  # the last answer on this connection
                    self.transport.write(b"".join(unsent))
                    self.closing = True
                    self.transport.close()
                    return
            if self.queue.empty() or len(unsent) >= MAX_QUEUED:
                self.transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))
                unsent.clear()
            if self.queue.qsize() < MAX_QUEUED // 2:
                self.transport.resume_reading()

    async def _answer(self, request: Request) -> bytes:
        try:
            return await self.server.answer(request, self.peer)
        except Exception:
            log.exception("answering %s %s failed", request.method, request.url[:200])
            request.keep_alive = False
            return _error(500)

    async def _answer_together(self, requests: list[Request]) -> list[bytes]:
        """The answers to requests read together: answered at once while each is of another device
        (its Authorization), so that its report joins the others in Redis; one that is not waits
        for those before it (a device's requests take effect in the order it sent them)."""
        answers: list[bytes] = []
        together: list[Request] = []
        devices: set[bytes] = set()
        for request in requests:
            device = _authorization(request)
            if device is None or device in devices:
                answers += await asyncio.gather(*map(self._answer, together))
                together.clear()
                devices.clear()
                if device is None:
                    answers.append(await self._answer(request))
                    continue
            devices.add(device)
            together.append(request)
        answers += await asyncio.gather(*map(self._answer, together))
        return answers

    def _fail(self, status: int) -> None:
        if self.closing:
            return
        self.closing = True
        self.transport.write(_error(status))
        self.transport.close()

    def _idle(self) -> None:
        """Close a connection quiet for keep_alive_s; else look again when it could be."""
        quiet_s = self.loop.time() - self.last_active
        if self.busy or not self.queue.empty() or quiet_s < self.server.keep_alive_s:
            wait_s = self.server.keep_alive_s - (0 if self.busy else quiet_s)
            self.idle_timer = self.loop.call_later(max(wait_s, 0.1), self._idle)
            return
        self.closing = True
        self.transport.close()

    def close_when_idle(self) -> None:
        if not self.busy and self.queue.empty():
            self.closing = True
            self.transport.close()


def run(*, host: str, port: int, threads: int, ready=None) -> None:
    import uvloop

    server = AgentServer(host=host, port=port, threads=threads)
    uvloop.run(server.serve(ready=ready))
