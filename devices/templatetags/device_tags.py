"""Template filters of the device pages."""

from datetime import datetime

from django import template
from django.utils import timezone

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
