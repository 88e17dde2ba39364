from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError
from django.db.models import Count, Sum
from django.http import HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect, push_url, trigger_client_event

from devices import services as device_services
from devices.exports import ACTIVITY_CSV_HEADER, activity_csv_rows, csv_response
from devices.filters import ActionFilter, DeviceFilter, filtered_devices, list_querystring
from devices.forms import SavedViewForm
from devices.models import ActionKind, ActionScope, DeviceAction, SavedView
from devices.selectors import (
    ACTIVITY_SORT,
    DEVICE_SORTS,
    fleet_counts,
    fleet_counts_many,
    keyset_page_for,
    saved_views_of,
    sort_for,
)
from devices.services import ACTIONS, ActionError
from devices.views import DEVICE_PAGE_SIZE
from fleets import services
from fleets.forms import (
    DeleteFleetForm,
    FleetCreateForm,
    FleetRenameForm,
    FleetTypeForm,
    MemberAddForm,
    MemberRoleForm,
    OrgMemberAddForm,
    OrgMemberRoleForm,
    SupportGrantForm,
    TransferForm,
)
from fleets.models import (
    BillingCharge,
    Fleet,
    FleetMembership,
    FleetRole,
    Organization,
    OrgMembership,
    OrgRole,
)
from fleets.selectors import (
    fleet_activity_log,
    fleet_for_user,
    fleet_type_options,
    fleets_for_user,
    is_org_admin,
    open_actions,
    org_admin_organizations,
    organization_for_admin,
    organizations_for_user,
    transfer_refusal,
    transfer_summary,
)

ADMIN = FleetRole.ADMINISTRATOR
# Engine actions that are fleet-specific at fleet scope (they need a higher role there), as the
# Actions tab's Fleet section names them.
FLEET_WIDE_LABELS = {
    ActionKind.PUBLIC_URL_ON: "Enable all public device URLs",
    ActionKind.PUBLIC_URL_OFF: "Disable all public device URLs",
}


def _tabs(fleet, active: str) -> list[tuple[str, str, bool]]:
    return [
        ("Devices", reverse("fleets:detail", args=[fleet.pk]), active == "devices"),
        ("Actions", reverse("fleets:actions", args=[fleet.pk]), active == "actions"),
        ("Members", reverse("fleets:members", args=[fleet.pk]), active == "members"),
        ("Activity", reverse("fleets:activity", args=[fleet.pk]), active == "activity"),
    ]


def _with_device_counts(fleets: list) -> list:
    """Each fleet's device total from the cached counts: no COUNT over every device per page view."""
    counts = fleet_counts_many(fleet.pk for fleet in fleets)
    for fleet in fleets:
        fleet.device_count = counts[fleet.pk]["total"]
    return fleets


