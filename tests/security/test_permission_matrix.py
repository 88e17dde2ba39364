"""The permission matrix: every endpoint that reads or changes something x 8 personas x 3 scopes,
generated from one table (ENDPOINTS) and a few rules. Test ids read `endpoint-persona-scope`:
    pytest tests/security/test_permission_matrix.py -k "fleet-delete-operator"

Personas (tests/security/conftest.py builds the world): the observer, developer, operator and
administrator of fleet F; the org administrator of F's organization; an outsider (administrator
of a fleet in another organization); support staff while F's support grant lasts, and after it
expired. Anonymous visitors get one cell per endpoint (test_anonymous_users_are_sent_to_sign_in):
before sign-in the scope decides nothing.

Scopes: "own" is F, "same_org" is another fleet of F's organization, "other_org" a fleet of
another organization. The personas' effective access to each is written out in ACCESS below, by
hand from the world's definition, so the test does not trust fleets.selectors to compute it.

The rules (what each cell expects):
- `Role(r)`: no access to the scope's fleet -> 404; access below r -> 403; else the endpoint's
  `ok` status (200 for a page, 302 for a POST that did its work).
- Engine actions (devices/services/specs.py): every kind needs Operator; at fleet scope the
  public-URL kinds need Administrator; a kind without fleet scope (or, for deactivate, without
  selection scope) answers 400 to an allowed role asking for it; support staff may not grant
  support access (it would extend their own access); a move is valid only towards a fleet the
  persona operates (else 400).
- Fleet actions, members: Administrator; transfer: org administrators only (a fleet administrator
  gets 403).
- Organization pages: org administrator -> ok; org member -> 403; anyone else -> 404.
- Fleet creation: org administrators of the chosen organization; an org administrator choosing
  another organization gets 400, a user who administers no organization 403.
- Lists (fleets, devices, organizations): 200 for everyone signed in; the scope's fleet, device
  or organization appears in it exactly when the persona may see it.
- The public URL proxy is public by design while the URL is enabled: its status depends on the
  device (enabled and online -> 200, disabled -> 404, offline -> 503), never on the persona, not
  even on being signed in (tests/security/test_public_url_security.py for the rest).

Every cell asserts its status. Every cell except an allowed POST also asserts that nothing in the
database changed (devices, fleets, organizations, memberships, guardian rows, actions and
deliveries, billing charges, keys, releases, saved views, users); an allowed POST asserts that
something did, so the forged requests refused elsewhere are requests that would work.
test_every_dashboard_route_is_in_the_matrix fails when a URL is added without a row here.

Saved views: creating one needs read access; deleting one needs to own it (the matrix deletes the
bystander's view, so every persona is refused; tests/fleets/test_saved_views.py covers the owner).
"""

from dataclasses import dataclass, field

import pytest
from django.db import transaction
from django.urls import get_resolver, resolve

from devices.services import ACTIONS
from fleets.models import FleetRole
from tests.security.conftest import PERSONAS, SCOPES, changed_tables, snapshot

OBSERVER, DEVELOPER, OPERATOR, ADMIN = (
    FleetRole.OBSERVER.rank, FleetRole.DEVELOPER.rank, FleetRole.OPERATOR.rank, FleetRole.ADMINISTRATOR.rank,
)  # fmt: skip

# persona: effective rank on (own, same_org, other_org), and on the move target M; 0 = no access.
ACCESS = {
    "observer": (OBSERVER, 0, 0, OPERATOR),
    "developer": (DEVELOPER, 0, 0, OPERATOR),
    "operator": (OPERATOR, 0, 0, OPERATOR),
    "administrator": (ADMIN, 0, 0, OPERATOR),
    "org_admin": (ADMIN, ADMIN, 0, ADMIN),
    "outsider": (0, 0, 0, 0),
    "support_live": (OPERATOR, 0, 0, 0),
    "support_expired": (0, 0, 0, 0),
}
# persona: role in the organization of (own, same_org, other_org).
ORG_ROLE = {
    "observer": ("member", "member", None),
    "developer": ("member", "member", None),
    "operator": ("member", "member", None),
    "administrator": ("member", "member", None),
    "org_admin": ("admin", "admin", None),
    "outsider": (None, None, "member"),
    "support_live": (None, None, None),
    "support_expired": (None, None, None),
}


def rank(persona: str, scope: str) -> int:
    return ACCESS[persona][SCOPES.index(scope)]


