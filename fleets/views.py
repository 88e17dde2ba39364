from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.shortcuts import render
from django.urls import reverse

from devices.exports import ACTIVITY_CSV_HEADER, activity_csv_rows, csv_response
from devices.filters import ActionFilter, DeviceFilter
from devices.models import ActionScope, DeviceAction
from devices.selectors import DEVICE_SORTS, Sort, fleet_counts, keyset_page
from devices.services import ACTIONS
from devices.views import DEVICE_PAGE_SIZE
from fleets.models import FleetMembership
from fleets.selectors import fleet_for_user, fleets_for_user


def _tabs(fleet, active: str) -> list[tuple[str, str, bool]]:
    return [
        ("Devices", reverse("fleets:detail", args=[fleet.pk]), active == "devices"),
        ("Actions", reverse("fleets:actions", args=[fleet.pk]), active == "actions"),
        ("Members", reverse("fleets:members", args=[fleet.pk]), active == "members"),
        ("Activity", reverse("fleets:activity", args=[fleet.pk]), active == "activity"),
    ]


@login_required
def fleet_list(request):
    fleets = (
        fleets_for_user(request.user)
        .select_related("organization", "fleet_type", "default_device_type")
        .annotate(device_count=Count("devices"))
        .order_by("organization__name", "name")
    )
    return render(request, "fleets/list.html", {"fleets": fleets})


@login_required
def fleet_detail(request, fleet_id):
    """The fleet summary with its device list; htmx requests get just the table."""
    fleet = fleet_for_user(request.user, fleet_id)
    device_filter = DeviceFilter(request.GET, queryset=fleet.devices.select_related("device_type"))
    sort = DEVICE_SORTS.get(request.GET.get("sort", "name"), DEVICE_SORTS["name"])
    devices = device_filter.qs if device_filter.is_valid() else fleet.devices.none()
    page = keyset_page(devices, sort, request.GET.get("after"), DEVICE_PAGE_SIZE)
    context = {
        "fleet": fleet,
        "access": fleet.access,
        "tabs": _tabs(fleet, "devices"),
        "filter": device_filter,
        "page": page,
        "sort": sort,
        "sorts": DEVICE_SORTS.values(),
        "counts": fleet_counts(fleet.pk),
        "actions": [
            spec
            for spec in ACTIONS.values()
            if ActionScope.SELECTION in spec.scopes and fleet.access.allows(spec.role_for(ActionScope.SELECTION))
        ],
        "querystring": _filter_querystring(request.GET),
    }
    if request.htmx and request.htmx.target == "device-table":
        return render(request, "fleets/detail.html#device-table", context)
    return render(request, "fleets/detail.html", context)


def _filter_querystring(params) -> str:
    """The filter part of the query (no paging), to carry into a selection or a saved view."""
    params = params.copy()
    for key in ("after", "ids", "all_matching"):
        params.pop(key, None)
    return params.urlencode()


@login_required
def fleet_actions(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id)
    context = {
        "fleet": fleet,
        "access": fleet.access,
        "tabs": _tabs(fleet, "actions"),
        "actions": [
            (spec, fleet.access.allows(spec.role_for(ActionScope.FLEET)))
            for spec in ACTIONS.values()
            if ActionScope.FLEET in spec.scopes
        ],
        "counts": fleet_counts(fleet.pk),
    }
    return render(request, "fleets/actions.html", context)


@login_required
def fleet_members(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id)
    members = FleetMembership.objects.filter(fleet=fleet).select_related("user").order_by("user__username")
    context = {"fleet": fleet, "access": fleet.access, "tabs": _tabs(fleet, "members"), "members": members}
    return render(request, "fleets/members.html", context)


ACTIVITY_SORT = Sort("-created", "Newest first", ("created_at", "id"), descending=True)
ACTIVITY_PAGE_SIZE = 50


@login_required
def fleet_activity(request, fleet_id):
    """The fleet's audit log: who did what, when, to which devices, with outcome counts; CSV too."""
    fleet = fleet_for_user(request.user, fleet_id)
    action_filter = ActionFilter(request.GET, queryset=DeviceAction.objects.filter(fleet=fleet).select_related("device"))
    actions = action_filter.qs if action_filter.is_valid() else DeviceAction.objects.none()
    if request.GET.get("format") == "csv":
        return csv_response(f"{fleet.name}-activity.csv", ACTIVITY_CSV_HEADER, activity_csv_rows(actions))
    page = keyset_page(actions, ACTIVITY_SORT, request.GET.get("after"), ACTIVITY_PAGE_SIZE)
    params = request.GET.copy()
    params.pop("after", None)
    context = {
        "fleet": fleet,
        "access": fleet.access,
        "tabs": _tabs(fleet, "activity"),
        "filter": action_filter,
        "page": page,
        "querystring": params.urlencode(),
    }
    if request.htmx and request.htmx.target == "activity-table":
        return render(request, "fleets/activity.html#activity-table", context)
    return render(request, "fleets/activity.html", context)
