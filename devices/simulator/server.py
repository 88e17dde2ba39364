"""The simulator's one HTTP server: every device's agent API and port-80 service, and /sim/ control.

- `/d/<uuid>/...`: the agent API of that device (agent >= 1.1.0), signed pushes from the server.
- `/w/<uuid>/...`: the device's port-80 web service, what the public device URL proxies to.
- `/sim/...`: control for tests, demos and the CLI (power, lock, hang, stats). Not part of the
  protocol and unauthenticated: bind the simulator to a local address.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from devices.keys import verify_push

from .model import ACTION_KINDS

if TYPE_CHECKING:
    from .agent import Agent
    from .core import Simulator

MAX_BODY = 64 * 1024
CLOCK_SKEW_S = 300
ACTION_PATH = re.compile(r"^/v1/actions/([^/]+)$")
MAX_KEY_LENGTH = 200

STYLESHEET = """body { font-family: system-ui, sans-serif; margin: 2rem; color: #223; }
h1 { font-size: 1.4rem; } code { background: #eef; padding: 0 .25rem; }
"""


ACCEPTED = {"accepted": True}
ACCEPTED_BODY = json.dumps(ACCEPTED).encode()


def error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def json_answer(answer: dict[str, Any], status: int) -> web.Response:
    """web.json_response(answer, status=status); the answer to almost every push serialized once."""
    if answer == ACCEPTED:
        return web.Response(
            body=ACCEPTED_BODY, status=status, content_type="application/json", charset="utf-8"
        )
    return web.json_response(answer, status=status)


def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the connection without any HTTP response: what a client sees when nothing listens."""
    if request.transport is not None:
        request.transport.close()
    # Never written (the transport is closed); aiohttp just needs a response object.
    return web.Response(status=204)


class SimulatorServer:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        add = app.router.add_route
        # The longer route first: every push takes it, and the router tries routes in this order.
        add("*", "/d/{uuid}/{tail:.*}", self.agent_api)
        add("*", "/d/{uuid}", self.agent_api)
        add("*", "/w/{uuid}", self.web_service)
        add("*", "/w/{uuid}/{tail:.*}", self.web_service)
        add("GET", "/", self.index)
        add("GET", "/sim/stats", self.stats)
        add("GET", "/sim/devices", self.list_devices)
        add("GET", "/sim/devices/{uuid}", self.get_device)
        add("POST", "/sim/devices/{uuid}/{operation}", self.control)
        return app

    def _agent(self, request: web.Request) -> Agent | None:
        return self.sim.agents.get(request.match_info["uuid"])

    # -- agent API -------------------------------------------------------------------------

    async def _hang(self, request: web.Request, agent: Agent) -> web.StreamResponse:
        """Answer nothing until unhung. The device's events say when the request came and when the
        client gave up on it (closed the connection), so tests can see how long a push waited."""
        self.sim.metrics.count("hung_requests")
        agent.device.log_event("hung_request", request.path)
        while not agent.unhung.is_set():
            if request.transport is None or request.transport.is_closing():
                agent.device.log_event("hung_request_abandoned", request.path)
                return web.Response(status=204)  # never written: the client has gone
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(agent.unhung.wait(), 0.05)
        return drop_connection(request)

    async def agent_api(self, request: web.Request) -> web.StreamResponse:
        agent = self._agent(request)
        if agent is None:
            return error(404, "not_found", "No such device.")
        dev, metrics = agent.device, self.sim.metrics
        if not dev.is_up:
            metrics.count("dropped_connections")
            return drop_connection(request)
        if not dev.has_agent_api:
            # Agents older than 1.1.0 listen on nothing; the simulator's server answers for them.
            return error(404, "not_found", "This agent has no API (agent older than 1.1.0).")
        if dev.hung:
            return await self._hang(request, agent)

        path = request.path[len(f"/d/{dev.uuid}") :] or "/"
        body = await request.read()
        if not self._signed(request, dev.push_secret or "", path, body):
            metrics.count("pushes_rejected")
            return error(401, "invalid_signature", "Missing or wrong X-Fleet-Signature or X-Fleet-Timestamp.")

        if path == "/v1/update" and request.method == "POST":
            metrics.count("nudges")
            agent.spawn(agent.poll())
            return json_answer(ACCEPTED, 202)
        match = ACTION_PATH.match(path)
        if match is None:
            return error(404, "not_found", f"No agent API at {path}.")
        if request.method != "POST":
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
        header_key = request.headers.get("Idempotency-Key", "")
        key = header_key or payload.get("key") or ""
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
            return error(400, "invalid", "An idempotency key is required.")
        if header_key and payload.get("key") not in (None, header_key):
            return error(400, "invalid", "The Idempotency-Key header and the body's key differ.")
        status, answer = agent.accept_action(kind, key)
        return json_answer(answer, status)

    @staticmethod
    def _signed(request: web.Request, secret: str, path: str, body: bytes) -> bool:
        try:
            timestamp = int(request.headers.get("X-Fleet-Timestamp", ""))
        except ValueError:
            return False
        signature = request.headers.get("X-Fleet-Signature", "")
        if not secret or not signature or abs(time.time() - timestamp) > CLOCK_SKEW_S:
            return False
        return verify_push(secret, timestamp, request.method, path, body, signature)

    # -- port 80 ---------------------------------------------------------------------------

    async def web_service(self, request: web.Request) -> web.StreamResponse:
        agent = self._agent(request)
        if agent is None:
            return error(404, "not_found", "No such device.")
        dev = agent.device
        if not dev.is_up or not dev.serves_web:
            self.sim.metrics.count("dropped_connections")
            return drop_connection(request)
        self.sim.metrics.count("web_requests")
        tail = request.match_info.get("tail", "")
        if tail in ("", "index.html"):
            name, uuid = html.escape(dev.name), dev.uuid
            # Relative links only, so the page works under any prefix a reverse proxy puts it at.
            page = (
                "<!doctype html>\n<html><head><meta charset='utf-8'>"
                f"<title>{name} ({uuid})</title>"
                "<link rel='stylesheet' href='static/style.css'></head>\n<body>"
                f"<h1>{name}</h1><p>Device <code>{uuid}</code>, {html.escape(dev.device_type)}, "
                f"OS {html.escape(dev.os_version)}, up {dev.uptime_s} s.</p>"
                "<p><a href='status.json'>status.json</a> · <a href='echo'>echo</a></p>"
                "</body></html>\n"
            )
            return web.Response(text=page, content_type="text/html")
        if tail == "static/style.css":
            return web.Response(text=STYLESHEET, content_type="text/css")
        if tail == "status.json":
            return web.json_response(
                {"uuid": dev.uuid, "name": dev.name, "uptime_s": dev.uptime_s, "release": dev.release}
            )
        if tail == "echo":
            # What reached the device, for tests of the proxy (headers, method, body, query).
            return web.json_response(
                {
                    "method": request.method,
                    "path": "/" + tail,
                    "query": request.query_string,
                    "headers": dict(request.headers),
                    "body": (await request.read()).decode(errors="replace"),
                }
            )
        return web.Response(
            status=404, text="<!doctype html><title>Not found</title>", content_type="text/html"
        )

    # -- control ---------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "simulator": "fleet device simulator",
                "devices": len(self.sim.devices),
                "endpoints": ["/sim/stats", "/sim/devices", "/sim/devices/<uuid>"],
            }
        )

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.stats())

    async def list_devices(self, request: web.Request) -> web.Response:
        return web.json_response([self.sim.snapshot(uuid) for uuid in self.sim.devices])

    async def get_device(self, request: web.Request) -> web.Response:
        if self._agent(request) is None:
            return error(404, "not_found", "No such device.")
        return web.json_response(self.sim.snapshot(request.match_info["uuid"]))

    async def control(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        if agent is None:
            return error(404, "not_found", "No such device.")
        operation = request.match_info["operation"]
        changed: Any
        if operation == "power-on":
            changed = agent.power_on()
        elif operation == "power-off":
            changed = agent.power_off()
        elif operation in ("lock", "unlock"):
            service = request.query.get("service")
            if request.can_read_body:
                try:
                    service = (await request.json()).get("service") or service
                except (ValueError, AttributeError):
                    return error(400, "invalid", 'The body must be {"service": "<name>"} or empty.')
            changed = agent.set_lock(operation == "lock", service)
        elif operation in ("hang", "unhang"):
            changed = agent.device.hung != (operation == "hang")
            agent.set_hung(operation == "hang")
        elif operation == "report":
            changed = await agent.report()
        elif operation == "poll":
            await agent.poll()
            changed = True
        else:
            return error(404, "not_found", f"Unknown operation {operation!r}.")
        return web.json_response({"changed": bool(changed), "device": self.sim.snapshot(agent.device.uuid)})
