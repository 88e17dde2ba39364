"""Writes to organizations, fleets and memberships. Views and tasks call these; nothing else writes."""

from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import Permission, User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from devices.keys import hash_secret, new_secret
from devices.models import ActionKind, Device
from devices.selectors import forget_fleet_counts
from devices.services import ActionError, action_cancel, action_record
from devices.services.device_actions import delete_devices
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
    ProvisioningKey,
    Release,
)
from fleets.selectors import (
    fleet_type_options,
    is_org_admin,
    open_actions,
    transfer_refusal,
    transfer_targets,
)


def _role_permissions(role: FleetRole) -> list[Permission]:
    """A role's guardian permissions: its own and those of every lower role."""
    codenames = [ROLE_PERMISSION[r] for r in FleetRole if ROLE_RANK[r] <= ROLE_RANK[role]]
    return list(Permission.objects.filter(content_type__app_label="fleets", codename__in=codenames))


@transaction.atomic
def fleet_member_set(*, fleet: Fleet, user, role: FleetRole) -> FleetMembership:
    """Give `user` exactly `role` on `fleet`: one membership row and at most four guardian rows."""
    role = FleetRole(role)
    membership, _ = FleetMembership.objects.update_or_create(fleet=fleet, user=user, defaults={"role": role})
    FleetUserObjectPermission.objects.filter(content_object=fleet, user=user).delete()
    FleetUserObjectPermission.objects.bulk_create(
        FleetUserObjectPermission(content_object=fleet, user=user, permission=permission)
        for permission in _role_permissions(role)
    )
    return membership


@transaction.atomic
def fleet_member_remove(*, fleet: Fleet, user) -> None:
    FleetMembership.objects.filter(fleet=fleet, user=user).delete()
    FleetUserObjectPermission.objects.filter(content_object=fleet, user=user).delete()


def org_member_set(*, organization, user, role: OrgRole) -> OrgMembership:
    membership, _ = OrgMembership.objects.update_or_create(
        organization=organization, user=user, defaults={"role": OrgRole(role)}
    )
    return membership


def provisioning_key_create(*, fleet: Fleet, description: str = "", actor=None) -> str:
    """Mint a key devices register with; returns the plaintext, which is not stored."""
    key = new_secret()
    ProvisioningKey.objects.create(
        fleet=fleet, key_hash=hash_secret(key), prefix=key[:8], description=description, created_by=actor
    )
    return key


# --- Audited changes made from the dashboard ------------------------------------------------------
# Each checks its rules again inside its transaction (a forged POST meets exactly the checks the page
# shows), raises ActionError with the reason and changes nothing when one fails, and leaves one audit
# record (devices.services.action_record) per organization it touches. The caller has checked the
# actor's role on the fleet (fleets.selectors.fleet_for_user); ownership transfer also checks here
# that the actor administers the organization, as that is one of the transfer's own conditions.


def _locked(fleet: Fleet) -> Fleet:
    return Fleet.objects.select_for_update().select_related("organization", "fleet_type").get(pk=fleet.pk)


def _name_taken(organization: Organization, name: str, exclude: Fleet | None = None) -> bool:
    others = Fleet.objects.filter(organization=organization, name__iexact=name)
    if exclude is not None:
        others = others.exclude(pk=exclude.pk)
    return others.exists()


@transaction.atomic
def fleet_create(
    *, actor, organization: Organization, name: str, fleet_type: FleetType, default_device_type
) -> Fleet:
    """A new, empty fleet. Org administrators administer it through their org role."""
    if fleet_type.is_legacy:
        raise ActionError(f"{fleet_type.name} is an old fleet type and cannot be chosen for a new fleet.")
    if fleet_type.requires_billing_account and not organization.billing_account_valid:
        raise ActionError(
            f"{organization.name} has no valid billing account, which {fleet_type.name} fleets need."
        )
    if _name_taken(organization, name):
        raise ActionError(f"{organization.name} already has a fleet named “{name}” (names ignore case).")
    try:
        with transaction.atomic():
            fleet = Fleet.objects.create(
                organization=organization,
                name=name,
                fleet_type=fleet_type,
                default_device_type=default_device_type,
            )
    except IntegrityError:  # created by someone else since the check
        raise ActionError(
            f"{organization.name} already has a fleet named “{name}” (names ignore case)."
        ) from None
    action_record(
        actor=actor,
        kind=ActionKind.FLEET_CREATE,
        fleet=fleet,
        summary=f"Created {fleet_type.name} fleet {name} for {default_device_type.name}",
        params={"fleet_type": fleet_type.slug, "default_device_type": default_device_type.slug},
    )
    return fleet


