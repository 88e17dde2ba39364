"""Plain factory functions for tests: each makes one object with sensible defaults."""

import itertools
import secrets
from datetime import timedelta

from django.contrib.auth.models import Permission, User
from django.utils import timezone

from devices.catalog import create_catalog
from devices.keys import hash_secret
from devices.models import Device, DeviceType, HostOSRelease
from devices.versions import version_key
from fleets import services
from fleets.catalog import create_fleet_types
from fleets.models import Fleet, FleetRole, FleetType, Organization, OrgRole

_counter = itertools.count(1)


def ensure_catalog() -> None:
    """Reference data from the migrations; a transactional test's flush removes it, so bring it back."""
    if not FleetType.objects.exists():
        create_fleet_types(FleetType)
    if not DeviceType.objects.exists():
        create_catalog(DeviceType, HostOSRelease)


def make_user(username: str | None = None, *, password: str | None = None, **fields) -> User:
    """Without a password the user can only be logged in with force_login (and no slow hashing)."""
    username = username or f"user{next(_counter)}"
    return User.objects.create_user(username=username, password=password, **fields)


def make_org(name: str | None = None, **fields) -> Organization:
    n = next(_counter)
    name = name or f"Org {n}"
    return Organization.objects.create(name=name, handle=f"org-{n}", **fields)


def make_fleet(
    org: Organization | None = None,
    name: str | None = None,
    *,
    fleet_type: str = "microservices",
    device_type: str = "raspberrypi3",
    **fields,
) -> Fleet:
    ensure_catalog()
    return Fleet.objects.create(
        organization=org or make_org(),
        name=name or f"fleet-{next(_counter)}",
        fleet_type=FleetType.objects.get(slug=fleet_type),
        default_device_type=DeviceType.objects.get(slug=device_type),
        **fields,
    )


def make_device(
    fleet: Fleet,
    *,
    name: str | None = None,
    os_version: str = "2.58.3",
    agent_version: str = "1.4.0",
    online: bool = True,
    device_type: str | None = None,
    api_key: str | None = None,
    **fields,
) -> Device:
    n = next(_counter)
    fields.setdefault("last_seen_at", timezone.now() if online else timezone.now() - timedelta(days=1))
    return Device.objects.create(
        uuid=fields.pop("uuid", None) or secrets.token_hex(16),
        name=name or f"device-{n}",
        fleet=fleet,
        device_type=DeviceType.objects.get(slug=device_type) if device_type else fleet.default_device_type,
        os_version=os_version,
        os_version_key=version_key(os_version),
        agent_version=agent_version,
        agent_version_key=version_key(agent_version),
        api_key_hash=hash_secret(api_key or secrets.token_hex(16)),
        **fields,
    )


def make_member(fleet: Fleet, role: FleetRole, username: str | None = None) -> User:
    user = make_user(username)
    services.org_member_set(organization=fleet.organization, user=user, role=OrgRole.MEMBER)
    services.fleet_member_set(fleet=fleet, user=user, role=role)
    return user


def make_org_admin(org: Organization, username: str | None = None) -> User:
    user = make_user(username)
    services.org_member_set(organization=org, user=user, role=OrgRole.ADMINISTRATOR)
    return user


def make_support_user(username: str | None = None) -> User:
    user = make_user(username)
    user.user_permissions.add(Permission.objects.get(codename="provide_support"))
    return User.objects.get(pk=user.pk)  # fresh instance: no stale permission cache


class Personas:
    """One fleet in one organization, with a member per role, an org administrator and an outsider."""

    def __init__(self, *, fleet_type: str = "microservices", device_type: str = "raspberrypi3"):
        self.org = make_org()
        self.fleet = make_fleet(self.org, fleet_type=fleet_type, device_type=device_type)
        self.observer = make_member(self.fleet, FleetRole.OBSERVER)
        self.developer = make_member(self.fleet, FleetRole.DEVELOPER)
        self.operator = make_member(self.fleet, FleetRole.OPERATOR)
        self.administrator = make_member(self.fleet, FleetRole.ADMINISTRATOR)
        self.org_admin = make_org_admin(self.org)
        other_org = make_org()
        self.other_fleet = make_fleet(other_org, device_type=device_type)
        self.outsider = make_member(self.other_fleet, FleetRole.ADMINISTRATOR)
        self.support = make_support_user()
