"""Who may do what: the one place that answers "may this user see / operate / administer this fleet
or device".

Roles are guardian object permissions granted on the Fleet (a role's own permission plus those of
the roles below it). Device access derives from the device's fleet, so there is never a
permission row per device. Org administrators act as administrators of every fleet of their org;
support staff act as operators of a fleet or device while a support grant on it lasts, checked at
every request against the clock.

Views use `fleet_for_user` / `device_for_user` (one query, 404 for outsiders, 403 for members
below the required role) and `fleets_for_user` / `devices_for_user` for lists.
"""

from dataclasses import dataclass

from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce, Greatest
from django.http import Http404
from django.utils import timezone

from devices.models import ActionKind, ActionState, Device, DeviceAction
from fleets.models import (
    ROLE_PERMISSION,
    ROLE_RANK,
    Fleet,
    FleetMembership,
    FleetRole,
    FleetType,
    FleetUserObjectPermission,
    Organization,
    OrgMembership,
    OrgRole,
    Release,
)

SUPPORT_ROLE = FleetRole.OPERATOR
SUPPORT_PERMISSION = "fleets.provide_support"


@dataclass(frozen=True)
class Access:
    """A user's effective role on one fleet (or on one device, through its fleet)."""

    rank: int
    via_support: bool = False

    @property
    def role(self) -> FleetRole | None:
        return FleetRole.from_rank(self.rank)

    @property
    def can_view(self) -> bool:
        return self.rank >= ROLE_RANK[FleetRole.OBSERVER]

    @property
    def can_develop(self) -> bool:
        return self.rank >= ROLE_RANK[FleetRole.DEVELOPER]

    @property
    def can_operate(self) -> bool:
        return self.rank >= ROLE_RANK[FleetRole.OPERATOR]

    @property
    def can_administer(self) -> bool:
        return self.rank >= ROLE_RANK[FleetRole.ADMINISTRATOR]

    def allows(self, role: FleetRole) -> bool:
        return self.rank >= ROLE_RANK[role]


NO_ACCESS = Access(0)


def is_support_staff(user) -> bool:
    return user.is_authenticated and user.has_perm(SUPPORT_PERMISSION)


def _granted_rank(user, fleet_ref: str) -> Subquery:
    """The highest role guardian grants `user` on the fleet at `fleet_ref`, 0 if none."""
    rank = Case(
        *(
            When(permission__codename=codename, then=Value(ROLE_RANK[role]))
            for role, codename in ROLE_PERMISSION.items()
        ),
        default=Value(0),
        output_field=IntegerField(),
    )
    return Subquery(
        FleetUserObjectPermission.objects.filter(
            content_object=OuterRef(fleet_ref), user=user, permission__content_type__app_label="fleets"
        )
        .annotate(rank=rank)
        .order_by("-rank")
        .values("rank")[:1],
        output_field=IntegerField(),
    )


def _org_admin(user, org_ref: str) -> Exists:
    return Exists(
        OrgMembership.objects.filter(organization=OuterRef(org_ref), user=user, role=OrgRole.ADMINISTRATOR)
    )


def _support_rank(user, support_fields: tuple[str, ...]):
    """Operator rank while a support grant on one of `support_fields` lasts, for support staff.

    Whether the user is support staff is part of the same SQL, so the check stays one query.
    """
    now = timezone.now()
    live_grant = Q()
    for field in support_fields:
        live_grant |= Q(**{f"{field}__gt": now})
    return Case(
        When(live_grant & _is_support_staff(user), then=Value(ROLE_RANK[SUPPORT_ROLE])),
        default=Value(0),
        output_field=IntegerField(),
    )


def _is_support_staff(user) -> Exists:
    app_label, codename = SUPPORT_PERMISSION.split(".")
    return Exists(
        Permission.objects.filter(content_type__app_label=app_label, codename=codename).filter(
            Q(user=user) | Q(group__user=user)
        )
    )