@transaction.atomic
def fleet_rename(*, actor, fleet: Fleet, name: str) -> Fleet:
    fleet = _locked(fleet)
    if not fleet.fleet_type.rename_allowed:
        raise ActionError(rename_refusal(fleet))
    old = fleet.name
    if name == old:
        raise ActionError(f"The fleet is already named “{name}”.")
    if _name_taken(fleet.organization, name, exclude=fleet):
        raise ActionError(
            f"{fleet.organization.name} already has a fleet named “{name}” (names ignore case)."
        )
    fleet.name = name
    try:
        with transaction.atomic():
            fleet.save(update_fields=["name"])
    except IntegrityError:
        raise ActionError(
            f"{fleet.organization.name} already has a fleet named “{name}” (names ignore case)."
        ) from None
    action_record(
        actor=actor,
        kind=ActionKind.FLEET_RENAME,
        fleet=fleet,
        summary=f"Renamed {old} to {name}",
        params={"from": old, "to": name},
    )
    return fleet


def rename_refusal(fleet: Fleet) -> str:
    """Why the fleet cannot be renamed at all ("" if it can)."""
    if fleet.fleet_type.rename_allowed:
        return ""
    return (
        f"{fleet.fleet_type.name} fleets cannot be renamed. Change the fleet type to Starter, Microservices or "
        "Essentials first."
    )


@transaction.atomic
def fleet_type_change(*, actor, fleet: Fleet, fleet_type: FleetType) -> Fleet:
    """Change the type when every rule of the new type holds; otherwise say which rules and devices block it."""
    fleet = _locked(fleet)
    option = next(o for o in fleet_type_options(fleet) if o.fleet_type.pk == fleet_type.pk)
    if option.current:
        raise ActionError(f"{fleet.name} is already of type {fleet_type.name}.")
    if option.blockers:
        raise ActionError(f"{fleet.name} cannot change to {fleet_type.name}. " + " ".join(option.blockers))
    old = fleet.fleet_type
    fleet.fleet_type = fleet_type
    fleet.save(update_fields=["fleet_type"])
    action_record(
        actor=actor,
        kind=ActionKind.FLEET_TYPE,
        fleet=fleet,
        summary=f"Changed type from {old.name} to {fleet_type.name}",
        params={"from": old.slug, "to": fleet_type.slug},
    )
    return fleet


@transaction.atomic
def fleet_support_grant(*, actor, fleet: Fleet, period: timedelta) -> Fleet:
    """Support staff may operate the fleet and its devices until now + period (replacing any grant)."""
    if period <= timedelta(0):
        raise ActionError("Choose a period of at least an hour.")
    fleet = _locked(fleet)
    fleet.support_access_until = timezone.now() + period
    fleet.save(update_fields=["support_access_until"])
    action_record(
        actor=actor,
        kind=ActionKind.SUPPORT_GRANT,
        fleet=fleet,
        summary=f"Support access to the whole fleet until {fleet.support_access_until:%Y-%m-%d %H:%M} UTC",
        params={"until": fleet.support_access_until.isoformat(), "hours": period.total_seconds() / 3600},
    )
    return fleet


@transaction.atomic
def fleet_support_revoke(*, actor, fleet: Fleet) -> Fleet:
    fleet = _locked(fleet)
    if not fleet.support_access_until or fleet.support_access_until <= timezone.now():
        raise ActionError("Support has no access to this fleet: there is nothing to revoke.")
    fleet.support_access_until = None
    fleet.save(update_fields=["support_access_until"])
    action_record(actor=actor, kind=ActionKind.SUPPORT_REVOKE, fleet=fleet, summary="Support access revoked")
    return fleet


