import logging
from dataclasses import dataclass
from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, transaction
from django.db.models import QuerySet
from django.http import Http404, HttpResponseBadRequest, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect, push_url

from devices import public_url, services
from devices.exports import (
    DEVICE_ACTIVITY_CSV_HEADER,
    OUTCOMES_CSV_HEADER,
    csv_response,
    device_activity_csv_rows,
    outcome_csv_rows,
)
from devices.filters import DeviceActivityFilter, DeviceFilter, filtered_devices, list_querystring
from devices.models import (
    OPEN_DELIVERY_STATES,
    ActionDelivery,
    ActionScope,
    DeliveryState,
    Device,
    DeviceAction,
    OfflinePolicy,
)
from devices.selectors import (
    ACTIVITY_SORT,
    DEVICE_SORTS,
    Sort,
    device_activity_log,
    keyset_page_for,
    sort_for,
)
from devices.services.engine import report_window_s
from fleets.models import Fleet, FleetRole
from fleets.selectors import device_for_user, devices_for_user, fleet_for_user, visible_fleet_ids

log = logging.getLogger(__name__)

MAX_SELECTED_IDS = 1000
MAX_ROW_ID = 2**63 - 1  # a BigAutoField's largest value: larger ints make the database driver raise
# A selection's filter is stored on the action as it was sent: a querystring, not a document.
MAX_FILTER_LENGTH = 2000
DEVICE_PAGE_SIZE = 50
OUTCOME_PAGE_SIZE = 100
ACTIVITY_PAGE_SIZE = 50
TTL_CHOICES = [(1, "1 hour"), (6, "6 hours"), (24, "1 day"), (72, "3 days"), (168, "7 days")]


@login_required
def device_list(request):
    """Every device the user may see, across fleets: find one by name or UUID."""
    visible = devices_for_user(request.user).select_related("device_type", "fleet", "fleet__organization")
    device_filter = DeviceFilter(request.GET, queryset=visible)
    devices = device_filter.qs if device_filter.is_valid() else visible.none()
    sort = sort_for(request.GET)
    page = keyset_page_for(devices, sort, DEVICE_PAGE_SIZE, request.GET)
    context = {
        "filter": device_filter,
        "page": page,
        "sort": sort,
        "sorts": DEVICE_SORTS.values(),
        "querystring": list_querystring(request.GET),
    }
    if request.htmx and request.htmx.target == "device-table":
        response = render(request, "devices/list.html#device-table", context)
        if request.htmx.trigger == "device-search":  # the address bar gets the filters, not the blanks
            query = context["querystring"]
            push_url(response, reverse("devices:list") + (f"?{query}" if query else ""))
        return response
    return render(request, "devices/list.html", context)


@login_required
def device_detail(request, uuid):
    device = device_for_user(request.user, uuid)
    context = _device_context(request, device)
    if request.htmx and request.htmx.target == "device-live":
        return render(request, "devices/detail.html#live", context)
    return render(request, "devices/detail.html", context)


@login_required
def device_activity(request, uuid):
    """Every action that touched the device, newest first: who, when, what, at which scope, this
    device's outcome and the action's counts; filterable, CSV too. The same few queries per page
    however long the log: the page, then which of its fleets the user may see."""
    device = device_for_user(request.user, uuid)
    touched = device_activity_log(device).select_related("device")
    activity_filter = DeviceActivityFilter(request.GET, queryset=touched)
    actions = activity_filter.qs if activity_filter.is_valid() else DeviceAction.objects.none()
    if request.GET.get("format") == "csv":
        visible = visible_fleet_ids(request.user, actions.values("fleet_id"))
        rows = device_activity_csv_rows(actions, visible)
        return csv_response(f"device-{device.uuid}-activity.csv", DEVICE_ACTIVITY_CSV_HEADER, rows)
    page = keyset_page_for(actions, ACTIVITY_SORT, ACTIVITY_PAGE_SIZE, request.GET)
    # An action of a fleet the device has left is listed, with this device's outcome; only a member
    # of that fleet gets its link and its counts.
    visible = visible_fleet_ids(request.user, {a.fleet_id for a in page.rows}) if page.rows else set()
    params = request.GET.copy()
    for cursor in ("after", "before", "last"):
        params.pop(cursor, None)
    context = {
        "device": device,
        "fleet": device.fleet,
        "access": device.access,
        "filter": activity_filter,
        "page": page,
        "visible_fleets": visible,
        "querystring": params.urlencode(),
    }
    if request.htmx and request.htmx.target == "activity-table":
        return render(request, "devices/activity.html#activity-table", context)
    return render(request, "devices/activity.html", context)


