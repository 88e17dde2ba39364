"""The device table's compact cells: how long ago a device was last seen."""

from datetime import UTC, datetime, timedelta

import pytest

from devices.templatetags.device_tags import short_ago

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(seconds=0), "just now"),
        (timedelta(seconds=59), "just now"),
        (timedelta(minutes=1), "1 min ago"),
        (timedelta(minutes=59, seconds=59), "59 min ago"),
        (timedelta(hours=1), "1 h ago"),
        (timedelta(hours=23, minutes=59), "23 h ago"),
        (timedelta(days=1), "1 d ago"),
        (timedelta(days=400), "400 d ago"),
    ],
)
def test_last_seen_is_said_in_the_largest_whole_unit(ago, text):
    assert short_ago(NOW - ago, NOW) == text


def test_a_moment_in_the_future_counts_as_just_now():
    assert short_ago(NOW + timedelta(minutes=5), NOW) == "just now"


def test_a_device_never_seen_says_never():
    assert short_ago(None, NOW) == "never"