@transaction.atomic
def fleet_transfer(*, actor, fleet: Fleet, organization: Organization) -> Fleet:
    """Move the fleet, with its devices, releases and members, to `organization`.

    The Fleet row changes organization; devices, releases and provisioning keys follow it by
    foreign key, so device ids, api keys and agent connections are untouched and an online device
    stays online. The fleet's open actions are cancelled, as when it is deleted: they were
    started in the source organization, by someone who may have no access in the target. The empty
    placeholder fleet in the target organization is deleted; its members other than the actor keep
    that membership on the transferred fleet (the target's administrators chose them for it). The
    actor stops being a member of the fleet. Every fleet member becomes a member of the target
    organization if not one already (a fleet's members are members of its organization).

    Both fleets are locked before any condition is read, so what is checked is what is changed.
    """
    fleet, placeholder = _locked_for_transfer(fleet, organization)
    source = fleet.organization
    refusal = transfer_refusal(actor, fleet)
    if refusal:
        raise ActionError(refusal)
    target = next((t for t in transfer_targets(actor, fleet) if t.organization.pk == organization.pk), None)
    if target is None:
        raise ActionError(
            f"You cannot transfer to {organization.name}: you are not a member of it or of one of its fleets."
        )
    if not target.ready:
        raise ActionError(" ".join(target.missing))
    if placeholder is None or target.placeholder.pk != placeholder.pk:  # created or renamed since the lock
        raise ActionError(f"{organization.name}’s fleet “{fleet.name}” changed meanwhile; try again.")

    cancel_open_actions(fleet)
    source_members = set(FleetMembership.objects.filter(fleet=fleet).values_list("user_id", flat=True))
    carried = [
        (membership.user, membership.role)
        for membership in FleetMembership.objects.filter(fleet=placeholder).select_related("user")
        if membership.user_id != actor.pk and membership.user_id not in source_members
    ]
    placeholder.delete()  # first: the fleet name is unique in the organization
    fleet.organization = organization
    fleet.save(update_fields=["organization"])
    fleet_member_remove(fleet=fleet, user=actor)
    for user, role in carried:
        fleet_member_set(fleet=fleet, user=user, role=role)
    member_ids = set(FleetMembership.objects.filter(fleet=fleet).values_list("user_id", flat=True))
    already = set(
        OrgMembership.objects.filter(organization=organization, user_id__in=member_ids).values_list(
            "user_id", flat=True
        )
    )
    OrgMembership.objects.bulk_create(
        OrgMembership(organization=organization, user_id=user_id, role=OrgRole.MEMBER)
        for user_id in member_ids - already
    )
    devices = Device.objects.filter(fleet=fleet).count()
    summary = f"Transferred {fleet.name} with {devices:,} device{'s' if devices != 1 else ''} from {source.name} to {organization.name}"
    params = {
        "from": source.handle,
        "to": organization.handle,
        "devices": devices,
        "members": len(member_ids),
    }
    for org in (source, organization):
        action_record(
            actor=actor,
            kind=ActionKind.FLEET_TRANSFER,
            fleet=fleet,
            organization=org,
            summary=summary,
            params=params,
        )
    return fleet


def _locked_for_transfer(fleet: Fleet, organization: Organization) -> tuple[Fleet, Fleet | None]:
    """The fleet and the target's fleet of the same name (if any), locked in id order: two
    transfers the other way round at once wait for each other instead of deadlocking."""
    rows = list(
        Fleet.objects.select_for_update(of=("self",))
        .select_related("organization", "fleet_type")
        .filter(Q(pk=fleet.pk) | Q(organization=organization, name__iexact=fleet.name))
        .order_by("pk")
    )
    fleet = next(row for row in rows if row.pk == fleet.pk)
    placeholder = next((row for row in rows if row.pk != fleet.pk), None)
    return fleet, placeholder


