"""What the bench measures.

Pages: server time in-process, through Django's test Client logged in as the bench operator (all
middleware, the view, the templates), with the queries of one request captured. Requests for the
sizes are interleaved, so background load on a shared machine hits both alike.

The action engine: the POST of a fleet-wide restart, then the expansion service run in-process
against the real database and the real Redis broker (the bench's own queue, emptied first), with
the Celery messages it leaves there counted; no worker runs, so no device is pushed to. Each
figure has a baseline measured in the same run: a bare pipelined LPUSH of as many 1 KB messages,
and a bare INSERT ... SELECT of as many rows into a scratch table shaped like the deliveries.
"""

import json
import math
import statistics
import time
from contextlib import contextmanager
from urllib.parse import urlencode

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from dashboard.bench.seed import BenchFleets
from devices import services
from devices.models import ActionDelivery, Device, DeviceAction
from devices.selectors import compute_fleet_counts, fleet_counts
from devices.services import engine

# A realistic narrowing: online devices on a host OS older than 2.58.3 (about a quarter of a fleet).
FILTER = "status=online&os_version=2.58.3&os_op=lt"
# A selective one, for information (no goal): a name fragment that about 1 device in 120 has.
SEARCH = "q=oslo-kiosk"
HTMX = {"HX-Request": "true", "HX-Target": "device-table"}
FAN_OUT_ROUNDS = 3


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def p95_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] * 1000, 2)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def client_for(bench: BenchFleets) -> Client:
    client = Client()
    client.force_login(bench.operator)
    return client


def _get(client: Client, url: str, headers: dict | None = None):
    response = client.get(url, headers=headers or {})
    if response.status_code != 200:
        raise AssertionError(f"GET {url} answered {response.status_code}")
    return response


def _queries(fn, *args, **kwargs) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        fn(*args, **kwargs)
    return [q["sql"] for q in captured.captured_queries]


def _count_queries(sqls: list[str]) -> int:
    return sum("COUNT(" in sql.upper() for sql in sqls)


# --- Pages ---------------------------------------------------------------------------------------


def device_list_urls(bench: BenchFleets) -> dict[str, tuple[str, dict]]:
    base = reverse("fleets:detail", args=[bench.fleet.pk])
    return {
        "first_page": (base, {}),
        "filtered_page": (f"{base}?{FILTER}", {}),
        "last_page": (f"{base}?last=1", {}),
        "filtered_partial": (f"{base}?{FILTER}", HTMX),  # what a filter change fetches with htmx
        "search_page": (f"{base}?{SEARCH}", {}),
    }


def measure_device_list(benches: list[BenchFleets], repeat: int, results: dict, log) -> None:
    clients = {b.size: client_for(b) for b in benches}
    urls = {b.size: device_list_urls(b) for b in benches}
    # The device search across fleets, once, under the largest size: it sees every bench fleet.
    urls[benches[-1].size]["all_fleets_page"] = (reverse("devices:list"), {})
    for b in benches:
        for url, headers in urls[b.size].values():
            for _ in range(3):  # warm: connections, template cache, fleet counts in the cache
                _get(clients[b.size], url, headers)
    for b in benches:
        counts = {}
        for name, (url, headers) in urls[b.size].items():
            sqls = _queries(_get, clients[b.size], url, headers)
            counts[name] = len(sqls)
            if name == "first_page":
                results[f"fleet_summary.count_queries.{b.label}"] = _count_queries(sqls)
        results[f"device_list.queries.{b.label}"] = max(
            n for name, n in counts.items() if name != "all_fleets_page"
        )
        log(f"  device list at {b.label}: queries per request {counts}")
    samples = {(b.size, name): [] for b in benches for name in urls[b.size]}
    for _ in range(repeat):
        for b in benches:
            for name, (url, headers) in urls[b.size].items():
                elapsed, _ = timed(_get, clients[b.size], url, headers)
                samples[(b.size, name)].append(elapsed)
    for b in benches:
        for name in urls[b.size]:
            results[f"device_list.{name}.median_ms.{b.label}"] = median_ms(samples[(b.size, name)])
        results[f"device_list.first_page.p95_ms.{b.label}"] = p95_ms(samples[(b.size, "first_page")])


