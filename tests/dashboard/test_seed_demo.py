"""`manage.py seed_demo`: the demo's organizations, fleets and accounts, once; and the ownership
transfer the README walks through works on them, request by request."""

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from devices.models import ActionKind, DeviceAction
from fleets.models import (
    Fleet,
    FleetMembership,
    FleetUserObjectPermission,
    Organization,
    OrgMembership,
    ProvisioningKey,
    Release,
)

pytestmark = pytest.mark.django_db

PASSWORD = "not-the-default-7"
ACCOUNTS = ["admin", "operator", "developer", "observer", "outsider", "support"]


@pytest.fixture
def seeded(monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", PASSWORD)
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def rows() -> dict:
    return {
        "users": list(User.objects.order_by("pk").values_list("username", "password", "is_staff")),
        "orgs": list(Organization.objects.order_by("pk").values_list("handle", "name")),
        "fleets": list(
            Fleet.objects.order_by("pk").values_list(
                "organization__handle", "name", "fleet_type__slug", "target_release"
            )
        ),
        "releases": Release.objects.count(),
        "org_members": set(
            OrgMembership.objects.values_list("organization__handle", "user__username", "role")
        ),
        "members": set(FleetMembership.objects.values_list("fleet_id", "user__username", "role")),
        "permissions": FleetUserObjectPermission.objects.count(),
        "keys": ProvisioningKey.objects.count(),
    }


def test_it_creates_acme_and_globex_with_fleets_of_several_types(seeded):
    assert set(Organization.objects.values_list("handle", "name")) == {("acme", "Acme"), ("globex", "Globex")}
    acme = Fleet.objects.filter(organization__handle="acme")
    assert acme.count() >= 3
    assert len(set(acme.values_list("fleet_type__slug", flat=True))) >= 3
    assert len(set(acme.values_list("default_device_type__slug", flat=True))) >= 3
    # The transfer target: an empty fleet of Globex named as one of Acme's.
    target = Fleet.objects.get(organization__handle="globex", name="gateways")
    assert not target.devices.exists() and not target.releases.exists()
    assert acme.filter(name="gateways").exists()


def test_every_demo_account_logs_in_with_the_demo_password(client, seeded):
    assert f"Accounts (password {PASSWORD!r})" in seeded
    for username in ACCOUNTS:
        assert client.login(username=username, password=PASSWORD), username
        assert client.get("/fleets/").status_code == 200
        client.logout()
    assert not client.login(username="admin", password="demo")


def test_running_it_twice_changes_nothing(seeded):
    before = rows()
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert "Demo data already present; nothing to do." in out.getvalue()
    assert rows() == before


def test_the_readme_transfer_works_through_the_pages(client, seeded):
    acme_gateways = Fleet.objects.get(organization__handle="acme", name="gateways")
    globex_gateways = Fleet.objects.get(organization__handle="globex", name="gateways")
    transfer_url = f"/fleets/{acme_gateways.pk}/transfer/"

    # As admin the button is disabled and says what is missing.
    assert client.login(username="admin", password=PASSWORD)
    html = client.get(f"/fleets/{acme_gateways.pk}/actions/").content.decode()
    assert 'aria-disabled="true" title="You are not a member of any other organization.' in html
    client.logout()

    # As outsider (Globex's administrator): add admin as a Developer of Globex's empty gateways.
    assert client.login(username="outsider", password=PASSWORD)
    response = client.post(
        f"/fleets/{globex_gateways.pk}/members/", {"username": "admin", "role": "developer"}
    )
    assert response.status_code == 302
    assert "Added admin to gateways as Developer." in client.get(response.url).content.decode()
    client.logout()

    # As admin: Acme's gateways > Actions > Transfer ownership to Globex, typing the fleet name.
    assert client.login(username="admin", password=PASSWORD)
    html = client.get(f"/fleets/{acme_gateways.pk}/actions/").content.decode()
    assert f'hx-get="{transfer_url}"' in html
    dialog = client.get(transfer_url, HTTP_HX_REQUEST="true").content.decode()
    assert "Ready: has an empty fleet named “gateways”; you are its Developer." in dialog
    response = client.post(transfer_url, {"organization": "globex", "confirm": "gateways"})
    assert response.status_code == 302 and response.url == "/orgs/acme/"
    page = client.get(response.url).content.decode()
    assert "Transferred gateways to Globex" in page and "Transferred gateways with 0 devices" in page

    fleet = Fleet.objects.get(pk=acme_gateways.pk)
    assert fleet.organization.handle == "globex" and not Fleet.objects.filter(pk=globex_gateways.pk).exists()
    members = dict(FleetMembership.objects.filter(fleet=fleet).values_list("user__username", "role"))
    assert members == {"operator": "operator", "developer": "developer", "observer": "observer"}
    globex = set(
        OrgMembership.objects.filter(organization=fleet.organization).values_list("user__username", flat=True)
    )
    # admin joined Globex when outsider added them to its fleet; the fleet's members join with it.
    assert globex == {"outsider", "admin", "operator", "developer", "observer"}
    assert set(
        DeviceAction.objects.filter(kind=ActionKind.FLEET_TRANSFER).values_list(
            "organization__handle", flat=True
        )
    ) == {"acme", "globex"}
    assert client.get(f"/fleets/{fleet.pk}/").status_code == 404  # admin gave it away
    client.logout()
    assert client.login(username="operator", password=PASSWORD)
    assert client.get(f"/fleets/{fleet.pk}/").status_code == 200  # its members keep their access
