"""`make bench-scale`: the dashboard at fleet scale, every part a real process (issue 9, issue 8's load).

    manage.py bench_scale [--devices 100000] [--processes 4] [--web-workers 3] [--duration 60]
                          [--skip-ingest] [--skip-fleet] [--skip-restart] [--skip-load]

Runs on its own PostgreSQL database (BENCH_SCALE_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/bench_scale) and its own Redis database (BENCH_SCALE_REDIS_URL,
default redis://127.0.0.1:6379/12, emptied at the start), like `manage.py bench`. It starts gunicorn,
the agent report flusher, a Celery worker with beat and the simulator processes, measures, stops
them all, prints a table and merges its figures into bench-results.json (one flat object, beside
`manage.py bench`'s). See scale.py for what each step measures; the README's benchmark section for
the figures' meaning.
"""

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from dashboard.bench import scale
from dashboard.bench.provision import provision
from dashboard.management.commands.bench import _check_redis, _create_database
from devices.models import Device

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench_scale"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
CHILD_FLAG = "FLEETDASH_BENCH_SCALE_CHILD"

ROWS = [
    (
        "state_reports.per_s",
        "state reports/s, server alone (agent server + Redis + flusher + PostgreSQL; wrk)",
    ),
    ("state_reports.server_alone.p99_ms", "  report latency p99 at that rate, ms"),
    ("state_reports.server_alone.backlog_at_end", "  report buffer at the end (devices not yet written)"),
    ("state_reports.server_alone.cpu_percent.agents", "  CPU % of one core: agent API server"),
    ("state_reports.server_alone.cpu_percent.web", "  CPU %: gunicorn"),
    ("state_reports.server_alone.cpu_percent.flusher", "  CPU %: flusher"),
    ("state_reports.server_alone.cpu_percent.redis", "  CPU %: Redis"),
    ("state_reports.server_alone.cpu_percent.postgres", "  CPU %: PostgreSQL"),
    ("state_reports.server_alone.cpu_percent.generator", "  CPU %: the load generator"),
    ("state_reports.server_alone.heartbeats.per_s", "heartbeats ({}: between whole reports)/s, server alone"),
    ("state_reports.server_alone.heartbeats.p99_ms", "  heartbeat latency p99 at that rate, ms"),
    ("state_reports.server_alone.heartbeats.cpu_percent.agents", "  CPU % of one core: agent API server"),
    ("state_reports.server_alone.heartbeats.cpu_percent.flusher", "  CPU %: flusher"),
    ("state_reports.server_alone.heartbeats.cpu_percent.redis", "  CPU %: Redis"),
    ("state_reports.server_alone.heartbeats.cpu_percent.postgres", "  CPU %: PostgreSQL"),
    ("state_reports.simulated.offered_per_s", "simulated fleet: reports/s offered (devices / 20 s)"),
    ("state_reports.simulated.per_s", "simulated fleet: reports/s accepted"),
    ("simulator.{label}.report_lateness_p50_s", "simulator: report lateness p50, s"),
    ("simulator.{label}.report_lateness_p99_s", "simulator: report lateness p99, s"),
    (
        "simulator.{label}.missed_report_slots",
        "simulator: report slots skipped (fell a whole interval behind)",
    ),
    ("simulator.{label}.report_rtt_p50_ms", "simulator: report round trip p50, ms"),
    ("simulator.{label}.polls_per_s", "simulator: target polls/s"),
    ("state_reports.simulated.cpu_percent.simulators", "  CPU %: simulators"),
    ("state_reports.simulated.rss_mb.simulators", "  memory MB: simulators"),
    ("state_reports.simulated.cpu_percent.agents", "  CPU %: agent API server"),
    ("state_reports.simulated.cpu_percent.web", "  CPU %: gunicorn"),
    ("state_reports.simulated.cpu_percent.flusher", "  CPU %: flusher"),
    ("state_reports.simulated.cpu_percent.redis", "  CPU %: Redis"),
    ("state_reports.simulated.cpu_percent.postgres", "  CPU %: PostgreSQL"),
    ("liveness_lag_s", "online/offline lag: report sent -> device page shows it, p95 s"),
    ("liveness_lag_s.p50", "  p50 s"),
    ("liveness_lag_db_s.p95", "  report sent -> last_seen_at in the database, p95 s"),
    ("liveness.oldest_pending_report_s.max", "  longest a report waited in the buffer, s"),
    ("liveness.reporting_shown_offline.max", "  devices reporting all along but counted offline, max"),
    ("restart_fleet.end_to_end_s.{label}", "restart of the fleet: every outcome final, s (idle dashboard)"),
    ("restart_fleet.fanout_s.{label}", "  every push answered (fan-out), s"),
    ("restart_fleet.succeeded.{label}", "  succeeded"),
    ("restart_fleet.failed.{label}", "  failed"),
    ("restart_fleet.missed.{label}", "  missed (offline)"),
    ("restart_fleet.unsupported.{label}", "  unsupported (agent < 1.1.0)"),
    ("restart_fleet.blocked.{label}", "  blocked (update lock)"),
    ("restart_fleet.reporting_shown_offline.max.{label}", "  reporting all along, counted offline, max"),
    ("restart_fleet.{label}.cpu_percent.agents", "  CPU %: agent API server"),
    ("restart_fleet.{label}.cpu_percent.web", "  CPU %: gunicorn"),
    ("restart_fleet.{label}.cpu_percent.worker", "  CPU %: Celery worker + beat"),
    ("restart_fleet.{label}.cpu_percent.flusher", "  CPU %: flusher"),
    ("restart_fleet.{label}.cpu_percent.redis", "  CPU %: Redis"),
    ("restart_fleet.{label}.cpu_percent.postgres", "  CPU %: PostgreSQL"),
    ("restart_fleet.{label}.cpu_percent.simulators", "  CPU %: simulators"),
    ("restart_fleet.{label}.rss_mb.web", "  memory MB: gunicorn"),
    ("restart_fleet.{label}.rss_mb.worker", "  memory MB: Celery worker + beat"),
    ("restart_fleet.{label}.rss_mb.redis", "  memory MB: Redis"),
    ("restart_fleet.{label}.rss_mb.simulators", "  memory MB: simulators"),
    ("load.errors", "load: 50 users during the restart: errors"),
    ("load.requests", "  page requests"),
    ("load.pages.p50_ms", "  pages p50, ms"),
    ("load.pages.p95_ms", "  pages p95, ms"),
    ("load.fanout_s.idle", "  fan-out on an idle dashboard, s"),
    ("load.fanout_s.busy", "  fan-out with the 50 users, s"),
    ("load.end_to_end_s.busy", "  every outcome final with the 50 users, s"),
]


