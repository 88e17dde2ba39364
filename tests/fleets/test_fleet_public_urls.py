"""Enable / disable all public device URLs of a fleet: the engine's public URL action at fleet scope.
It applies to the devices in the fleet now; devices registered later keep the default (off)."""

import secrets

import pytest

from devices import services as device_services
from devices.models import Device, DeviceAction
from fleets.services import provisioning_key_create
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


def run_fleet_wide(client, p, kind):
    """Post the fleet-wide action, then expand it here as the worker would (no Celery in this test)."""
    response = client.post(f"/fleets/{p.fleet.pk}/actions/{kind}/")
    assert response.status_code == 302
    action = DeviceAction.objects.filter(kind=kind).latest("id")
    device_services.action_expand(action.pk)
    return action


def test_enabling_all_reaches_the_devices_in_the_fleet_now_and_not_later_ones(client, p):
    online = make_device(p.fleet)
    offline = make_device(p.fleet, online=False)  # a setting: it gets it at its next poll
    elsewhere = make_device(p.other_fleet)
    client.force_login(p.administrator)
    action = run_fleet_wide(client, p, "public_url_on")

    assert set(Device.objects.filter(public_url_enabled=True)) == {online, offline}
    action.refresh_from_db()
    assert (action.scope, action.state, action.succeeded_count) == ("fleet", "done", 2)
    assert not Device.objects.get(pk=elsewhere.pk).public_url_enabled

    device, _ = device_services.device_register(
        provisioning_key=provisioning_key_create(fleet=p.fleet), uuid=secrets.token_hex(16), name="later",
        device_type="raspberrypi3", os_version="2.58.3", agent_version="1.4.0",
    )  # fmt: skip
    assert not device.public_url_enabled  # the default, not the fleet-wide choice
    assert device_services.device_target_state(device)["config"]["public_url"] is False


def test_disabling_all_turns_every_device_off(client, p):
    make_device(p.fleet, public_url_enabled=True)
    make_device(p.fleet, public_url_enabled=True)
    client.force_login(p.org_admin)
    run_fleet_wide(client, p, "public_url_off")
    assert not Device.objects.filter(fleet=p.fleet, public_url_enabled=True).exists()


def test_the_fleet_section_offers_both(client, p):
    client.force_login(p.administrator)
    html = client.get(f"/fleets/{p.fleet.pk}/actions/").content.decode()
    assert f'hx-get="/fleets/{p.fleet.pk}/actions/public_url_on/"' in html
    assert f'hx-get="/fleets/{p.fleet.pk}/actions/public_url_off/"' in html
    assert "Devices added to the fleet later keep the default (off)." in html


@pytest.mark.parametrize("role", ["observer", "developer", "operator"])
def test_below_administrator_the_fleet_wide_run_is_refused(client, p, role):
    make_device(p.fleet)
    client.force_login(getattr(p, role))
    assert client.post(f"/fleets/{p.fleet.pk}/actions/public_url_on/").status_code == 403
    assert not DeviceAction.objects.exists()
    assert not Device.objects.filter(public_url_enabled=True).exists()