@login_required
def fleet_list(request):
    fleets = list(
        fleets_for_user(request.user)
        .select_related("organization", "fleet_type", "default_device_type")
        .order_by("organization__name", "name")
    )
    _with_device_counts(fleets)
    can_create = org_admin_organizations(request.user).exists()
    return render(request, "fleets/list.html", {"fleets": fleets, "can_create": can_create})


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
            spec
            for spec in ACTIONS.values()
            if ActionScope.SELECTION in spec.scopes
            and fleet.access.allows(spec.role_for(ActionScope.SELECTION))
            and not spec.refusal_for(fleet.access)
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
            view = device_services.saved_view_create(
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
    device_services.saved_view_delete(view=view, actor=request.user)
    messages.success(request, f"Deleted the view “{view.name}”.")
    return redirect(_device_list_url(fleet, list_querystring(QueryDict(request.POST.get("return_to", "")))))


@dataclass
class FleetActionRow:
    """One fleet-specific action on the Actions tab: where its confirmation is, or why it is disabled."""

    label: str
    description: str
    url: str = ""
    reason: str = ""
    status: str = ""
    revoke_url: str = ""


@login_required
def fleet_actions(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id)
    access = fleet.access
    context = {
        "fleet": fleet,
        "access": access,
        "tabs": _tabs(fleet, "actions"),
        "actions": [
            (spec, access.allows(spec.role_for(ActionScope.FLEET)))
            for spec in ACTIONS.values()
            if ActionScope.FLEET in spec.scopes and not spec.fleet_role
        ],
        "counts": fleet_counts(fleet.pk),
        **_fleet_action_rows(request.user, fleet),
    }
    return render(request, "fleets/actions.html", context)


def _fleet_action_rows(user, fleet: Fleet) -> dict:
    """The "Fleet" section and the fleet's rows of the danger zone, each enabled or saying why not."""
    access = fleet.access
    not_admin = "" if access.can_administer else f"Needs the Administrator role (yours: {access.role.label})."

    def url(name: str) -> str:
        return reverse(f"fleets:{name}", args=[fleet.pk])

    now = timezone.now()
    support_live = bool(fleet.support_access_until and fleet.support_access_until > now)
    rows = [
        FleetActionRow(
            "Change fleet type",
            f"Currently {fleet.fleet_type.name}. Allowed when every device runs the new type's minimum host OS, "
            f"the device count fits and {fleet.organization.name} may use the type.",
            url("type"),
            not_admin,
        ),
        FleetActionRow(
            "Rename fleet",
            "Starter, Microservices and Essentials fleets only. Devices see the new name at their next poll.",
            url("rename"),
            not_admin or services.rename_refusal(fleet),
        ),
    ]
    for spec in ACTIONS.values():
        if spec.fleet_role:
            allowed = access.allows(spec.role_for(ActionScope.FLEET))
            rows.append(
                FleetActionRow(
                    FLEET_WIDE_LABELS.get(spec.kind, spec.label),
                    f"{spec.description} Applies to the devices in the fleet now.",
                    reverse("fleets:action-new", args=[fleet.pk, spec.kind.value]),
                    ""
                    if allowed
                    else f"Needs the {spec.fleet_role.label} role (yours: {access.role.label}).",
                )
            )
    rows.append(
        FleetActionRow(
            "Grant support access",
            "Support staff may see and operate the whole fleet and its devices until the grant ends.",
            url("support"),
            not_admin,
            status=(
                f"Granted until {timezone.localtime(fleet.support_access_until):%-d %b %Y %H:%M}"
                if support_live
                else "Not granted"
            ),
            revoke_url=url("support-revoke") if support_live and not not_admin else "",
        )
    )
    if not_admin:
        transfer_reason = not_admin
    else:
        _, transfer_reason = transfer_summary(user, fleet)
    danger = [
        FleetActionRow(
            "Transfer ownership",
            "Move the fleet with its devices, releases and members to another organization that has an empty "
            "fleet of the same name. Devices keep running and stay online.",
            url("transfer"),
            transfer_reason,
        ),
        FleetActionRow(
            "Delete fleet",
            "Permanent. Devices not moved to another fleet first become orphaned: they keep running their last "
            "release, but the server refuses them from then on.",
            url("delete"),
            not_admin,
        ),
    ]
    return {"fleet_rows": rows, "fleet_danger_rows": danger}


# --- Fleet actions: a confirmation step (htmx dialog, or a page without JavaScript), then a POST ---


def _confirm(request, fleet: Fleet, kind: str, context: dict, *, status: int | None = None):
    """The confirmation of a fleet action: the page, or (htmx GET) the dialog that opens itself."""
    context = {"fleet": fleet, "access": fleet.access, "kind": kind, "form_action": request.path, **context}
    if request.htmx and request.method == "GET":
        return render(request, "fleets/fleet_action.html#dialog", context)
    if status is None:
        status = 400 if request.method == "POST" else 200
    return render(request, "fleets/fleet_action.html", context, status=status)


def _done(request, url: str, message: str):
    messages.success(request, message)
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _after_leaving(user, organization: Organization) -> str:
    """Where to go once the fleet is gone (deleted, or transferred out of reach)."""
    if is_org_admin(user, organization):
        return reverse("orgs:detail", args=[organization.handle])
    return reverse("fleets:list")


@login_required
def fleet_create(request):
    organizations = org_admin_organizations(request.user).order_by("name")
    if not organizations.exists():
        raise PermissionDenied("Only organization administrators create fleets.")
    initial = {"organization": request.GET.get("organization"), "fleet_type": "essentials"}
    form = FleetCreateForm(request.POST or None, organizations=organizations, initial=initial)
    error = ""
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            fleet = services.fleet_create(
                actor=request.user,
                organization=data["organization"],
                name=data["name"],
                fleet_type=data["fleet_type"],
                default_device_type=data["default_device_type"],
            )
        except ActionError as exc:
            error = str(exc)
        else:
            messages.success(request, f"Created the fleet {fleet.name} in {fleet.organization.name}.")
            return redirect("fleets:detail", fleet.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "fleets/create.html", {"form": form, "error": error}, status=status)


@login_required
def fleet_rename(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id, ADMIN)
    refusal = services.rename_refusal(fleet)
    form = FleetRenameForm(request.POST or None, initial={"name": fleet.name})
    error = refusal
    if request.method == "POST" and form.is_valid():
        old = fleet.name
        try:
            fleet = services.fleet_rename(actor=request.user, fleet=fleet, name=form.cleaned_data["name"])
        except ActionError as exc:
            error = str(exc)
        else:
            return _done(
                request, reverse("fleets:actions", args=[fleet.pk]), f"Renamed {old} to {fleet.name}."
            )
    context = {"title": f"Rename {fleet.name}", "form": form, "error": error, "blocked": bool(refusal)}
    return _confirm(request, fleet, "rename", context | {"submit_label": "Rename fleet"})


@login_required
def fleet_type(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id, ADMIN)
    form = FleetTypeForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        try:
            services.fleet_type_change(
                actor=request.user, fleet=fleet, fleet_type=form.cleaned_data["fleet_type"]
            )
        except ActionError as exc:
            error = str(exc)
        else:
            new_type = form.cleaned_data["fleet_type"].name
            return _done(
                request,
                reverse("fleets:actions", args=[fleet.pk]),
                f"The type of {fleet.name} is now {new_type}.",
            )
    options = fleet_type_options(fleet)
    context = {
        "title": f"Change the type of {fleet.name}",
        "form": form,
        "options": options,
        "error": error,
        "blocked": not any(option.allowed for option in options),
        "submit_label": "Change type",
    }
    return _confirm(request, fleet, "type", context)


@login_required
def fleet_support(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id, ADMIN)
    form = SupportGrantForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        try:
            fleet = services.fleet_support_grant(
                actor=request.user, fleet=fleet, period=form.cleaned_data["period"]
            )
        except ActionError as exc:
            error = str(exc)
        else:
            until = timezone.localtime(fleet.support_access_until)
            return _done(
                request,
                reverse("fleets:actions", args=[fleet.pk]),
                f"Support access to {fleet.name} granted until {until:%-d %b %Y %H:%M}.",
            )
    live = fleet.support_access_until and fleet.support_access_until > timezone.now()
    context = {
        "title": f"Grant support access to {fleet.name}",
        "form": form,
        "error": error,
        "support_until": fleet.support_access_until if live else None,
        "submit_label": "Grant access",
    }
    return _confirm(request, fleet, "support", context)


@login_required
@require_POST
def fleet_support_revoke(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id, ADMIN)
    try:
        services.fleet_support_revoke(actor=request.user, fleet=fleet)
    except ActionError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Support access to {fleet.name} revoked: it ends now.")
    url = reverse("fleets:actions", args=[fleet.pk])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@login_required
def fleet_transfer(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id, ADMIN)
    refusal = transfer_refusal(request.user, fleet)
    if refusal:
        raise PermissionDenied(refusal)
    targets, reason = transfer_summary(request.user, fleet)
    form = TransferForm(request.POST or None)
    error = reason if request.method == "GET" and not targets else ""
    if request.method == "POST" and form.is_valid():
        target = next(
            (t for t in targets if t.organization.handle == form.cleaned_data["organization"]), None
        )
        if form.cleaned_data["confirm"].strip() != fleet.name:
            error = f"Type {fleet.name} exactly to confirm."
        elif target is None:
            error = "Choose one of the organizations listed."
        else:
            source = fleet.organization
            try:
                services.fleet_transfer(actor=request.user, fleet=fleet, organization=target.organization)
            except ActionError as exc:
                error = str(exc)
            else:
                return _done(
                    request,
                    _after_leaving(request.user, source),
                    f"Transferred {fleet.name} to {target.organization.name}, with its devices, releases and "
                    f"members; {source.name} no longer has access to it.",
                )
    elif request.method == "POST":
        error = "Choose the organization to transfer to."
    context = {
        "title": f"Transfer {fleet.name} to another organization",
        "form": form,
        "targets": targets,
        "open_actions": open_actions(fleet).count(),
        "error": error,
        "blocked": not any(target.ready for target in targets),
        "confirm_text": fleet.name,
        "danger": True,
        "submit_label": "Transfer fleet",
    }
    return _confirm(request, fleet, "transfer", context)


@login_required
def fleet_delete(request, fleet_id):
    fleet = fleet_for_user(request.user, fleet_id, ADMIN)
    form = DeleteFleetForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        if form.cleaned_data["confirm"].strip() != fleet.name:
            error = f"Type {fleet.name} exactly to confirm."
        else:
            organization = fleet.organization
            deleted = services.fleet_delete(actor=request.user, fleet=fleet)
            return _done(
                request,
                _after_leaving(request.user, organization),
                f"Deleted the fleet {deleted.name}: {deleted.devices:,} device{'s' if deleted.devices != 1 else ''} "
                "orphaned.",
            )
    context = {
        "title": f"Delete {fleet.name}?",
        "form": form,
        "error": error,
        "counts": fleet_counts(fleet.pk),
        "releases": fleet.releases.count(),
        "confirm_text": fleet.name,
        "danger": True,
        "submit_label": "Delete fleet",
    }
    return _confirm(request, fleet, "delete", context)


# --- Members -------------------------------------------------------------------------------------


@login_required
def fleet_members(request, fleet_id):
    """Who is in the fleet; administrators add members here (POST)."""
    fleet = fleet_for_user(request.user, fleet_id)
    form = MemberAddForm(request.POST or None)
    error = ""
    if request.method == "POST":
        if not fleet.access.can_administer:
            raise PermissionDenied("Only fleet administrators manage members.")
        if form.is_valid():
            try:
                membership = services.fleet_member_add(
                    actor=request.user,
                    fleet=fleet,
                    username=form.cleaned_data["username"],
                    role=form.cleaned_data["role"],
                )
            except ActionError as exc:
                error = str(exc)
            else:
                messages.success(
                    request,
                    f"Added {membership.user.get_username()} to {fleet.name} as {membership.get_role_display()}.",
                )
                return redirect("fleets:members", fleet.pk)
    members = FleetMembership.objects.filter(fleet=fleet).select_related("user").order_by("user__username")
    org_admins = (
        OrgMembership.objects.filter(organization=fleet.organization, role=OrgRole.ADMINISTRATOR)
        .select_related("user")
        .order_by("user__username")
    )
    context = {
        "fleet": fleet,
        "access": fleet.access,
        "tabs": _tabs(fleet, "members"),
        "members": members,
        "org_admins": org_admins,
        "org_admin": request.user.is_superuser or any(m.user_id == request.user.pk for m in org_admins),
        "form": form,
        "error": error,
        "roles": FleetRole.choices,
    }
    return render(request, "fleets/members.html", context, status=400 if request.method == "POST" else 200)


def _fleet_member(request, fleet_id, user_id):
    fleet = fleet_for_user(request.user, fleet_id, ADMIN)
    user = get_object_or_404(User, pk=user_id, fleet_memberships__fleet=fleet)
    return fleet, user


def _left_the_fleet(request, fleet: Fleet) -> str:
    """The members tab, unless the change took the user's own access away."""
    still = fleets_for_user(request.user).filter(pk=fleet.pk).exists()
    return reverse("fleets:members", args=[fleet.pk]) if still else reverse("fleets:list")


@login_required
@require_POST
def fleet_member_role(request, fleet_id, user_id):
    fleet, user = _fleet_member(request, fleet_id, user_id)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the roles.")
    else:
        try:
            membership = services.fleet_member_change(
                actor=request.user, fleet=fleet, user=user, role=form.cleaned_data["role"]
            )
        except ActionError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request, f"{user.get_username()} is now {membership.get_role_display()} of {fleet.name}."
            )
    return redirect(_left_the_fleet(request, fleet))


