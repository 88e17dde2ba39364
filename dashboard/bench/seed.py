"""Seed the benchmark's fleets through bulk paths: bulk_create in chunks, never save() per row.

For each size N: a fleet of N devices the bench operator works on (`bench-<label>`), and N more
devices in a fleet of another organization (`bench-<label>-others`), so every query runs against a
table where most rows belong to someone else. Values follow plausible distributions (statuses,
host OS and agent versions, device types, flags); names are not in id order.

Online is a matter of time, so statuses are not stored: `refresh_online` marks a fixed share of
devices (chosen by id) as seen now at the start of each run, and the bench runs with a one-hour
online window so nothing drifts offline while it measures.
"""

import hashlib
import random
import time
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from devices.catalog import create_catalog
from devices.models import ActionDelivery, AgentStatus, Device, DeviceAction, DeviceType, HostOSRelease
from devices.versions import version_key
from fleets import services as fleet_services
from fleets.catalog import create_fleet_types
from fleets.models import Fleet, FleetRole, FleetType, Organization, OrgRole

ONLINE_WINDOW_S = 3600
ONLINE_PERCENT = 76  # of active devices, by id: (id * 7919) % 100 < 76
CHUNK = 5000

OS_VERSIONS = [  # version, weight (%): most of a fleet on recent releases, a long tail of old ones
    ("2.9.7", 3), ("2.11.2", 4), ("2.12.3", 6), ("2.29.2", 8), ("2.48.0", 12),
    ("2.58.3", 20), ("2.83.10", 20), ("2.95.12", 15), ("5.1.20", 8), ("6.0.13", 4),
]  # fmt: skip
AGENT_VERSIONS = [("1.0.3", 8), ("1.1.0", 10), ("1.4.0", 30), ("2.1.0", 35), ("2.4.1", 17)]
AGENT_STATUSES = [(AgentStatus.IDLE, 94), (AgentStatus.UPDATING, 5), (AgentStatus.REBOOTING, 1)]
SITES = [
    "berlin", "lyon", "porto", "oslo", "austin", "denver", "osaka", "lima", "cairo", "perth", "quito",
    "turin", "ghent", "leeds", "kyoto", "dakar", "hanoi", "tampa", "omaha", "malmo",
]  # fmt: skip
ROLES = ["kiosk", "gateway", "sensor", "display", "camera", "beacon"]
FLEET_DEVICE_TYPE = "raspberrypi4-64"
OTHER_DEVICE_TYPE = "jetson-nano"  # same architecture (aarch64): 8% of a fleet
OPERATOR = "bench-operator"


def label(size: int) -> str:
    """1000 -> "1k", 100000 -> "100k", 200 -> "200": the suffix of the result keys."""
    return f"{size // 1000}k" if size >= 1000 and size % 1000 == 0 else str(size)


@dataclass
class BenchFleets:
    size: int
    fleet: Fleet  # the operator's fleet of `size` devices
    others: Fleet  # `size` devices of another organization
    operator: User

    @property
    def label(self) -> str:
        return label(self.size)


def _weighted(rng: random.Random, choices: list[tuple]) -> list:
    values, weights = zip(*choices, strict=True)
    return rng.choices(values, weights=weights, k=1)[0]


def _ensure_reference_data() -> None:
    if not FleetType.objects.exists():
        create_fleet_types(FleetType)
    if not DeviceType.objects.filter(slug=FLEET_DEVICE_TYPE).exists():
        create_catalog(DeviceType, HostOSRelease)


def _org(handle: str, name: str) -> Organization:
    org, _ = Organization.objects.get_or_create(handle=handle, defaults={"name": name})
    return org


def _fleet(org: Organization, name: str) -> Fleet:
    fleet, _ = Fleet.objects.get_or_create(
        organization=org,
        name=name,
        defaults={
            "fleet_type": FleetType.objects.get(slug="microservices"),
            "default_device_type": DeviceType.objects.get(slug=FLEET_DEVICE_TYPE),
        },
    )
    return fleet


def ensure_fleets(sizes: list[int], *, reseed: bool, log=print) -> list[BenchFleets]:
    """The bench fleets at each size, seeded unless they already hold the right number of devices."""
    _ensure_reference_data()
    operator, _ = User.objects.get_or_create(username=OPERATOR)
    bench_org = _org("bench", "Bench")
    other_org = _org("bench-others", "Bench others")
    fleet_services.org_member_set(organization=bench_org, user=operator, role=OrgRole.MEMBER)
    result = []
    for size in sizes:
        fleet = _fleet(bench_org, f"bench-{label(size)}")
        others = _fleet(other_org, f"bench-{label(size)}-others")
        fleet_services.fleet_member_set(fleet=fleet, user=operator, role=FleetRole.OPERATOR)
        have = [Device.objects.filter(fleet=target).count() for target in (fleet, others)]
        if reseed or have != [size, size]:
            started = time.monotonic()
            seed_devices([fleet, others], size)
            log(f"  seeded {size:,} devices into each of {fleet.name} and {others.name} "
                f"in {time.monotonic() - started:.1f} s")  # fmt: skip
        result.append(BenchFleets(size, fleet, others, operator))
    refresh_online([b.fleet.pk for b in result] + [b.others.pk for b in result])
    analyze()
    return result