def measure_fleet_summary(benches: list[BenchFleets], repeat: int, results: dict) -> None:
    """The fleet summary page (header, counts, tabs, first page of devices) as a page view pays for
    it, the cached counts it reads, and what a real count would cost instead."""
    for b in benches:
        client = client_for(b)
        url = reverse("fleets:detail", args=[b.fleet.pk])
        compute_fleet_counts(b.fleet.pk)
        for _ in range(3):
            _get(client, url)
        page = [timed(_get, client, url)[0] for _ in range(repeat)]
        cached = [timed(fleet_counts, b.fleet.pk)[0] for _ in range(repeat)]
        cold = [timed(compute_fleet_counts, b.fleet.pk)[0] for _ in range(max(5, repeat // 4))]
        results[f"fleet_summary.median_ms.{b.label}"] = median_ms(page)
        results[f"fleet_summary.counts_cached_ms.{b.label}"] = median_ms(cached)
        results[f"fleet_summary.cold_ms.{b.label}"] = median_ms(cold)


def measure_select_all(benches: list[BenchFleets], repeat: int, results: dict, log) -> None:
    """Counting "all N matching" (lazily, when a selection starts) and the confirmation it leads to."""
    for b in benches:
        client = client_for(b)
        count_url = f"{reverse('fleets:device-count', args=[b.fleet.pk])}?{FILTER}"
        confirm_url = (
            reverse("fleets:action-new", args=[b.fleet.pk, "restart"])
            + "?"
            + urlencode({"all_matching": "1", "filter": FILTER})
        )
        for _ in range(2):
            _get(client, count_url)
            _get(client, confirm_url)
        sqls = _queries(_get, client, count_url)
        results[f"select_all.count_queries.{b.label}"] = _count_queries(sqls)
        html = _get(client, confirm_url).content.decode()
        carries = (
            'name="all_matching" value="1"' in html and 'name="filter"' in html and 'name="ids"' not in html
        )
        results[f"select_all.carries_filter.{b.label}"] = int(carries)
        results[f"select_all.matching.{b.label}"] = json.loads(_get(client, count_url).content)["count"]
        results[f"select_all.count_ms.{b.label}"] = median_ms(
            [timed(_get, client, count_url)[0] for _ in range(repeat)]
        )
        results[f"select_all.confirm_ms.{b.label}"] = median_ms(
            [timed(_get, client, confirm_url)[0] for _ in range(repeat)]
        )
        log(f"  select all at {b.label}: {len(sqls)} queries to count, of which COUNT: "
            f"{results[f'select_all.count_queries.{b.label}']}")  # fmt: skip


# --- The action engine ---------------------------------------------------------------------------


class Broker:
    """The bench's queue in Redis: emptied before a measurement, its messages counted after."""

    def __init__(self, client, queue: str):
        self.client, self.queue = client, queue

    def keys(self) -> list:
        # kombu keeps one list per priority step beside the plain queue name.
        return [self.queue, *self.client.keys(f"{self.queue}\x06\x16*")]

    def purge(self) -> None:
        self.client.delete(*self.keys())

    def messages(self) -> list[dict]:
        raw = [m for key in self.keys() for m in self.client.lrange(key, 0, -1)]
        return [json.loads(m) for m in raw]


@contextmanager
def _timing_enqueues(spent: list[float]):
    """Time what the expansion spends putting batch messages in Redis (engine._enqueue_batches)."""
    original = engine._enqueue_batches

    def timed_enqueue(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    engine._enqueue_batches = timed_enqueue
    try:
        yield
    finally:
        engine._enqueue_batches = original


def _forget_actions(fleet) -> None:
    """Delete the bench's actions and outcomes, and (PostgreSQL) vacuum what they leave behind, so
    that every run expands into a table in the same state as the baseline's fresh one."""
    ActionDelivery.objects.filter(action__fleet=fleet).delete()
    DeviceAction.objects.filter(fleet=fleet).delete()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM {ActionDelivery._meta.db_table}, {DeviceAction._meta.db_table}")


def measure_restart(benches: list[BenchFleets], repeat: int, results: dict, broker: Broker, log) -> None:
    for b in benches:
        client = client_for(b)
        url = reverse("fleets:action-new", args=[b.fleet.pk, "restart"])
        data = {"confirm": b.fleet.name}

        def post(client=client, url=url, data=data):
            response = client.post(url, data)
            if response.status_code != 302:
                raise AssertionError(f"POST {url} answered {response.status_code}")
            return response

        _forget_actions(b.fleet)
        broker.purge()
        for _ in range(2):
            post()
        results[f"restart_fleet.post_queries.{b.label}"] = len(_queries(post))
        samples = [timed(post)[0] for _ in range(repeat)]
        results[f"restart_fleet.post_ms.{b.label}"] = median_ms(samples)
        _forget_actions(b.fleet)

        # Real fan-outs, each beside a bare bulk insert of as many rows (the baseline), alternating
        # so that the machine's load hits both alike; the best of each is kept. Each fan-out: the
        # POST's message, the expansion in-process, then the messages counted in Redis.
        expansions, inserts = [], []
        for _ in range(FAN_OUT_ROUNDS):
            _forget_actions(b.fleet)
            inserts.append(baseline_bulk_insert(b))
            broker.purge()
            post()
            action = DeviceAction.objects.filter(fleet=b.fleet).latest("pk")
            enqueues: list[float] = []
            with _timing_enqueues(enqueues):
                expand_s, _ = timed(services.action_expand, action.pk)
            expansions.append((expand_s, sum(enqueues)))
        action.refresh_from_db()
        messages = broker.messages()
        tasks = {}
        for message in messages:
            task = message.get("headers", {}).get("task", "?")
            tasks[task] = tasks.get(task, 0) + 1
        expand_s, enqueue_s = min(expansions)
        results[f"restart_fleet.expand_s.{b.label}"] = round(expand_s, 6)
        results[f"restart_fleet.enqueue_s.{b.label}"] = round(enqueue_s, 6)
        results[f"baseline.bulk_insert_s.{b.label}"] = round(min(inserts), 6)
        results[f"restart_fleet.messages.{b.label}"] = len(messages)
        results[f"restart_fleet.outcomes.{b.label}"] = action.target_count
        results[f"restart_fleet.to_push.{b.label}"] = action.pending_count
        log(f"  restart at {b.label}: {action.target_count:,} outcomes ({action.pending_count:,} to push, "
            f"{action.missed_count:,} missed offline, {action.unsupported_count:,} unsupported); expansions "
            f"{', '.join(f'{e:.2f}' for e, _ in expansions)} s beside bulk inserts "
            f"{', '.join(f'{i:.2f}' for i in inserts)} s; messages in Redis: {tasks}")  # fmt: skip

        progress_url = reverse("fleets:action", args=[b.fleet.pk, action.pk])
        headers = {"HX-Request": "true", "HX-Target": "action-progress"}
        _get(client, progress_url, headers)
        results[f"action_progress.queries.{b.label}"] = len(_queries(_get, client, progress_url, headers))
        results[f"action_progress.median_ms.{b.label}"] = median_ms(
            [timed(_get, client, progress_url, headers)[0] for _ in range(repeat)]
        )
        _forget_actions(b.fleet)
        broker.purge()


def baseline_redis_lpush(redis_client, size: int) -> float:
    """A bare pipelined LPUSH of `size` 1 KB messages into a scratch key: the floor for the broker."""
    key = "bench:scratch:lpush"
    payload = b"x" * 1024
    redis_client.delete(key)
    started = time.perf_counter()
    pipe = redis_client.pipeline(transaction=False)
    for i in range(size):
        pipe.lpush(key, payload)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    elapsed = time.perf_counter() - started
    redis_client.delete(key)
    return elapsed


def baseline_bulk_insert(bench: BenchFleets) -> float:
    """A bare INSERT ... SELECT of the fleet's devices into a scratch table shaped like the deliveries
    (same columns, indexes and unique constraint): the floor for writing one outcome per device."""
    table = ActionDelivery._meta.db_table
    scratch = "bench_scratch_delivery"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {scratch}")
        if connection.vendor == "postgresql":
            cursor.execute(f"CREATE TABLE {scratch} (LIKE {table} INCLUDING ALL)")
        else:
            cursor.execute(f"CREATE TABLE {scratch} AS SELECT * FROM {table} WHERE 0 = 1")
            cursor.execute(f"CREATE UNIQUE INDEX {scratch}_unique ON {scratch} (action_id, device_id)")
        started = time.perf_counter()
        cursor.execute(
            f"INSERT INTO {scratch} (action_id, device_id, device_uuid, device_name, state, reason, attempts) "
            f"SELECT 1, id, uuid, name, 'pending', '', 0 FROM {Device._meta.db_table} WHERE fleet_id = %s",
            [bench.fleet.pk],
        )
        elapsed = time.perf_counter() - started
        cursor.execute(f"DROP TABLE {scratch}")
    return elapsed


def measure_baselines(benches: list[BenchFleets], results: dict, redis_client) -> None:
    """The broker's floor; the database's (bulk insert) is measured beside each expansion."""
    for b in benches:
        results[f"baseline.redis_lpush_s.{b.label}"] = round(baseline_redis_lpush(redis_client, b.size), 6)