@login_required
@require_POST
def fleet_member_remove(request, fleet_id, user_id):
    fleet, user = _fleet_member(request, fleet_id, user_id)
    try:
        services.fleet_member_drop(actor=request.user, fleet=fleet, user=user)
    except ActionError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Removed {user.get_username()} from {fleet.name}.")
    return redirect(_left_the_fleet(request, fleet))


ACTIVITY_PAGE_SIZE = 50


@login_required
def fleet_activity(request, fleet_id):
    """The fleet's audit log: who did what, when, to which devices, with outcome counts; CSV too."""
    fleet = fleet_for_user(request.user, fleet_id)
    action_filter = ActionFilter(request.GET, queryset=fleet_activity_log(fleet).select_related("device"))
    actions = action_filter.qs if action_filter.is_valid() else DeviceAction.objects.none()
    if request.GET.get("format") == "csv":
        return csv_response(f"{fleet.name}-activity.csv", ACTIVITY_CSV_HEADER, activity_csv_rows(actions))
    page = keyset_page_for(actions, ACTIVITY_SORT, ACTIVITY_PAGE_SIZE, request.GET)
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


# --- Organizations -------------------------------------------------------------------------------

ORG_PAGE_ROWS = 50


@login_required
def org_list(request):
    organizations = (
        organizations_for_user(request.user).annotate(fleet_count=Count("fleets")).order_by("name")
    )
    return render(request, "fleets/org_list.html", {"organizations": organizations})


