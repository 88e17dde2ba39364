"""The Members tab: administrators add a user by username with a role, change a role, remove a member;
the guardian rows on the fleet follow every change."""

import pytest

from devices.models import ActionKind, DeviceAction
from fleets import services
from fleets.models import FleetMembership, FleetUserObjectPermission, OrgMembership, OrgRole
from fleets.selectors import fleet_for_user
from tests.factories import Personas, make_member, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


def perms(fleet, user) -> set[str]:
    return set(
        FleetUserObjectPermission.objects.filter(content_object=fleet, user=user).values_list(
            "permission__codename", flat=True
        )
    )


def add(client, fleet, username, role):
    return client.post(f"/fleets/{fleet.pk}/members/", {"username": username, "role": role})


def test_everyone_in_the_fleet_sees_the_members_and_only_administrators_manage_them(client, p):
    client.force_login(p.observer)
    html = client.get(f"/fleets/{p.fleet.pk}/members/").content.decode()
    assert p.operator.username in html and "Add a member" not in html and "Remove" not in html
    client.force_login(p.administrator)
    html = client.get(f"/fleets/{p.fleet.pk}/members/").content.decode()
    assert "Add a member" in html and f"/fleets/{p.fleet.pk}/members/{p.operator.pk}/remove/" in html
    assert p.org_admin.username in html  # listed as administering through the organization


def test_an_administrator_adds_a_member_of_the_organization_by_username(client, p):
    newcomer = make_user("newcomer")
    services.org_member_set(organization=p.org, user=newcomer, role=OrgRole.MEMBER)
    client.force_login(p.administrator)
    response = add(client, p.fleet, "newcomer", "operator")
    assert response.status_code == 302
    assert FleetMembership.objects.get(fleet=p.fleet, user=newcomer).role == "operator"
    assert perms(p.fleet, newcomer) == {"view_fleet", "develop_fleet", "operate_fleet"}
    assert fleet_for_user(newcomer, p.fleet.pk).access.can_operate
    record = DeviceAction.objects.get()
    assert record.kind == ActionKind.MEMBER_CHANGE and record.summary == "Added newcomer as Operator"
    assert "Added newcomer to" in client.get(response.url).content.decode()


def test_a_fleet_administrator_may_not_bring_someone_into_the_organization(client, p):
    stranger = make_user("stranger")  # a user of the system, in no organization or in another one
    client.force_login(p.administrator)
    assert "A member of " + p.org.name in client.get(f"/fleets/{p.fleet.pk}/members/").content.decode()
    for username in ("stranger", p.outsider.username):
        response = add(client, p.fleet, username, "observer")
        assert response.status_code == 400
        assert (
            f"{username} is not a member of {p.org.name}, and only its administrators add people to it: ask one "
            f"to add {username} to {p.org.name} (or to this fleet)."
        ) in response.content.decode()
    assert not OrgMembership.objects.filter(organization=p.org, user__in=[stranger, p.outsider]).exists()
    assert FleetMembership.objects.filter(fleet=p.fleet).count() == 4
    assert not FleetUserObjectPermission.objects.filter(user=stranger).exists()
    assert not DeviceAction.objects.exists()


def test_an_org_administrator_adds_anyone_who_then_joins_the_organization(client, p):
    newcomer = make_user("newcomer")
    client.force_login(p.org_admin)
    assert "They also become a member of" in client.get(f"/fleets/{p.fleet.pk}/members/").content.decode()
    response = add(client, p.fleet, "newcomer", "developer")
    assert response.status_code == 302
    assert FleetMembership.objects.get(fleet=p.fleet, user=newcomer).role == "developer"
    assert OrgMembership.objects.get(organization=p.org, user=newcomer).role == "member"
    assert fleet_for_user(newcomer, p.fleet.pk).access.can_develop
    record = DeviceAction.objects.get()
    assert record.summary == f"Added newcomer as Developer, and to {p.org.name} as a Member"
    assert record.organization_id == p.org.pk


def test_an_unknown_username_is_refused(client, p):
    client.force_login(p.administrator)
    response = add(client, p.fleet, "ghost", "observer")
    assert response.status_code == 400 and "There is no user named “ghost”." in response.content.decode()
    assert FleetMembership.objects.filter(fleet=p.fleet).count() == 4
    assert not DeviceAction.objects.exists()


