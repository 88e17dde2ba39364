"""Counters and schedule adherence of the simulator as a whole."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

# A scheduled report that starts this much after its slot counts as "late" in the summary.
LATE_AFTER_S = 0.5
# Rates are averaged over this many whole seconds.
RATE_WINDOW_S = 10
# Lateness is kept this long, as a histogram a second.
LATENESS_KEPT_S = 600


def lateness_bin(seconds: float) -> int:
    """The histogram bin of a lateness: a millisecond wide up to 100 ms, then 10 ms up to 1 s,
    100 ms up to 10 s, a second beyond (up to 1,000 s)."""
    ms = seconds * 1000
    if ms < 100:
        return int(ms)
    if ms < 1000:
        return 100 + int((ms - 100) // 10)
    if ms < 10_000:
        return 190 + int((ms - 1000) // 100)
    return 280 + min(int((ms - 10_000) // 1000), 1000)


def bin_top_ms(index: int) -> float:
    """The upper edge of a lateness bin, in milliseconds: what a percentile falling in it reads."""
    if index < 100:
        return index + 1.0
    if index < 190:
        return 100.0 + (index - 99) * 10
    if index < 280:
        return 1000.0 + (index - 189) * 100
    return 10_000.0 + (index - 279) * 1000


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


class Stats:
    """Totals, per-second buckets for rates, and the lateness of scheduled reports.

    Lateness is how long after its slot a scheduled report was started: the time the device's task
    woke up minus the time it should have, so up to one tick of the wake-ups
    (`wakeups.RESOLUTION_S`) even on an idle loop. It says whether the event loop keeps up with the
    schedule; server latency is measured apart (`report_rtt`), since a slow server is not the
    simulator falling behind. It is kept as a histogram a second (`lateness_bin`) and its greatest
    value, not as samples: a summary of 60 s of 1,250 reports a second added up 60 small
    histograms instead of sorting 75,000 values (8 % of a simulator's CPU, polled every few seconds).
    """

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self._per_second: dict[int, Counter[str]] = {}
        self._lateness: dict[int, Counter[int]] = {}  # by second: how many reports in each bin
        self._greatest: dict[int, float] = {}  # by second: the greatest lateness
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
        seconds = max(0.0, seconds)
        second = int(time.monotonic())
        bins = self._lateness.get(second)
        if bins is None:
            bins = self._lateness[second] = Counter()
            self._greatest[second] = 0.0
            for old in [s for s in self._lateness if s < second - LATENESS_KEPT_S]:
                del self._lateness[old], self._greatest[old]
        bins[lateness_bin(seconds)] += 1
        if seconds > self._greatest[second]:
            self._greatest[second] = seconds
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
        """Over the last `window_s` seconds (None: all kept): how many reports, the bins p50 and p99
        fall in (their upper edges, `bin_top_ms`), and the greatest lateness."""
        cutoff = int(time.monotonic() - window_s) if window_s else -1
        seconds = [second for second in self._lateness if second >= cutoff]
        bins: Counter[int] = Counter()
        for second in seconds:
            bins.update(self._lateness[second])
        samples = sum(bins.values())
        greatest = max((self._greatest[second] for second in seconds), default=0.0)

        def percentile_ms(fraction: float) -> float:
            rank, seen = fraction * (samples - 1), 0
            for index in sorted(bins):
                seen += bins[index]
                if seen > rank:
                    return min(bin_top_ms(index), greatest * 1000)
            return 0.0

        return {
            "samples": samples,
            "p50_ms": round(percentile_ms(0.50), 1),
            "p99_ms": round(percentile_ms(0.99), 1),
            "max_ms": round(greatest * 1000, 1),
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
