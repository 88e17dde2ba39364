"""Reads about devices and actions. Access checks live in fleets.selectors; these take a scope that
has already been checked (a fleet the user may see, or a queryset from devices_for_user)."""

import base64
import json
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

from django.core.cache import cache
from django.db.models import BooleanField, Count, F, FilteredRelation, Func, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from redis.exceptions import RedisError

from devices.models import GOING_DOWN, ActionDelivery, AgentStatus, DeviceAction, DeviceStatus, online_cutoff


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

    def order_by(self, reverse: bool = False) -> list[str]:
        """The ORDER BY of this sort, or of its exact reverse (to read a list from its end)."""
        return [f"-{f}" if self.descending != reverse else f for f in self.fields]


DEVICE_SORTS = {
    sort.key: sort
    for sort in [
        Sort("name", "Name", ("name", "id")),
        Sort("-last_seen", "Last seen, newest first", ("last_seen_at", "id"), descending=True),
        Sort("last_seen", "Last seen, oldest first", ("last_seen_at", "id")),
    ]
}


DEFAULT_SORT = "name"


def sort_for(params) -> Sort:
    return DEVICE_SORTS.get(params.get("sort") or DEFAULT_SORT, DEVICE_SORTS[DEFAULT_SORT])


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
    """One page of a keyset-paginated list, with the cursors of its neighbours.

    `next_cursor` goes in `after=` (the page that follows), `previous_cursor` in `before=` (the page
    that precedes); None when there is no such page.
    """

    rows: list
    next_cursor: str | None
    previous_cursor: str | None = None

    @property
    def has_previous(self) -> bool:
        return self.previous_cursor is not None

    @property
    def has_next(self) -> bool:
        return self.next_cursor is not None


def _beyond(sort: Sort, row: list, forward: bool) -> RowCompare:
    """Rows after `row` in `sort` order (forward) or before it (backwards): one row-value comparison."""
    op = "<" if sort.descending == forward else ">"
    return RowCompare(Row(*(F(f) for f in sort.fields)), op, Row(*(Value(v) for v in row)))


