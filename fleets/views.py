from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError
from django.db.models import Count
from django.http import HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect, push_url, trigger_client_event

from devices import services
from devices.filters import DeviceFilter, filtered_devices, list_querystring
from devices.forms import SavedViewForm
from devices.models import ActionScope, DeviceAction, SavedView
from devices.selectors import DEVICE_SORTS, fleet_counts, keyset_page_for, saved_views_of, sort_for
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
    """The fleet summary with its device list; htmx requests get just the table.

    A constant number of queries at any fleet size: the counts come from the cache, the page is one
    keyset query, and how many devices match the filters is only counted when someone starts a
    selection (fleet_device_count).
    """
    fleet = fleet_for_user(request.user, fleet_id)
    device_filter = DeviceFilter(request.GET, queryset=fleet.devices.select_related("device_type"))
    sort = sort_for(request.GET)
    devices = device_filter.qs if device_filter.is_valid() else fleet.devices.none()
    page = keyset_page_for(devices, sort, DEVICE_PAGE_SIZE, request.GET)
    querystring = list_querystring(request.GET)
    saved_views = saved_views_of(fleet, request.user)
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
            spec for spec in ACTIONS.values() if fleet.access.allows(spec.role_for(ActionScope.SELECTION))
        ],
        "querystring": querystring,
        "saved_views": saved_views,
        "active_view": next((view for view in saved_views if view.query == querystring), None),
    }
    if request.htmx and request.htmx.target == "device-table":
        response = render(request, "fleets/detail.html#device-table", context)
        if request.htmx.trigger == "device-filters":  # the address bar gets the filters, not the blanks
            push_url(response, _device_list_url(fleet, querystring))
        return response
    return render(request, "fleets/detail.html", context)


@login_required
def fleet_device_count(request, fleet_id):
    """How many devices match the list's filters: one COUNT, asked for only when a selection starts,
    so that "select all N matching" can say N without the list paying for it on every view."""
    fleet = fleet_for_user(request.user, fleet_id)
    try:
        devices, _ = filtered_devices(fleet.devices.all(), request.GET)
    except ValueError as error:
        return JsonResponse({"error": str(error)}, status=400)
    return JsonResponse({"count": devices.count()})


def _device_list_url(fleet, querystring: str) -> str:
    url = reverse("fleets:detail", args=[fleet.pk])
    return f"{url}?{querystring}" if querystring else url


@login_required
@require_POST
def saved_view_create(request, fleet_id):
    """Save the list's current filters under a name. Reading the fleet is enough: observers may too."""
    fleet = fleet_for_user(request.user, fleet_id)
    form = SavedViewForm(request.POST, fleet=fleet, owner=request.user)
    if form.is_valid():
        try:
            view = services.saved_view_create(
                fleet=fleet, owner=request.user, name=form.cleaned_data["name"], query=form.query
            )
        except IntegrityError:  # the same name saved twice at once
            form.add_error("name", "You already have a view with this name in this fleet.")
    if form.errors:
        if request.htmx:  # the dialog stays open with what was typed; a toast says what is wrong
            return trigger_client_event(
                HttpResponse(status=204), "toast", {"level": "error", "message": form.first_error()}
            )
        messages.error(request, form.first_error())
        return redirect(_device_list_url(fleet, form.query))
    messages.success(request, f"Saved the view “{view.name}”.")
    url = _device_list_url(fleet, view.query)
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@login_required
@require_POST
def saved_view_delete(request, fleet_id, view_id):
    fleet = fleet_for_user(request.user, fleet_id)
    view = get_object_or_404(SavedView, pk=view_id, fleet=fleet)
    if view.owner_id != request.user.pk:
        raise PermissionDenied("Only the member who saved a view can delete it.")
    services.saved_view_delete(view=view, actor=request.user)
    messages.success(request, f"Deleted the view “{view.name}”.")
    return redirect(_device_list_url(fleet, list_querystring(QueryDict(request.POST.get("return_to", "")))))


@login_required
def fleet_actions(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id)
    context = {
        "fleet": fleet,
        "access": fleet.access,
        "tabs": _tabs(fleet, "actions"),
        "actions": [
            (spec, fleet.access.allows(spec.role_for(ActionScope.FLEET))) for spec in ACTIONS.values()
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


@login_required
def fleet_activity(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id)
    actions = DeviceAction.objects.filter(fleet=fleet).select_related("device")
    kind = request.GET.get("kind")
    if kind:
        actions = actions.filter(kind=kind)
    context = {
        "fleet": fleet,
        "access": fleet.access,
        "tabs": _tabs(fleet, "activity"),
        "actions": actions[:100],
        "kind": kind,
    }
    return render(request, "fleets/activity.html", context)
