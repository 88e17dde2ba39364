"""The Simulator: many virtual devices in one asyncio process, speaking the agent protocol for real."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from dashboard.longlived import freeze_long_lived

from .agent import Agent
from .agent_api import PortProtocol
from .client import ServerClient
from .model import Service, VirtualDevice, Volume, hex_id
from .server import SimulatorServer
from .stats import Stats
from .wakeups import Wakeups

log = logging.getLogger("devices.simulator")

STATE_FORMAT = 1
OLD_OS_CUTOFF = "2.12.0"

# The realistic mix of add_random_devices: (value, weight).
OS_VERSIONS = [("2.9.7", 5), ("2.11.2", 7), ("2.58.3", 23), ("2.95.12", 30), ("5.1.20", 35)]
AGENT_VERSIONS = [
    ("1.0.3", 10), ("1.4.2", 10), ("6.6.11", 12), ("10.8.0", 15), ("12.11.36", 18),
    ("14.13.8", 20), ("17.0.4", 15),
]  # fmt: skip
SERVICE_NAMES = ("main", "web", "worker")
IMAGE_TAGS = ("1.0.0", "1.2.3", "2.0.1", "2.4.0")
ADJECTIVES = (
    "amber", "brisk", "calm", "dusty", "eager", "fuzzy", "gentle", "hidden", "icy", "jolly",
    "lively", "misty", "noble", "proud", "quiet", "rapid", "silent", "tidy", "vivid", "wild",
)  # fmt: skip
NOUNS = (
    "badger", "cedar", "delta", "ember", "falcon", "glade", "harbor", "island", "jasper", "kestrel",
    "lagoon", "meadow", "nebula", "orchard", "pine", "quarry", "river", "summit", "tundra", "willow",
)  # fmt: skip


def _weighted(rng: random.Random, choices: list[tuple[str, int]]) -> str:
    values, weights = zip(*choices, strict=True)
    return rng.choices(values, weights=weights)[0]


class Simulator:
    """Virtual devices, one port for all their agent APIs and web services, one shared client.

    Construct, add devices (or load them from the state file), `await start()`, `await stop()`.
    Everything runs on the loop that called `start()`; from another thread use SimulatorThread.
    """

    def __init__(
        self,
        server_url: str,
        host: str = "127.0.0.1",
        port: int = 0,
        state_path: str | os.PathLike[str] | None = None,
        report_interval: float = 10.0,
        poll_interval: float = 15.0,
        reboot_seconds: float = 5.0,
        sigkill_after: float = 10.0,
        os_update_seconds: float = 10.0,
        seed: int | None = None,
        *,
        advertise_host: str | None = None,
        connection_limit: int = 100,
        request_timeout: float = 10.0,
        start_spread: float | None = None,
        orphan_retry_intervals: int = 5,
        save_every: float = 5.0,
        poll_at_start: bool = True,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.host = host
        self.port = port
        # The address devices report: a wildcard bind address is no place to connect to.
        self.advertise_host = advertise_host or ("127.0.0.1" if host in ("", "0.0.0.0", "::") else host)
        self.state_path = Path(state_path) if state_path else None
        self.report_interval = report_interval
        self.poll_interval = poll_interval
        self.reboot_seconds = reboot_seconds
        self.sigkill_after = sigkill_after
        self.os_update_seconds = os_update_seconds
        self.connection_limit = connection_limit
        self.request_timeout = request_timeout
        # Devices start within this many seconds of each other, so 1,000 do not fire at once.
        self.start_spread = report_interval if start_spread is None else start_spread
        self.orphan_retry_intervals = orphan_retry_intervals
        self.save_every = save_every
        # False: devices resumed from the state file poll at their first scheduled slot instead of
        # at once, as agents that kept running while the simulator restarted would (a fleet of
        # 100,000 polling within the start spread is a storm no real fleet makes).
        self.poll_at_start = poll_at_start
        self.rng = random.Random(seed)

        self.devices: dict[str, VirtualDevice] = {}
        self.agents: dict[str, Agent] = {}
        self.metrics = Stats()
        self.session: ServerClient | None = None
        self.wakeups = Wakeups()  # the devices' report and poll schedules
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._agent_connections: set[PortProtocol] = set()
        self._saver: asyncio.Task[None] | None = None
        self._state_loaded = False
        self._last_saved = ""
        # The periodic save writes from a worker thread; the final one on stop must not interleave.
        self._write_lock = threading.Lock()
        self._url = ""

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def url(self) -> str:
        """Base URL of the simulator's server (known once started)."""
        if not self._url:
            raise RuntimeError("the simulator is not started")
        return self._url

    async def start(self) -> None:
        if self.running:
            return
        if self.state_path and not self._state_loaded:
            self.load_state()
        self.metrics = Stats()
        runner = web.AppRunner(SimulatorServer(self).app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        fallback = runner.server
        assert fallback is not None
        try:
            # The agent APIs' connections are answered by PortProtocol, the rest handed to aiohttp.
            self._listener = await asyncio.get_running_loop().create_server(
                lambda: PortProtocol(self, fallback, self._agent_connections),
                self.host,
                self.port,
                backlog=1024,
            )
        except BaseException:
            await runner.cleanup()
            raise
        # One client for every device: its limit bounds what 1,000 devices have in flight at once.
        self.session = ServerClient(
            self.server_url, limit=self.connection_limit, timeout=self.request_timeout
        )
        self._runner = runner
        self.port = self._listener.sockets[0].getsockname()[1]
        self._url = f"http://{self.advertise_host}:{self.port}"
        for agent in self.agents.values():
            agent.start(self._start_delay())
        if self.state_path:
            self._saver = asyncio.get_running_loop().create_task(self._save_loop())
        log.info("simulator listening on %s with %d devices", self._url, len(self.devices))

    async def stop(self) -> None:
        if not self.running:
            return
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        await asyncio.gather(*(agent.stop() for agent in self.agents.values()))
        assert self._runner is not None and self._listener is not None
        self._listener.close()
        for connection in list(self._agent_connections):
            connection.close()
        await self._runner.cleanup()  # and the connections handed to aiohttp
        self._runner = None
        self._listener = None
        if self.session is not None:
            await self.session.close()
            self.session = None
        self.wakeups.close()
        if self.state_path:
            self.save_state()

    def freeze_for_gc(self) -> None:
        """Take what lives as long as the process out of the garbage collector's way
        (dashboard.longlived): now, and again once every device has started and reported once, as
        its agent's coroutines, futures and connection state are as many objects again. A
        long-running simulator calls it after `start`."""
        freeze_long_lived()
        asyncio.get_running_loop().call_later(self.start_spread + self.report_interval, freeze_long_lived)

    def _start_delay(self) -> float:
        return self.rng.uniform(0, self.start_spread) if self.start_spread > 0 else 0.0

    # -- devices ---------------------------------------------------------------------------

    def _new_uuid(self, rng: random.Random) -> str:
        while True:  # a seeded run after a resume generates the same uuids again: skip those
            uuid = hex_id(rng, 16)
            if uuid not in self.devices:
                return uuid

    def _add(self, device: VirtualDevice) -> VirtualDevice:
        if device.uuid in self.devices:
            raise ValueError(f"device {device.uuid} already exists")
        agent = Agent(self, device)
        self.devices[device.uuid] = device
        self.agents[device.uuid] = agent
        if self.running:
            agent.start(self._start_delay())
        return device

    def add_device(
        self,
        *,
        device_type: str,
        os_version: str,
        agent_version: str,
        provisioning_key: str | None = None,
        name: str | None = None,
        services: Sequence[str | Mapping[str, Any]] | None = None,
        serves_web: bool = True,
        holds_lock: bool = False,
        ignores_sigterm: str | Iterable[str] | None = None,
        uuid: str | None = None,
        ip_address: str | None = None,
        api_key: str | None = None,
        push_secret: str | None = None,
        fleet_id: int | None = None,
        rng: random.Random | None = None,
    ) -> VirtualDevice:
        """One device. `services` are names or dicts (name, image, ignores_sigterm, holds_update_lock).

        With `api_key` (and `push_secret`) the device counts as registered already.
        """
        rng = rng or self.rng
        uuid = uuid or self._new_uuid(rng)
        ignoring = {ignores_sigterm} if isinstance(ignores_sigterm, str) else set(ignores_sigterm or ())
        built: list[Service] = []
        for spec in services or ["main"]:
            spec = {"name": spec} if isinstance(spec, str) else dict(spec)
            svc_name = str(spec["name"])
            built.append(
                Service(
                    name=svc_name,
                    image=str(spec.get("image") or f"registry.local/{svc_name}:{rng.choice(IMAGE_TAGS)}"),
                    container_id=hex_id(rng, 32),
                    holds_update_lock=bool(spec.get("holds_update_lock", False)),
                    ignores_sigterm=bool(spec.get("ignores_sigterm", svc_name in ignoring)),
                    scratch_files=rng.randint(0, 20),
                )
            )
        if holds_lock and built:
            built[0].holds_update_lock = True
        device = VirtualDevice(
            uuid=uuid,
            name=name or f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}-{uuid[:4]}",
            device_type=device_type,
            os_version=os_version,
            agent_version=agent_version,
            ip_address=ip_address or f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            services=built,
            volumes=[],
            serves_web=serves_web,
            provisioning_key=provisioning_key,
            api_key=api_key,
            push_secret=push_secret,
            fleet_id=fleet_id,
        )
        # Persistent storage with something in it already, so a purge or a move visibly empties it.
        names = (
            ["resin-data", *(f"{s.name}-cache" for s in built[1:])] if device.has_named_volumes else ["/data"]
        )
        for volume_name in names:
            files = rng.randint(1, 50)
            device.volumes.append(Volume(volume_name, files, files * rng.randint(1, 200) * 1024))
        return self._add(device)

    def add_random_devices(
        self,
        n: int,
        provisioning_keys_by_device_type: Mapping[str, str | Sequence[str]],
        rng: random.Random | None = None,
    ) -> list[VirtualDevice]:
        """A realistic mix: some OS < 2.12.0, some agents < 1.1.0, ~40% serving web,
        ~10% with a service ignoring SIGTERM, ~5% holding the update lock."""
        rng = rng or self.rng
        types = sorted(provisioning_keys_by_device_type)
        if not types:
            raise ValueError("no device types to make devices of")
        made = []
        for _ in range(n):
            device_type = rng.choice(types)
            keys = provisioning_keys_by_device_type[device_type]
            key = keys if isinstance(keys, str) else rng.choice(list(keys))
            names = ["main", *rng.sample(SERVICE_NAMES[1:], rng.randint(0, 2))]
            made.append(
                self.add_device(
                    provisioning_key=key,
                    device_type=device_type,
                    os_version=_weighted(rng, OS_VERSIONS),
                    agent_version=_weighted(rng, AGENT_VERSIONS),
                    services=names,
                    serves_web=rng.random() < 0.40,
                    holds_lock=rng.random() < 0.05,
                    ignores_sigterm=rng.choice(names) if rng.random() < 0.10 else None,
                    rng=rng,
                )
            )
        return made

    def device(self, uuid: str) -> VirtualDevice:
        return self.devices[uuid]

    def agent(self, uuid: str) -> Agent:
        return self.agents[uuid]

    def snapshot(self, uuid: str) -> dict[str, Any]:
        agent = self.agents[uuid]
        data = agent.device.snapshot(self._url)
        data["target"] = agent.target
        return data

    # -- control shortcuts (same as the /sim/ API) ------------------------------------------

    def power_on(self, uuid: str) -> bool:
        return self.agents[uuid].power_on()

    def power_off(self, uuid: str) -> bool:
        return self.agents[uuid].power_off()

    def lock(self, uuid: str, service: str | None = None) -> bool:
        return self.agents[uuid].set_lock(True, service)

    def unlock(self, uuid: str) -> bool:
        return self.agents[uuid].set_lock(False)

    def hang(self, uuid: str, hung: bool = True) -> None:
        self.agents[uuid].set_hung(hung)

    async def report_now(self, uuid: str) -> bool:
        return await self.agents[uuid].report()

    async def poll_now(self, uuid: str) -> None:
        await self.agents[uuid].poll()

    # -- stats -----------------------------------------------------------------------------

    def stats(self, window_s: float | None = 60.0) -> dict[str, Any]:
        online = dark = orphaned = unregistered = 0
        for d in self.devices.values():  # one pass: asked every few seconds of 25,000 devices
            up, registered = d.is_up, d.registered
            online += registered and up and not d.orphaned
            dark += not up
            orphaned += d.orphaned
            unregistered += not registered
        counts = {
            "devices": len(self.devices),
            "online": online,
            "dark": dark,
            "orphaned": orphaned,
            "unregistered": unregistered,
            "report_interval_s": self.report_interval,
            "poll_interval_s": self.poll_interval,
        }
        return counts | self.metrics.summary(window_s)

    def summary_line(self) -> str:
        s = self.stats()
        totals, late = s["totals"], s["lateness"]
        pushes = totals.get("pushes", 0) + totals.get("pushes_duplicate", 0) + totals.get("nudges", 0)
        return (
            f"{s['devices']} devices: {s['online']} online, {s['dark']} dark, {s['orphaned']} orphaned, "
            f"{s['unregistered']} unregistered | {s['reports_per_s']} reports/s, {s['polls_per_s']} polls/s, "
            f"{pushes} pushes handled | lateness p50 {late['p50_ms']} ms, p99 {late['p99_ms']} ms, "
            f"{totals.get('late_reports', 0)} late reports"
        )

    # -- state file ------------------------------------------------------------------------

    def load_state(self) -> int:
        """Add the devices of the state file (not yet known here); returns how many were added."""
        self._state_loaded = True
        if not self.state_path or not self.state_path.exists():
            return 0
        data = json.loads(self.state_path.read_text())
        if data.get("server_url") and data["server_url"] != self.server_url:
            log.warning(
                "state file %s was written for %s, not %s: its devices may be refused (orphaned)",
                self.state_path,
                data["server_url"],
                self.server_url,
            )
        added = 0
        for item in data.get("devices", []):
            if item.get("uuid") not in self.devices:
                self._add(VirtualDevice.from_state(item))
                added += 1
        return added

    def _state_text(self) -> str:
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "server_url": self.server_url,
                "devices": [d.to_state() for d in self.devices.values()],
            },
            separators=(",", ":"),
        )

    def save_state(self) -> None:
        if self.state_path:
            self._write_state(self._state_text())

    def _write_state(self, text: str) -> None:
        """Write to a temporary file beside it and rename: a crash never leaves half a file."""
        assert self.state_path is not None
        path = self.state_path
        with self._write_lock:
            if text == self._last_saved:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._last_saved = text

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(self.save_every)
            started = time.monotonic()
            text = self._state_text()  # on the loop: a consistent snapshot
            await asyncio.to_thread(self._write_state, text)  # the disk write off the loop
            log.debug("state saved in %.3f s", time.monotonic() - started)
