"""`manage.py simulate_devices`: run virtual devices against a dashboard server until Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import uvloop
from django.core.management.base import BaseCommand, CommandError

from devices.simulator import Simulator

# Share of new devices of the fleet's default type; the rest get another type of the same CPU.
DEFAULT_TYPE_SHARE = 0.75
SUMMARY_EVERY_S = 10.0


@dataclass
class FleetChoice:
    """A fleet new devices may join, read from the ORM (or made up for a bare provisioning key)."""

    id: int | None
    name: str
    default_type: str
    # Device types of the same CPU architecture as the default one (the default included).
    compatible_types: list[str] = field(default_factory=list)
    fleet: Any = None  # the Fleet row, to mint a provisioning key for
    weight: int = 1  # share of the new devices, relative to the other fleets'


def plan_new_devices(n: int, fleets: list[FleetChoice], rng: random.Random) -> list[tuple[FleetChoice, str]]:
    """For each new device, a fleet (shares by weight, so every fleet gets some) and a device type."""
    total = sum(f.weight for f in fleets)
    quotas = [n * f.weight // total for f in fleets]
    # Largest remainders get the devices the rounding down left over.
    by_remainder = sorted(range(len(fleets)), key=lambda i: -(n * fleets[i].weight % total))
    for i in by_remainder[: n - sum(quotas)]:
        quotas[i] += 1
    plans = []
    for fleet, quota in zip(fleets, quotas, strict=True):
        others = [t for t in fleet.compatible_types if t != fleet.default_type]
        for _ in range(quota):
            device_type = fleet.default_type
            if others and rng.random() >= DEFAULT_TYPE_SHARE:
                device_type = rng.choice(others)
            plans.append((fleet, device_type))
    return plans


class Command(BaseCommand):
    help = (
        "Run virtual devices that register, report and poll like real agents, and serve their agent "
        "API and port-80 pages from one local port. Devices in the state file are resumed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--server", default="http://127.0.0.1:8000", help="The dashboard's base URL.")
        parser.add_argument("--count", type=int, default=10, help="Devices to run (resumed ones count).")
        parser.add_argument("--host", default="127.0.0.1", help="Address the simulator listens on.")
        parser.add_argument(
            "--port", type=int, default=48484, help="Port of the simulator (0: any free one)."
        )
        parser.add_argument(
            "--advertise-host",
            default=None,
            help="IP address devices report in their addresses (default: --host); the server connects only "
            "to IP addresses in its DEVICE_ALLOWED_NETWORKS.",
        )
        parser.add_argument("--state-file", default=".run/simulator.json", help="Where devices are kept.")
        parser.add_argument("--report-interval", type=float, default=10.0, metavar="S")
        parser.add_argument("--poll-interval", type=float, default=15.0, metavar="S")
        parser.add_argument("--reboot-seconds", type=float, default=5.0, metavar="S")
        parser.add_argument("--sigkill-after", type=float, default=10.0, metavar="S")
        parser.add_argument(
            "--connections",
            type=int,
            default=100,
            metavar="N",
            help="requests in flight to the server at most, on keep-alive connections shared by this "
            "process's devices, up to 16 pipelined on each (each real device has its own; too few "
            "for thousands of devices and their requests wait in line)",
        )
        parser.add_argument("--os-update-seconds", type=float, default=10.0, metavar="S")
        parser.add_argument(
            "--fleet",
            action="extend",
            nargs="+",
            default=[],
            metavar="NAME_OR_ID",
            help=(
                "Fleets new devices join (default: all fleets): an id, a name, or org/name; "
                "add =N for a share, e.g. acme/kiosks=20 acme/beacons=8."
            ),
        )
        parser.add_argument(
            "--provisioning-key",
            default=None,
            help="Register new devices with this key instead of minting one per fleet.",
        )
        parser.add_argument(
            "--device-type", default=None, help="Device type for --provisioning-key when no --fleet is given."
        )
        parser.add_argument("--seed", type=int, default=None, help="Seed for a reproducible device mix.")
        parser.add_argument(
            "--save-every",
            type=float,
            default=5.0,
            metavar="S",
            help="Seconds between state file saves (a save of 25,000 devices holds the event loop ~0.5 s).",
        )
        parser.add_argument(
            "--start-spread",
            type=float,
            default=None,
            metavar="S",
            help="Devices start within this many seconds of each other (default: the report interval).",
        )
        parser.add_argument(
            "--no-poll-at-start",
            action="store_true",
            help="Devices poll their target at their first scheduled slot, not at once (large fleets).",
        )

    def handle(self, *args, **options):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        sim = Simulator(
            options["server"],
            host=options["host"],
            port=options["port"],
            state_path=options["state_file"] or None,
            report_interval=options["report_interval"],
            poll_interval=options["poll_interval"],
            reboot_seconds=options["reboot_seconds"],
            sigkill_after=options["sigkill_after"],
            connection_limit=options["connections"],
            os_update_seconds=options["os_update_seconds"],
            seed=options["seed"],
            advertise_host=options["advertise_host"],
            save_every=options["save_every"],
            start_spread=options["start_spread"],
            poll_at_start=not options["no_poll_at_start"],
        )
        resumed = sim.load_state()
        missing = options["count"] - len(sim.devices)
        created = self.create_devices(sim, missing, options) if missing > 0 else 0
        source = f"from {options['state_file']}" if options["state_file"] else "(no state file)"
        self.stdout.write(f"{resumed} devices resumed {source}, {created} new")
        # uvloop: the event loop and its sockets in C, about half the CPU per request of asyncio's own.
        uvloop.run(self.run(sim))

    def create_devices(self, sim: Simulator, n: int, options: dict[str, Any]) -> int:
        rng = random.Random(options["seed"])
        key = options["provisioning_key"]
        if key and not options["fleet"]:
            if not options["device_type"]:
                raise CommandError("--provisioning-key needs --fleet or --device-type to pick device types.")
            fleets = [FleetChoice(None, "(given key)", options["device_type"], [options["device_type"]])]
        else:
            known = {d.fleet_id for d in sim.devices.values() if d.fleet_id is not None}
            fleets = self.fleet_choices(options["fleet"], known_fleet_ids=known)
        keys: dict[int | None, str] = {}
        for fleet, device_type in plan_new_devices(n, fleets, rng):
            if fleet.id not in keys:
                keys[fleet.id] = key or self.mint_key(fleet)
            sim.add_random_devices(1, {device_type: keys[fleet.id]}, rng=rng)
        return n

    def fleet_choices(self, wanted: list[str], known_fleet_ids: set[int] = frozenset()) -> list[FleetChoice]:
        """The fleets new devices join. `known_fleet_ids`: the fleets of the devices in the state file,
        which let a --fleet that names a fleet no longer there be followed or skipped (see gone_fleet)."""
        from devices.models import DeviceType
        from fleets.models import Fleet

        fleets = list(Fleet.objects.select_related("default_device_type", "organization").order_by("id"))
        weights = {f.id: 1 for f in fleets}
        if wanted:
            chosen = []
            for token in wanted:
                name, _, share = token.partition("=")
                if share and not share.isdigit():
                    raise CommandError(f"{token!r}: the share after = must be a whole number.")
                matches = [f for f in fleets if self.fleet_matches(f, name)]
                if not matches:
                    matches = self.gone_fleet(name, fleets, known_fleet_ids)
                for fleet in matches:
                    weights[fleet.id] = int(share) if share else 1
                    if fleet not in chosen:
                        chosen.append(fleet)
            fleets = [f for f in chosen if weights[f.id] > 0]
        if not fleets:
            raise CommandError("There are no fleets to add devices to; create one first.")
        slugs_by_arch: dict[str, list[str]] = {}
        for slug, arch in DeviceType.objects.values_list("slug", "arch"):
            slugs_by_arch.setdefault(arch, []).append(slug)
        return [
            FleetChoice(
                id=f.id,
                name=f.name,
                default_type=f.default_device_type.slug,
                compatible_types=slugs_by_arch.get(f.default_device_type.arch, [f.default_device_type.slug]),
                fleet=f,
                weight=weights[f.id],
            )
            for f in fleets
        ]

    def gone_fleet(self, token: str, fleets: list[Any], known_fleet_ids: set[int]) -> list[Any]:
        """A --fleet that matches nothing now. Without devices in the state file it is a mistake. With
        them, it named a fleet that was there before: transferred to another organization (the demo's
        acme/gateways), renamed or deleted. Its devices' fleet of the same name, if there is one, is
        followed; otherwise the spec is skipped and new devices join the other fleets given."""
        if not known_fleet_ids:
            raise CommandError(f"No fleet with id or name {token!r}.")
        name = token.strip().lower().rpartition("/")[2]
        followed = [f for f in fleets if f.id in known_fleet_ids and f.name.lower() == name]
        if len(followed) == 1:
            fleet = followed[0]
            self.stdout.write(
                self.style.WARNING(
                    f"--fleet {token}: no such fleet now; following its devices to {fleet.organization.handle}/"
                    f"{fleet.name} ({fleet.id}), where it is now (transferred?)"
                )
            )
            return followed
        self.stdout.write(
            self.style.WARNING(
                f"--fleet {token}: no such fleet now (transferred, renamed or deleted?); skipped, new devices "
                "join the other fleets given"
            )
        )
        return []

    @staticmethod
    def fleet_matches(fleet: Any, token: str) -> bool:
        token = token.strip().lower()
        if token.isdigit():
            return fleet.id == int(token)
        if "/" in token:  # fleet names are unique only within their organization
            handle, _, name = token.partition("/")
            return fleet.organization.handle.lower() == handle and fleet.name.lower() == name
        return fleet.name.lower() == token

    def mint_key(self, choice: FleetChoice) -> str:
        """One provisioning key per fleet per run, minted through the server's own service."""
        from fleets.services import provisioning_key_create

        description = f"device simulator, {datetime.now():%Y-%m-%d %H:%M}"
        key = provisioning_key_create(fleet=choice.fleet, description=description)
        self.stdout.write(f"minted a provisioning key for fleet {choice.name} ({choice.id})")
        return key

    async def run(self, sim: Simulator) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        try:
            await sim.start()
        except OSError as exc:
            raise CommandError(f"Cannot listen on {sim.host}:{sim.port}: {exc.strerror or exc}") from exc
        sim.freeze_for_gc()  # tens of thousands of devices: millions of objects that live for good
        self.stdout.write(
            f"simulating {len(sim.devices)} devices against {sim.server_url}; "
            f"agent APIs at {sim.url}/d/<uuid>, control at {sim.url}/sim/devices. Ctrl-C stops."
        )
        try:
            while not stopping.is_set():
                try:
                    await asyncio.wait_for(stopping.wait(), SUMMARY_EVERY_S)
                except TimeoutError:
                    self.stdout.write(sim.summary_line())
        finally:
            await sim.stop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        where = f", state written to {sim.state_path}" if sim.state_path else ""
        self.stdout.write(f"stopped{where}")
