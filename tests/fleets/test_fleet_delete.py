"""Delete a fleet: typed confirmation, orphaned devices refused by the server from then on, the audit
history kept in the organization's activity, and a cost that does not grow per device."""

import json
import secrets

import pytest

from devices import services as device_services
from devices.models import ActionDelivery, ActionKind, ActionScope, Device, DeviceAction, SavedView
from fleets import services
from fleets.models import Fleet, FleetMembership, FleetUserObjectPermission, ProvisioningKey, Release
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


def delete(client, fleet, confirm):
    return client.post(f"/fleets/{fleet.pk}/delete/", {"confirm": confirm})


def test_the_confirmation_warns_about_orphaned_devices_and_asks_for_the_name(client, p):
    make_device(p.fleet)
    make_device(p.fleet)
    client.force_login(p.administrator)
    html = client.get(f"/fleets/{p.fleet.pk}/delete/").content.decode()
    assert "Its 2 devices become orphaned" in html
    assert "Move the devices you want to keep to another fleet first." in html
    assert f'data-confirm-text="{p.fleet.name}"' in html


@pytest.mark.parametrize("typed", ["", "wrong", "FLEET"])
def test_without_the_exact_name_nothing_is_deleted(client, p, typed):
    make_device(p.fleet)
    client.force_login(p.administrator)
    response = delete(client, p.fleet, typed)
    assert response.status_code == 400
    assert f"Type {p.fleet.name} exactly to confirm." in response.content.decode()
    assert Fleet.objects.filter(pk=p.fleet.pk).exists() and Device.objects.filter(fleet=p.fleet).count() == 1
    assert not DeviceAction.objects.exists()


def test_an_org_administrator_deletes_the_fleet_and_lands_on_the_organization(client, p):
    make_device(p.fleet)
    client.force_login(p.org_admin)
    response = delete(client, p.fleet, p.fleet.name)
    assert response.status_code == 302 and response.url == f"/orgs/{p.org.handle}/"
    assert not Fleet.objects.filter(pk=p.fleet.pk).exists()
    page = client.get(response.url).content.decode()
    assert f"Deleted the fleet {p.fleet.name}: 1 device orphaned." in page  # the toast
    assert f"Deleted fleet {p.fleet.name}: 1 device orphaned" in page  # the org's activity
    assert "(deleted)" in page


def test_a_fleet_administrator_deletes_the_fleet_and_lands_on_the_fleet_list(client, p):
    client.force_login(p.administrator)
    response = delete(client, p.fleet, p.fleet.name)
    assert response.status_code == 302 and response.url == "/fleets/"


def test_everything_of_the_fleet_goes_but_the_audit_history_stays(client, p):
    device = make_device(p.fleet, name="kept-in-history")
    other = make_device(p.other_fleet)
    release = Release.objects.create(fleet=p.fleet, commit="c" * 40, version="1.0.0")
    Fleet.objects.filter(pk=p.fleet.pk).update(target_release=release)
    services.provisioning_key_create(fleet=p.fleet)
    SavedView.objects.create(fleet=p.fleet, owner=p.operator, name="mine", query="status=online")
    done = device_services.action_create(
        actor=p.operator, fleet=p.fleet, kind="public_url_on", scope=ActionScope.DEVICE, device=device
    )
    client.force_login(p.administrator)
    assert delete(client, p.fleet, p.fleet.name).status_code == 302

    assert not Device.objects.filter(pk=device.pk).exists() and Device.objects.filter(pk=other.pk).exists()
    for model in (FleetMembership, FleetUserObjectPermission, ProvisioningKey, Release, SavedView):
        assert not model.objects.filter(
            **{"content_object_id" if model is FleetUserObjectPermission else "fleet_id": p.fleet.pk}
        ).exists(), model
    done.refresh_from_db()
    assert (done.fleet_id, done.device_id, done.fleet_name) == (None, None, p.fleet.name)
    delivery = ActionDelivery.objects.get(action=done)
    assert (delivery.device_uuid, delivery.device_name) == (device.uuid, "kept-in-history")
    record = DeviceAction.objects.get(kind=ActionKind.FLEET_DELETE)
    assert (record.organization_id, record.fleet_id, record.fleet_name) == (p.org.pk, None, p.fleet.name)
    assert record.params == {"devices": 1, "releases": 1}
    assert DeviceAction.objects.filter(organization=p.org).count() == 2


def test_open_actions_of_the_fleet_are_cancelled(p):
    make_device(p.fleet)
    action = device_services.action_create(
        actor=p.operator, fleet=p.fleet, kind="reboot", scope=ActionScope.FLEET
    )
    services.fleet_delete(actor=p.org_admin, fleet=p.fleet)
    action.refresh_from_db()
    assert action.state == "cancelled" and action.fleet_id is None


def test_a_halted_rollout_in_the_fleet_does_not_stop_the_delete(p):
    make_device(p.fleet)
    halted = device_services.action_create(
        actor=p.operator, fleet=p.fleet, kind="restart", scope=ActionScope.FLEET
    )
    DeviceAction.objects.filter(pk=halted.pk).update(state="halted")  # finished: nothing to cancel
    services.fleet_delete(actor=p.org_admin, fleet=p.fleet)
    assert DeviceAction.objects.get(pk=halted.pk).state == "halted"


def test_orphaned_agents_are_refused_on_report_and_poll(client, p, django_capture_on_commit_callbacks):
    api_key = secrets.token_hex(16)
    device = make_device(p.fleet, api_key=api_key)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key}"}
    assert client.get("/api/v1/device/target", **auth).status_code == 200  # its identity is now cached
    with django_capture_on_commit_callbacks(execute=True):
        services.fleet_delete(actor=p.org_admin, fleet=p.fleet)

    poll = client.get("/api/v1/device/target", **auth)
    report = client.patch(
        "/api/v1/device/state", json.dumps({"status": "idle"}), content_type="application/json", **auth
    )
    assert poll.status_code == report.status_code == 401
    assert poll.json()["error"] == "invalid_api_key"
    assert not Device.objects.filter(uuid=device.uuid).exists()


def test_the_cost_does_not_grow_with_the_fleet(p, django_assert_max_num_queries):
    small = p.other_fleet
    for _ in range(2):
        make_device(small)
    with django_assert_max_num_queries(40) as few:
        services.fleet_delete(actor=p.outsider, fleet=small)
    for _ in range(80):
        make_device(p.fleet)
    with django_assert_max_num_queries(len(few.captured_queries)):
        deleted = services.fleet_delete(actor=p.org_admin, fleet=p.fleet)
    assert deleted.devices == 80 and not Device.objects.filter(fleet_id=p.fleet.pk).exists()