@login_required
def org_detail(request, handle):
    """An organization's members, fleets, billing and activity: for its administrators."""
    organization = organization_for_admin(request.user, handle)
    form = OrgMemberAddForm(request.POST or None)
    error = ""
    if request.method == "POST" and form.is_valid():
        try:
            membership = services.org_member_add(
                actor=request.user,
                organization=organization,
                username=form.cleaned_data["username"],
                role=form.cleaned_data["role"],
            )
        except ActionError as exc:
            error = str(exc)
        else:
            messages.success(
                request,
                f"Added {membership.user.get_username()} to {organization.name} as {membership.get_role_display()}.",
            )
            return redirect("orgs:detail", organization.handle)
    charges = BillingCharge.objects.filter(organization=organization)
    context = {
        "organization": organization,
        "members": OrgMembership.objects.filter(organization=organization)
        .select_related("user")
        .order_by("user__username"),
        "fleets": _with_device_counts(
            list(
                Fleet.objects.filter(organization=organization)
                .select_related("fleet_type", "default_device_type")
                .order_by("name")
            )
        ),
        "charges": charges[:ORG_PAGE_ROWS],
        "charges_total": _amount(charges.aggregate(total=Sum("amount_cents"))["total"]),
        "activity": DeviceAction.objects.filter(organization=organization).select_related("fleet")[
            :ORG_PAGE_ROWS
        ],
        "form": form,
        "error": error,
        "roles": OrgRole.choices,
        "now": timezone.now(),
        "activity_limit": ORG_PAGE_ROWS,
    }
    return render(request, "fleets/org_detail.html", context, status=400 if request.method == "POST" else 200)


