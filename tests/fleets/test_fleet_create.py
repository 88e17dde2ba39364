"""Create a fleet: for organization administrators, in an organization they administer."""

import pytest

from devices.models import ActionKind, DeviceAction
from fleets.models import Fleet, Organization
from fleets.selectors import fleet_for_user
from tests.factories import Personas, make_fleet

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


def create(client, org, **overrides):
    data = {"organization": org.handle, "name": "new-fleet", "fleet_type": "essentials",
            "default_device_type": "raspberrypi4-64"} | overrides  # fmt: skip
    return client.post("/fleets/new/", data)


def test_an_org_administrator_creates_a_fleet(client, p):
    client.force_login(p.org_admin)
    assert "New fleet" in client.get("/fleets/").content.decode()
    response = create(client, p.org)
    fleet = Fleet.objects.get(name="new-fleet")
    assert response.status_code == 302 and response.url == f"/fleets/{fleet.pk}/"
    assert (fleet.organization, fleet.fleet_type.slug, fleet.default_device_type.slug) == (
        p.org, "essentials", "raspberrypi4-64",
    )  # fmt: skip
    assert fleet_for_user(p.org_admin, fleet.pk).access.can_administer
    record = DeviceAction.objects.get()
    assert (record.kind, record.fleet, record.organization) == (ActionKind.FLEET_CREATE, fleet, p.org)


def test_only_org_administrators_may_create_fleets(client, p):
    for user in (p.administrator, p.operator, p.observer):
        client.force_login(user)
        assert "New fleet" not in client.get("/fleets/").content.decode()
        response = client.get("/fleets/new/")
        assert (
            response.status_code == 403
            and "Only organization administrators create fleets." in response.content.decode()
        )
        assert create(client, p.org).status_code == 403
    assert not Fleet.objects.filter(name="new-fleet").exists()


def test_an_org_administrator_cannot_create_in_another_organization(client, p):
    client.force_login(p.org_admin)
    response = create(client, p.other_fleet.organization)
    assert response.status_code == 400
    assert not Fleet.objects.filter(name="new-fleet").exists()


def test_the_name_is_validated_and_unique_in_the_organization(client, p):
    make_fleet(p.org, name="Taken")
    client.force_login(p.org_admin)
    assert "Start with a letter or a digit." in create(client, p.org, name="_x_fleet").content.decode()
    response = create(client, p.org, name="taken")
    assert response.status_code == 400 and "already has a fleet named “taken”" in response.content.decode()
    assert Fleet.objects.filter(organization=p.org).count() == 2  # the persona fleet and Taken


def test_old_types_cannot_be_chosen(client, p):
    client.force_login(p.org_admin)
    assert create(client, p.org, fleet_type="legacy").status_code == 400
    assert not Fleet.objects.filter(name="new-fleet").exists()


def test_billed_types_need_a_valid_billing_account(client, p):
    Organization.objects.filter(pk=p.org.pk).update(billing_account_valid=False)
    client.force_login(p.org_admin)
    response = create(client, p.org, fleet_type="microservices")
    assert response.status_code == 400 and "has no valid billing account" in response.content.decode()
    assert create(client, p.org, fleet_type="starter").status_code == 302
