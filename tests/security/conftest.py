"""The world the security tests share: three fleets seen from eight personas, built once per module.

    Acme (org A)     F "own-fleet"         the personas' fleet: observer, developer, operator,
                                           administrator; support access granted until tomorrow
                     G "same-org-fleet"    another fleet of Acme: only the org administrator
                     M "move-target"       where F's members are operators: the one fleet a move
                                           of F's devices may go to
    Globex (org B)   H "other-org-fleet"   a fleet of another organization
                     X "outsider-fleet"    the outsider administers it (so they are in org B)
    Target (org T)   placeholders named like F and G, empty: the org administrator is a Developer
                     there, so F and G can be transferred

F, G and H each hold three devices: `pump` (online, public URL on), `spare` (offline, public URL
on: deactivatable) and `quiet` (online, public URL off), an open action and a bystander member.

The world is created once per module inside an outer transaction; every test runs in a savepoint
that pytest-django rolls back (Django's setUpTestData pattern), so a test may change anything.
"""

import threading
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from devices.models import (
    ActionDelivery,
    ActionKind,
    ActionScope,
    ActionState,
    DeliveryState,
    Device,
    DeviceAction,
    DeviceType,
    SavedView,
)
from fleets import services
from fleets.models import (
    BillingCharge,
    Fleet,
    FleetGroupObjectPermission,
    FleetMembership,
    FleetRole,
    FleetUserObjectPermission,
    Organization,
    OrgMembership,
    OrgRole,
    ProvisioningKey,
    Release,
)
from tests.factories import make_device, make_fleet, make_member, make_org, make_org_admin, make_support_user

PERSONAS = [
    "anonymous",
    "observer",
    "developer",
    "operator",
    "administrator",
    "org_admin",
    "outsider",
    "support_live",
    "support_expired",
]
SCOPES = ["own", "same_org", "other_org"]


class RecordingWebServer(BaseHTTPRequestHandler):
    """A device's port-80 service that remembers every request it gets (host and path)."""

    hits: list  # set on the subclass made per server

    def _answer(self):
        self.hits.append(
            {
                "method": self.command,
                "path": self.path,
                "host": self.headers.get("Host", ""),
                "cookie": self.headers.get("Cookie", ""),
            }
        )
        body = f"device page {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, *args):
        pass


@dataclass
class Recorder:
    url: str
    hits: list = field(default_factory=list)


