"""Seed the demo once: two organizations, fleets of several types, releases and the demo accounts.

Devices are not created here: the simulator registers them with the fleets' provisioning keys,
as real devices would. Running it again changes nothing.
"""

import os
import secrets

from django.contrib.auth.models import Permission, User
from django.core.management.base import BaseCommand
from django.db import transaction

from devices.models import DeviceType
from fleets import services
from fleets.models import Fleet, FleetRole, FleetType, Organization, OrgRole, Release

FLEETS = [
    # organization, name, fleet type, default device type
    ("acme", "kiosks", "microservices", "raspberrypi4-64"),
    ("acme", "beacons", "starter", "raspberrypi3"),
    ("acme", "gateways", "essentials", "intel-nuc"),
    ("acme", "signage", "legacy", "beaglebone-black"),
    ("acme", "edge-ai", "microservices", "jetson-nano"),
    ("globex", "sensors", "microservices", "raspberrypi3"),
    # An empty fleet with the same name as one of Acme's: the target of an ownership transfer. Its
    # administrator (outsider) adds admin to it as a Developer, then admin can transfer Acme's.
    ("globex", "gateways", "essentials", "intel-nuc"),
]

# Where `make run` puts its simulated devices (org/fleet: count); Globex's gateways stays empty.
DEMO_DEVICES = {
    "acme/kiosks": 20,
    "acme/beacons": 8,
    "acme/gateways": 10,
    "acme/signage": 8,
    "acme/edge-ai": 6,
    "globex/sensors": 8,
}

SERVICES = {
    "microservices": [
        {"name": "web", "image": "registry.local/web:2.4", "port": 80},
        {"name": "worker", "image": "registry.local/worker:2.4"},
        {"name": "metrics", "image": "registry.local/metrics:1.1"},
    ],
    "essentials": [{"name": "main", "image": "registry.local/gateway:5.0", "port": 80}],
    "starter": [{"name": "main", "image": "registry.local/beacon:0.9"}],
    "legacy": [{"name": "main", "image": "registry.local/signage:3.2", "port": 80}],
}

ACME_ROLES = {
    "operator": FleetRole.OPERATOR,
    "developer": FleetRole.DEVELOPER,
    "observer": FleetRole.OBSERVER,
}


class Command(BaseCommand):
    help = "Create the demo organizations, fleets and accounts (once)."

    def handle(self, *args, **options):
        password = os.environ.get("DEMO_PASSWORD", "demo")
        if Organization.objects.filter(handle="acme").exists():
            self.stdout.write("Demo data already present; nothing to do.")
        else:
            with transaction.atomic():
                self._seed(password)
            self.stdout.write(self.style.SUCCESS("Demo data created."))
        self.stdout.write(
            f"Accounts (password {password!r}): admin (Acme org administrator), operator, developer, "
            "observer (Acme fleets), outsider (Globex org administrator), support (support staff)"
        )
        self.stdout.write(
            "Ownership transfer: as outsider, add admin as a Developer on the Members tab of Globex's empty "
            "gateways fleet; then, as admin, Acme's gateways > Actions > Transfer ownership to Globex."
        )

    def _seed(self, password: str) -> None:
        acme = Organization.objects.create(name="Acme", handle="acme", billing_account_valid=True)
        globex = Organization.objects.create(name="Globex", handle="globex", billing_account_valid=True)
        orgs = {"acme": acme, "globex": globex}

        users = {}
        for username in ["admin", "operator", "developer", "observer", "outsider", "support"]:
            user = User.objects.create_user(
                username=username, password=password, email=f"{username}@example.com"
            )
            users[username] = user

        # The org administrator also runs the Django admin, with every model permission except
        # support staff's: support access is only ever granted per fleet or device.
        users["admin"].is_staff = True
        users["admin"].save(update_fields=["is_staff"])
        users["admin"].user_permissions.set(
            Permission.objects.filter(content_type__app_label__in=["fleets", "devices", "auth"]).exclude(
                codename="provide_support"
            )
        )
        users["support"].user_permissions.add(Permission.objects.get(codename="provide_support"))

        services.org_member_set(organization=acme, user=users["admin"], role=OrgRole.ADMINISTRATOR)
        for username in ACME_ROLES:
            services.org_member_set(organization=acme, user=users[username], role=OrgRole.MEMBER)
        services.org_member_set(organization=globex, user=users["outsider"], role=OrgRole.ADMINISTRATOR)

        for org_handle, name, type_slug, device_type in FLEETS:
            fleet = Fleet.objects.create(
                organization=orgs[org_handle],
                name=name,
                fleet_type=FleetType.objects.get(slug=type_slug),
                default_device_type=DeviceType.objects.get(slug=device_type),
            )
            if org_handle == "acme":
                for username, role in ACME_ROLES.items():
                    services.fleet_member_set(fleet=fleet, user=users[username], role=role)
            if org_handle == "globex" and name == "gateways":
                continue  # the transfer target stays empty
            release = Release.objects.create(
                fleet=fleet,
                commit=secrets.token_hex(20),
                version="1.0.0",
                services=SERVICES.get(type_slug, SERVICES["microservices"]),
            )
            fleet.target_release = release
            fleet.save(update_fields=["target_release"])