def _rank(user, *, fleet_ref: str, org_ref: str, support_fields: tuple[str, ...]):
    """An SQL expression for the user's effective rank on each row's fleet (0: no access)."""
    if user.is_superuser:
        return Value(ROLE_RANK[FleetRole.ADMINISTRATOR], output_field=IntegerField())
    org_admin_rank = Case(
        When(_org_admin(user, org_ref), then=Value(ROLE_RANK[FleetRole.ADMINISTRATOR])), default=Value(0)
    )
    return Greatest(
        Coalesce(_granted_rank(user, fleet_ref), Value(0)),
        org_admin_rank,
        _support_rank(user, support_fields),
        output_field=IntegerField(),
    )


FLEET_SUPPORT_FIELDS = ("support_access_until",)
DEVICE_SUPPORT_FIELDS = ("support_access_until", "fleet__support_access_until")


def fleets_for_user(user, role: FleetRole = FleetRole.OBSERVER) -> QuerySet[Fleet]:
    """Fleets on which `user` holds at least `role`."""
    if not user.is_authenticated:
        return Fleet.objects.none()
    return Fleet.objects.annotate(
        user_rank=_rank(user, fleet_ref="pk", org_ref="organization_id", support_fields=FLEET_SUPPORT_FIELDS)
    ).filter(user_rank__gte=ROLE_RANK[role])


def visible_fleet_ids(user, fleet_ids) -> set[int]:
    """Which of these fleets (ids, or a subquery of them) the user may see, in one query: what a
    device's audit log may link to and count, when the device has moved between fleets."""
    return set(fleets_for_user(user).filter(pk__in=fleet_ids).values_list("pk", flat=True))


def devices_for_user(user, role: FleetRole = FleetRole.OBSERVER) -> QuerySet[Device]:
    """Devices on whose fleet `user` holds at least `role`, plus devices under a live support grant.

    The rank is worked out per fleet (a subquery over a handful of fleets), never per device: with
    the rank computed for each of 200,000 devices the device search took 13 s to show a page.
    """
    if not user.is_authenticated:
        return Device.objects.none()
    visible = Q(fleet__in=fleets_for_user(user, role).values("pk"))
    if ROLE_RANK[SUPPORT_ROLE] >= ROLE_RANK[role]:
        visible |= Q(support_access_until__gt=timezone.now()) & _is_support_staff(user)
    return Device.objects.filter(visible)


def _access_from(obj) -> Access:
    # Support staff who are not also members act only through the grant.
    return Access(rank=obj.user_rank, via_support=0 < obj.support_rank >= obj.user_rank)


def _check(obj, role: FleetRole):
    if obj is None or obj.user_rank < ROLE_RANK[FleetRole.OBSERVER]:
        raise Http404("No such fleet or device, or you are not a member of its fleet.")
    if obj.user_rank < ROLE_RANK[role]:
        raise PermissionDenied(f"This needs the {role.label} role or higher on the fleet.")


def fleet_for_user(user, pk, role: FleetRole = FleetRole.OBSERVER, *, for_update: bool = False) -> Fleet:
    """The fleet with the user's `access` attached; 404 if the user may not see it, 403 if below `role`."""
    if not user.is_authenticated:
        raise Http404
    queryset = Fleet.objects.select_related("organization", "fleet_type", "default_device_type").annotate(
        user_rank=_rank(user, fleet_ref="pk", org_ref="organization_id", support_fields=FLEET_SUPPORT_FIELDS),
        support_rank=_support_rank(user, FLEET_SUPPORT_FIELDS),
    )
    if for_update:
        queryset = queryset.select_for_update(of=("self",))
    fleet = queryset.filter(pk=pk).first()
    _check(fleet, role)
    fleet.access = _access_from(fleet)
    return fleet