def _amount(cents: int | None) -> str:
    return f"{cents / 100:,.2f}" if cents else ""


def _org_member(request, handle, user_id):
    organization = organization_for_admin(request.user, handle)
    user = get_object_or_404(User, pk=user_id, org_memberships__organization=organization)
    return organization, user


def _org_page_or_home(request, organization: Organization) -> str:
    still_admin = is_org_admin(request.user, organization)
    return reverse("orgs:detail", args=[organization.handle]) if still_admin else reverse("orgs:list")


@login_required
@require_POST
def org_member_role(request, handle, user_id):
    organization, user = _org_member(request, handle, user_id)
    form = OrgMemberRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the roles.")
    else:
        try:
            membership = services.org_member_change(
                actor=request.user, organization=organization, user=user, role=form.cleaned_data["role"]
            )
        except ActionError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request,
                f"{user.get_username()} is now {membership.get_role_display()} of {organization.name}.",
            )
    return redirect(_org_page_or_home(request, organization))


@login_required
@require_POST
def org_member_remove(request, handle, user_id):
    organization, user = _org_member(request, handle, user_id)
    try:
        fleets = services.org_member_remove(actor=request.user, organization=organization, user=user)
    except ActionError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"Removed {user.get_username()} from {organization.name}"
            + (f" and from {fleets} of its fleets." if fleets else "."),
        )
    return redirect(_org_page_or_home(request, organization))