def _device_menu(device: Device) -> list[services.ActionSpec]:
    """The kinds a device's Actions menu offers; of each on/off pair only the one that changes something."""
    Kind = services.ActionKind
    hidden = {
        Kind.PUBLIC_URL_ON if device.public_url_enabled else Kind.PUBLIC_URL_OFF,
        Kind.LOCAL_MODE_ON if device.local_mode else Kind.LOCAL_MODE_OFF,
    }
    if not (device.support_access_until and device.support_access_until > timezone.now()):
        hidden.add(Kind.SUPPORT_REVOKE)
    return [s for s in services.ACTIONS.values() if ActionScope.DEVICE in s.scopes and s.kind not in hidden]


def _unavailable(spec: services.ActionSpec, device: Device) -> str | None:
    """Why this device cannot take the action now (shown instead of a button that does nothing)."""
    if spec.refusal_for(device.access):
        return spec.refusal_for(device.access)
    if spec.requires_agent_api and not device.has_agent_api:
        return f"Agent {device.agent_version} has no action API: needs 1.1.0 or newer"
    if not device.is_active and not spec.applies_to_deactivated:
        return "The device is deactivated"
    return spec.check(device) if spec.check else None


def _device_context(request, device: Device) -> dict:
    deliveries = (
        ActionDelivery.objects.filter(device_id=device.pk)
        .select_related("action")
        .order_by("-action__created_at", "-action_id")[:10]
    )
    menu = [(spec, _unavailable(spec, device)) for spec in _device_menu(device)]
    return {
        "device": device,
        "public_url": public_url.address_for(device, request),
        "fleet": device.fleet,
        "access": device.access,
        "deliveries": deliveries,
        "has_open_delivery": any(d.state in OPEN_DELIVERY_STATES for d in deliveries),
        "general_actions": [(spec, why) for spec, why in menu if not spec.danger],
        "dangerous_actions": [(spec, why) for spec, why in menu if spec.danger],
    }


# --- Confirm and dispatch ------------------------------------------------------------------------


@dataclass
class Target:
    """What an action would apply to, as the confirmation step describes it."""

    fleet: Fleet
    scope: ActionScope
    devices: QuerySet[Device]
    device: Device | None = None
    selection: dict | None = None
    filter_query: str = ""
    selected: int | None = None  # how many devices, once something had to count them

    def count(self) -> int:
        """How many devices are selected: known for ticked ids, one COUNT for a filter or the fleet."""
        if self.selected is None:
            ids = (self.selection or {}).get("ids")
            self.selected = len(ids) if ids is not None else self.devices.count()
        return self.selected

    @property
    def scope_label(self) -> str:
        return {ActionScope.DEVICE: "one device", ActionScope.FLEET: "the whole fleet"}.get(
            self.scope, "a selection of devices"
        )

    def confirm_text(self) -> str:
        if self.scope == ActionScope.DEVICE:
            return self.device.name
        if self.scope == ActionScope.FLEET:
            return self.fleet.name
        return str(self.count())

    def what(self) -> str:
        if self.scope == ActionScope.DEVICE:
            return self.device.name
        if self.scope == ActionScope.FLEET:
            if self.selected is None:
                return f"every device of {self.fleet.name}"
            return f"all {self.selected:,} devices of {self.fleet.name}"
        if self.selected is None:
            return f"the selected devices of {self.fleet.name}"
        return f"{self.selected:,} selected device{pluralize(self.selected)} of {self.fleet.name}"


