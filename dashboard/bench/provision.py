"""Benchmark seeding: a fleet of simulated devices registered in bulk, for `manage.py bench_scale`.

Registering 100,000 devices through the agent API one by one takes the better part of an hour on
two cores; this writes, in bulk, exactly the rows `devices.services.device_register` would write
(the api key hashed with `hash_secret`, the same derived version keys, `registered_at`), and hands
each simulated device what the registration answer would have given it (its api key in plain
text, the push secret derived by `push_secret_for`, its fleet), through the simulator's own state
file, one per simulator process. Benchmark seeding only: nothing in the dashboard calls it.
"""

import json
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from dashboard.bench.seed import (
    FLEET_DEVICE_TYPE,
    OPERATOR,
    _delete_devices,
    _ensure_reference_data,
    _fleet,
    _org,
    analyze,
)
from devices.keys import hash_secret, new_secret, push_secret_for
from devices.models import ActionDelivery, Device, DeviceAction, DeviceType
from devices.simulator import Simulator
from devices.versions import version_key
from fleets import services as fleet_services
from fleets.models import Fleet, FleetRole, OrgRole

CHUNK = 5000


@dataclass
class SimulatedFleet:
    fleet: Fleet
    operator: User
    # One simulator process each: (port, state file, devices).
    shards: list[tuple[int, Path, int]]
    # Devices of another fleet (`scale-probes`) that no simulator runs: the bench reports for them
    # itself, to time how soon a report shows on the device page. {"id", "uuid", "api_key"}
    probes: list[dict] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(n for _, _, n in self.shards)


def _forget_earlier_runs(fleet: Fleet) -> None:
    """A reused fleet starts as a new one would: without the earlier runs' actions (100,000
    deliveries each), and with its tables rewritten without their dead rows (every flush of a
    report leaves one): four runs on had grown the devices table fivefold and slowed a restart by
    half."""
    with transaction.atomic():
        ActionDelivery.objects.filter(action__fleet=fleet).delete()
        DeviceAction.objects.filter(fleet=fleet).delete()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for model in (Device, ActionDelivery, DeviceAction):
                cursor.execute(f"VACUUM (FULL, ANALYZE) {model._meta.db_table}")


def provision(
    size: int, *, processes: int, state_dir: Path, server_url: str, first_port: int, log=print
) -> SimulatedFleet:
    """A fleet `scale-<size>` of `size` registered simulated devices split over `processes` state files
    (kept between runs when they match the database; otherwise seeded again)."""
    _ensure_reference_data()
    operator, _ = User.objects.get_or_create(username=OPERATOR)
    org = _org("bench", "Bench")
    fleet_services.org_member_set(organization=org, user=operator, role=OrgRole.MEMBER)
    fleet = _fleet(org, f"scale-{size}")
    fleet_services.fleet_member_set(fleet=fleet, user=operator, role=FleetRole.OPERATOR)
    state_dir.mkdir(parents=True, exist_ok=True)
    counts = [size // processes + (1 if i < size % processes else 0) for i in range(processes)]
    shards = [(first_port + i, state_dir / f"sim-{size}-{i}.json", n) for i, n in enumerate(counts)]
    probes = _probes(org, operator, state_dir)
    if Device.objects.filter(fleet=fleet).count() == size and all(path.exists() for _, path, _ in shards):
        log(f"  reusing {size:,} registered devices in {fleet.name} and {processes} simulator state files")
        started = time.monotonic()
        _forget_earlier_runs(fleet)
        log(
            f"  deleted the actions of earlier runs and compacted the tables in {time.monotonic() - started:.1f} s"
        )
        return SimulatedFleet(fleet, operator, shards, probes)
    started = time.monotonic()
    device_type = DeviceType.objects.get(slug=FLEET_DEVICE_TYPE)
    now = timezone.now()
    with transaction.atomic():
        _delete_devices([fleet])
        for index, (_, path, n) in enumerate(shards):
            sim = Simulator(server_url, state_path=path, seed=f"scale-{size}-{index}")
            made = sim.add_random_devices(
                n, {device_type.slug: ""}, rng=random.Random(f"scale-{size}-{index}")
            )
            rows = []
            for device in made:
                # What registration answers (api key, push secret, fleet) and what it stores.
                device.provisioning_key = None
                device.api_key = new_secret()
                device.push_secret = push_secret_for(device.uuid)
                device.fleet_id, device.fleet_name = fleet.pk, fleet.name
                rows.append(
                    Device(
                        uuid=device.uuid,
                        name=device.name,
                        fleet=fleet,
                        device_type=device_type,
                        os_version=device.os_version,
                        os_version_key=version_key(device.os_version),
                        agent_version=device.agent_version,
                        agent_version_key=version_key(device.agent_version),
                        api_key_hash=hash_secret(device.api_key),
                        registered_at=now,
                        last_seen_at=now,
                    )
                )
            Device.objects.bulk_create(rows, batch_size=CHUNK)
            path.unlink(missing_ok=True)
            sim.save_state()
    analyze()
    log(f"  registered {size:,} simulated devices in bulk in {time.monotonic() - started:.1f} s "
        f"({processes} state files in {state_dir})")  # fmt: skip
    return SimulatedFleet(fleet, operator, shards, probes)


PROBES = 12


def _probes(org, operator: User, state_dir: Path) -> list[dict]:
    fleet = _fleet(org, "scale-probes")
    fleet_services.fleet_member_set(fleet=fleet, user=operator, role=FleetRole.OPERATOR)
    path = state_dir / "probes.json"
    if path.exists():
        probes = json.loads(path.read_text())
        if Device.objects.filter(fleet=fleet, pk__in=[p["id"] for p in probes]).count() == PROBES:
            return probes
    _delete_devices([fleet])
    device_type = DeviceType.objects.get(slug=FLEET_DEVICE_TYPE)
    probes = []
    for i in range(PROBES):
        api_key, uuid = new_secret(), secrets.token_hex(16)
        device = Device.objects.create(
            uuid=uuid, name=f"probe-{i:02d}", fleet=fleet, device_type=device_type, os_version="5.1.20",
            os_version_key=version_key("5.1.20"), agent_version="17.0.4", agent_version_key=version_key("17.0.4"),
            api_key_hash=hash_secret(api_key),
        )  # fmt: skip
        probes.append({"id": device.pk, "uuid": uuid, "api_key": api_key})
    path.write_text(json.dumps(probes))
    return probes
