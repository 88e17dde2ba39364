"""`manage.py bench` at a tiny size on the test database and Redis, so the command cannot rot.

The figures mean nothing here (SQLite or a loaded CI machine); the keys, the goals and the query
counts do: the device list costs the same queries at both sizes.
"""

import io
import json

import pytest
from django.core.management import call_command

# Transactional: VACUUM cannot run inside a transaction, and the POST enqueues on commit.
pytestmark = pytest.mark.django_db(transaction=True)

ISSUE_3 = [
    "device_list.queries", "device_list.first_page.median_ms", "device_list.filtered_page.median_ms",
    "device_list.last_page.median_ms",
]  # fmt: skip
ISSUE_4 = ["restart_fleet.post_queries", "restart_fleet.messages", "action_progress.queries"]


def test_the_bench_runs_at_a_tiny_size_and_writes_flat_named_numbers(tmp_path):
    output = tmp_path / "bench-results.json"
    out = io.StringIO()
    call_command("bench", "--here", "--sizes", "30,120", "--repeat", "3", "--output", str(output), stdout=out)
    results = json.loads(output.read_text())
    assert all(isinstance(value, int | float) for value in results.values())
    for key in ISSUE_3 + ISSUE_4:
        assert f"{key}.30" in results and f"{key}.120" in results, key
    for key in ["device_list.first_page.p95_ms.120", "fleet_summary.median_ms.120", "restart_fleet.post_ms.120",
                "restart_fleet.enqueue_s.120", "baseline.redis_lpush_s.120", "restart_fleet.expand_s.120",
                "baseline.bulk_insert_s.120"]:  # fmt: skip
        assert key in results, key
    assert results["device_list.queries.30"] == results["device_list.queries.120"] <= 10
    assert results["restart_fleet.post_queries.30"] == results["restart_fleet.post_queries.120"]
    assert results["action_progress.queries.30"] == results["action_progress.queries.120"]
    assert results["select_all.count_queries.120"] == 1 and results["select_all.carries_filter.120"] == 1
    assert results["restart_fleet.outcomes.120"] == 120
    assert results["restart_fleet.messages.120"] <= 120 // 500 + 1 + 2
    text = out.getvalue()
    assert "device list: SQL queries per request" in text and "PASS  device list: same query count" in text


def test_it_refuses_a_single_size():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="two sizes"):
        call_command("bench", "--here", "--sizes", "100", stdout=io.StringIO())