class BadSelection(Exception):
    pass


def _is_device_id(raw: str) -> bool:
    """Plain ASCII digits naming a row id the database can hold (not "١", "1_0", " 1" or 10**30)."""
    return raw.isascii() and raw.isdigit() and len(raw) <= 19 and 0 < int(raw) <= MAX_ROW_ID


def _selection_target(fleet: Fleet, data) -> Target:
    """Ids ticked on the list, all devices matching a filter, or (neither) the whole fleet.

    Every id must belong to this fleet: a selection reaching into another fleet or organization
    is refused as a whole.
    """
    fleet_devices = Device.objects.filter(fleet=fleet)
    if data.get("all_matching") == "1":
        query = data.get("filter", "")
        if len(query) > MAX_FILTER_LENGTH:
            raise BadSelection(f"The filter is too long (at most {MAX_FILTER_LENGTH:,} characters).")
        query = list_querystring(QueryDict(query))
        try:
            devices, _ = filtered_devices(fleet_devices, query)
        except ValueError as error:
            raise BadSelection(f"The filter is not valid: {error}") from None
        return Target(fleet, ActionScope.SELECTION, devices, selection={"filter": query}, filter_query=query)
    raw_ids = data.getlist("ids")
    if not raw_ids:
        return Target(fleet, ActionScope.FLEET, fleet_devices)
    if not all(_is_device_id(i) for i in raw_ids):
        raise BadSelection("The selection is not a list of devices.")
    ids = sorted({int(i) for i in raw_ids})
    if len(ids) > MAX_SELECTED_IDS:
        raise BadSelection(
            f"Select at most {MAX_SELECTED_IDS} devices by hand, or use “select all matching”."
        )
    found = fleet_devices.filter(pk__in=ids).count()
    if found != len(ids):
        raise BadSelection(
            f"{len(ids) - found} of the {len(ids)} selected devices are not in {fleet.name}; nothing was done."
        )
    return Target(
        fleet,
        ActionScope.SELECTION,
        fleet_devices.filter(pk__in=ids),
        selection={"ids": ids},
        filter_query=list_querystring(QueryDict(data.get("filter", ""))),
    )


def _spec_or_404(kind: str) -> services.ActionSpec:
    spec = services.ACTIONS.get(kind)
    if spec is None:
        raise Http404("No such action.")
    return spec


@login_required
def device_action(request, uuid, kind):
    spec = _spec_or_404(kind)
    device = device_for_user(request.user, uuid, spec.min_role)
    if spec.refusal_for(device.access):
        raise PermissionDenied(spec.refusal_for(device.access))
    target = Target(device.fleet, ActionScope.DEVICE, Device.objects.filter(pk=device.pk), device=device)
    return _confirm_or_dispatch(request, spec, target)


@login_required
def fleet_action(request, fleet_id, kind):
    spec = _spec_or_404(kind)
    fleet = fleet_for_user(request.user, fleet_id, spec.min_role)
    if spec.refusal_for(fleet.access):
        raise PermissionDenied(spec.refusal_for(fleet.access))
    try:
        target = _selection_target(fleet, request.POST if request.method == "POST" else request.GET)
    except BadSelection as error:
        return _refuse(request, fleet, str(error))
    required = spec.role_for(target.scope)
    if not fleet.access.allows(required):
        raise PermissionDenied(f"{spec.label} for the whole fleet needs the {required.label} role.")
    return _confirm_or_dispatch(request, spec, target)


def _refuse(request, fleet, message: str):
    return render(request, "devices/action_refused.html", {"message": message, "fleet": fleet}, status=400)


