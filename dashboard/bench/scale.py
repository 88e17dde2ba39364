"""What `bench_scale` measures: the whole system at fleet scale, every part a real process.

1. Ingestion, server alone: gunicorn + Redis + the flusher + PostgreSQL, agents' reports replayed by
   a light generator (wrk), so the simulator's own CPU is not in the figure.
2. The simulated fleet: N simulator processes, every device reporting every 20 s and polling its
   target; how well they keep their schedule, what the server sustains, and how far behind the
   device page's online/offline status runs (probe devices sent offline, then reporting).
3. A restart of the whole fleet, every device online and the simulators running: the time until
   every outcome is final, with the CPU and memory of each part.
4. The same restart while 50 logged-in dashboard users browse (issue 8's load test).
"""

import asyncio
import importlib
import json
import random
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import redis
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.db import close_old_connections
from django.urls import reverse
from django.utils import timezone

from dashboard.bench import loadgen
from dashboard.bench.processes import ResourceSampler, Service, group_pids, pids_named
from dashboard.bench.provision import SimulatedFleet
from devices import ingest
from devices.models import ActionState, Device, DeviceAction
from devices.selectors import online_q
from devices.simulator.model import VirtualDevice

# Requests in flight per simulator process (25,000 devices; up to 16 pipelined on a connection; a
# real device has a connection of its own). During a restart the agent API server answers in 0.1-0.4
# s on its share of the saturated cores, so 400 capped a simulator at about 1,000 requests a second,
# below its 1,250 heartbeats and the restart's reports: they waited up to 10 s for a slot and the
# restart took 128 s; with 1,600, 1-4 s and 112 s (2026-12-03, sampling /sim/stats).
SIMULATOR_CONNECTIONS = 1600
REPORT_INTERVAL_S = 20  # the interval; --report-interval measures at another one


@dataclass
class Plan:
    fleet: SimulatedFleet
    probes: list[dict]  # devices outside the simulators: {"id", "uuid", "api_key"}
    run_dir: Path
    web_port: int
    web_workers: int
    web_threads: int
    agent_port: int
    agent_processes: int  # serve_agent_api processes sharing agent_port; 0: gunicorn serves agents too
    poll_interval: float
    worker_processes: int
    duration: float
    ingest_duration: float
    load_users: int
    load_duration: float
    restart_timeout: float
    env: dict
    report_interval: float
    log: object
    services: dict[str, Service] = field(default_factory=dict)
    results: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def agent_url(self) -> str:
        """Where agents (simulators, wrk, probes) send their requests."""
        return f"http://127.0.0.1:{self.agent_port}" if self.agent_processes else self.url

    @property
    def label(self) -> str:
        size = self.fleet.size
        return f"{size // 1000}k" if size % 1000 == 0 else str(size)


# --- Processes -------------------------------------------------------------------------------------


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args]


def start_server_side(plan: Plan) -> None:
    """gunicorn, the flusher, a Celery worker with beat (queue per the env), each in its own group."""
    logs = plan.run_dir
    start = lambda name, argv: plan.services.__setitem__(  # noqa: E731
        name, Service(name, argv, plan.env, logs, settings.BASE_DIR)
    )
    start(
        "web",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "dashboard.wsgi",
            "-b",
            f"127.0.0.1:{plan.web_port}",
            "-w",
            str(plan.web_workers),
            "-k",
            "gthread",  # keep-alive: a sync worker waits on every client's close (agents reuse connections)
            "--threads",
            str(plan.web_threads),
            "--keep-alive",
            "30",
            "--backlog",
            "4096",
            "--timeout",
            "120",
            "--log-level",
            "warning",
        ],
    )
    for index in range(plan.agent_processes):
        start(f"agents{index}", _manage("serve_agent_api", "--port", str(plan.agent_port), "--threads", "4"))
    start("flusher", _manage("flush_agent_reports", "--loop"))
    # --worker-processes, default 4 as the deploy docs' `deliver` queue has (2 before: a restart's fan-out waited on
    # the action row's lock with more; 67 s with 4, 70 s with 2, now that it does not, 2026-12-03).
    start("worker", [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "-B",
                     "-s", str(logs / "celerybeat-schedule"), "-P", "prefork", "-c", str(plan.worker_processes),
                     "--without-gossip", "--without-mingle", "-l", "warning", "-n", "bench-scale@%h"])  # fmt: skip
    _wait(lambda: _listening(plan.web_port), 60, "the web server", plan)
    if plan.agent_processes:
        _wait(lambda: _listening(plan.agent_port), 60, "the agent API server", plan)


