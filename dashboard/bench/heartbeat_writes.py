"""What PostgreSQL spends writing reports: device rows updated as the flusher updates them.

    .venv/bin/python dashboard/bench/heartbeat_writes.py [--devices 100000] [--rounds 3]

The flusher writes each report as an UPDATE of the device row (`ingest.bulk_update_devices`: a
thousand rows per statement, `UPDATE ... FROM (VALUES ...)`), nearly all of them last_seen_at
alone or with the volumes. This times that workload on two copies of the device table, in the
same run and interleaved, so the ratio holds on a busy machine:

- `current`: the table as the migrations make it (no index on last_seen_at, fillfactor 85), where
  such an UPDATE can stay on its page and touch no index (a HOT update);
- `indexed`: the same with the index on (fleet, last_seen_at, id) the device list's sort had, and
  the default fillfactor, where every UPDATE writes every index of the row again.

PostgreSQL only (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test): it creates a
database of its own, `bench_heartbeat_writes`, with --devices devices provisioned in bulk as
bench_scale provisions them, their services and volumes filled as reports fill them; kept for the
next run. Printed: rows written per second for each table per round, the medians' ratio, and the
share of HOT updates PostgreSQL counted.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parents[2]
DATABASE = "bench_heartbeat_writes"
BATCH = 1000
BATCHES_PER_ROUND = 40
VOLUMES_SHARE = 0.3  # reports whose volumes changed too (the simulator writes files in 3 of 10)
SERVICES = [
    {"name": name, "image": f"registry.local/{name}:1.2.3", "status": "running", "container_id": "ab" * 32,
     "holds_update_lock": False}
    for name in ("main", "web")
]  # fmt: skip


def setup_django(url: str) -> None:
    sys.path[:] = [str(HERE), *(p for p in sys.path if p and Path(p).resolve() != Path(__file__).parent)]
    os.chdir(HERE)
    parts = urlsplit(url)
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{DATABASE}"))
    os.environ.pop("REDIS_URL", None)
    os.environ["RUN_DIR"] = str(HERE / ".run" / "heartbeat-writes")
    os.environ["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
    import psycopg

    with psycopg.connect(urlunsplit(parts), autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            admin.execute(f'CREATE DATABASE "{DATABASE}"')
    import django

    django.setup()


def provisioned(devices: int) -> None:
    from django.core.management import call_command
    from django.db import connection

    from dashboard.bench.provision import provision
    from devices.models import Device

    call_command("migrate", verbosity=0)
    if Device.objects.count() == devices:
        return
    run_dir = Path(os.environ["RUN_DIR"])
    started = time.monotonic()
    provision(
        devices, processes=1, state_dir=run_dir, server_url="http://127.0.0.1:9", first_port=9, log=print
    )
    with connection.cursor() as cursor:  # as their first reports leave them
        cursor.execute(
            "UPDATE devices_device SET services = %s::jsonb, volumes = %s::jsonb, agent_status = 'idle'",
            [json.dumps(SERVICES), json.dumps([{"name": "resin-data", "files": 12, "bytes": 40960}])],
        )
    print(f"  {devices:,} devices ready in {time.monotonic() - started:.0f} s")


def copies(cursor) -> dict[str, str]:
    tables = {"current": "bench_hw_current", "indexed": "bench_hw_indexed"}
    for variant, table in tables.items():
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(f"CREATE TABLE {table} (LIKE devices_device INCLUDING ALL)")
        if variant == "current":
            (options,) = cursor.execute(
                "SELECT reloptions FROM pg_class WHERE relname = 'devices_device'"
            ).fetchone()
            for option in options or []:
                cursor.execute(f"ALTER TABLE {table} SET ({option})")
        else:
            cursor.execute(f"CREATE INDEX {table}_seen ON {table} (fleet_id, last_seen_at, id)")
        cursor.execute(f"INSERT INTO {table} SELECT * FROM devices_device")
        cursor.execute(f"VACUUM ANALYZE {table}")
    return tables


def write_reports(cursor, table: str, ids: list[int], rng: random.Random) -> float:
    """BATCHES_PER_ROUND flushes of BATCH reports each; the seconds they took."""
    volumes = json.dumps([{"name": "resin-data", "files": 13, "bytes": 45056}])
    started = time.perf_counter()
    for _ in range(BATCHES_PER_ROUND):
        batch = sorted(rng.sample(ids, BATCH))
        with cursor.connection.transaction():
            heartbeats = [i for i in batch if rng.random() >= VOLUMES_SHARE]
            grown = sorted(set(batch) - set(heartbeats))
            values = ", ".join(["(%s::bigint, now())"] * len(heartbeats))
            cursor.execute(
                f"UPDATE {table} SET last_seen_at = v.column2 FROM (VALUES {values}) AS v WHERE {table}.id = v.column1",
                heartbeats,
            )
            values = ", ".join(["(%s::bigint, now(), %s::jsonb)"] * len(grown))
            cursor.execute(
                f"UPDATE {table} SET last_seen_at = v.column2, volumes = v.column3 FROM (VALUES {values}) AS v "
                f"WHERE {table}.id = v.column1",
                [x for i in grown for x in (i, volumes)],
            )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/test"
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit("heartbeat_writes measures PostgreSQL: set DATABASE_URL to a PostgreSQL server")
    setup_django(url)
    provisioned(args.devices)
    from django.db import connection

    connection.ensure_connection()
    cursor = connection.connection.cursor()
    connection.connection.autocommit = True
    tables = copies(cursor)
    ids = [row[0] for row in cursor.execute("SELECT id FROM devices_device")]
    rows = BATCH * BATCHES_PER_ROUND
    rates = {variant: [] for variant in tables}
    for round_ in range(args.rounds):
        for variant, table in tables.items():
            seconds = write_reports(cursor, table, ids, random.Random(f"{round_}"))
            rates[variant].append(rows / seconds)
            print(f"  round {round_ + 1}: {variant:8} {rows / seconds:8,.0f} rows/s")
    for variant, table in tables.items():
        updated, hot = cursor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s", [table]
        ).fetchone()
        print(f"{variant:8} median {statistics.median(rates[variant]):8,.0f} rows/s, "
              f"{hot / max(updated, 1):.0%} HOT updates")  # fmt: skip
        cursor.execute(f"DROP TABLE {table}")
    ratio = statistics.median(rates["current"]) / statistics.median(rates["indexed"])
    print(f"current / indexed: {ratio:.2f}x the report writes per second")


if __name__ == "__main__":
    main()