def device_for_user(user, uuid: str, role: FleetRole = FleetRole.OBSERVER) -> Device:
    """The device with the user's `access` attached; 404 if the user may not see it, 403 if below `role`."""
    if not user.is_authenticated:
        raise Http404
    device = (
        Device.objects.select_related(
            "fleet", "fleet__organization", "fleet__fleet_type", "fleet__default_device_type", "device_type"
        )
        .annotate(
            user_rank=_rank(
                user,
                fleet_ref="fleet_id",
                org_ref="fleet__organization_id",
                support_fields=DEVICE_SUPPORT_FIELDS,
            ),
            support_rank=_support_rank(user, DEVICE_SUPPORT_FIELDS),
        )
        .filter(uuid=uuid)
        .first()
    )
    _check(device, role)
    device.access = _access_from(device)
    return device


def org_admin_organizations(user):
    """Organizations the user administers."""
    if not user.is_authenticated:
        return Organization.objects.none()
    if user.is_superuser:
        return Organization.objects.all()
    return Organization.objects.filter(memberships__user=user, memberships__role=OrgRole.ADMINISTRATOR)


# --- Organizations -------------------------------------------------------------------------------


def is_org_admin(user, organization: Organization) -> bool:
    if not user.is_authenticated:
        return False
    return user.is_superuser or _org_admin_q(user, organization.pk).exists()


def _org_admin_q(user, organization_id) -> QuerySet:
    return OrgMembership.objects.filter(
        organization_id=organization_id, user=user, role=OrgRole.ADMINISTRATOR
    )


def organizations_for_user(user) -> QuerySet[Organization]:
    """The organizations the user belongs to, each with `user_role` (superusers: every one, as admin)."""
    if not user.is_authenticated:
        return Organization.objects.none()
    if user.is_superuser:
        return Organization.objects.annotate(user_role=Value(OrgRole.ADMINISTRATOR.value))
    role = OrgMembership.objects.filter(organization=OuterRef("pk"), user=user).values("role")[:1]
    return Organization.objects.annotate(user_role=Subquery(role)).filter(user_role__isnull=False)


def organization_for_admin(user, handle: str) -> Organization:
    """The organization, if the user administers it: 404 for non-members, 403 for plain members."""
    organization = organizations_for_user(user).filter(handle=handle).first()
    if organization is None:
        raise Http404("No such organization, or you are not a member of it.")
    if organization.user_role != OrgRole.ADMINISTRATOR:
        raise PermissionDenied(f"Only administrators of {organization.name} manage it.")
    return organization


# --- Fleet types ---------------------------------------------------------------------------------

NAMES_SHOWN = 3


def _some_names(devices: QuerySet[Device], count: int, order: tuple[str, ...] = ("name",)) -> str:
    names = list(devices.order_by(*order).values_list("name", flat=True)[:NAMES_SHOWN])
    text = ", ".join(names)
    return f"{text} and {count - len(names):,} more" if count > len(names) else text


@dataclass
class TypeOption:
    """A fleet type the fleet could change to, and what stops it (nothing: it may)."""

    fleet_type: FleetType
    current: bool
    blockers: list[str]

    @property
    def allowed(self) -> bool:
        return not self.current and not self.blockers


