"""The simulator's lateness summary: percentiles read from per-second histograms."""

from __future__ import annotations

import pytest

from devices.simulator import stats as stats_module
from devices.simulator.stats import LATENESS_KEPT_S, Stats, bin_top_ms, lateness_bin


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(stats_module.time, "monotonic", lambda: now[0])
    return now


def test_percentiles_read_the_upper_edge_of_their_bin_and_never_exceed_the_greatest_lateness(clock):
    stats = Stats()
    for _ in range(98):
        stats.record_lateness(0.010)
    stats.record_lateness(0.250)
    stats.record_lateness(2.0)
    assert stats.lateness() == {"samples": 100, "p50_ms": 11.0, "p99_ms": 260.0, "max_ms": 2000.0}
    assert stats.totals["late_reports"] == 1  # only the 2 s one is over LATE_AFTER_S

    alone = Stats()
    alone.record_lateness(0.0034)
    assert alone.lateness() == {"samples": 1, "p50_ms": 3.4, "p99_ms": 3.4, "max_ms": 3.4}
    assert Stats().lateness() == {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}


def test_the_summary_covers_its_window_and_old_seconds_are_dropped(clock):
    stats = Stats()
    stats.record_lateness(5.0)
    clock[0] += 61
    for _ in range(10):
        stats.record_lateness(0.001)
    assert stats.lateness(60) == {"samples": 10, "p50_ms": 1.0, "p99_ms": 1.0, "max_ms": 1.0}
    assert stats.lateness(None)["max_ms"] == 5000.0

    clock[0] += LATENESS_KEPT_S + 1
    stats.record_lateness(0.001)
    assert stats.lateness(None)["samples"] == 1  # what is older than the kept span is gone


@pytest.mark.parametrize("ms", [0, 0.5, 99.9, 100, 555, 999.9, 1000, 4321, 9999, 10_000, 65_432])
def test_a_lateness_falls_in_a_bin_whose_upper_edge_is_above_it_by_at_most_a_tenth(ms):
    top = bin_top_ms(lateness_bin(ms / 1000))
    assert ms < top <= max(ms * 1.1, ms + 1)