def _params_form(request, spec: services.ActionSpec, target: Target):
    """The kind's parameters form, bound to what the user chose (a POST, or a GET refreshing the preview)."""
    if not spec.form:
        return None
    form_class = import_string(spec.form)
    data = request.POST if request.method == "POST" else request.GET
    bound = request.method == "POST" or any(name in data for name in form_class.base_fields)
    return form_class(data if bound else None, user=request.user, fleet=target.fleet, devices=target.devices)


def _confirm_or_dispatch(request, spec: services.ActionSpec, target: Target):
    """GET: the confirmation step: what it does, the kind's choices, the preview (one aggregate over
    the devices in scope), the offline policy, typed confirmation for destructive ones.

    POST: checks it all again and records the action, without counting the scope again: a
    fleet-wide action on 100,000 devices costs the same few queries as on one device (one EXISTS
    for "can any device receive it", a COUNT only when the user typed a device count).
    """
    if target.scope not in spec.scopes:
        return _refuse(request, target.fleet, f"{spec.label} cannot be applied to {target.scope_label}.")
    # One device: say why it cannot take the action (old agent, deactivated, the kind's own check)
    # rather than only that "none of the selected devices" can.
    refusal = _unavailable(spec, target.device) if target.device else None
    data = request.POST if request.method == "POST" else request.GET
    policy = data.get("offline_policy", OfflinePolicy.ONLINE_ONLY)
    if policy not in OfflinePolicy.values:
        return HttpResponseBadRequest("Unknown offline policy.")
    typed = target.scope in spec.typed_confirmation
    form = _params_form(request, spec, target)
    params = form.params() if form is not None and form.is_valid() else {}

    def confirmation(error=None, status=200):
        preview = services.action_preview(
            kind=spec.kind, devices=target.devices, offline_policy=policy, params=params
        )
        target.selected = preview.selected
        context = {
            "spec": spec,
            "target": target,
            "fleet": target.fleet,
            "device": target.device,
            "form": form,
            "refusal": refusal,
            "preview": preview,
            "what": target.what(),
            "confirm_text": target.confirm_text() if typed else "",
            "ttl_choices": TTL_CHOICES,
            "policies": OfflinePolicy.choices,
            "policy": policy,
            "form_action": request.path,
            "error": error,
        }
        if error is None and request.htmx:
            return render(request, "devices/action_confirm.html#dialog", context)
        return render(request, "devices/action_confirm.html", context, status=status)

    if request.method != "POST":
        return confirmation()

    error = refusal
    if not error and form is not None and not form.is_valid():
        error = "Check the choices above."
    if not error and typed and request.POST.get("confirm", "").strip() != target.confirm_text():
        error = f"Type {target.confirm_text()} exactly to confirm."
    ttl = None
    if not error and policy == OfflinePolicy.QUEUE:
        try:
            hours = int(request.POST.get("ttl_hours", ""))
        except ValueError:
            error = "Choose how long to keep the action for offline devices."
        else:  # the range before the timedelta: a huge number of hours overflows it
            if not 1 <= hours <= 7 * 24:
                error = "Keep it between 1 hour and 7 days."
            else:
                ttl = timedelta(hours=hours)
    rollout = None
    if not error and data.get("staged") == "1":
        rollout, error = _rollout(data, policy)
    possible = services.action_possible(
        kind=spec.kind, devices=target.devices, offline_policy=policy, params=params
    )
    if not error and not possible:
        error = "None of the selected devices can receive this action."
    if error:
        return confirmation(error, status=400)

    try:
        with transaction.atomic():
            action = services.action_create(
                actor=request.user,
                fleet=target.fleet,
                kind=spec.kind,
                scope=target.scope,
                device=target.device,
                selection=target.selection,
                params=params,
                offline_policy=policy if spec.needs_agent_api else OfflinePolicy.ONLINE_ONLY,
                ttl=ttl,
                rollout=rollout,
            )
    except DatabaseError:
        # Rolled back as a whole, and its dispatch (sent on commit) never enqueued: say so, so the
        # operator knows a retry cannot act twice.
        log.exception("recording a %s action for fleet %s failed", spec.kind, target.fleet.pk)
        message = (
            "The database failed while the action was being recorded. Nothing was recorded and nothing "
            "was sent to any device: you can try again."
        )
        context = {"message": message, "fleet": target.fleet, "title": "The action was not recorded."}
        return render(request, "devices/action_refused.html", context, status=503)
    if spec.needs_agent_api:
        verb = "sent to"
    elif spec.tracked or spec.applied_on_poll:
        verb = "in the target state of"  # done once the device has it: see the outcomes
    else:
        verb = "applied to"
    messages.success(request, f"{spec.label}: {verb} {target.what()}.")
    if target.scope == ActionScope.DEVICE and spec.kind != services.ActionKind.DELETE:
        url = reverse("devices:detail", args=[target.device.uuid])
    elif target.scope == ActionScope.DEVICE:
        url = reverse("fleets:detail", args=[target.fleet.pk])
    else:
        url = reverse("fleets:action", args=[target.fleet.pk, action.pk])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _rollout(data, policy: str) -> tuple[dict | None, str | None]:
    """The staged rollout the confirmation asked for, or why it cannot be done."""
    if policy != OfflinePolicy.ONLINE_ONLY:
        return (
            None,
            "A staged rollout reaches the devices online at each stage: choose to skip offline devices.",
        )
    try:
        size, halt = int(data.get("stage_size", "")), int(data.get("halt_failure_pct", ""))
    except ValueError:
        return None, "Give the number of devices per stage and the failure percentage that halts the rollout."
    if not 1 <= size <= 100_000 or not 0 <= halt <= 100:
        return None, "A stage has 1 to 100,000 devices; the halt threshold is 0 to 100%."
    return {"size": size, "halt_failure_pct": halt}, None


