"""Reads about devices and actions. Access checks live in fleets.selectors; these take a scope that
has already been checked (a fleet the user may see, or a queryset from devices_for_user)."""

import base64
import json
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

from django.core.cache import cache
from django.db.models import BooleanField, Count, F, Func, Q, QuerySet, Value
from redis.exceptions import RedisError

from devices.models import GOING_DOWN, AgentStatus, DeviceStatus, online_cutoff


def online_q(now=None) -> Q:
    """Devices whose last report is recent and who did not say they are going down."""
    return Q(is_active=True, last_seen_at__gte=online_cutoff(now)) & ~Q(agent_status__in=GOING_DOWN)


def status_q(status: str, now=None) -> Q:
    if status == DeviceStatus.DEACTIVATED:
        return Q(is_active=False)
    if status == DeviceStatus.OFFLINE:
        return Q(is_active=True) & ~online_q(now)
    if status == DeviceStatus.UPDATING:
        return online_q(now) & Q(agent_status=AgentStatus.UPDATING)
    if status == DeviceStatus.ONLINE:
        return online_q(now) & ~Q(agent_status=AgentStatus.UPDATING)
    raise ValueError(f"unknown status {status!r}")


# --- Keyset pagination ---------------------------------------------------------------------------


class Row(Func):
    """An SQL row value, `(a, b)`: compared as a whole, so an index on (a, b) serves the range."""

    template = "(%(expressions)s)"


class RowCompare(Func):
    arg_joiner = " {op} "
    template = "(%(expressions)s)"
    output_field = BooleanField()

    def __init__(self, left: Row, op: str, right: Row):
        assert op in {"<", ">"}
        super().__init__(left, right)
        self.arg_joiner = f" {op} "


@dataclass(frozen=True)
class Sort:
    """An order for a device list: its fields (the last one unique) and whether it runs backwards."""

    key: str
    label: str
    fields: tuple[str, ...]
    descending: bool = False

    def order_by(self) -> list[str]:
        return [f"-{f}" if self.descending else f for f in self.fields]


DEVICE_SORTS = {
    sort.key: sort
    for sort in [
        Sort("name", "Name", ("name", "id")),
        Sort("-last_seen", "Last seen, newest first", ("last_seen_at", "id"), descending=True),
        Sort("last_seen", "Last seen, oldest first", ("last_seen_at", "id")),
    ]
}


def encode_cursor(values: list) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: Sort) -> list | None:
    """The row a page starts after, or None for a cursor that is not one of ours."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        return None
    if not isinstance(values, list) or len(values) != len(sort.fields):
        return None
    decoded = []
    for field_name, value in zip(sort.fields, values, strict=True):
        if field_name.endswith("_at"):
            try:
                value = datetime.fromisoformat(value)
            except (TypeError, ValueError):
                return None
        elif field_name == "id" or field_name.endswith("_id"):
            # bool is an int too; beyond 64 bits the database driver raises rather than compares.
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                return None
        elif not isinstance(value, str):  # a list or an object cannot be an SQL parameter
            return None
        decoded.append(value)
    return decoded


@dataclass
class Page:
    rows: list
    next_cursor: str | None
    has_previous: bool


def keyset_page(queryset: QuerySet, sort: Sort, cursor: str | None, size: int) -> Page:
    """One page after `cursor` in `sort` order: one query, as fast on page 2,000 as on page 1."""
    after = decode_cursor(cursor, sort) if cursor else None
    if after is not None:
        queryset = queryset.filter(
            RowCompare(
                Row(*(F(f) for f in sort.fields)),
                "<" if sort.descending else ">",
                Row(*(Value(v) for v in after)),
            )
        )
    rows = list(queryset.order_by(*sort.order_by())[: size + 1])
    next_cursor = None
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        next_cursor = encode_cursor([getattr(last, f) for f in sort.fields])
    return Page(rows=rows, next_cursor=next_cursor, has_previous=after is not None)


# --- Fleet device counts -------------------------------------------------------------------------

COUNTS_FRESH_S = 5
COUNTS_KEEP_S = 3600


def _counts_key(fleet_id: int) -> str:
    return f"fleet-counts:{fleet_id}"


def _count(fleet_id: int) -> dict:
    """Total and per-status device counts of a fleet: one aggregate query over its devices."""
    from devices.models import Device

    counts = Device.objects.filter(fleet_id=fleet_id).aggregate(
        total=Count("id"), **{status.value: Count("id", filter=status_q(status)) for status in DeviceStatus}
    )
    counts["computed_at"] = time.time()
    return counts


def compute_fleet_counts(fleet_id: int) -> dict:
    counts = _count(fleet_id)
    with suppress(RedisError):
        cache.set(_counts_key(fleet_id), counts, COUNTS_KEEP_S)
    return counts


def fleet_counts(fleet_id: int) -> dict:
    """The fleet's device counts, at most COUNTS_FRESH_S old, without counting on every page view.

    Counts live in the cache; a stale entry is served while a worker recounts (stale while
    revalidate), so a page view never pays for COUNT over a large fleet except on a cold cache.
    """
    try:
        counts = cache.get(_counts_key(fleet_id))
    except RedisError:  # the cache is down: count directly rather than fail the page
        return _count(fleet_id)
    if counts is None:
        return compute_fleet_counts(fleet_id)
    if time.time() - counts["computed_at"] > COUNTS_FRESH_S and cache.add(f"{_counts_key(fleet_id)}:lock", 1, 30):
        from devices.tasks import refresh_fleet_counts

        try:
            refresh_fleet_counts.delay(fleet_id)
        except Exception:  # the broker is down: count inline rather than show stale numbers forever
            cache.delete(f"{_counts_key(fleet_id)}:lock")
            return compute_fleet_counts(fleet_id)
    return counts


def recount_fleet(fleet_id: int) -> None:
    """The background half of fleet_counts: recount, then let the next stale read ask again."""
    try:
        compute_fleet_counts(fleet_id)
    finally:
        with suppress(RedisError):
            cache.delete(f"{_counts_key(fleet_id)}:lock")


def forget_fleet_counts(*fleet_ids: int) -> None:
    """After a change that moves devices (move, delete, transfer), counts are recomputed at once."""
    with suppress(RedisError):
        cache.delete_many([_counts_key(fleet_id) for fleet_id in fleet_ids])
