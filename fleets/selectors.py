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
from django.db.models import Case, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.http import Http404
from django.utils import timezone

from devices.models import Device
from fleets.models import (
    ROLE_PERMISSION,
    ROLE_RANK,
    Fleet,
    FleetRole,
    FleetUserObjectPermission,
    OrgMembership,
    OrgRole,
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
        *(When(permission__codename=codename, then=Value(ROLE_RANK[role])) for role, codename in ROLE_PERMISSION.items()),
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
    return (
        Fleet.objects.annotate(
            user_rank=_rank(user, fleet_ref="pk", org_ref="organization_id", support_fields=FLEET_SUPPORT_FIELDS)
        )
        .filter(user_rank__gte=ROLE_RANK[role])
    )


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
                user, fleet_ref="fleet_id", org_ref="fleet__organization_id", support_fields=DEVICE_SUPPORT_FIELDS
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
    from fleets.models import Organization

    if not user.is_authenticated:
        return Organization.objects.none()
    if user.is_superuser:
        return Organization.objects.all()
    return Organization.objects.filter(memberships__user=user, memberships__role=OrgRole.ADMINISTRATOR)
