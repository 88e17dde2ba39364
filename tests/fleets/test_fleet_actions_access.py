"""Who may open and post the fleet-specific actions: fleet administrators (org administrators are
administrators of every fleet of their org); transfer only for org administrators. A refused
request changes nothing, whether it came from the page or was forged."""

import pytest

from devices.models import DeviceAction
from fleets import services
from fleets.models import Fleet, OrgRole
from tests.factories import Personas, make_device, make_org_admin, make_user

pytestmark = pytest.mark.django_db

ADMIN_PAGES = ["type/", "rename/", "support/", "delete/", "members/"]
# Forged posts that would change something if they were let through.
POSTS = {
    "type/": {"fleet_type": "essentials"},
    "rename/": {"name": "renamed-fleet"},
    "support/": {"duration": "1d"},
    "support/revoke/": {},
    "transfer/": {"organization": "whatever", "confirm": "x"},
    "delete/": {"confirm": "x"},
    "members/": {"username": "nobody", "role": "observer"},
}


@pytest.fixture
def p():
    personas = Personas()
    make_device(personas.fleet)
    return personas


def _unchanged(p):
    fleet = Fleet.objects.get(pk=p.fleet.pk)
    assert (fleet.name, fleet.fleet_type.slug, fleet.support_access_until) == (
        p.fleet.name, "microservices", None,
    )  # fmt: skip
    assert fleet.devices.count() == 1
    assert not DeviceAction.objects.exists()


@pytest.mark.parametrize("role", ["observer", "developer", "operator"])
def test_members_below_administrator_get_403_on_every_fleet_action(client, p, role):
    client.force_login(getattr(p, role))
    for page in ["type/", "rename/", "support/", "delete/", "transfer/"]:
        assert client.get(f"/fleets/{p.fleet.pk}/{page}").status_code == 403, page
    for page, data in POSTS.items():
        assert client.post(f"/fleets/{p.fleet.pk}/{page}", data).status_code == 403, page
    _unchanged(p)


def test_outsiders_get_404_on_every_fleet_action(client, p):
    client.force_login(p.outsider)
    for page in ADMIN_PAGES + ["transfer/"]:
        assert client.get(f"/fleets/{p.fleet.pk}/{page}").status_code == 404, page
    for page, data in POSTS.items():
        assert client.post(f"/fleets/{p.fleet.pk}/{page}", data).status_code == 404, page
    _unchanged(p)


def test_an_org_member_who_is_not_in_the_fleet_gets_404(client, p):
    member = make_user()
    services.org_member_set(organization=p.org, user=member, role=OrgRole.MEMBER)
    client.force_login(member)
    for page, data in POSTS.items():
        assert client.post(f"/fleets/{p.fleet.pk}/{page}", data).status_code == 404, page
    _unchanged(p)


def test_support_staff_under_a_grant_operate_but_may_not_administer(client, p):
    from datetime import timedelta

    from django.utils import timezone

    Fleet.objects.filter(pk=p.fleet.pk).update(support_access_until=timezone.now() + timedelta(hours=1))
    client.force_login(p.support)
    assert client.get(f"/fleets/{p.fleet.pk}/actions/").status_code == 200
    for page, data in POSTS.items():
        assert client.post(f"/fleets/{p.fleet.pk}/{page}", data).status_code == 403, page


def test_fleet_administrators_and_org_administrators_open_every_fleet_action(client, p):
    for user in (p.administrator, p.org_admin):
        client.force_login(user)
        for page in ADMIN_PAGES:
            assert client.get(f"/fleets/{p.fleet.pk}/{page}").status_code == 200, (user, page)


def test_transfer_is_for_org_administrators_only(client, p):
    client.force_login(p.administrator)
    response = client.get(f"/fleets/{p.fleet.pk}/transfer/")
    assert response.status_code == 403
    assert f"Only administrators of {p.org.name} can transfer its fleets." in response.content.decode()
    client.force_login(p.org_admin)
    assert client.get(f"/fleets/{p.fleet.pk}/transfer/").status_code == 200


def test_an_admin_of_another_org_is_not_an_admin_here(client, p):
    client.force_login(make_org_admin(p.other_fleet.organization))
    assert client.get(f"/fleets/{p.fleet.pk}/rename/").status_code == 404


class TestActionsTab:
    def test_administrators_see_every_fleet_action_enabled(self, client, p):
        client.force_login(p.administrator)
        html = client.get(f"/fleets/{p.fleet.pk}/actions/").content.decode()
        for url in [
            "type/",
            "rename/",
            "support/",
            "delete/",
            "actions/public_url_on/",
            "actions/public_url_off/",
        ]:
            assert f'href="/fleets/{p.fleet.pk}/{url}"' in html, url
        assert "Enable all public device URLs" in html and "Disable all public device URLs" in html
        # A fleet administrator who is not an org administrator sees why the transfer is disabled.
        assert f"Only administrators of {p.org.name} can transfer its fleets." in html
        assert f'href="/fleets/{p.fleet.pk}/transfer/"' not in html

    def test_operators_see_why_they_cannot_run_the_fleet_actions_and_no_control(self, client, p):
        client.force_login(p.operator)
        html = client.get(f"/fleets/{p.fleet.pk}/actions/").content.decode()
        assert "Needs the Administrator role (yours: Operator)." in html
        assert "Rename fleet…</button>" not in html  # a note, not a dead button
        for url in ["type/", "rename/", "support/", "delete/", "transfer/", "actions/public_url_on/"]:
            assert f'href="/fleets/{p.fleet.pk}/{url}"' not in html, url

    def test_a_legacy_fleet_says_why_it_cannot_be_renamed(self, client):
        p = Personas(fleet_type="legacy")
        client.force_login(p.administrator)
        html = client.get(f"/fleets/{p.fleet.pk}/actions/").content.decode()
        assert (
            "Legacy fleets cannot be renamed. Change the fleet type to Starter, Microservices or Essentials"
            in html
        )
        assert f'href="/fleets/{p.fleet.pk}/rename/"' not in html

    def test_htmx_gets_the_confirmation_as_a_dialog_that_opens_itself(self, client, p):
        client.force_login(p.administrator)
        for page in ["type/", "rename/", "support/", "delete/"]:
            html = client.get(f"/fleets/{p.fleet.pk}/{page}", HTTP_HX_REQUEST="true").content.decode()
            assert html.lstrip().startswith("<dialog") and "data-dialog-autoopen" in html, page
            assert "<html" not in html