def cancel_open_actions(fleet: Fleet) -> int:
    """Cancel the fleet's actions still under way (queued, expanding, dispatching, staged or waiting
    for devices), as the fleet is leaving its organization or going; returns how many."""
    actions = list(open_actions(fleet).select_for_update())
    for action in actions:
        action_cancel(action=action)
    return len(actions)


@dataclass(frozen=True)
class FleetDeletion:
    name: str
    devices: int
    releases: int


@transaction.atomic
def fleet_delete(*, actor, fleet: Fleet) -> FleetDeletion:
    """Delete the fleet for good; its devices are deleted with it and their agents refused (orphaned).

    Built for large fleets: a few bulk statements, nothing per device. The audit history stays in
    the organization's activity: DeviceAction.fleet is set to NULL and keeps fleet_name, and each
    ActionDelivery keeps its device's uuid and name.
    """
    fleet = _locked(fleet)
    cancel_open_actions(fleet)  # nothing left to send to: the devices are going
    devices = delete_devices(Device.objects.filter(fleet=fleet))
    releases = Release.objects.filter(fleet=fleet).count()
    action_record(
        actor=actor,
        kind=ActionKind.FLEET_DELETE,
        fleet=fleet,
        summary=f"Deleted fleet {fleet.name}: {devices:,} device{'s' if devices != 1 else ''} orphaned, "
        f"{releases} release{'s' if releases != 1 else ''} deleted",
        params={"devices": devices, "releases": releases},
    )
    name, fleet_id = fleet.name, fleet.pk
    fleet.delete()  # memberships, guardian rows, keys, releases, saved views; audit records keep fleet_name
    transaction.on_commit(lambda: forget_fleet_counts(fleet_id))
    return FleetDeletion(name, devices, releases)


# --- Members --------------------------------------------------------------------------------------


def _user_named(username: str):
    user = User.objects.filter(username=username.strip()).first()
    if user is None:
        raise ActionError(f"There is no user named “{username.strip()}”.")
    return user


@transaction.atomic
def fleet_member_add(*, actor, fleet: Fleet, username: str, role: FleetRole) -> FleetMembership:
    """Add a user to the fleet by username.

    A fleet's members are members of its organization, and org administrators decide who those
    are: a fleet administrator adds people already in the organization; an org administrator may
    add anyone, who then joins the organization as a member.
    """
    role = FleetRole(role)
    user = _user_named(username)
    organization = fleet.organization
    existing = FleetMembership.objects.filter(fleet=fleet, user=user).first()
    if existing:
        raise ActionError(
            f"{user.get_username()} is already a member ({existing.get_role_display()}); change their role in the list."
        )
    joins = not OrgMembership.objects.filter(organization=organization, user=user).exists()
    if joins:
        if not is_org_admin(actor, organization):
            raise ActionError(
                f"{user.get_username()} is not a member of {organization.name}, and only its administrators add "
                f"people to it: ask one to add {user.get_username()} to {organization.name} (or to this fleet)."
            )
        OrgMembership.objects.get_or_create(
            organization=organization, user=user, defaults={"role": OrgRole.MEMBER}
        )
    membership = fleet_member_set(fleet=fleet, user=user, role=role)
    action_record(
        actor=actor,
        kind=ActionKind.MEMBER_CHANGE,
        fleet=fleet,
        summary=f"Added {user.get_username()} as {role.label}"
        + (f", and to {organization.name} as a Member" if joins else ""),
        params={"user": user.get_username(), "role": role.value}
        | ({"org_role": OrgRole.MEMBER.value} if joins else {}),
    )
    return membership


@transaction.atomic
def fleet_member_change(*, actor, fleet: Fleet, user, role: FleetRole) -> FleetMembership:
    role = FleetRole(role)
    existing = FleetMembership.objects.select_for_update().filter(fleet=fleet, user=user).first()
    if existing is None:
        raise ActionError(f"{user.get_username()} is not a member of {fleet.name}.")
    if existing.role == role:
        raise ActionError(f"{user.get_username()} is already {role.label}.")
    old = existing.get_role_display()
    membership = fleet_member_set(fleet=fleet, user=user, role=role)
    action_record(
        actor=actor,
        kind=ActionKind.MEMBER_CHANGE,
        fleet=fleet,
        summary=f"Changed {user.get_username()} from {old} to {role.label}",
        params={"user": user.get_username(), "role": role.value},
    )
    return membership