def start_simulators(plan: Plan) -> None:
    for index, (port, path, _count) in enumerate(plan.fleet.shards):
        name = f"simulator{index}"
        plan.services[name] = Service(
            name,
            _manage(
                "simulate_devices", "--server", plan.agent_url, "--count", "0", "--port", str(port),
                "--state-file", str(path), "--report-interval", str(plan.report_interval),
                "--poll-interval", str(plan.poll_interval), "--save-every", "3600", "--no-poll-at-start",
                "--connections", str(SIMULATOR_CONNECTIONS),
            ),
            plan.env, plan.run_dir, settings.BASE_DIR,
        )  # fmt: skip
    for port, _, _ in plan.fleet.shards:
        _wait(lambda port=port: _listening(port), 120, f"the simulator on port {port}", plan)


def stop_all(plan: Plan) -> None:
    for service in reversed(list(plan.services.values())):
        service.stop()
    plan.services.clear()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(condition, timeout: float, what: str, plan: Plan) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for service in plan.services.values():
            if not service.alive():
                raise RuntimeError(f"{service.name} exited:\n{service.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def sampler(plan: Plan, *, simulators: bool = True, extra: dict | None = None) -> ResourceSampler:
    services = plan.services
    groups = {
        "web": lambda: group_pids(services["web"].pid),
        "agents": lambda: [
            pid for name, s in services.items() if name.startswith("agents") for pid in group_pids(s.pid)
        ],
        "flusher": lambda: group_pids(services["flusher"].pid),
        "worker": lambda: group_pids(services["worker"].pid),
        "redis": lambda: pids_named("redis-server"),
        "postgres": lambda: pids_named("postgres"),
    }
    if simulators:
        groups["simulators"] = lambda: [
            pid for name, s in services.items() if name.startswith("simulator") for pid in group_pids(s.pid)
        ]
    return ResourceSampler(groups | (extra or {}))


def record_resources(plan: Plan, prefix: str, figures: dict) -> None:
    for name, values in figures.items():
        plan.results[f"{prefix}.cpu_percent.{name}"] = values["cpu_percent"]
        plan.results[f"{prefix}.rss_mb.{name}"] = values["rss_mb"]


# --- Seeding the caches the first reports would fill ---------------------------------------------------


def seed_identity_cache(plan: Plan) -> None:
    """What a fleet that keeps reporting has in Redis: each device's identity, by api key hash, its
    expiry pushed back to IDENTITY_TTL_S by every report (so at most one report interval less).

    Called again before the simulators start: the steps before them do not report for every
    device, and a key left to expire while the bench waits sends that device's next report
    through Django, which a running fleet does not see (an expiry spread over 60-600 s, as this
    once seeded, made most of the simulated fleet's first minute a cold start)."""
    from devices.keys import hash_secret

    rng = random.Random(1)
    r = ingest.redis_client()
    uuids = {}
    for _, path, _ in plan.fleet.shards:
        for item in json.loads(path.read_text())["devices"]:
            uuids[item["uuid"]] = item["api_key"]
    for probe in plan.probes:
        uuids[probe["uuid"]] = probe["api_key"]
    ids = dict(Device.objects.filter(fleet=plan.fleet.fleet).values_list("uuid", "id"))
    ids |= {probe["uuid"]: probe["id"] for probe in plan.probes}
    pipe = r.pipeline(transaction=False)
    for n, (uuid, api_key) in enumerate(uuids.items()):
        pipe.set(
            ingest._identity_key(hash_secret(api_key)),
            f"{ids[uuid]}|{uuid}",
            ex=rng.randint(ingest.IDENTITY_TTL_S - int(plan.report_interval), ingest.IDENTITY_TTL_S),
        )
        if n % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def seed_target_cache(plan: Plan) -> None:
    """What a fleet that has run for one poll interval has: every agent holds its target's ETag (in
    its state file) and the view has remembered it (devices.targets), so a poll that finds nothing
    changed is answered 304 without the database, as it would be after the devices' first polls."""
    from devices import targets
    from devices.services import device_target_state, target_etag

    epoch = targets.epoch()
    devices = Device.objects.filter(fleet=plan.fleet.fleet).select_related(
        "fleet", "device_type", "fleet__target_release"
    )
    etags = {
        device.uuid: (device.pk, target_etag(device_target_state(device))) for device in devices.iterator()
    }
    r = ingest.redis_client()
    pipe = r.pipeline(transaction=False)
    for n, (device_id, etag) in enumerate(etags.values()):
        pipe.set(targets._target_key(device_id), f"{epoch}|{etag}", ex=targets.CACHE_TTL_S)
        if n % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    for _, path, _ in plan.fleet.shards:
        state = json.loads(path.read_text())
        for item in state["devices"]:
            if item["uuid"] in etags:
                item["etag"] = etags[item["uuid"]][1]
        path.write_text(json.dumps(state))


def write_agent_files(plan: Plan) -> tuple[Path, Path]:
    """The api keys of every simulated device and one device's real report body, for the generator."""
    keys, body = plan.run_dir / "keys.txt", plan.run_dir / "report.json"
    api_keys, sample = [], None
    for port, path, _ in plan.fleet.shards:
        for item in json.loads(path.read_text())["devices"]:
            api_keys.append(item["api_key"])
            sample = sample or (item, port)
    keys.write_text("\n".join(api_keys) + "\n")
    device = VirtualDevice.from_state(sample[0])
    payload = device.report_payload(f"http://127.0.0.1:{sample[1]}")
    body.write_text(json.dumps(payload, separators=(",", ":")))
    return keys, body


def wait_for_flush(plan: Plan, timeout: float = 120) -> float:
    started = time.monotonic()
    r = ingest.redis_client()
    _wait(lambda: r.zcard(ingest.DIRTY) == 0, timeout, "the flusher to drain the report buffer", plan)
    return time.monotonic() - started


# --- 1. Ingestion, server alone ------------------------------------------------------------------------


def measure_ingest_server_alone(plan: Plan) -> None:
    """wrk replaying whole reports (`state_reports.per_s`, the figure the issue asks for: the
    heaviest report), then heartbeats, `{}`, which is what agents send between two whole reports
    (devices/PROTOCOL.md): the real traffic lies between the two, much nearer the second."""
    keys, body = write_agent_files(plan)
    heartbeat = body.with_name("heartbeat.json")
    heartbeat.write_text("{}")
    _replay_reports(plan, keys, body, "state_reports.server_alone", "whole reports", "state_reports.per_s")
    prefix = "state_reports.server_alone.heartbeats"
    _replay_reports(plan, keys, heartbeat, prefix, "heartbeats {}", f"{prefix}.per_s")


def _replay_reports(plan: Plan, keys: Path, body: Path, prefix: str, what: str, rate_key: str) -> None:
    argv = loadgen.agent_reports_command(plan.agent_url, keys, body, plan.ingest_duration, 64, sys.executable)
    generator = "wrk" if loadgen.wrk_available() else "python"
    server = (
        f"{plan.agent_processes} serve_agent_api processes"
        if plan.agent_processes
        else f"gunicorn: {plan.web_workers} workers x {plan.web_threads} threads"
    )
    plan.log(f"  {generator} replaying {what} of {plan.fleet.size:,} devices for {plan.ingest_duration:.0f} s, "
             f"{server}")  # fmt: skip
    loadgen.run_agent_reports(
        loadgen.agent_reports_command(plan.agent_url, keys, body, 3, 64, sys.executable), 60
    )  # warm-up
    wait_for_flush(plan)
    r = ingest.redis_client()
    backlog = []
    with sampler(
        plan, simulators=False, extra={"generator": lambda: pids_named(argv[0].rsplit("/", 1)[-1])}
    ) as used:
        started = time.monotonic()
        output = loadgen.run_agent_reports(argv, plan.ingest_duration + 60)
        elapsed = time.monotonic() - started
        backlog.append(r.zcard(ingest.DIRTY))
    drained = wait_for_flush(plan)
    figures = loadgen.parse_agent_reports(output, elapsed)
    plan.results[rate_key] = round(figures["per_s"], 1)
    plan.results[f"{prefix}.p50_ms"] = figures["p50_ms"]
    plan.results[f"{prefix}.p99_ms"] = figures["p99_ms"]
    plan.results[f"{prefix}.errors"] = figures["errors"]
    plan.results[f"{prefix}.backlog_at_end"] = backlog[-1]
    plan.results[f"{prefix}.drain_s"] = round(drained, 2)
    record_resources(plan, prefix, used.figures())
    plan.log(f"  {figures['per_s']:,.0f} reports/s, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
             f"{figures['errors']} errors; buffer at the end {backlog[-1]:,} devices, drained in {drained:.1f} s; "
             f"CPU {used.figures()}")  # fmt: skip


# --- 2. The simulated fleet ------------------------------------------------------------------------------


def simulator_stats(plan: Plan) -> list[dict]:
    stats = []
    for port, _, _ in plan.fleet.shards:
        stats.append(httpx.get(f"http://127.0.0.1:{port}/sim/stats", timeout=30).json())
    return stats


def session_cookies(user, n: int) -> list[str]:
    """`n` logged-in sessions of `user`, made as django.contrib.auth.login makes them."""
    store = importlib.import_module(settings.SESSION_ENGINE).SessionStore
    cookies = []
    for _ in range(n):
        session = store()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        cookies.append(session.session_key)
    return cookies


def probe_liveness(
    plan: Plan, probe: dict, client: httpx.Client, timeout: float = 60
) -> tuple[float, float] | None:
    """Send a probe device offline (in the database), report for it, and time until the database,
    then its device page, show it online again."""
    Device.objects.filter(pk=probe["id"]).update(last_seen_at=timezone.now() - timedelta(days=1))
    close_old_connections()
    page = reverse("devices:detail", args=[probe["uuid"]])
    sent = time.monotonic()
    sent_at = timezone.now()
    response = httpx.patch(
        plan.agent_url + "/api/v1/device/state",
        content=json.dumps({"status": "idle", "uptime_s": 100}),
        headers={"Authorization": f"Bearer {probe['api_key']}", "Content-Type": "application/json"},
    )
    if response.status_code != 204:
        plan.log(f"  probe report answered {response.status_code}")
        return None
    in_db = None
    while time.monotonic() - sent < timeout:
        if in_db is None:
            seen = Device.objects.filter(pk=probe["id"]).values_list("last_seen_at", flat=True).first()
            if seen and seen >= sent_at - timedelta(seconds=1):
                in_db = time.monotonic() - sent
        if in_db is not None:
            html = client.get(page).text
            if 'id="device-status"><span class="badge status-online"' in html:
                return in_db, time.monotonic() - sent
        time.sleep(0.1)
    plan.log(
        f"  probe {probe['uuid'][:7]} not shown online within {timeout:.0f} s: counted as {timeout:.0f} s"
    )
    return in_db or timeout, timeout


def oldest_pending_report_s(r: redis.Redis) -> float:
    """How long the report longest in the buffer has waited for the flusher."""
    oldest = r.zrange(ingest.DIRTY, 0, 0, withscores=True)
    return max(0.0, time.time() - oldest[0][1]) if oldest else 0.0


def measure_simulated_fleet(plan: Plan, cookie: str) -> None:
    """The fleet running: measured once every device has had its first report accepted (the whole
    state; the next ones say what changed, mostly `{}`), or after three report intervals, and the
    pages show every device online (or two intervals more)."""
    warm = plan.report_interval + 15
    plan.log(
        f"  {len(plan.fleet.shards)} simulator processes started; {warm} s for every device to start reporting"
    )
    waited_from = time.monotonic()
    time.sleep(warm)
    deadline = waited_from + 3 * plan.report_interval
    while (first := sum(s["totals"].get("reports", 0) for s in simulator_stats(plan))) < plan.fleet.size:
        if time.monotonic() > deadline:
            plan.log(f"  only {first:,} reports accepted since the simulators started: measuring anyway")
            break
        time.sleep(1)
    # Then until the flusher has caught up with those first reports: every device online on the
    # pages (the fleet's, started before the simulators, shows offline until its first is written).
    fleet = Device.objects.filter(fleet=plan.fleet.fleet)
    deadline = time.monotonic() + 2 * plan.report_interval
    while (offline := plan.fleet.size - fleet.filter(online_q()).count()) > 0:
        if time.monotonic() > deadline:
            plan.log(f"  {offline:,} devices not yet shown online: measuring anyway")
            break
        time.sleep(2)
    plan.results["state_reports.simulated.settle_s"] = round(time.monotonic() - waited_from, 1)
    before = simulator_stats(plan)
    r = ingest.redis_client()
    lags, backlog, waited, shown_offline = [], [], [], []
    client = httpx.Client(base_url=plan.url, cookies={"sessionid": cookie}, timeout=60)
    with sampler(plan) as used:
        started = time.monotonic()
        gap = plan.duration / max(1, len(plan.probes))
        for probe in plan.probes:
            slot = time.monotonic()
            lag = probe_liveness(plan, probe, client)
            if lag:
                lags.append(lag)
            backlog.append(r.zcard(ingest.DIRTY))
            waited.append(oldest_pending_report_s(r))
            shown_offline.append(plan.fleet.size - fleet.filter(online_q()).count())
            time.sleep(max(0.0, gap - (time.monotonic() - slot)))
            if time.monotonic() - started > plan.duration:
                break
        while time.monotonic() - started < plan.duration:
            time.sleep(0.5)
        elapsed = time.monotonic() - started
    after = simulator_stats(plan)
    reports = sum(
        a["totals"].get("reports", 0) - b["totals"].get("reports", 0)
        for a, b in zip(after, before, strict=True)
    )
    failed = sum(
        a["totals"].get("reports_failed", 0) - b["totals"].get("reports_failed", 0)
        for a, b in zip(after, before, strict=True)
    )
    missed = sum(a["totals"].get("missed_report_slots", 0) - b["totals"].get("missed_report_slots", 0) for a, b in zip(after, before, strict=True))  # fmt: skip
    late_p50 = statistics.median(s["lateness"]["p50_ms"] for s in after) / 1000
    late_p99 = max(s["lateness"]["p99_ms"] for s in after) / 1000
    polls = sum(s["polls_per_s"] for s in after)
    rtt_p50 = statistics.median(s["report_rtt"]["p50_ms"] for s in after)
    label = plan.label
    res = plan.results
    res["state_reports.simulated.per_s"] = round(reports / elapsed, 1)
    res["state_reports.simulated.offered_per_s"] = round(plan.fleet.size / plan.report_interval, 1)
    res["state_reports.simulated.failed"] = failed
    res["state_reports.simulated.backlog_max"] = max(backlog or [0])
    res[f"simulator.{label}.report_lateness_p50_s"] = round(late_p50, 3)
    res[f"simulator.{label}.report_lateness_p99_s"] = round(late_p99, 3)
    res[f"simulator.{label}.missed_report_slots"] = missed
    res[f"simulator.{label}.polls_per_s"] = round(polls, 1)
    res[f"simulator.{label}.report_rtt_p50_ms"] = rtt_p50
    if lags:
        db_lags, page_lags = zip(*lags, strict=True)
        res["liveness_lag_s"] = round(loadgen.percentile(list(page_lags), 0.95), 2)
        res["liveness_lag_s.p50"] = round(statistics.median(page_lags), 2)
        res["liveness_lag_s.max"] = round(max(page_lags), 2)
        res["liveness_lag_db_s.p95"] = round(loadgen.percentile(list(db_lags), 0.95), 2)
    res["liveness_lag.probes"] = len(lags)
    # Every simulated device reports all along: one the pages count offline is a liveness error.
    res["liveness.reporting_shown_offline.max"] = max(shown_offline or [0])
    res["liveness.oldest_pending_report_s.max"] = round(max(waited or [0]), 2)
    record_resources(plan, "state_reports.simulated", used.figures())
    plan.log(f"  {reports / elapsed:,.0f} reports/s of {plan.fleet.size / plan.report_interval:,.0f} offered "
             f"({failed} failed, {missed} slots missed), lateness p50 {late_p50:.3f} s p99 {late_p99:.3f} s, "
             f"report RTT p50 {rtt_p50} ms, {polls:.0f} polls/s; liveness lag (page) "
             f"{[round(p, 2) for _, p in lags]} s; buffer max {max(backlog or [0]):,}, oldest pending report "
             f"{max(waited or [0]):.1f} s; reporting devices the pages count offline: {shown_offline}")  # fmt: skip
    plan.log(f"  CPU/memory: {used.figures()}")


# --- 3 and 4. Restart of the whole fleet -------------------------------------------------------------------


def post_restart(plan: Plan, cookie: str) -> int:
    """The restart as an operator posts it: the confirmation form (CSRF token), then the POST."""
    fleet = plan.fleet.fleet
    url = reverse("fleets:action-new", args=[fleet.pk, "restart"])
    with httpx.Client(base_url=plan.url, cookies={"sessionid": cookie}, timeout=120) as client:
        form = client.get(url)
        token = client.cookies.get("csrftoken")
        response = client.post(url, data={"confirm": fleet.name, "csrfmiddlewaretoken": token},
                               headers={"X-CSRFToken": token, "Referer": plan.url + url})  # fmt: skip
    if response.status_code != 302:
        raise RuntimeError(f"the restart POST answered {response.status_code} (form: {form.status_code})")
    return DeviceAction.objects.filter(fleet=fleet, kind="restart").latest("pk").pk


def follow_action(plan: Plan, action_id: int, posted: float) -> dict:
    """Poll the action's counters until it is done (or the timeout): fan-out and end-to-end times."""
    fanout = done = None
    row, timeline, noted, shown_offline = {}, [], 0.0, 0
    r = redis.Redis.from_url(settings.REDIS_URL)
    before = simulator_action_totals(plan)
    fleet = Device.objects.filter(fleet=plan.fleet.fleet)
    while time.monotonic() - posted < plan.restart_timeout:
        close_old_connections()
        row = DeviceAction.objects.filter(pk=action_id).values().get()
        if time.monotonic() - noted >= 15:
            # Where the time goes: pushes answered, taken by the simulators, results they sent,
            # results and reports waiting in Redis for the flusher, outcomes final.
            noted = time.monotonic()
            final = row["target_count"] - sum(
                row[f"{s}_count"] for s in ("pending", "sending", "sent", "waiting")
            )
            sims = simulator_action_totals(plan)
            taken, results = (sims[k] - before[k] for k in ("pushes", "results"))
            # Every device keeps reporting through its restart: one the pages count offline is a
            # liveness error (its reports waiting behind the restart's in the flusher).
            offline = plan.fleet.size - fleet.filter(online_q()).count()
            shown_offline = max(shown_offline, offline)
            timeline.append(
                f"{noted - posted:.0f}s: {row['sent_count']:,} sent, {final:,} final "
                f"(simulators: {taken:,} pushes taken, {results:,} results sent; waiting in Redis: "
                f"{r.xlen(ingest.RESULTS):,} results, {r.zcard(ingest.DIRTY):,} reports; "
                f"shown offline: {offline:,})"
            )
        dispatched = row["state"] in (ActionState.DISPATCHING, ActionState.DONE)
        if fanout is None and dispatched and row["pending_count"] == 0 and row["sending_count"] == 0:
            fanout = time.monotonic() - posted
        if row["state"] == ActionState.DONE:
            done = time.monotonic() - posted
            break
        time.sleep(0.5)
    states = ["succeeded", "failed", "missed", "unsupported", "blocked", "sent", "pending", "sending"]
    plan.log("  progress: " + "; ".join(timeline))
    return {
        "fanout_s": fanout,
        "end_to_end_s": done,
        "target": row.get("target_count", 0),
        "shown_offline_max": shown_offline,
    } | {state: row.get(f"{state}_count", 0) for state in states}


SIMULATOR_ACTION_TOTALS = (
    "pushes",
    "pushes_duplicate",
    "pushes_refused_lock",
    "executed_restart",
    "results",
    "results_failed",
)


def simulator_action_totals(plan: Plan) -> dict:
    totals = [s["totals"] for s in simulator_stats(plan)]
    return {name: sum(t.get(name, 0) for t in totals) for name in SIMULATOR_ACTION_TOTALS}


def measure_restart(plan: Plan, cookie: str) -> dict:
    before = simulator_action_totals(plan)
    with sampler(plan) as used:
        posted = time.monotonic()
        action_id = post_restart(plan, cookie)
        outcome = follow_action(plan, action_id, posted)
    after = simulator_action_totals(plan)
    plan.log(f"  the simulators: { {name: after[name] - before[name] for name in after} }")
    label = plan.label
    res = plan.results
    res[f"restart_fleet.end_to_end_s.{label}"] = _rounded(outcome["end_to_end_s"], plan.restart_timeout)
    res[f"restart_fleet.fanout_s.{label}"] = _rounded(outcome["fanout_s"], plan.restart_timeout)
    for state in ("succeeded", "failed", "missed", "unsupported", "blocked"):
        res[f"restart_fleet.{state}.{label}"] = outcome[state]
    res[f"restart_fleet.reporting_shown_offline.max.{label}"] = outcome["shown_offline_max"]
    record_resources(plan, f"restart_fleet.{label}", used.figures())
    plan.log(f"  {outcome}; CPU/memory: {used.figures()}")
    return outcome


def _rounded(value, timeout) -> float:
    return round(value, 1) if value is not None else float(round(timeout))  # unfinished: the timeout


def measure_restart_under_load(
    plan: Plan, cookies: list[str], device_uuids: list[str], previous: int
) -> None:
    fleet = plan.fleet.fleet
    rng = random.Random(3)
    base = reverse("fleets:detail", args=[fleet.pk])
    current = {"action": previous}  # the restart's own progress page, once it is posted
    action_path = lambda: reverse("fleets:action", args=[fleet.pk, current["action"]])  # noqa: E731
    htmx = {"HX-Request": "true"}
    pages = [
        ("fleet page", lambda: base, {}),
        ("device list, online", lambda: f"{base}?status=online", {}),
        ("device list, search", lambda: f"{base}?q={rng.choice(['amber', 'calm', 'misty', 'river'])}", {}),
        (
            "device list, last seen (htmx)",
            lambda: f"{base}?sort=-last_seen",
            htmx | {"HX-Target": "device-table"},
        ),
        ("device page", lambda: reverse("devices:detail", args=[rng.choice(device_uuids)]), {}),
        ("action progress", action_path, {}),
        ("action progress (htmx)", action_path, htmx | {"HX-Target": "action-progress"}),
    ]

    def next_page():
        kind, path, headers = rng.choice(pages)
        return kind, path(), headers

    async def run():
        users = asyncio.create_task(loadgen.dashboard_users(plan.url, cookies, next_page, plan.load_duration))
        await asyncio.sleep(5)
        posted = time.monotonic()
        action_id = await asyncio.to_thread(post_restart, plan, cookies[0])
        current["action"] = action_id
        follow = asyncio.create_task(asyncio.to_thread(follow_action, plan, action_id, posted))
        return await users, await follow

    with sampler(plan) as used:
        users, outcome = asyncio.run(run())
    res = plan.results
    res["load.users"] = len(cookies)
    res["load.duration_s"] = plan.load_duration
    res["load.requests"] = users["requests"]
    res["load.errors"] = users["errors"]
    res["load.pages.p50_ms"] = users["p50_ms"]
    res["load.pages.p95_ms"] = users["p95_ms"]
    res["load.fanout_s.busy"] = _rounded(outcome["fanout_s"], plan.restart_timeout)
    res["load.end_to_end_s.busy"] = _rounded(outcome["end_to_end_s"], plan.restart_timeout)
    for kind, figures in users["by_page"].items():
        slug = kind.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        res[f"load.page.{slug}.p95_ms"] = figures["p95_ms"]
    record_resources(plan, "load", used.figures())
    plan.log(f"  users: {users}")
    plan.log(f"  restart under load: {outcome}; CPU/memory: {used.figures()}")


def flush_bench_redis() -> None:
    """The bench's own Redis database starts empty: no stale buffer, identity or Celery message."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
