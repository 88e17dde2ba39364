"""`make bench`: the device pages and the action engine at 1,000 and 100,000 devices.

    manage.py bench [--sizes 1000,100000] [--repeat 40] [--reseed] [--output bench-results.json]

Runs on its own PostgreSQL database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/bench, created when missing) and its own Redis database
(BENCH_REDIS_URL, default redis://127.0.0.1:6379/13, queue "bench"), never on the developer's
data: the command re-executes itself with DATABASE_URL and REDIS_URL pointing there. The seeded
fleets are kept between runs (--reseed seeds them again), so a second run starts measuring at once.

Prints a table and the goals of issues 3 and 4 (PASS/FAIL), and writes bench-results.json at the
repository root: one flat JSON object of named numbers, each key ending with its size (".1k").

--here runs on the database and Redis this process is configured with (the tests use it at tiny
sizes so the command cannot rot); it empties the configured Celery queue, so not on real data.
On SQLite the figures are indicative only.
"""

import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.test.utils import override_settings

from dashboard.bench import report, scenarios
from dashboard.bench.seed import ONLINE_WINDOW_S, ensure_fleets

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
CHILD_FLAG = "FLEETDASH_BENCH_CHILD"


class Command(BaseCommand):
    help = "Benchmark the device pages and the action engine at two fleet sizes (PostgreSQL + Redis)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--sizes", default="1000,100000", help="fleet sizes, smallest first (default 1000,100000)"
        )
        parser.add_argument(
            "--repeat", type=int, default=40, help="timed requests per page and size (default 40)"
        )
        parser.add_argument("--reseed", action="store_true", help="seed the bench fleets again")
        parser.add_argument("--output", default=str(settings.BASE_DIR / "bench-results.json"))
        parser.add_argument("--skip-engine", action="store_true", help="only the pages (issue 3)")
        parser.add_argument("--skip-pages", action="store_true", help="only the action engine (issue 4)")
        parser.add_argument(
            "--database-url", default=os.environ.get("BENCH_DATABASE_URL") or DEFAULT_DATABASE_URL
        )
        parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL") or DEFAULT_REDIS_URL)
        parser.add_argument(
            "--here",
            action="store_true",
            help="use this process's database and Redis (tests; empties its queue)",
        )

    def handle(self, *args, **options):
        try:
            sizes = sorted({int(size) for size in options["sizes"].split(",")})
        except ValueError:
            raise CommandError("--sizes takes numbers separated by commas, e.g. 1000,100000") from None
        if len(sizes) < 2 or sizes[0] < 1:
            raise CommandError(
                "--sizes needs two sizes or more: the goals compare the largest with the smallest."
            )
        if not options["here"] and os.environ.get(CHILD_FLAG) != "1":
            return self._reexec(options)
        self._run(sizes, options)

    # --- a process of its own, on the bench's database and Redis ---------------------------------

    def _reexec(self, options):
        if sys.argv[1:2] != ["bench"]:
            raise CommandError("Run it as `manage.py bench` (from code, pass here=True).")
        database_url, redis_url = options["database_url"], options["redis_url"]
        if urlsplit(database_url).scheme.startswith("postgres"):
            _create_database(database_url)
        else:
            self.stderr.write(f"warning: {database_url} is not PostgreSQL: the figures are indicative only.")
        _check_redis(redis_url)
        env = os.environ | {
            CHILD_FLAG: "1",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CELERY_DEFAULT_QUEUE": "bench",
            "CACHE_KEY_PREFIX": "bench",
            "LOG_LEVEL": "WARNING",
        }
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    def _run(self, sizes: list[int], options):
        log = self.stdout.write
        if connection.vendor != "postgresql":
            log(
                self.style.WARNING(
                    f"{connection.vendor}: not PostgreSQL, so these figures are indicative only."
                )
            )
        if not options["here"]:
            call_command("migrate", interactive=False, verbosity=0)
        broker_client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        try:
            broker_client.ping()
        except redis.RedisError as error:
            raise CommandError(f"Redis at {settings.CELERY_BROKER_URL} is not answering: {error}") from None
        broker = scenarios.Broker(broker_client, settings.CELERY_TASK_DEFAULT_QUEUE)
        results: dict = {}
        started = time.monotonic()
        db = connection.settings_dict
        log(f"Database {connection.vendor} {db['NAME']} on {db.get('HOST') or 'local'}; "
            f"Redis {settings.CELERY_BROKER_URL}, queue {broker.queue!r}")  # fmt: skip
        # Online means reported within the hour here, so no device goes offline while the bench runs.
        with override_settings(DEVICE_OFFLINE_AFTER_S=ONLINE_WINDOW_S):
            log("Seeding (bulk) or reusing the bench fleets")
            benches = ensure_fleets(sizes, reseed=options["reseed"], log=log)
            repeat = max(3, options["repeat"])
            if not options["skip_pages"]:
                log(f"Device list: {repeat} timed requests per page and size, interleaved")
                scenarios.measure_device_list(benches, repeat, results, log)
                log("Fleet summary counts")
                scenarios.measure_fleet_summary(benches, repeat, results)
                log("Select all matching")
                scenarios.measure_select_all(benches, max(3, repeat // 2), results, log)
            if not options["skip_engine"]:
                log("Baseline: pipelined LPUSH")
                scenarios.measure_baselines(benches, results, broker_client)
                log(
                    "Restart of a whole fleet: POST, expansion beside a bare bulk insert (best of 3 each), messages, progress"
                )
                scenarios.measure_restart(benches, max(3, repeat // 2), results, broker, log)
        found = report.goals(results, sizes)
        results["goals.passed"] = sum(g.passed for g in found)
        results["goals.failed"] = sum(not g.passed for g in found)
        log("")
        log(report.table(results, sizes))
        log("")
        log(report.render_goals(found))
        Path(options["output"]).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        log(f"\nWrote {options['output']} ({len(results)} figures) in {time.monotonic() - started:.0f} s.")


def _create_database(url: str) -> None:
    """Create the bench database when missing, through the server's maintenance database."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        raise CommandError(f"{url} names no database.")
    maintenance = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    try:
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
                print(f"Created the bench database {name!r}.")
    except psycopg.Error as error:
        raise CommandError(
            f"The bench needs PostgreSQL: {parts.hostname}:{parts.port or 5432} did not let us use {name!r} "
            f"({error}). Start PostgreSQL or set BENCH_DATABASE_URL."
        ) from None


def _check_redis(url: str) -> None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        raise CommandError(
            f"The bench needs Redis: {url} is not answering ({error}). Set BENCH_REDIS_URL."
        ) from None