@transaction.atomic
def fleet_member_drop(*, actor, fleet: Fleet, user) -> None:
    """Remove a member (audited); their guardian rows go with the membership."""
    existing = FleetMembership.objects.select_for_update().filter(fleet=fleet, user=user).first()
    if existing is None:
        raise ActionError(f"{user.get_username()} is not a member of {fleet.name}.")
    fleet_member_remove(fleet=fleet, user=user)
    action_record(
        actor=actor,
        kind=ActionKind.MEMBER_CHANGE,
        fleet=fleet,
        summary=f"Removed {user.get_username()} ({existing.get_role_display()})",
        params={"user": user.get_username(), "role": None},
    )


def _locked_org(organization: Organization) -> Organization:
    return Organization.objects.select_for_update().get(pk=organization.pk)


def _admin_count(organization: Organization) -> int:
    return OrgMembership.objects.filter(organization=organization, role=OrgRole.ADMINISTRATOR).count()


@transaction.atomic
def org_member_add(*, actor, organization: Organization, username: str, role: OrgRole) -> OrgMembership:
    role = OrgRole(role)
    user = _user_named(username)
    existing = OrgMembership.objects.filter(organization=organization, user=user).first()
    if existing:
        raise ActionError(
            f"{user.get_username()} is already a member of {organization.name} ({existing.get_role_display()})."
        )
    membership = org_member_set(organization=organization, user=user, role=role)
    action_record(
        actor=actor,
        kind=ActionKind.MEMBER_CHANGE,
        fleet=None,
        organization=organization,
        summary=f"Added {user.get_username()} to {organization.name} as {role.label}",
        params={"user": user.get_username(), "org_role": role.value},
    )
    return membership


@transaction.atomic
def org_member_change(*, actor, organization: Organization, user, role: OrgRole) -> OrgMembership:
    role = OrgRole(role)
    organization = _locked_org(organization)
    existing = OrgMembership.objects.filter(organization=organization, user=user).first()
    if existing is None:
        raise ActionError(f"{user.get_username()} is not a member of {organization.name}.")
    if existing.role == role:
        raise ActionError(f"{user.get_username()} is already {role.label}.")
    if existing.role == OrgRole.ADMINISTRATOR and _admin_count(organization) == 1:
        raise ActionError(
            f"{user.get_username()} is the last administrator of {organization.name}; add another first."
        )
    old = existing.get_role_display()
    membership = org_member_set(organization=organization, user=user, role=role)
    action_record(
        actor=actor,
        kind=ActionKind.MEMBER_CHANGE,
        fleet=None,
        organization=organization,
        summary=f"Changed {user.get_username()} in {organization.name} from {old} to {role.label}",
        params={"user": user.get_username(), "org_role": role.value},
    )
    return membership


@transaction.atomic
def org_member_remove(*, actor, organization: Organization, user) -> int:
    """Remove a user from the organization and from every fleet of it; returns how many fleets they left."""
    organization = _locked_org(organization)
    existing = OrgMembership.objects.filter(organization=organization, user=user).first()
    if existing is None:
        raise ActionError(f"{user.get_username()} is not a member of {organization.name}.")
    if existing.role == OrgRole.ADMINISTRATOR and _admin_count(organization) == 1:
        raise ActionError(
            f"{user.get_username()} is the last administrator of {organization.name}; add another first."
        )
    existing.delete()
    fleets, _ = FleetMembership.objects.filter(fleet__organization=organization, user=user).delete()
    FleetUserObjectPermission.objects.filter(content_object__organization=organization, user=user).delete()
    action_record(
        actor=actor,
        kind=ActionKind.MEMBER_CHANGE,
        fleet=None,
        organization=organization,
        summary=f"Removed {user.get_username()} from {organization.name} and {fleets} of its fleets",
        params={"user": user.get_username(), "org_role": None},
    )
    return fleets
