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


def activity_csv_rows(actions):
    for a in actions.order_by("-created_at", "-id").iterator(chunk_size=1000):
        selection = a.selection.get("filter") if "filter" in a.selection else len(a.selection.get("ids", []))
        yield [
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