def seed_devices(fleets: list[Fleet], size: int) -> None:
    """Replace the fleets' devices with `size` new ones each, `CHUNK` rows per INSERT.

    The fleets' rows are interleaved at random, as devices of many fleets registering over time
    would be: a fleet's devices are spread over the table and its id range, not one neat block.
    """
    rng = random.Random(f"{'-'.join(f.name for f in fleets)}-{size}")
    types = {t.slug: t for t in DeviceType.objects.filter(slug__in=[FLEET_DEVICE_TYPE, OTHER_DEVICE_TYPE])}
    commits = [hashlib.sha1(f"release-{i}".encode()).hexdigest() for i in range(3)]
    owners = [fleet for fleet in fleets for _ in range(size)]
    rng.shuffle(owners)
    now = timezone.now()
    with transaction.atomic():
        _delete_devices(fleets)
        batch = []
        for fleet in owners:
            batch.append(_device(rng, fleet, types, commits, now))
            if len(batch) == CHUNK:
                Device.objects.bulk_create(batch)
                batch = []
        Device.objects.bulk_create(batch)


def _delete_devices(fleets: list[Fleet]) -> None:
    """The bench's own rows, in three statements: Django's delete() would load 200,000 devices to
    set DeviceAction.device to NULL one collection at a time."""
    ids = [fleet.pk for fleet in fleets]
    marks = ", ".join(["%s"] * len(ids))
    devices = f"SELECT id FROM {Device._meta.db_table} WHERE fleet_id IN ({marks})"
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {ActionDelivery._meta.db_table} WHERE device_id IN ({devices})", ids)
        cursor.execute(
            f"UPDATE {DeviceAction._meta.db_table} SET device_id = NULL WHERE device_id IN ({devices})", ids
        )
        cursor.execute(f"DELETE FROM {Device._meta.db_table} WHERE fleet_id IN ({marks})", ids)


def _device(rng: random.Random, fleet: Fleet, types: dict, commits: list[str], now) -> Device:
    uuid = rng.getrandbits(128).to_bytes(16, "big").hex()
    os_version = _weighted(rng, OS_VERSIONS)
    agent_version = _weighted(rng, AGENT_VERSIONS)
    ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    deactivated = rng.random() < 0.03
    return Device(
        uuid=uuid,
        name=f"{rng.choice(SITES)}-{rng.choice(ROLES)}-{rng.randrange(100_000):05d}",
        fleet=fleet,
        device_type=types[OTHER_DEVICE_TYPE if rng.random() < 0.08 else FLEET_DEVICE_TYPE],
        is_active=not deactivated,
        deactivated_at=now - timedelta(days=rng.randrange(1, 300)) if deactivated else None,
        os_version=os_version,
        os_version_key=version_key(os_version),
        agent_version=agent_version,
        agent_version_key=version_key(agent_version),
        # Offline until refresh_online says otherwise: last seen 2 hours to 60 days ago.
        last_seen_at=now - timedelta(seconds=rng.randrange(2 * 3600, 60 * 86400)),
        agent_status=_weighted(rng, AGENT_STATUSES),
        ip_address=ip,
        api_address=f"http://{ip}:48484",
        update_lock_held=rng.random() < 0.06,
        release_commit=rng.choice(commits),
        services=[
            {
                "name": name,
                "image": f"registry.local/{name}:2.4",
                "status": "running",
                "container_id": rng.getrandbits(256).to_bytes(32, "big").hex(),
                "holds_update_lock": False,
            }
            for name in ("web", "worker")
        ],  # fmt: skip
        volumes=[{"name": "data", "files": rng.randrange(500), "bytes": rng.randrange(10**8)}],
        booted_at=now - timedelta(seconds=rng.randrange(60, 90 * 86400)),
        public_url_enabled=rng.random() < 0.12,
        local_mode=rng.random() < 0.03,
        api_key_hash=hashlib.sha256(f"bench-{uuid}".encode()).hexdigest(),
        registered_at=now - timedelta(days=rng.randrange(1, 900)),
    )


def refresh_online(fleet_ids: list[int]) -> int:
    """Mark ONLINE_PERCENT of the active devices (a fixed set, by id) as seen just now: one UPDATE."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Device._meta.db_table} SET last_seen_at = %s "
            f"WHERE fleet_id IN ({', '.join(['%s'] * len(fleet_ids))}) AND is_active "
            f"AND (id * 7919) %% 100 < {ONLINE_PERCENT}",
            [timezone.now(), *fleet_ids],
        )
        return cursor.rowcount


def analyze() -> None:
    """Fresh planner statistics (and, on PostgreSQL, a visibility map for index-only scans)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"VACUUM (ANALYZE) {Device._meta.db_table}")
        else:
            cursor.execute("ANALYZE")
