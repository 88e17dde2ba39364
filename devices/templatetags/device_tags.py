"""Template filters of the device pages."""

from datetime import datetime

from django import template
from django.utils import timezone

from devices.models import DeliveryState

register = template.Library()


@register.filter
def short_ago(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago, in the fewest characters a table column needs: "just now", "5 min ago",
    "3 h ago", "2 d ago" ("never" when there is no moment). The exact time goes in a title."""
    if moment is None:
        return "never"
    seconds = max(0, int(((now or timezone.now()) - moment).total_seconds()))
    if seconds < 60:
        return "just now"
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    raise AssertionError("unreachable")


@register.filter
def outcome_label(state: str) -> str:
    """A delivery state's label ("Missed: offline"), for an outcome read as a plain value (an
    annotation) rather than from an ActionDelivery's own field."""
    return DeliveryState(state).label if state in DeliveryState.values else state