def fleet_type_options(fleet: Fleet) -> list[TypeOption]:
    """Every fleet type with the rules that stop `fleet` from changing to it.

    The device rules are one aggregate over the fleet's devices, plus one short query for the
    names shown per rule that blocks something: the cost does not grow with the fleet.
    """
    types = list(FleetType.objects.all())
    os_keys = {t.min_os_version_key for t in types}
    devices = Device.objects.filter(fleet=fleet)
    counts = devices.aggregate(
        total=Count("id"),
        deactivated=Count("id", filter=Q(is_active=False)),
        **{f"below_{key}": Count("id", filter=Q(os_version_key__lt=key)) for key in os_keys},
    )
    release = fleet.target_release
    services = len(release.services) if release else 0
    names: dict[str, str] = {}  # computed once per rule, shared by every type it blocks

    def below_names(key: int) -> str:
        if f"os{key}" not in names:
            names[f"os{key}"] = _some_names(
                devices.filter(os_version_key__lt=key), counts[f"below_{key}"], ("os_version_key", "name")
            )
        return names[f"os{key}"]

    def deactivated_names() -> str:
        if "deactivated" not in names:
            names["deactivated"] = _some_names(devices.filter(is_active=False), counts["deactivated"])
        return names["deactivated"]

    options = []
    for fleet_type in types:
        blockers = []
        if fleet_type.is_legacy:
            blockers.append(
                f"{fleet_type.name} is an old fleet type: fleets can change only to Starter, Microservices or "
                "Essentials."
            )
        else:
            if fleet_type.requires_billing_account and not fleet.organization.billing_account_valid:
                blockers.append(
                    f"{fleet.organization.name} has no valid billing account, which {fleet_type.name} fleets need."
                )
            below = counts[f"below_{fleet_type.min_os_version_key}"]
            if below:
                blockers.append(
                    f"{below:,} device{pluralize(below)} run{'' if below != 1 else 's'} a host OS older than "
                    f"{fleet_type.min_os_version}, the minimum of {fleet_type.name}: "
                    f"{below_names(fleet_type.min_os_version_key)}."
                )
            if fleet_type.max_devices is not None and counts["total"] > fleet_type.max_devices:
                blockers.append(
                    f"{fleet_type.name} fleets hold at most {fleet_type.max_devices:,} devices; this one has "
                    f"{counts['total']:,}."
                )
            if not fleet_type.allows_deactivated_devices and counts["deactivated"]:
                blockers.append(
                    f"{fleet_type.name} fleets cannot hold deactivated devices; {counts['deactivated']:,} "
                    f"{'is' if counts['deactivated'] == 1 else 'are'}: {deactivated_names()}."
                )
            if not fleet_type.supports_multicontainer and services > 1:
                blockers.append(
                    f"{fleet_type.name} fleets run a single service; the current release {release.version} "
                    f"has {services}."
                )
        options.append(TypeOption(fleet_type, fleet_type.pk == fleet.fleet_type_id, blockers))
    return options


def pluralize(count: int) -> str:
    return "" if count == 1 else "s"


# --- Ownership transfer --------------------------------------------------------------------------


@dataclass
class TransferTarget:
    """An organization the user could transfer a fleet to, and what is still missing (nothing: ready)."""

    organization: Organization
    placeholder: Fleet | None
    missing: list[str]

    @property
    def ready(self) -> bool:
        return not self.missing

    @property
    def access_text(self) -> str:
        if self.organization.user_is_admin:
            return f"you administer {self.organization.name}"
        if self.placeholder is not None and self.placeholder.user_role:
            return f"you are its {FleetRole(self.placeholder.user_role).label}"
        return "you are not a member of it"


def fleet_activity_log(fleet: Fleet) -> QuerySet[DeviceAction]:
    """The fleet's audit records. A transfer is recorded in both organizations, each record naming
    the fleet; the fleet's own log shows it once, by the receiving organization's record."""
    return (
        DeviceAction.objects.filter(fleet=fleet)
        .alias(moved_to=KT("params__to"))
        .exclude(Q(kind=ActionKind.FLEET_TRANSFER) & ~Q(organization__handle=F("moved_to")))
    )


def open_actions(fleet: Fleet) -> QuerySet[DeviceAction]:
    """The fleet's actions still under way: queued, being expanded or dispatched, staged, or with
    deliveries waiting for devices to come back."""
    return DeviceAction.objects.filter(fleet=fleet).exclude(
        state__in=[ActionState.DONE, ActionState.HALTED, ActionState.CANCELLED]
    )


