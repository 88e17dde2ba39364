"""The bench's table and its goals (issue 3: pages; issue 4: the action engine), each PASS or FAIL."""

import math
from dataclasses import dataclass

from dashboard.bench.seed import label

# Metric (the key without its size suffix) and what the row says, in the order printed.
ROWS = [
    ("device_list.queries", "device list: SQL queries per request (max of the pages)"),
    ("device_list.first_page.median_ms", "device list, first page: median ms"),
    ("device_list.first_page.p95_ms", "device list, first page: p95 ms"),
    ("device_list.filtered_page.median_ms", "device list, filtered page: median ms"),
    ("device_list.last_page.median_ms", "device list, last page: median ms"),
    ("device_list.filtered_partial.median_ms", "device list, filtered htmx partial: median ms"),
    ("device_list.search_page.median_ms", "device list, selective name search (info): median ms"),
    ("device_list.all_fleets_page.median_ms", "device search across fleets, first page (info): median ms"),
    ("fleet_summary.median_ms", "fleet summary page: median ms"),
    ("fleet_summary.counts_cached_ms", "fleet summary counts, per page view (cached): median ms"),
    ("fleet_summary.count_queries", "fleet summary: COUNT queries per page view"),
    ("fleet_summary.cold_ms", "fleet summary counts, cold (the COUNT): median ms"),
    ("select_all.matching", "select all matching: devices matching the filter"),
    ("select_all.count_queries", "select all matching: COUNT queries to count them"),
    ("select_all.count_ms", "select all matching: count request, median ms"),
    ("select_all.confirm_ms", "select all matching: confirmation step, median ms"),
    ("select_all.carries_filter", "select all matching: carries the filter, no ids (1 = yes)"),
    ("restart_fleet.post_ms", "restart fleet: POST, median ms"),
    ("restart_fleet.post_queries", "restart fleet: POST queries"),
    ("restart_fleet.outcomes", "restart fleet: outcomes recorded"),
    ("restart_fleet.to_push", "restart fleet: devices to push (online, agent >= 1.1.0)"),
    ("restart_fleet.messages", "restart fleet: Celery messages in Redis"),
    ("restart_fleet.enqueue_s", "restart fleet: putting the batch messages in Redis, s"),
    ("baseline.redis_lpush_s", "baseline: pipelined LPUSH of N 1 KB messages, s"),
    ("restart_fleet.expand_s", "restart fleet: expanding N outcomes, s"),
    ("baseline.bulk_insert_s", "baseline: bulk INSERT ... SELECT of N rows, s"),
    ("action_progress.queries", "action progress (htmx): queries"),
    ("action_progress.median_ms", "action progress (htmx): median ms"),
]


def _times(a, b) -> float:
    """a / b, as "how many times b"; infinite when b is 0 (too small to measure)."""
    return a / b if b else math.inf


@dataclass
class Goal:
    text: str
    measured: str
    passed: bool


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if value < 10 else f"{value:,.1f}"
    return f"{value:,}"


def table(results: dict, sizes: list[int]) -> str:
    labels = [label(size) for size in sizes]
    small, large = labels[0], labels[-1]
    head = ["metric", *labels, f"{large}/{small}"]
    lines = []
    for metric, text in ROWS:
        values = [results.get(f"{metric}.{lab}") for lab in labels]
        if all(v is None for v in values):
            continue
        a, b = values[0], values[-1]
        ratio = f"{b / a:.2f}x" if isinstance(a, int | float) and isinstance(b, int | float) and a else "-"
        lines.append([text, *(_fmt(v) for v in values), ratio])
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]

    def render(row):
        return "  ".join(
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]) for i, cell in enumerate(row)
        )

    return "\n".join([render(head), "  ".join("-" * w for w in widths), *(render(row) for row in lines)])


