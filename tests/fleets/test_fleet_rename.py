"""Rename a fleet: new fleet types only, validated names, unique in the organization whatever the case."""

import pytest

from devices.models import ActionKind, DeviceAction
from fleets.forms import validate_fleet_name
from fleets.models import Fleet
from tests.factories import Personas, make_fleet

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas(fleet_type="essentials")


def rename(client, fleet, name, **headers):
    return client.post(f"/fleets/{fleet.pk}/rename/", {"name": name}, **headers)


def test_an_administrator_renames_the_fleet(client, p):
    old = p.fleet.name
    client.force_login(p.administrator)
    response = rename(client, p.fleet, "lobby-kiosks.v2")
    assert response.status_code == 302 and response.url == f"/fleets/{p.fleet.pk}/actions/"
    assert Fleet.objects.get(pk=p.fleet.pk).name == "lobby-kiosks.v2"
    record = DeviceAction.objects.get()
    assert (record.kind, record.actor, record.organization_id) == (
        ActionKind.FLEET_RENAME,
        p.administrator,
        p.org.pk,
    )
    assert record.params == {"from": old, "to": "lobby-kiosks.v2"}
    assert record.fleet_name == "lobby-kiosks.v2"
    follow = client.get(response.url).content.decode()
    assert f"Renamed {old} to lobby-kiosks.v2." in follow  # the toast


def test_htmx_gets_a_client_redirect(client, p):
    client.force_login(p.org_admin)
    response = rename(client, p.fleet, "renamed-by-htmx", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Redirect"] == f"/fleets/{p.fleet.pk}/actions/"


@pytest.mark.parametrize("fleet_type", ["starter", "microservices", "essentials"])
def test_every_new_fleet_type_may_be_renamed(client, fleet_type):
    p = Personas(fleet_type=fleet_type)
    client.force_login(p.administrator)
    assert rename(client, p.fleet, f"new-{fleet_type}").status_code == 302


@pytest.mark.parametrize("fleet_type", ["legacy", "classic"])
def test_legacy_and_classic_fleets_are_refused_with_the_reason(client, fleet_type):
    p = Personas(fleet_type=fleet_type)
    client.force_login(p.administrator)
    page = client.get(f"/fleets/{p.fleet.pk}/rename/")
    assert "cannot be renamed. Change the fleet type to Starter, Microservices or Essentials first." in (
        page.content.decode()
    )
    assert "data-keep-disabled" in page.content.decode()
    response = rename(client, p.fleet, "forged-rename")  # a POST the page would not have sent
    assert response.status_code == 400
    assert "cannot be renamed" in response.content.decode()
    assert Fleet.objects.get(pk=p.fleet.pk).name == p.fleet.name
    assert not DeviceAction.objects.exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("abc", "Use 4 to 100 characters (this has 3)."),
        ("x" * 101, "Use 4 to 100 characters (this has 101)."),
        ("-leading-dash", "Start with a letter or a digit."),
        ("has space", "not: space"),
        ("slash/and?", "not: / ?"),
        ("<script>", "not: &lt; &gt;"),  # escaped: the input is never markup
        ("", "This field is required."),
    ],
)
def test_invalid_names_are_refused_with_what_is_wrong(client, p, name, message):
    client.force_login(p.administrator)
    response = rename(client, p.fleet, name)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Fleet.objects.get(pk=p.fleet.pk).name == p.fleet.name
    assert not DeviceAction.objects.exists()


def test_valid_names(client):
    for name in ["kiosks", "Edge_AI.v2", "9lives", "a-b_c.d", "x" * 100]:
        validate_fleet_name(name)


def test_a_name_taken_in_the_organization_is_refused_whatever_the_case(client, p):
    make_fleet(p.org, name="Gateways")
    client.force_login(p.administrator)
    response = rename(client, p.fleet, "gateways")
    assert response.status_code == 400
    assert f"{p.org.name} already has a fleet named “gateways”" in response.content.decode()
    assert Fleet.objects.get(pk=p.fleet.pk).name == p.fleet.name


def test_the_same_name_in_another_organization_is_fine(client, p):
    make_fleet(p.other_fleet.organization, name="shared-name")
    client.force_login(p.administrator)
    assert rename(client, p.fleet, "shared-name").status_code == 302


def test_changing_only_the_case_of_the_own_name_is_allowed(client, p):
    Fleet.objects.filter(pk=p.fleet.pk).update(name="kiosks")
    client.force_login(p.administrator)
    assert rename(client, p.fleet, "Kiosks").status_code == 302
    assert Fleet.objects.get(pk=p.fleet.pk).name == "Kiosks"


def test_the_same_name_is_refused_as_nothing_to_do(client, p):
    client.force_login(p.administrator)
    response = rename(client, p.fleet, p.fleet.name)
    assert response.status_code == 400 and "already named" in response.content.decode()
    assert not DeviceAction.objects.exists()


def test_devices_see_the_new_name_in_their_target_state(client, p):
    from devices.services import device_target_state
    from tests.factories import make_device

    device = make_device(p.fleet)
    client.force_login(p.administrator)
    rename(client, p.fleet, "renamed-fleet")
    device.refresh_from_db()
    assert device_target_state(device)["fleet"]["name"] == "renamed-fleet"