def keyset_page(
    queryset: QuerySet, sort: Sort, size: int, *, after: str | None = None, before: str | None = None,
    last: bool = False,
) -> Page:  # fmt: skip
    """One page in `sort` order: the first, the one after or before a cursor, or the last.

    One query whichever it is: the page before a cursor, and the last page, read the index backwards
    (ORDER BY reversed, LIMIT size + 1) and turn the rows round, so the last page of 100,000 rows
    costs what the first does. A cursor that is not one of ours is ignored (first page).
    """
    after_row = decode_cursor(after, sort) if after else None
    before_row = decode_cursor(before, sort) if before and after_row is None else None
    backwards = before_row is not None or (last and after_row is None)
    if after_row is not None:
        queryset = queryset.filter(_beyond(sort, after_row, forward=True))
    elif before_row is not None:
        queryset = queryset.filter(_beyond(sort, before_row, forward=False))
    rows = list(queryset.order_by(*sort.order_by(reverse=backwards))[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    if backwards:
        rows.reverse()
        has_previous, has_next = more, before_row is not None
    else:
        has_previous, has_next = after_row is not None, more
    if not rows:
        return Page(rows=[], next_cursor=None, previous_cursor=None)
    return Page(
        rows=rows,
        next_cursor=_cursor_of(rows[-1], sort) if has_next else None,
        previous_cursor=_cursor_of(rows[0], sort) if has_previous else None,
    )


def keyset_page_for(queryset: QuerySet, sort: Sort, size: int, params) -> Page:
    """keyset_page with the cursor taken from a request's query parameters (after, before, last)."""
    return keyset_page(
        queryset,
        sort,
        size,
        after=params.get("after"),
        before=params.get("before"),
        last=params.get("last") == "1",
    )


def _cursor_of(row, sort: Sort) -> str:
    return encode_cursor([getattr(row, f) for f in sort.fields])


# --- Audit logs ----------------------------------------------------------------------------------

ACTIVITY_SORT = Sort("-created", "Newest first", ("created_at", "id"), descending=True)


def device_activity_log(device) -> QuerySet[DeviceAction]:
    """Every action that touched one device, wherever it was then: those it has an outcome in (at
    device, selection or fleet scope) and the device-scope records that have none (a support grant,
    a rename), each with `device_outcome` and `device_reason` (blank without an outcome).

    The ids come from a UNION of two indexed lookups, so the database starts from this device's few
    actions rather than walking every action of the organization newest first.
    """
    touched = (
        ActionDelivery.objects.filter(device_id=device.pk)
        .values("action_id")
        .union(DeviceAction.objects.filter(device_id=device.pk).values("id"))
    )
    return (
        DeviceAction.objects.filter(pk__in=touched)
        .annotate(mine=FilteredRelation("deliveries", condition=Q(deliveries__device_id=device.pk)))
        .annotate(
            device_outcome=Coalesce(F("mine__state"), Value("")),
            device_reason=Coalesce(F("mine__reason"), Value("")),
        )
    )


# --- Saved views --------------------------------------------------------------------------------

SAVED_VIEWS_SHOWN = 100


def saved_views_of(fleet, user) -> list:
    """A fleet's saved views for its list page: the user's own first, then other members' (by name)."""
    from devices.models import SavedView

    views = list(
        SavedView.objects.filter(fleet=fleet).select_related("owner").order_by("name")[:SAVED_VIEWS_SHOWN]
    )
    return sorted(views, key=lambda view: view.owner_id != user.pk)


# --- Fleet device counts -------------------------------------------------------------------------

COUNTS_FRESH_S = 5
COUNTS_KEEP_S = 3600


def _counts_key(fleet_id: int) -> str:
    return f"fleet-counts:{fleet_id}"


def _count_many(fleet_ids) -> dict[int, dict]:
    """Total and per-status device counts of fleets: one grouped aggregate query over their devices."""
    from devices.models import Device

    fleet_ids = list(fleet_ids)
    empty = {"total": 0, **{status.value: 0 for status in DeviceStatus}}
    counts = {fleet_id: dict(empty) for fleet_id in fleet_ids}
    rows = (
        Device.objects.filter(fleet_id__in=fleet_ids)
        .values("fleet_id")
        .order_by()
        .annotate(
            total=Count("id"),
            **{status.value: Count("id", filter=status_q(status)) for status in DeviceStatus},
        )
    )
    for row in rows:
        counts[row.pop("fleet_id")] = row
    now = time.time()
    for fleet_counts_ in counts.values():
        fleet_counts_["computed_at"] = now
    return counts


def _count(fleet_id: int) -> dict:
    return _count_many([fleet_id])[fleet_id]


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
    return fleet_counts_many([fleet_id])[fleet_id]


def fleet_counts_many(fleet_ids) -> dict[int, dict]:
    """`fleet_counts` for a list of fleets (the fleets page): one cache read for all of them, one
    grouped count for those not cached yet, and a background recount for each stale one."""
    fleet_ids = list(fleet_ids)
    if not fleet_ids:
        return {}
    try:
        cached = cache.get_many([_counts_key(fleet_id) for fleet_id in fleet_ids])
    except RedisError:  # the cache is down: count directly rather than fail the page
        return _count_many(fleet_ids)
    counts = {fleet_id: cached.get(_counts_key(fleet_id)) for fleet_id in fleet_ids}
    missing = [fleet_id for fleet_id, found in counts.items() if found is None]
    if missing:
        fresh = _count_many(missing)
        with suppress(RedisError):
            cache.set_many({_counts_key(fleet_id): found for fleet_id, found in fresh.items()}, COUNTS_KEEP_S)
        counts.update(fresh)
    for fleet_id, found in counts.items():
        if time.time() - found["computed_at"] > COUNTS_FRESH_S and _claim_recount(fleet_id):
            from devices.tasks import refresh_fleet_counts

            try:
                refresh_fleet_counts.delay(fleet_id)
            except Exception:  # the broker is down: count inline rather than show stale numbers forever
                with suppress(RedisError):
                    cache.delete(f"{_counts_key(fleet_id)}:lock")
                counts[fleet_id] = compute_fleet_counts(fleet_id)
    return counts


def _claim_recount(fleet_id: int) -> bool:
    try:
        return cache.add(f"{_counts_key(fleet_id)}:lock", 1, 30)
    except RedisError:
        return False


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
