"""Reads about devices and actions. Access checks live in fleets.selectors; these take a scope that
has already been checked (a fleet the user may see, or a queryset from devices_for_user)."""

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from django.db.models import BooleanField, F, Func, Q, QuerySet, Value

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
        elif field_name == "id" and not isinstance(value, int):
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
