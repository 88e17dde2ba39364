"""The simulator's aiohttp server: every device's port-80 service, and /sim/ control.

It shares the simulator's one port with the devices' agent APIs (`/d/<uuid>/...`, signed pushes
from the server), which devices.simulator.agent_api answers and hands every other connection to.

- `/w/<uuid>/...`: the device's port-80 web service, what the public device URL proxies to.
- `/sim/...`: control for tests, demos and the CLI (power, lock, hang, stats). Not part of the
  protocol and unauthenticated: bind the simulator to a local address.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import agent_api

if TYPE_CHECKING:
    from .agent import Agent
    from .core import Simulator

MAX_BODY = 64 * 1024

STYLESHEET = """body { font-family: system-ui, sans-serif; margin: 2rem; color: #223; }
h1 { font-size: 1.4rem; } code { background: #eef; padding: 0 .25rem; }
"""


def error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


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
        # Requests for the agent APIs on a connection handed over by agent_api.PortProtocol.
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

    async def agent_api(self, request: web.Request) -> web.StreamResponse:
        """The same answers as on the agent API's own connections (agent_api.respond)."""
        body = await request.read()
        answer = agent_api.respond(
            self.sim, request.method, request.path, lambda name: request.headers.get(name.decode(), ""), body
        )
        if answer is agent_api.NoAnswer.DROP:
            return drop_connection(request)
        if answer is agent_api.NoAnswer.HANG:
            transport = request.transport
            if not await agent_api.hang(
                self.sim, request.path, lambda: transport is None or transport.is_closing()
            ):
                return web.Response(status=204)  # never written: the client has gone
            return drop_connection(request)
        status, payload = answer
        return web.json_response(payload, status=status)

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