def goals(results: dict, sizes: list[int]) -> list[Goal]:
    s, big = label(sizes[0]), label(sizes[-1])
    n = sizes[-1]
    r = results.get
    found = []

    def ratio(metric, limit, text):
        a, b = r(f"{metric}.{s}"), r(f"{metric}.{big}")
        if a is None or b is None:
            return
        x = _times(b, a)
        found.append(Goal(text, f"{b} ms at {big} vs {a} ms at {s}: {x:.2f}x", x <= limit))

    qs, qb = r(f"device_list.queries.{s}"), r(f"device_list.queries.{big}")
    if qb is not None:
        found.append(Goal("device list: same query count at both sizes, at most 10",
                          f"{qs} at {s}, {qb} at {big}", qs == qb and qb <= 10))  # fmt: skip
    ratio("device_list.first_page.median_ms", 1.5, f"device list first page: median at {big} <= 1.5x {s}")
    ratio(
        "device_list.filtered_page.median_ms", 1.5, f"device list filtered page: median at {big} <= 1.5x {s}"
    )
    ratio("device_list.last_page.median_ms", 1.5, f"device list last page: median at {big} <= 1.5x {s}")
    p95 = r(f"device_list.first_page.p95_ms.{big}")
    if p95 is not None:
        found.append(Goal(f"device list first page: p95 at {big} <= 150 ms", f"{p95} ms", p95 <= 150))
    count_queries, cold = r(f"fleet_summary.count_queries.{big}"), r(f"fleet_summary.cold_ms.{big}")
    if count_queries is not None:
        found.append(Goal(
            f"fleet summary counts: no COUNT per page view, or <= 20 ms at {big}",
            f"{count_queries} COUNT per view (cached path {r(f'fleet_summary.counts_cached_ms.{big}')} ms); "
            f"a cold count {cold} ms",
            count_queries == 0 or (cold is not None and cold <= 20),
        ))  # fmt: skip
    counted, carried = r(f"select_all.count_queries.{big}"), r(f"select_all.carries_filter.{big}")
    if counted is not None:
        found.append(Goal(
            "select all N matching (filtered): one COUNT query, carries the filter not ids",
            f"{counted} COUNT; filter carried: {'yes' if carried else 'no'}",
            counted == 1 and carried == 1,
        ))  # fmt: skip
    post_ms = r(f"restart_fleet.post_ms.{big}")
    if post_ms is not None:
        found.append(Goal(f"restart fleet: POST at {big} <= 50 ms", f"{post_ms} ms", post_ms <= 50))
        ps, pb = r(f"restart_fleet.post_queries.{s}"), r(f"restart_fleet.post_queries.{big}")
        found.append(
            Goal(
                "restart fleet: POST queries O(1), same at both sizes",
                f"{ps} at {s}, {pb} at {big}",
                ps == pb,
            )
        )
        messages, limit = r(f"restart_fleet.messages.{big}"), math.ceil(n / 500) + 2
        found.append(
            Goal(f"restart fleet: messages <= ceil(N/500)+2 = {limit}", f"{messages}", messages <= limit)
        )
        enqueue, lpush = r(f"restart_fleet.enqueue_s.{big}"), r(f"baseline.redis_lpush_s.{big}")
        found.append(Goal(
            f"restart fleet: batch messages in Redis within 2x a bare LPUSH of {n:,} messages",
            f"{enqueue} s vs {lpush} s: {_times(enqueue, lpush):.2f}x", enqueue <= 2 * lpush,
        ))  # fmt: skip
        expand, insert = r(f"restart_fleet.expand_s.{big}"), r(f"baseline.bulk_insert_s.{big}")
        found.append(Goal(
            f"restart fleet: expanding {n:,} outcomes within 3x a bare bulk insert",
            f"{expand} s vs {insert} s: {_times(expand, insert):.2f}x", expand <= 3 * insert,
        ))  # fmt: skip
        gs, gb = r(f"action_progress.queries.{s}"), r(f"action_progress.queries.{big}")
        found.append(
            Goal("action progress: queries O(1), same at both sizes", f"{gs} at {s}, {gb} at {big}", gs == gb)
        )
    return found


def render_goals(found: list[Goal]) -> str:
    width = max(len(g.text) for g in found)
    return "\n".join(f"{'PASS' if g.passed else 'FAIL'}  {g.text.ljust(width)}  {g.measured}" for g in found)
