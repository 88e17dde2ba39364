"""Writes to organizations, fleets and memberships. Views and tasks call these; nothing else writes."""

from django.contrib.auth.models import Permission
from django.db import transaction

from devices.keys import hash_secret, new_secret
from fleets.models import (
    ROLE_PERMISSION,
    ROLE_RANK,
    Fleet,
    FleetMembership,
    FleetRole,
    FleetUserObjectPermission,
    OrgMembership,
    OrgRole,
    ProvisioningKey,
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
