"""Organizations: the list of one's organizations, and the page where org administrators manage
members and see their fleets, billing state, one-time charges and the organization's activity."""

import pytest

from devices.models import ActionKind, DeviceAction
from fleets import services
from fleets.models import BillingCharge, FleetMembership, FleetUserObjectPermission, OrgMembership, OrgRole
from fleets.selectors import fleet_for_user
from tests.factories import Personas, make_device, make_fleet, make_org_admin, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


def org_url(p, rest=""):
    return f"/orgs/{p.org.handle}/{rest}"


def test_the_list_shows_the_users_organizations_with_their_role(client, p):
    client.force_login(p.operator)
    html = client.get("/orgs/").content.decode()
    assert p.org.name in html and p.other_fleet.organization.name not in html
    assert f'href="{org_url(p)}"' not in html  # a member: no link to the admin page
    client.force_login(p.org_admin)
    assert f'href="{org_url(p)}"' in client.get("/orgs/").content.decode()


def test_org_administrators_see_members_fleets_billing_and_activity(client, p):
    make_device(p.fleet)
    BillingCharge.objects.create(
        organization=p.org, kind="deactivation", amount_cents=1250, description="Deactivated pump-7",
        device_uuid="a" * 32,
    )  # fmt: skip
    services.fleet_rename(actor=p.org_admin, fleet=p.fleet, name="renamed-fleet")
    client.force_login(p.org_admin)
    html = client.get(org_url(p)).content.decode()
    for text in [p.operator.username, p.org_admin.username, "renamed-fleet", "Billing account valid",
                 "Deactivated pump-7", "12.50", "Renamed", p.fleet.fleet_type.name]:  # fmt: skip
        assert text in html, text


def test_an_invalid_billing_account_is_shown(client, p):
    p.org.billing_account_valid = False
    p.org.save()
    client.force_login(p.org_admin)
    assert "No valid billing account" in client.get(org_url(p)).content.decode()


def test_members_who_are_not_administrators_get_403_and_outsiders_404(client, p):
    client.force_login(p.administrator)  # a fleet administrator, but only a member of the org
    assert client.get(org_url(p)).status_code == 403
    assert (
        client.post(org_url(p), {"username": p.outsider.username, "role": "administrator"}).status_code == 403
    )
    client.force_login(p.outsider)
    assert client.get(org_url(p)).status_code == 404
    assert client.post(org_url(p, f"members/{p.operator.pk}/remove/")).status_code == 404
    assert not OrgMembership.objects.filter(organization=p.org, user=p.outsider).exists()


def test_an_org_administrator_adds_a_member(client, p):
    make_user("hire")
    client.force_login(p.org_admin)
    response = client.post(org_url(p), {"username": "hire", "role": "member"})
    assert response.status_code == 302
    assert OrgMembership.objects.get(organization=p.org, user__username="hire").role == "member"
    record = DeviceAction.objects.get()
    assert (record.kind, record.organization_id, record.fleet_id) == (
        ActionKind.MEMBER_CHANGE,
        p.org.pk,
        None,
    )


def test_adding_an_unknown_or_existing_user_is_refused(client, p):
    client.force_login(p.org_admin)
    assert (
        "There is no user named"
        in client.post(org_url(p), {"username": "ghost", "role": "member"}).content.decode()
    )
    response = client.post(org_url(p), {"username": p.operator.username, "role": "administrator"})
    assert response.status_code == 400 and "is already a member" in response.content.decode()
    assert OrgMembership.objects.get(organization=p.org, user=p.operator).role == "member"


def test_a_new_org_administrator_administers_every_fleet(client, p):
    client.force_login(p.org_admin)
    client.post(org_url(p, f"members/{p.observer.pk}/"), {"role": "administrator"})
    assert fleet_for_user(p.observer, p.fleet.pk).access.can_administer
    client.post(org_url(p, f"members/{p.observer.pk}/"), {"role": "member"})
    assert not fleet_for_user(p.observer, p.fleet.pk).access.can_administer


def test_the_last_administrator_cannot_be_demoted_or_removed(client, p):
    client.force_login(p.org_admin)
    response = client.post(org_url(p, f"members/{p.org_admin.pk}/"), {"role": "member"}, follow=True)
    assert "is the last administrator" in response.content.decode()
    client.post(org_url(p, f"members/{p.org_admin.pk}/remove/"))
    assert OrgMembership.objects.get(organization=p.org, user=p.org_admin).role == OrgRole.ADMINISTRATOR
    assert not DeviceAction.objects.exists()


def test_removing_a_member_removes_them_from_every_fleet_of_the_org(client, p):
    second = make_fleet(p.org)
    services.fleet_member_set(fleet=second, user=p.operator, role="observer")
    services.fleet_member_set(fleet=p.other_fleet, user=p.operator, role="observer")  # another org: kept
    client.force_login(p.org_admin)
    response = client.post(org_url(p, f"members/{p.operator.pk}/remove/"), follow=True)
    assert (
        f"Removed {p.operator.username} from {p.org.name} and from 2 of its fleets."
        in response.content.decode()
    )
    assert not OrgMembership.objects.filter(organization=p.org, user=p.operator).exists()
    assert list(FleetMembership.objects.filter(user=p.operator).values_list("fleet", flat=True)) == [
        p.other_fleet.pk
    ]
    assert set(
        FleetUserObjectPermission.objects.filter(user=p.operator).values_list("content_object", flat=True)
    ) == {p.other_fleet.pk}


def test_an_admin_who_steps_down_lands_on_the_organization_list(client, p):
    make_org_admin(p.org)
    client.force_login(p.org_admin)
    response = client.post(org_url(p, f"members/{p.org_admin.pk}/"), {"role": "member"})
    assert response.url == "/orgs/"


def test_the_org_page_costs_the_same_queries_at_any_size(client, p, django_assert_max_num_queries):
    client.force_login(p.org_admin)
    with django_assert_max_num_queries(15) as few:
        client.get(org_url(p))
    for i in range(15):
        make_org_admin(p.org)
        fleet = make_fleet(p.org)
        make_device(fleet)
        services.fleet_rename(actor=p.org_admin, fleet=fleet, name=f"renamed-{i}")
        BillingCharge.objects.create(
            organization=p.org, kind="deactivation", amount_cents=100, description="x"
        )
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get(org_url(p))