def org_role(persona: str, scope: str) -> str | None:
    return ORG_ROLE[persona][SCOPES.index(scope)]


# --- Rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """Needs `role` on the scope's fleet; `transfer`: and to administer its organization."""

    role: int
    transfer: bool = False

    def expect(self, persona: str, scope: str, ok: int) -> int:
        if rank(persona, scope) == 0:
            return 404
        if rank(persona, scope) < self.role:
            return 403
        if self.transfer and org_role(persona, scope) != "admin":
            return 403
        return ok


@dataclass(frozen=True)
class Engine:
    """An action kind of the engine at one scope (device, selection or fleet)."""

    kind: str
    scope: str  # "device", "selection", "fleet"

    def expect(self, persona: str, scope: str, ok: int) -> int:
        needed = ADMIN if self.scope == "fleet" and self.kind in FLEET_SCOPE_NEEDS_ADMIN else OPERATOR
        status = Role(needed).expect(persona, scope, ok)
        if status != ok:
            return status
        if self.kind in NOT_FOR_SUPPORT and persona == "support_live":
            return 403
        if self.scope not in KIND_SCOPES[self.kind]:
            return 400
        if self.kind == "move" and ok == 302 and ACCESS[persona][3] < OPERATOR:
            return 400  # the POST names a target fleet the persona may not operate
        return ok


@dataclass(frozen=True)
class OwnerOnly:
    """Another member's saved view (the bystander's): no one but its owner may delete it."""

    def expect(self, persona: str, scope: str, ok: int) -> int:
        return 404 if rank(persona, scope) == 0 else 403


@dataclass(frozen=True)
class Org:
    """An organization page: for its administrators."""

    def expect(self, persona: str, scope: str, ok: int) -> int:
        return {"admin": ok, "member": 403, None: 404}[org_role(persona, scope)]


@dataclass(frozen=True)
class CreateFleet:
    def expect(self, persona: str, scope: str, ok: int) -> int:
        if "admin" not in ORG_ROLE[persona]:
            return 403
        return ok if ok == 200 or org_role(persona, scope) == "admin" else 400


@dataclass(frozen=True)
class Listed:
    """A list everyone may open; `marker` (a placeholder) shows exactly when `visible`."""

    marker: str
    org: bool = False

    def expect(self, persona: str, scope: str, ok: int) -> int:
        return ok

    def visible(self, persona: str, scope: str) -> bool:
        return org_role(persona, scope) is not None if self.org else rank(persona, scope) > 0


@dataclass(frozen=True)
class Public:
    """The public URL proxy: the device decides, not the persona (not even being logged in)."""

    def expect(self, persona: str, scope: str, ok: int) -> int:
        return ok


# The policy of the engine's kinds, written out rather than read from specs.py.
KIND_SCOPES = {
    **dict.fromkeys(["restart", "purge", "reboot", "shutdown", "public_url_on", "public_url_off"],
                    {"device", "selection", "fleet"}),
    **dict.fromkeys(["lock_override", "move", "os_update", "local_mode_on", "local_mode_off", "support_grant",
                     "support_revoke", "device_type", "delete"], {"device", "selection"}),
    "deactivate": {"device"},
}  # fmt: skip
FLEET_SCOPE_NEEDS_ADMIN = {"public_url_on", "public_url_off"}
NOT_FOR_SUPPORT = {"support_grant"}
# Parameters that make each kind's POST valid; "{confirm}" is the typed confirmation of the scope.
KIND_DATA = {
    "lock_override": {"enabled": "1"},
    "move": {"target_fleet": "{move_target}"},
    "os_update": {"version": "6.0.13"},
    "device_type": {"device_type": "{device_type}"},
    "support_grant": {"period": "24"},
}
CONFIRM = {"device": "{pump_name}", "selection": "1", "fleet": "{fleet_name}"}
# A pushed action, a setting, a move (parameters checked against the target) and a delete.
MATCHING_KINDS = {"restart", "public_url_on", "move", "delete"}


# --- The table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    url: str  # a template over conftest.Place.values()
    rule: object
    data: dict = field(default_factory=dict)
    htmx: str = ""  # HX-Target: the partial the page asks for
    host: str = ""  # a device's public URL host instead of the dashboard's
    ok: int = 0  # the status when allowed; default 200 for GET, 302 for POST
    effect: bool = True  # an allowed POST changes something (False: only on F, see the test)

    @property
    def ok_status(self) -> int:
        return self.ok or (200 if self.method == "GET" else 302)


