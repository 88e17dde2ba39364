"""Support staff act as operators only while a grant lasts, and cannot stretch the grant: granting
support access is refused to them, whether the grant is on the fleet or on one device."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import Device, DeviceAction
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


@pytest.fixture
def granted_device(p):
    return make_device(p.fleet, name="kiosk-7", support_access_until=timezone.now() + timedelta(hours=1))


def test_a_device_grant_lets_support_operate_that_device_only(client, p, granted_device):
    other = make_device(p.fleet)
    client.force_login(p.support)
    assert client.get(f"/devices/{granted_device.uuid}/").status_code == 200
    assert client.post(f"/devices/{granted_device.uuid}/actions/reboot/").status_code == 302
    assert client.get(f"/devices/{other.uuid}/").status_code == 404
    assert client.get(f"/fleets/{p.fleet.pk}/").status_code == 404
    response = client.post(f"/fleets/{p.fleet.pk}/actions/reboot/", {"ids": [granted_device.pk]})
    assert response.status_code == 404


def test_support_cannot_extend_a_device_grant(client, p, granted_device):
    until = granted_device.support_access_until
    client.force_login(p.support)
    response = client.post(f"/devices/{granted_device.uuid}/actions/support_grant/", {"period": "168"})
    assert response.status_code == 403
    assert "Support staff cannot grant support access" in response.content.decode()
    assert Device.objects.get(pk=granted_device.pk).support_access_until == until
    assert not DeviceAction.objects.exists()


def test_the_device_page_says_why_instead_of_offering_the_grant(client, p, granted_device):
    client.force_login(p.support)
    html = client.get(f"/devices/{granted_device.uuid}/").content.decode()
    assert f"/devices/{granted_device.uuid}/actions/support_grant/" not in html
    assert "Support staff cannot grant support access" in html
    client.force_login(p.operator)
    html = client.get(f"/devices/{granted_device.uuid}/").content.decode()
    assert f"/devices/{granted_device.uuid}/actions/support_grant/" in html


def test_support_under_a_fleet_grant_cannot_grant_device_grants_either(client, p):
    device = make_device(p.fleet)
    p.fleet.support_access_until = timezone.now() + timedelta(hours=1)
    p.fleet.save()
    client.force_login(p.support)
    data = {"ids": [device.pk], "period": "custom", "custom_hours": "720"}
    assert client.post(f"/fleets/{p.fleet.pk}/actions/support_grant/", data).status_code == 403
    assert "support_grant" not in client.get(f"/fleets/{p.fleet.pk}/").content.decode()
    assert Device.objects.get(pk=device.pk).support_access_until is None


def test_support_may_still_revoke_its_own_access(client, p, granted_device):
    client.force_login(p.support)
    assert client.post(f"/devices/{granted_device.uuid}/actions/support_revoke/").status_code == 302
    assert Device.objects.get(pk=granted_device.pk).support_access_until is None
    assert client.get(f"/devices/{granted_device.uuid}/").status_code == 404


def test_an_expired_grant_opens_nothing(client, p):
    device = make_device(p.fleet, support_access_until=timezone.now() - timedelta(seconds=1))
    client.force_login(p.support)
    assert client.get(f"/devices/{device.uuid}/").status_code == 404
    assert client.post(f"/devices/{device.uuid}/actions/reboot/").status_code == 404
    assert not DeviceAction.objects.exists()
