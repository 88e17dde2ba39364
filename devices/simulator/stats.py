"""Counters and schedule adherence of the simulator as a whole."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

# A scheduled report that starts this much after its slot counts as "late" in the summary.
LATE_AFTER_S = 0.5
# Rates are averaged over this many whole seconds.
RATE_WINDOW_S = 10


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


class Stats:
    """Totals, per-second buckets for rates, and the lateness of every scheduled report.

    Lateness is how long after its slot a scheduled report was started: the time the device's task
    woke up minus the time it should have, so up to one tick of the wake-ups
    (`wakeups.RESOLUTION_S`) even on an idle loop. It says whether the event loop keeps up with the
    schedule; server latency is measured apart (`report_rtt`), since a slow server is not the
    simulator falling behind.
    """

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self._per_second: dict[int, Counter[str]] = {}
        self._lateness: deque[tuple[float, float]] = deque(maxlen=200_000)
        self._rtt: deque[float] = deque(maxlen=20_000)
        self.started = time.monotonic()

    def count(self, kind: str, n: int = 1) -> None:
        self.totals[kind] += n
        second = int(time.monotonic())
        bucket = self._per_second.get(second)
        if bucket is None:
            bucket = self._per_second[second] = Counter()
            # Prune old buckets whenever a new second starts: at most once a second.
            for old in [s for s in self._per_second if s < second - 120]:
                del self._per_second[old]
        bucket[kind] += n

    def record_lateness(self, seconds: float) -> None:
        self._lateness.append((time.monotonic(), max(0.0, seconds)))
        if seconds > LATE_AFTER_S:
            self.totals["late_reports"] += 1

    def record_rtt(self, seconds: float) -> None:
        self._rtt.append(seconds)

    def rate(self, kind: str, window: int = RATE_WINDOW_S) -> float:
        """Events per second over the last `window` whole seconds (the current one is incomplete)."""
        now = int(time.monotonic())
        seconds = min(window, max(1, now - int(self.started)))
        return sum(self._per_second.get(s, Counter())[kind] for s in range(now - seconds, now)) / seconds

    def lateness(self, window_s: float | None = 60.0) -> dict[str, float]:
        cutoff = time.monotonic() - window_s if window_s else float("-inf")
        values = sorted(late for at, late in self._lateness if at >= cutoff)
        return {
            "samples": len(values),
            "p50_ms": round(percentile(values, 0.50) * 1000, 1),
            "p99_ms": round(percentile(values, 0.99) * 1000, 1),
            "max_ms": round((values[-1] if values else 0.0) * 1000, 1),
        }

    def summary(self, window_s: float | None = 60.0) -> dict[str, Any]:
        rtt = sorted(self._rtt)
        return {
            "running_s": round(time.monotonic() - self.started, 1),
            "totals": dict(self.totals),
            "reports_per_s": round(self.rate("reports"), 1),
            "polls_per_s": round(self.rate("polls"), 1),
            "pushes_per_s": round(self.rate("pushes"), 1),
            "lateness": self.lateness(window_s),
            "report_rtt": {
                "p50_ms": round(percentile(rtt, 0.50) * 1000, 1),
                "p99_ms": round(percentile(rtt, 0.99) * 1000, 1),
            },
        }