def _engine_rows() -> list[Endpoint]:
    """Per kind: its confirmation and POST at device scope, the POST for a selection of ids and, for
    the kinds that have a fleet scope, the fleet-wide confirmation and POST. A kind without one
    answers 400 at fleet scope by one check (devices.views._confirm_or_dispatch): "delete", the one
    that would hurt most, proves it. "Select all matching" differs from ids only in how the
    selection is built (devices.views._selection_target): one kind of each family covers it."""
    rows = []
    for kind in KIND_SCOPES:
        params = KIND_DATA.get(kind, {})
        device = "{spare}" if kind == "deactivate" else "{pump}"
        device_confirm = "{spare_name}" if kind == "deactivate" else CONFIRM["device"]
        at_device = f"/devices/{device}/actions/{kind}/"
        at_fleet = f"/fleets/{{fleet}}/actions/{kind}/"
        by_ids = {"ids": "{pump_pk}"}
        matching = {"all_matching": "1", "filter": "q={pump_name}"}
        rows += [
            Endpoint(f"{kind}.device:confirm", "GET", at_device, Engine(kind, "device")),
            Endpoint(f"{kind}.device", "POST", at_device, Engine(kind, "device"),
                     params | {"confirm": device_confirm}),
            Endpoint(f"{kind}.selection", "POST", at_fleet, Engine(kind, "selection"),
                     params | by_ids | {"confirm": CONFIRM["selection"]}),
        ]  # fmt: skip
        if "fleet" in KIND_SCOPES[kind]:
            rows.append(Endpoint(f"{kind}.fleet:confirm", "GET", at_fleet, Engine(kind, "fleet")))
        if "fleet" in KIND_SCOPES[kind] or kind == "delete":
            rows.append(Endpoint(f"{kind}.fleet", "POST", at_fleet, Engine(kind, "fleet"),
                                 params | {"confirm": CONFIRM["fleet"]}))  # fmt: skip
        if kind in MATCHING_KINDS:
            rows.append(Endpoint(f"{kind}.matching", "POST", at_fleet, Engine(kind, "selection"),
                                 params | matching | {"confirm": CONFIRM["selection"]}))  # fmt: skip
    return rows