def start_recorder() -> tuple[Recorder, ThreadingHTTPServer]:
    hits: list = []
    handler = type("Handler", (RecordingWebServer,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Recorder(f"http://127.0.0.1:{server.server_port}", hits), server


@pytest.fixture(scope="module")
def device_web():
    """The devices' web service: one recording server on loopback."""
    recorder, server = start_recorder()
    yield recorder
    server.shutdown()


@dataclass
class Place:
    """What one scope points at: a fleet and the things in it the endpoints name."""

    fleet: Fleet
    pump: Device
    spare: Device
    quiet: Device
    action: DeviceAction
    bystander: User
    view: SavedView

    def values(self, world: "World") -> dict:
        """The placeholders of the endpoint table's URLs and data."""
        return {
            "fleet": self.fleet.pk,
            "fleet_name": self.fleet.name,
            "org": self.fleet.organization.handle,
            "org_name": self.fleet.organization.name,
            "pump": self.pump.uuid,
            "pump_pk": self.pump.pk,
            "pump_name": self.pump.name,
            "spare": self.spare.uuid,
            "spare_name": self.spare.name,
            "quiet": self.quiet.uuid,
            "action": self.action.pk,
            "bystander": self.bystander.pk,
            "view": self.view.pk,
            "move_target": world.move_target.pk,
            "device_type": world.beaglebone.pk,
            "transfer_org": world.transfer_org.handle,
        }


@dataclass
class World:
    places: dict[str, Place]
    users: dict[str, User | None]
    sessions: dict[str, str]
    move_target: Fleet
    beaglebone: DeviceType
    transfer_org: Organization
    web: Recorder

    def client_for(self, persona: str, **kwargs) -> Client:
        client = Client(**kwargs)
        if self.sessions.get(persona):
            client.cookies["sessionid"] = self.sessions[persona]
        return client

    def prepare(self, persona: str) -> None:
        """Before a test: the online devices have just reported (the world outlives the offline
        threshold), and F's support grant is live, except for "support_expired"."""
        now = timezone.now()
        until = now + (-timedelta(minutes=1) if persona == "support_expired" else timedelta(days=1))
        with connection.cursor() as cursor:  # plain SQL: this runs before every cell
            cursor.execute(
                "UPDATE devices_device SET last_seen_at = %s WHERE name NOT LIKE 'spare-%%'", [now]
            )
            cursor.execute(
                "UPDATE fleets_fleet SET support_access_until = %s WHERE id = %s",
                [until, self.places["own"].fleet.pk],
            )


def _place(fleet: Fleet, slug: str, web: Recorder, actor: User) -> Place:
    def device(name: str, **fields) -> Device:
        uuid = f"{slug[:2]}{name[:2]}".encode().hex().ljust(32, "0")
        return make_device(
            fleet, name=f"{name}-{slug}", uuid=uuid, web_address=f"{web.url}/w/{uuid}",
            api_address="http://127.0.0.1:9/d/" + uuid, **fields,
        )  # fmt: skip

    pump = device("pump", public_url_enabled=True)
    spare = device("spare", public_url_enabled=True, online=False)
    quiet = device("quiet")
    action = DeviceAction.objects.create(
        organization=fleet.organization, fleet=fleet, fleet_name=fleet.name, actor=actor,
        actor_name=actor.username, kind=ActionKind.RESTART, scope=ActionScope.FLEET,
        state=ActionState.DISPATCHING, target_count=1, pending_count=1,
    )  # fmt: skip
    ActionDelivery.objects.create(
        action=action, device=pump, device_uuid=pump.uuid, device_name=pump.name, state=DeliveryState.PENDING
    )
    bystander = make_member(fleet, FleetRole.OBSERVER, username=f"bystander-{slug}")
    view = SavedView.objects.create(fleet=fleet, owner=bystander, name="bystander's view", query="q=pump")
    return Place(fleet, pump, spare, quiet, action, bystander, view)


def build_world(web: Recorder) -> World:
    acme, globex, target = make_org("Acme"), make_org("Globex"), make_org("Target")
    own = make_fleet(acme, "own-fleet")
    same_org = make_fleet(acme, "same-org-fleet")
    move_target = make_fleet(acme, "move-target")
    other_org = make_fleet(globex, "other-org-fleet")
    outsider_fleet = make_fleet(globex, "outsider-fleet")
    users: dict[str, User | None] = {"anonymous": None}
    for role in (FleetRole.OBSERVER, FleetRole.DEVELOPER, FleetRole.OPERATOR, FleetRole.ADMINISTRATOR):
        users[role.value] = make_member(own, role, username=role.value)
        services.fleet_member_set(fleet=move_target, user=users[role.value], role=FleetRole.OPERATOR)
    users["org_admin"] = make_org_admin(acme, "org_admin")
    users["outsider"] = make_member(outsider_fleet, FleetRole.ADMINISTRATOR, username="outsider")
    support = make_support_user("support")
    users["support_live"] = users["support_expired"] = support
    make_user_plain("newbie")  # in no organization: org administrators add such users
    recruit = make_user_plain("recruit")  # in the organizations, in no fleet: fleet administrators add them
    for org in (acme, globex):
        services.org_member_set(organization=org, user=recruit, role=OrgRole.MEMBER)
    for fleet in (own, same_org):
        placeholder = make_fleet(target, fleet.name)
        services.fleet_member_set(fleet=placeholder, user=users["org_admin"], role=FleetRole.DEVELOPER)
    places = {
        scope: _place(fleet, scope.replace("_", "-"), web, users["org_admin"])
        for scope, fleet in (("own", own), ("same_org", same_org), ("other_org", other_org))
    }
    sessions = {}
    for persona, user in users.items():
        if user is not None:
            client = Client()
            client.force_login(user)
            sessions[persona] = client.cookies["sessionid"].value
    world = World(
        places, users, sessions, move_target, DeviceType.objects.get(slug="beaglebone-black"), target, web
    )
    world.prepare("")
    return world


def make_user_plain(username: str) -> User:
    return User.objects.create_user(username=username)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, device_web):
    """The world, committed to nothing: an outer transaction rolled back once the module is done."""
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            yield build_world(device_web)
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


# --- "Nothing changed" ---------------------------------------------------------------------------

SNAPSHOT_MODELS = [
    Organization, OrgMembership, Fleet, FleetMembership, FleetUserObjectPermission,
    FleetGroupObjectPermission, ProvisioningKey, Release, BillingCharge, Device, DeviceAction,
    ActionDelivery, SavedView,
]  # fmt: skip


def snapshot() -> dict:
    """Every row a request could change (users without their last login), read with plain SQL:
    the matrix takes two snapshots per cell, so they must be cheap. On PostgreSQL that means one
    round trip (one JSON document); SQLite is in-process, a query per table costs nothing."""
    tables = [model._meta.db_table for model in SNAPSHOT_MODELS] + [
        User.user_permissions.through._meta.db_table
    ]
    users = "SELECT id, username, is_staff, is_superuser FROM auth_user"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            parts = [
                f"'{table}', (SELECT coalesce(json_agg(r ORDER BY r.id), '[]') FROM {connection.ops.quote_name(table)} r)"
                for table in tables
            ]
            parts.append(f"'auth_user', (SELECT coalesce(json_agg(r ORDER BY r.id), '[]') FROM ({users}) r)")
            cursor.execute(f"SELECT json_build_object({', '.join(parts)})")
            return cursor.fetchone()[0]
        rows = {}
        for table in tables:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)} ORDER BY id")
            rows[table] = cursor.fetchall()
        cursor.execute(f"{users} ORDER BY id")
        rows["auth_user"] = cursor.fetchall()
    return rows


def changed_tables(before: dict, after: dict) -> list[str]:
    return [name for name in before if before[name] != after[name]]
