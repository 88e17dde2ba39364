"""CSV exports of the audit log, streamed row by row so a 100,000-device action costs no memory."""

import csv

from django.http import StreamingHttpResponse

ACTIVITY_CSV_HEADER = [
    "id",
    "created_at",
    "actor",
    "action",
    "scope",
    "selection",
    "device",
    "state",
    "offline_policy",
    "devices",
    "succeeded",
    "failed",
    "blocked",
    "missed",
    "unsupported",
    "expired",
    "cancelled",
    "waiting",
    "sent",
    "summary",
]
# A device's Activity export: the same columns, then this device's own outcome. Of an action in a fleet
# the reader may not see (the device was moved since), what it did elsewhere stays blank.
DEVICE_ACTIVITY_CSV_HEADER = [*ACTIVITY_CSV_HEADER, "device_outcome", "device_reason"]
OTHER_FLEET_COLUMNS = ("selection", "devices", "succeeded", "failed", "blocked", "missed", "unsupported",
                       "expired", "cancelled", "waiting", "sent")  # fmt: skip
OTHER_FLEET_BLANKS = frozenset(ACTIVITY_CSV_HEADER.index(column) for column in OTHER_FLEET_COLUMNS)
OUTCOMES_CSV_HEADER = [
    "device_uuid",
    "device_name",
    "outcome",
    "reason",
    "attempts",
    "sent_at",
    "finished_at",
]


class _Echo:
    def write(self, value):
        return value


# A spreadsheet evaluates a cell starting with one of these as a formula; device names, reasons and
# summaries come from agents and users, so such a cell is written as text (a leading quote).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_response(filename: str, header: list[str], rows) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow([spreadsheet_safe(value) for value in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def activity_csv_row(a) -> list:
    selection = a.selection.get("filter") if "filter" in a.selection else len(a.selection.get("ids", []))
    return [
        a.pk,
        a.created_at.isoformat(),
        a.actor_name,
        a.get_kind_display(),
        a.get_scope_display(),
        selection if a.selection else "",
        a.device.name if a.device else "",
        a.state,
        a.offline_policy,
        a.target_count,
        a.succeeded_count,
        a.failed_count,
        a.blocked_count,
        a.missed_count,
        a.unsupported_count,
        a.expired_count,
        a.cancelled_count,
        a.waiting_count,
        a.sent_count,
        a.summary,
    ]


def activity_csv_rows(actions):
    for a in actions.order_by("-created_at", "-id").iterator(chunk_size=1000):
        yield activity_csv_row(a)


def device_activity_csv_rows(actions, visible_fleet_ids: set[int]):
    """`actions` from devices.selectors.device_activity_log: each row ends with this device's outcome."""
    for a in actions.order_by("-created_at", "-id").iterator(chunk_size=1000):
        row = activity_csv_row(a)
        if a.fleet_id not in visible_fleet_ids:
            row = ["" if i in OTHER_FLEET_BLANKS else value for i, value in enumerate(row)]
        yield [*row, a.device_outcome, a.device_reason]


def outcome_csv_rows(deliveries):
    for d in deliveries.order_by("device_id").iterator(chunk_size=2000):
        yield [
            d.device_uuid,
            d.device_name,
            d.state,
            d.reason,
            d.attempts,
            d.sent_at.isoformat() if d.sent_at else "",
            d.finished_at.isoformat() if d.finished_at else "",
        ]