ENDPOINTS = [
    # Lists: open to everyone logged in; what they show is the question.
    Endpoint("fleet-list", "GET", "/fleets/", Listed("{fleet_name}")),
    Endpoint("device-list", "GET", "/devices/?q={pump_name}", Listed("/devices/{pump}/")),
    Endpoint("device-list:table", "GET", "/devices/?q={pump_name}", Listed("/devices/{pump}/"), htmx="device-table"),
    Endpoint("org-list", "GET", "/orgs/", Listed("{org_name}", org=True)),
    # Fleet pages and their htmx partials, CSV exports.
    Endpoint("fleet", "GET", "/fleets/{fleet}/", Role(OBSERVER)),
    Endpoint("fleet:table", "GET", "/fleets/{fleet}/?q=pump", Role(OBSERVER), htmx="device-table"),
    Endpoint("fleet-actions", "GET", "/fleets/{fleet}/actions/", Role(OBSERVER)),
    Endpoint("members", "GET", "/fleets/{fleet}/members/", Role(OBSERVER)),
    Endpoint("activity", "GET", "/fleets/{fleet}/activity/", Role(OBSERVER)),
    Endpoint("activity:table", "GET", "/fleets/{fleet}/activity/?kind=restart", Role(OBSERVER),
             htmx="activity-table"),
    Endpoint("activity.csv", "GET", "/fleets/{fleet}/activity/?format=csv", Role(OBSERVER)),
    Endpoint("action", "GET", "/fleets/{fleet}/activity/{action}/", Role(OBSERVER)),
    Endpoint("action:progress", "GET", "/fleets/{fleet}/activity/{action}/", Role(OBSERVER), htmx="action-progress"),
    Endpoint("action:outcomes", "GET", "/fleets/{fleet}/activity/{action}/?state=pending", Role(OBSERVER),
             htmx="outcomes"),
    Endpoint("action-outcomes.csv", "GET", "/fleets/{fleet}/activity/{action}/?format=csv", Role(OBSERVER)),
    Endpoint("action-cancel", "POST", "/fleets/{fleet}/activity/{action}/cancel/", Role(OPERATOR)),
    # The lazy "select all N matching" count, and saved views.
    Endpoint("device-count", "GET", "/fleets/{fleet}/devices/count/?q=pump", Role(OBSERVER)),
    Endpoint("view-create", "POST", "/fleets/{fleet}/views/", Role(OBSERVER), {"name": "mine", "q": "pump"}),
    Endpoint("view-delete", "POST", "/fleets/{fleet}/views/{view}/delete/", OwnerOnly()),
    # Device pages.
    Endpoint("device", "GET", "/devices/{pump}/", Role(OBSERVER)),
    Endpoint("device:live", "GET", "/devices/{pump}/", Role(OBSERVER), htmx="device-live"),
    Endpoint("device-activity", "GET", "/devices/{pump}/activity/", Role(OBSERVER)),
    Endpoint("device-activity:table", "GET", "/devices/{pump}/activity/?outcome=pending", Role(OBSERVER),
             htmx="activity-table"),
    Endpoint("device-activity.csv", "GET", "/devices/{pump}/activity/?format=csv", Role(OBSERVER)),
    Endpoint("restart.device:dialog", "GET", "/devices/{pump}/actions/restart/", Engine("restart", "device"),
             htmx="dialog-slot"),
    # Fleet-specific actions: the confirmation (page and htmx dialog) and the POST.
    *(
        Endpoint(f"fleet-{page}:confirm", "GET", f"/fleets/{{fleet}}/{page}/", Role(ADMIN, transfer=page == "transfer"))
        for page in ("type", "rename", "support", "transfer", "delete")
    ),
    Endpoint("fleet-rename:dialog", "GET", "/fleets/{fleet}/rename/", Role(ADMIN), htmx="dialog-slot"),
    Endpoint("fleet-type", "POST", "/fleets/{fleet}/type/", Role(ADMIN), {"fleet_type": "essentials"}),
    Endpoint("fleet-rename", "POST", "/fleets/{fleet}/rename/", Role(ADMIN), {"name": "renamed-fleet"}),
    Endpoint("fleet-support", "POST", "/fleets/{fleet}/support/", Role(ADMIN), {"duration": "1d"}),
    Endpoint("fleet-support-revoke", "POST", "/fleets/{fleet}/support/revoke/", Role(ADMIN), effect=False),
    Endpoint("fleet-transfer", "POST", "/fleets/{fleet}/transfer/", Role(ADMIN, transfer=True),
             {"organization": "{transfer_org}", "confirm": "{fleet_name}"}),
    Endpoint("fleet-delete", "POST", "/fleets/{fleet}/delete/", Role(ADMIN), {"confirm": "{fleet_name}"}),
    # Members.
    Endpoint("member-add", "POST", "/fleets/{fleet}/members/", Role(ADMIN), {"username": "recruit", "role": "observer"}),
    Endpoint("member-role", "POST", "/fleets/{fleet}/members/{bystander}/", Role(ADMIN), {"role": "developer"}),
    Endpoint("member-remove", "POST", "/fleets/{fleet}/members/{bystander}/remove/", Role(ADMIN)),
    # Organizations.
    Endpoint("org", "GET", "/orgs/{org}/", Org()),
    Endpoint("org-member-add", "POST", "/orgs/{org}/", Org(), {"username": "newbie", "role": "member"}),
    Endpoint("org-member-role", "POST", "/orgs/{org}/members/{bystander}/", Org(), {"role": "administrator"}),
    Endpoint("org-member-remove", "POST", "/orgs/{org}/members/{bystander}/remove/", Org()),
    Endpoint("fleet-create:page", "GET", "/fleets/new/?organization={org}", CreateFleet()),
    Endpoint("fleet-create", "POST", "/fleets/new/", CreateFleet(),
             {"organization": "{org}", "name": "brand-new", "fleet_type": "essentials",
              "default_device_type": "raspberrypi3"}),
    # Engine actions: every kind at device, selection (ids, and "all matching") and fleet scope.
    *_engine_rows(),
    # The public URL proxy.
    Endpoint("public-url:on", "GET", "/status?x=1", Public(), host="{pump}"),
    Endpoint("public-url:off", "GET", "/", Public(), host="{quiet}", ok=404),
    Endpoint("public-url:offline", "GET", "/", Public(), host="{spare}", ok=503),
]  # fmt: skip