def transfer_refusal(user, fleet: Fleet) -> str:
    """Why `user` may not transfer `fleet` at all, whatever the target ("" if they may)."""
    if not is_org_admin(user, fleet.organization):
        return f"Only administrators of {fleet.organization.name} can transfer its fleets."
    return ""


def transfer_targets(user, fleet: Fleet) -> list[TransferTarget]:
    """The other organizations the user belongs to (directly or through one of their fleets), each
    with the conditions of a transfer of `fleet` still missing there. Two queries."""
    other_orgs = Organization.objects.exclude(pk=fleet.organization_id)
    if not user.is_superuser:
        other_orgs = other_orgs.filter(
            Q(pk__in=OrgMembership.objects.filter(user=user).values("organization_id"))
            | Q(pk__in=FleetMembership.objects.filter(user=user).values("fleet__organization_id"))
        )
    organizations = list(
        other_orgs.annotate(
            user_is_admin=Value(True) if user.is_superuser else _org_admin(user, "pk")
        ).order_by("name")
    )
    placeholders = {
        placeholder.organization_id: placeholder
        for placeholder in Fleet.objects.filter(
            organization__in=[o.pk for o in organizations], name__iexact=fleet.name
        ).annotate(
            has_devices=Exists(Device.objects.filter(fleet=OuterRef("pk"))),
            has_releases=Exists(Release.objects.filter(fleet=OuterRef("pk"))),
            user_role=Subquery(
                FleetMembership.objects.filter(fleet=OuterRef("pk"), user=user).values("role")[:1]
            ),
        )
    }
    return [
        TransferTarget(
            org, placeholders.get(org.pk), _transfer_missing(user, fleet, org, placeholders.get(org.pk))
        )
        for org in organizations
    ]


def _transfer_missing(user, fleet: Fleet, org: Organization, placeholder: Fleet | None) -> list[str]:
    name = fleet.name
    if placeholder is None:
        who = "create" if org.user_is_admin else f"ask an administrator of {org.name} to create"
        return [f"{org.name} has no fleet named “{name}”: {who} an empty one there (any fleet type)."]
    missing = []
    contents = [
        what
        for what, present in (("devices", placeholder.has_devices), ("releases", placeholder.has_releases))
        if present
    ]
    if contents:
        missing.append(
            f"{org.name}’s fleet “{placeholder.name}” is not empty (it has {' and '.join(contents)}): only an "
            "empty fleet can receive a transfer."
        )
    if not org.user_is_admin:
        role = FleetRole(placeholder.user_role) if placeholder.user_role else None
        if role is None:
            missing.append(
                f"You ({user.get_username()}) are not a member of {org.name}’s fleet “{placeholder.name}”: ask an "
                f"administrator of {org.name} to add you to it as a Developer."
            )
        elif role.rank < ROLE_RANK[FleetRole.DEVELOPER]:
            missing.append(
                f"You are an {role.label} of {org.name}’s fleet “{placeholder.name}”: you need the Developer role "
                f"there (or to be an administrator of {org.name})."
            )
    if fleet.fleet_type.requires_billing_account and not org.billing_account_valid:
        missing.append(f"{org.name} has no valid billing account, which {fleet.fleet_type.name} fleets need.")
    return missing


def transfer_summary(user, fleet: Fleet) -> tuple[list[TransferTarget], str]:
    """The targets, and why the transfer button is disabled ("" when some target is ready)."""
    refusal = transfer_refusal(user, fleet)
    if refusal:
        return [], refusal
    targets = transfer_targets(user, fleet)
    if not targets:
        return targets, (
            f"You are not a member of any other organization. Ask an administrator of the receiving "
            f"organization to create an empty fleet named “{fleet.name}” and to add you "
            f"({user.get_username()}) to it as a Developer."
        )
    if any(target.ready for target in targets):
        return targets, ""
    return targets, " ".join(f"{t.organization.name}: {' '.join(t.missing)}" for t in targets)