def table(results: dict, label: str) -> str:
    rows = []
    for key, text in ROWS:
        key = key.format(label=label)
        if key in results:
            value = results[key]
            shown = f"{value:,.3g}" if isinstance(value, float) and value < 10 else f"{value:,}"
            rows.append((text, shown, key))
    width = max(len(text) for text, _, _ in rows) if rows else 0
    vwidth = max(len(v) for _, v, _ in rows) if rows else 0
    return "\n".join(f"{text.ljust(width)}  {v.rjust(vwidth)}  {key}" for text, v, key in rows)


class Command(BaseCommand):
    help = "Benchmark the whole system at fleet scale: ingestion, the simulated fleet, a fleet restart, load."

    def add_arguments(self, parser):
        parser.add_argument("--devices", type=int, default=100_000, help="simulated devices (default 100000)")
        parser.add_argument("--processes", type=int, default=4, help="simulator processes (default 4)")
        parser.add_argument("--web-workers", type=int, default=3, help="gunicorn gthread workers (default 3)")
        parser.add_argument(
            "--web-threads", type=int, default=4, help="threads per gunicorn worker (default 4)"
        )
        parser.add_argument("--web-port", type=int, default=8100)
        parser.add_argument(
            "--agent-processes", type=int, default=2,
            help="serve_agent_api processes for the agents' traffic, on --web-port + 1 (default 2; 0: gunicorn)",
        )  # fmt: skip
        parser.add_argument(
            "--worker-processes",
            type=int,
            default=4,
            help="Celery worker processes (prefork; default 4, as the deploy docs' deliver queue has)",
        )
        parser.add_argument(
            "--first-simulator-port",
            type=int,
            default=21100,
            help="ports from here on, one per simulator process: below the ephemeral range",
        )
        parser.add_argument(
            "--poll-interval", type=float, default=900,
            help="seconds between target polls of a device (default 900: pushes and nudges carry changes at once)",
        )  # fmt: skip
        parser.add_argument(
            "--duration", type=float, default=60, help="seconds of the simulated fleet window"
        )
        parser.add_argument(
            "--ingest-duration", type=float, default=30, help="seconds of the server-alone run"
        )
        parser.add_argument("--users", type=int, default=50, help="dashboard users of the load test")
        parser.add_argument("--load-duration", type=float, default=60)
        parser.add_argument(
            "--restart-timeout", type=float, default=600, help="give up on a restart after this"
        )
        parser.add_argument("--skip-ingest", action="store_true")
        parser.add_argument(
            "--skip-fleet", action="store_true", help="no simulators (and so no restart, load)"
        )
        parser.add_argument("--skip-restart", action="store_true")
        parser.add_argument("--skip-load", action="store_true")
        parser.add_argument("--output", default=str(settings.BASE_DIR / "bench-results.json"))
        parser.add_argument(
            "--report-interval", type=int, default=scale.REPORT_INTERVAL_S,
            help="seconds between a device's reports (default 20, the issue's; figures at another interval "
            "are merged under keys ending @report_<N>s)",
        )  # fmt: skip
        parser.add_argument(
            "--database-url", default=os.environ.get("BENCH_SCALE_DATABASE_URL") or DEFAULT_DATABASE_URL
        )
        parser.add_argument(
            "--redis-url", default=os.environ.get("BENCH_SCALE_REDIS_URL") or DEFAULT_REDIS_URL
        )
        parser.add_argument(
            "--here", action="store_true", help="use this process's database and Redis (tests)"
        )

    def handle(self, *args, **options):
        if options["devices"] < options["processes"] or options["processes"] < 1:
            raise CommandError("--devices must be at least --processes, and --processes at least 1.")
        if not options["here"] and os.environ.get(CHILD_FLAG) != "1":
            return self._reexec(options)
        self._run(options)

    def _env(self, options) -> dict:
        """What the server side and this process share: the bench's database, Redis and queue, and
        the protocol's intervals at fleet scale (20 s reports, offline after three missed ones)."""
        return {
            "REDIS_URL": settings.REDIS_URL if options["here"] else options["redis_url"],
            "CELERY_DEFAULT_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE if options["here"] else "bench_scale",
            "CACHE_KEY_PREFIX": "bench_scale",
            "LOG_LEVEL": "WARNING",
            "AGENT_REPORT_INTERVAL_S": str(options["report_interval"]),
            "AGENT_POLL_INTERVAL_S": str(int(options["poll_interval"])),
            "DEVICE_OFFLINE_AFTER_S": str(3 * options["report_interval"]),
            "AGENT_FLUSH_IN_WORKER": "false",  # the flusher runs as a process of its own, measured apart
            "PYTHONUNBUFFERED": "1",
        }

    def _reexec(self, options):
        if sys.argv[1:2] != ["bench_scale"]:
            raise CommandError("Run it as `manage.py bench_scale` (from code, pass here=True).")
        _create_database(options["database_url"])
        _check_redis(options["redis_url"])
        env = os.environ | self._env(options) | {CHILD_FLAG: "1", "DATABASE_URL": options["database_url"]}
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    def _run(self, options):
        # Stopped by Ctrl-C or SIGTERM (even when started in the background): stop every process first.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
        log = self.stdout.write
        started = time.monotonic()
        if connection.vendor != "postgresql":
            log(
                self.style.WARNING(
                    f"{connection.vendor}: not PostgreSQL, so these figures are indicative only."
                )
            )
        if not options["here"]:
            call_command("migrate", interactive=False, verbosity=0)
        env = os.environ | self._env(options)
        if options["here"]:
            env["DATABASE_URL"] = os.environ.get("DATABASE_URL", "")
        run_dir = Path(settings.RUN_DIR) / "bench-scale"
        run_dir.mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{options['web_port']}"
        log(f"Database {connection.settings_dict['NAME']}, Redis {settings.REDIS_URL}; logs in {run_dir}")
        log(f"Provisioning {options['devices']:,} simulated devices (bulk, as registration would)")
        fleet = provision(
            options["devices"], processes=options["processes"], state_dir=run_dir,
            server_url=f"http://127.0.0.1:{options['web_port'] + 1}" if options["agent_processes"] else url,
            first_port=options["first_simulator_port"], log=log,
        )  # fmt: skip
        plan = scale.Plan(
            fleet=fleet, probes=fleet.probes, run_dir=run_dir, web_port=options["web_port"],
            web_workers=options["web_workers"], web_threads=options["web_threads"], poll_interval=options["poll_interval"],
            agent_port=options["web_port"] + 1, agent_processes=options["agent_processes"],
            worker_processes=options["worker_processes"],
            duration=options["duration"], ingest_duration=options["ingest_duration"],
            load_users=options["users"], load_duration=options["load_duration"],
            restart_timeout=options["restart_timeout"], env=env, log=log,
            report_interval=options["report_interval"],
        )  # fmt: skip
        scale.flush_bench_redis()
        # Every device reported just now, so the fleet starts online (as in the bench's steady state).
        Device.objects.filter(fleet=fleet.fleet).update(last_seen_at=timezone.now())
        try:
            log("Starting gunicorn, the flusher and a Celery worker with beat")
            scale.start_server_side(plan)
            scale.seed_identity_cache(plan)
            scale.seed_target_cache(plan)
            cookies = scale.session_cookies(fleet.operator, max(1, options["users"]))
            if not options["skip_ingest"]:
                log("1. Ingestion, server alone")
                scale.measure_ingest_server_alone(plan)
            if not options["skip_fleet"]:
                log(f"2. The simulated fleet: {fleet.size:,} devices in {len(fleet.shards)} processes")
                scale.seed_identity_cache(plan)
                scale.start_simulators(plan)
                scale.measure_simulated_fleet(plan, cookies[0])
                previous = None
                if not options["skip_restart"]:
                    log("3. Restart of the whole fleet, the simulators running, no dashboard users")
                    scale.measure_restart(plan, cookies[0])
                    plan.results["load.fanout_s.idle"] = plan.results[f"restart_fleet.fanout_s.{plan.label}"]
                    previous = fleet.fleet.actions.filter(kind="restart").latest("pk").pk
                if not options["skip_load"] and previous is not None:
                    log(f"4. The same restart while {options['users']} dashboard users browse")
                    time.sleep(plan.report_interval)  # restarted devices report their new containers
                    uuids = list(Device.objects.filter(fleet=fleet.fleet).values_list("uuid", flat=True))
                    random.Random(5).shuffle(uuids)
                    scale.measure_restart_under_load(
                        plan, cookies[: options["users"]], uuids[:2000], previous
                    )
        finally:
            log("Stopping every process")
            scale.stop_all(plan)
        results = plan.results
        if options["report_interval"] != scale.REPORT_INTERVAL_S:
            # Another interval than the issue's: its figures are kept apart, named after it.
            results = {f"{key}@report_{options['report_interval']}s": v for key, v in results.items()}
        output = Path(options["output"])
        merged = json.loads(output.read_text()) if output.exists() else {}
        merged.update({k: v for k, v in results.items() if isinstance(v, int | float)})
        output.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        log("")
        log(table(plan.results, plan.label))
        log(f"\nMerged {len(results)} figures into {output} in {time.monotonic() - started:.0f} s.")