def test_adding_an_existing_member_is_refused_and_keeps_their_role(client, p):
    client.force_login(p.administrator)
    response = add(client, p.fleet, p.observer.username, "administrator")
    assert response.status_code == 400 and "is already a member (Observer)" in response.content.decode()
    assert perms(p.fleet, p.observer) == {"view_fleet"}


def test_an_unknown_role_is_refused(client, p):
    make_user("someone")
    client.force_login(p.administrator)
    assert add(client, p.fleet, "someone", "owner").status_code == 400
    assert not FleetMembership.objects.filter(user__username="someone").exists()


def test_an_administrator_changes_a_role_and_the_permissions_follow(client, p):
    client.force_login(p.administrator)
    response = client.post(f"/fleets/{p.fleet.pk}/members/{p.observer.pk}/", {"role": "administrator"})
    assert response.status_code == 302
    assert perms(p.fleet, p.observer) == {"view_fleet", "develop_fleet", "operate_fleet", "administer_fleet"}
    client.post(f"/fleets/{p.fleet.pk}/members/{p.observer.pk}/", {"role": "developer"})
    assert perms(p.fleet, p.observer) == {"view_fleet", "develop_fleet"}
    assert FleetMembership.objects.get(fleet=p.fleet, user=p.observer).role == "developer"
    assert [r.summary for r in DeviceAction.objects.order_by("id")] == [
        f"Changed {p.observer.username} from Observer to Administrator",
        f"Changed {p.observer.username} from Administrator to Developer",
    ]


def test_an_administrator_removes_a_member_and_their_access_ends(client, p):
    client.force_login(p.administrator)
    response = client.post(f"/fleets/{p.fleet.pk}/members/{p.operator.pk}/remove/")
    assert response.status_code == 302
    assert not FleetMembership.objects.filter(fleet=p.fleet, user=p.operator).exists()
    assert perms(p.fleet, p.operator) == set()
    client.force_login(p.operator)
    assert client.get(f"/fleets/{p.fleet.pk}/").status_code == 404


def test_removing_yourself_lands_on_the_fleet_list(client, p):
    client.force_login(p.administrator)
    response = client.post(f"/fleets/{p.fleet.pk}/members/{p.administrator.pk}/remove/")
    assert response.url == "/fleets/"


def test_a_user_who_is_not_a_member_of_this_fleet_is_404(client, p):
    client.force_login(p.administrator)
    assert (
        client.post(f"/fleets/{p.fleet.pk}/members/{p.outsider.pk}/", {"role": "observer"}).status_code == 404
    )
    assert client.post(f"/fleets/{p.fleet.pk}/members/{p.outsider.pk}/remove/").status_code == 404
    assert FleetMembership.objects.filter(user=p.outsider).count() == 1


@pytest.mark.parametrize("role", ["observer", "developer", "operator"])
def test_members_below_administrator_may_not_change_members(client, p, role):
    client.force_login(getattr(p, role))
    make_user("someone")
    assert add(client, p.fleet, "someone", "observer").status_code == 403
    assert (
        client.post(f"/fleets/{p.fleet.pk}/members/{p.observer.pk}/", {"role": "administrator"}).status_code
        == 403
    )
    assert client.post(f"/fleets/{p.fleet.pk}/members/{p.observer.pk}/remove/").status_code == 403
    assert perms(p.fleet, p.observer) == {"view_fleet"}
    assert not DeviceAction.objects.exists()


def test_outsiders_get_404(client, p):
    client.force_login(p.outsider)
    assert client.get(f"/fleets/{p.fleet.pk}/members/").status_code == 404
    assert add(client, p.fleet, p.outsider.username, "administrator").status_code == 404
    assert client.post(f"/fleets/{p.fleet.pk}/members/{p.observer.pk}/remove/").status_code == 404


def test_the_members_page_costs_the_same_queries_at_any_size(client, p, django_assert_max_num_queries):
    client.force_login(p.administrator)
    with django_assert_max_num_queries(12) as few:
        client.get(f"/fleets/{p.fleet.pk}/members/")
    for role in ["observer", "developer", "operator", "administrator"] * 10:
        make_member(p.fleet, role)
    with django_assert_max_num_queries(len(few.captured_queries)):
        html = client.get(f"/fleets/{p.fleet.pk}/members/").content.decode()
    assert html.count('data-dialog-open="remove-') == 44