# --- Progress, outcomes, cancel ------------------------------------------------------------------

OUTCOME_SORT = Sort("device", "Device", ("device_id", "id"))


@login_required
def action_detail(request, fleet_id, action_id):
    fleet = fleet_for_user(request.user, fleet_id)
    action = get_object_or_404(DeviceAction.objects.select_related("device"), pk=action_id, fleet=fleet)
    context = {"fleet": fleet, "access": fleet.access, "action": action}
    # A large restart's devices send their results with their next reports (PROTOCOL.md).
    context["results_within_s"] = report_window_s(action.kind, action.target_count)
    if request.htmx and request.htmx.target == "action-progress":
        # Polled every second while the action runs: the counters on the action row, nothing else.
        return render(request, "devices/action_detail.html#progress", context)
    state = request.GET.get("state", "")
    outcomes = ActionDelivery.objects.filter(action=action)
    if state in DeliveryState.values:
        outcomes = outcomes.filter(state=state)
    if request.GET.get("format") == "csv":
        return csv_response(
            f"action-{action.pk}-outcomes.csv", OUTCOMES_CSV_HEADER, outcome_csv_rows(outcomes)
        )
    context |= {
        "page": keyset_page_for(outcomes, OUTCOME_SORT, OUTCOME_PAGE_SIZE, request.GET),
        "state": state,
        "states": DeliveryState.choices,
    }
    if request.htmx and request.htmx.target == "outcomes":
        return render(request, "devices/action_detail.html#outcomes", context)
    return render(request, "devices/action_detail.html", context)


@login_required
@require_POST
def action_cancel(request, fleet_id, action_id):
    fleet = fleet_for_user(request.user, fleet_id, FleetRole.OPERATOR)
    action = get_object_or_404(DeviceAction, pk=action_id, fleet=fleet)
    try:
        cancelled = services.action_cancel(action=action)
    except services.ActionError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"Cancelled: {cancelled:,} devices will not be sent the action.")
    return redirect("fleets:action", fleet.pk, action.pk)
