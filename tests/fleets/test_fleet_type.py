"""Change the fleet type: only when every device meets the new type's rules and the organization may
use it; otherwise the page lists which rules block it and which devices."""

import pytest

from devices.models import ActionKind, DeviceAction
from fleets.models import Fleet, Organization, Release
from fleets.selectors import fleet_type_options
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas(fleet_type="essentials")


def change(client, fleet, slug):
    return client.post(f"/fleets/{fleet.pk}/type/", {"fleet_type": slug})


def fleet_type_of(fleet) -> str:
    return Fleet.objects.get(pk=fleet.pk).fleet_type.slug


def test_an_administrator_changes_the_type(client, p):
    make_device(p.fleet, os_version="2.58.3")
    client.force_login(p.administrator)
    response = change(client, p.fleet, "microservices")
    assert response.status_code == 302
    assert fleet_type_of(p.fleet) == "microservices"
    record = DeviceAction.objects.get()
    assert record.kind == ActionKind.FLEET_TYPE and record.params == {
        "from": "essentials",
        "to": "microservices",
    }
    assert "is now Microservices." in client.get(response.url).content.decode()


def test_devices_below_the_minimum_os_block_it_and_are_named(client, p):
    for i in range(5):
        make_device(p.fleet, name=f"old-{i}", os_version="2.9.7")
    make_device(p.fleet, name="new-one", os_version="2.58.3")
    client.force_login(p.administrator)
    page = client.get(f"/fleets/{p.fleet.pk}/type/").content.decode()
    assert (
        "5 devices run a host OS older than 2.12.0, the minimum of Microservices: old-0, old-1, old-2 and 2 more."
        in page
    )
    response = change(client, p.fleet, "microservices")
    assert response.status_code == 400
    assert "cannot change to Microservices." in response.content.decode()
    assert fleet_type_of(p.fleet) == "essentials"
    assert not DeviceAction.objects.exists()


def test_the_blocking_devices_are_found_with_a_constant_number_of_queries(p, django_assert_max_num_queries):
    fleet = Fleet.objects.select_related("organization").get(pk=p.fleet.pk)
    for _ in range(3):
        make_device(fleet, os_version="2.9.7", is_active=False)
    with django_assert_max_num_queries(6) as few:
        fleet_type_options(fleet)
    for _ in range(30):
        make_device(fleet, os_version="2.9.7", is_active=False)
    fleet = Fleet.objects.select_related("organization").get(pk=p.fleet.pk)
    with django_assert_max_num_queries(len(few.captured_queries)):
        options = {o.fleet_type.slug: o for o in fleet_type_options(fleet)}
    assert any("33 devices run a host OS older than 2.12.0" in b for b in options["microservices"].blockers)


def test_a_type_needing_billing_is_refused_without_a_valid_billing_account(client, p):
    Organization.objects.filter(pk=p.org.pk).update(billing_account_valid=False)
    client.force_login(p.administrator)
    response = change(client, p.fleet, "microservices")
    assert response.status_code == 400
    assert "has no valid billing account, which Microservices fleets need." in response.content.decode()
    assert fleet_type_of(p.fleet) == "essentials"


def test_starter_is_refused_above_its_device_limit(client, p):
    for _ in range(11):
        make_device(p.fleet)
    client.force_login(p.administrator)
    response = change(client, p.fleet, "starter")
    assert response.status_code == 400
    assert "Starter fleets hold at most 10 devices; this one has 11." in response.content.decode()
    assert fleet_type_of(p.fleet) == "essentials"


def test_starter_is_refused_while_the_fleet_holds_deactivated_devices(client, p):
    make_device(p.fleet, name="retired-1", is_active=False)
    client.force_login(p.administrator)
    response = change(client, p.fleet, "starter")
    assert response.status_code == 400
    assert "Starter fleets cannot hold deactivated devices; 1 is: retired-1." in response.content.decode()


def test_essentials_is_refused_while_the_release_runs_several_services(client):
    p = Personas(fleet_type="microservices")
    release = Release.objects.create(
        fleet=p.fleet, commit="a" * 40, version="2.4.0", services=[{"name": "a"}, {"name": "b"}]
    )
    Fleet.objects.filter(pk=p.fleet.pk).update(target_release=release)
    client.force_login(p.administrator)
    response = change(client, p.fleet, "essentials")
    assert response.status_code == 400
    assert (
        "Essentials fleets run a single service; the current release 2.4.0 has 2."
        in response.content.decode()
    )


@pytest.mark.parametrize("slug", ["legacy", "classic"])
def test_old_types_cannot_be_chosen(client, p, slug):
    client.force_login(p.administrator)
    response = change(client, p.fleet, slug)
    assert response.status_code == 400
    assert "is an old fleet type" in response.content.decode()
    assert fleet_type_of(p.fleet) == "essentials"


def test_the_current_type_is_refused_as_nothing_to_do(client, p):
    client.force_login(p.administrator)
    response = change(client, p.fleet, "essentials")
    assert response.status_code == 400
    assert f"{p.fleet.name} is already of type Essentials." in response.content.decode()
    assert not DeviceAction.objects.exists()


def test_an_unknown_type_is_refused(client, p):
    client.force_login(p.administrator)
    assert change(client, p.fleet, "platinum").status_code == 400
    assert fleet_type_of(p.fleet) == "essentials"


def test_a_legacy_fleet_can_be_upgraded_and_then_renamed(client):
    p = Personas(fleet_type="legacy", device_type="beaglebone-black")
    make_device(p.fleet, os_version="2.58.3")
    client.force_login(p.administrator)
    assert change(client, p.fleet, "essentials").status_code == 302
    assert client.post(f"/fleets/{p.fleet.pk}/rename/", {"name": "upgraded"}).status_code == 302