MATRIX_PERSONAS = [persona for persona in PERSONAS if persona != "anonymous"]
CELLS = [
    pytest.param(endpoint, persona, scope, id=f"{endpoint.name}-{persona}-{scope}")
    for endpoint in ENDPOINTS
    for persona in MATRIX_PERSONAS
    for scope in SCOPES
]


@pytest.fixture
def db(world):
    """This module's `db`: a savepoint per cell, rolled back after it, inside the world's outer
    transaction. pytest-django's own `db` builds a TestCase per test, which costs more than many
    of the cells themselves."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


@pytest.fixture(autouse=True)
def _isolated_redis_and_fast_passwords():
    """Overrides tests/conftest.py's per-test Redis flush: the matrix signs nobody in with a password
    and uses the cache only for fleet counts, which decide no status; one flush per module is enough."""


@pytest.fixture(scope="module", autouse=True)
def _flush_redis_once(test_redis):
    test_redis.flush()
    yield
    test_redis.flush()


def _fill(template, values: dict):
    return template.format(**values) if isinstance(template, str) else template


def request(world, endpoint: Endpoint, persona: str, scope: str, *, client=None, headers=None):
    values = world.places[scope].values(world)
    client = client or world.client_for(persona)
    headers = dict(headers or {})
    if endpoint.htmx:
        headers |= {"HX-Request": "true", "HX-Target": endpoint.htmx}
    if endpoint.host:
        headers["Host"] = f"{_fill(endpoint.host, values)}.devices.localhost"
    url = _fill(endpoint.url, values)
    data = {key: _fill(value, values) for key, value in endpoint.data.items()}
    if endpoint.method == "GET":
        return client.get(url, data, headers=headers)
    return client.post(url, data, headers=headers)


def body(response) -> str:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return content.decode(errors="replace")


@pytest.mark.parametrize(("endpoint", "persona", "scope"), CELLS)
def test_permission_matrix(world, db, endpoint, persona, scope):
    world.prepare(persona)
    before = snapshot()
    response = request(world, endpoint, persona, scope)
    text = body(response)
    status = endpoint.rule.expect(persona, scope, endpoint.ok_status)
    assert response.status_code == status, text[:2000]
    after = snapshot()
    if endpoint.method == "POST" and status == endpoint.ok_status:
        # Only F has a support grant to revoke: elsewhere the revoke is allowed and does nothing.
        if endpoint.effect or scope == "own":
            assert changed_tables(before, after), "an allowed POST changed nothing"
    else:
        assert changed_tables(before, after) == []
    if isinstance(endpoint.rule, Listed):
        marker = _fill(endpoint.rule.marker, world.places[scope].values(world))
        assert (marker in text) == endpoint.rule.visible(persona, scope), marker


@pytest.mark.parametrize("endpoint", [pytest.param(e, id=e.name) for e in ENDPOINTS])
def test_anonymous_users_are_sent_to_sign_in(world, db, endpoint):
    """Scope decides nothing before sign-in: one cell per endpoint, on F."""
    world.prepare("anonymous")
    before = snapshot()
    response = request(world, endpoint, "anonymous", "own")
    if isinstance(endpoint.rule, Public):
        assert response.status_code == endpoint.ok_status
    else:
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")
    assert changed_tables(before, snapshot()) == []


# --- The table is complete -----------------------------------------------------------------------

# Dashboard routes with nothing to check here: the login/logout pair, the admin (its own test), the
# agent API (token-authenticated: test_agent_api_security.py), and "home", a redirect.
NOT_IN_MATRIX = {"login", "logout", "home"}


def _dashboard_routes() -> set[str]:
    names = set()

    def walk(patterns, prefix=""):
        for pattern in patterns:
            if hasattr(pattern, "url_patterns"):
                namespace = pattern.namespace
                if namespace == "admin" or str(pattern.pattern).startswith("api/"):
                    continue
                walk(pattern.url_patterns, f"{prefix}{namespace}:" if namespace else prefix)
            elif pattern.name:
                names.add(prefix + pattern.name)

    walk(get_resolver().url_patterns)
    return names - NOT_IN_MATRIX


def test_every_dashboard_route_is_in_the_matrix(world, db):
    values = world.places["own"].values(world)
    covered = {resolve(_fill(e.url, values).split("?")[0]).view_name for e in ENDPOINTS if not e.host}
    assert _dashboard_routes() - covered == set()


def test_every_action_kind_is_in_the_matrix():
    assert set(KIND_SCOPES) == {kind.value for kind in ACTIONS}
