"""Who may see, operate and administer a fleet and its devices (fleets.selectors)."""

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import timezone

from fleets import services
from fleets.models import FleetRole, FleetUserObjectPermission
from fleets.selectors import device_for_user, devices_for_user, fleet_for_user, fleets_for_user
from tests.factories import Personas, make_device, make_fleet

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


def test_each_member_sees_the_fleet_with_their_role(p):
    for user, role in [
        (p.observer, FleetRole.OBSERVER),
        (p.developer, FleetRole.DEVELOPER),
        (p.operator, FleetRole.OPERATOR),
        (p.administrator, FleetRole.ADMINISTRATOR),
    ]:
        assert fleet_for_user(user, p.fleet.pk).access.role == role


def test_an_outsider_gets_404(p):
    with pytest.raises(Http404):
        fleet_for_user(p.outsider, p.fleet.pk)


def test_a_member_below_the_required_role_gets_403(p):
    for user in (p.observer, p.developer):
        with pytest.raises(PermissionDenied):
            fleet_for_user(user, p.fleet.pk, FleetRole.OPERATOR)
    assert fleet_for_user(p.operator, p.fleet.pk, FleetRole.OPERATOR)


def test_operators_may_not_administer(p):
    with pytest.raises(PermissionDenied):
        fleet_for_user(p.operator, p.fleet.pk, FleetRole.ADMINISTRATOR)


def test_org_administrators_administer_every_fleet_of_their_org(p):
    another = make_fleet(p.org)
    assert fleet_for_user(p.org_admin, another.pk, FleetRole.ADMINISTRATOR).access.can_administer
    with pytest.raises(Http404):
        fleet_for_user(p.org_admin, p.other_fleet.pk)


def test_granting_a_role_writes_a_constant_number_of_rows(p, django_assert_max_num_queries):
    user = p.observer
    with django_assert_max_num_queries(10):
        services.fleet_member_set(fleet=p.fleet, user=user, role=FleetRole.ADMINISTRATOR)
    assert FleetUserObjectPermission.objects.filter(user=user, content_object=p.fleet).count() == 4


def test_devices_follow_their_fleet_without_permission_rows_per_device(p):
    device = make_device(p.fleet)
    make_device(p.other_fleet)
    assert list(devices_for_user(p.observer)) == [device]
    assert device_for_user(p.operator, device.uuid, FleetRole.OPERATOR).access.can_operate
    with pytest.raises(PermissionDenied):
        device_for_user(p.developer, device.uuid, FleetRole.OPERATOR)
    with pytest.raises(Http404):
        device_for_user(p.outsider, device.uuid)


def test_removing_a_member_removes_their_access(p):
    services.fleet_member_remove(fleet=p.fleet, user=p.operator)
    with pytest.raises(Http404):
        fleet_for_user(p.operator, p.fleet.pk)


def test_support_staff_see_nothing_without_a_grant(p):
    device = make_device(p.fleet)
    with pytest.raises(Http404):
        device_for_user(p.support, device.uuid)
    assert not fleets_for_user(p.support).exists()


def test_support_staff_operate_a_device_only_while_its_grant_lasts(p):
    device = make_device(p.fleet, support_access_until=timezone.now() + timedelta(hours=1))
    access = device_for_user(p.support, device.uuid, FleetRole.OPERATOR).access
    assert access.can_operate and access.via_support and not access.can_administer
    with pytest.raises(Http404):
        fleet_for_user(p.support, p.fleet.pk)  # a device grant does not open the fleet

    device.support_access_until = timezone.now() - timedelta(seconds=1)
    device.save()
    with pytest.raises(Http404):
        device_for_user(p.support, device.uuid)


def test_a_fleet_grant_opens_the_fleet_and_its_devices_to_support(p):
    device = make_device(p.fleet)
    p.fleet.support_access_until = timezone.now() + timedelta(days=1)
    p.fleet.save()
    assert fleet_for_user(p.support, p.fleet.pk, FleetRole.OPERATOR).access.via_support
    assert device_for_user(p.support, device.uuid, FleetRole.OPERATOR)
    with pytest.raises(PermissionDenied):
        fleet_for_user(p.support, p.fleet.pk, FleetRole.ADMINISTRATOR)


def test_a_grant_means_nothing_to_users_who_are_not_support_staff(p):
    device = make_device(p.other_fleet, support_access_until=timezone.now() + timedelta(hours=1))
    with pytest.raises(Http404):
        device_for_user(p.observer, device.uuid)


def test_access_checks_cost_one_query(p, django_assert_num_queries):
    device = make_device(p.fleet)
    with django_assert_num_queries(1):
        fleet_for_user(p.operator, p.fleet.pk)
    with django_assert_num_queries(1):
        device_for_user(p.operator, device.uuid)
