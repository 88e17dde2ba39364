"""The device summary page and the confirmation step of its actions."""

import pytest

from devices.models import ActionDelivery, DeviceAction
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


@pytest.fixture
def device(p):
    return make_device(
        p.fleet,
        name="lobby-kiosk",
        services=[
            {
                "name": "web",
                "image": "web:1",
                "status": "running",
                "container_id": "c0ffee" * 10 + "abcd",
                "holds_update_lock": False,
            }
        ],
        volumes=[{"name": "resin-data", "files": 4, "bytes": 2048}],
    )


def test_it_shows_every_device_field_services_and_volumes(client, p, device):
    client.force_login(p.observer)
    response = client.get(f"/devices/{device.uuid}/")
    assert response.status_code == 200
    html = response.content.decode()
    for text in ["lobby-kiosk", device.uuid, "2.58.3", "1.4.0", "c0ffeec0ffee", "resin-data", "Online"]:
        assert text in html


def test_it_shows_the_target_state_and_the_agent_api(client, p):
    from datetime import timedelta

    from django.utils import timezone

    device = make_device(
        p.fleet, local_mode=True, lock_override=True, update_lock_held=True, target_os_version="2.95.12",
        api_address="http://10.0.0.9:48484", ip_address="10.0.0.9", public_url_enabled=True,
        support_access_until=timezone.now() + timedelta(days=1), release_commit="abcdef1234567",
    )  # fmt: skip
    client.force_login(p.observer)
    html = client.get(f"/devices/{device.uuid}/").content.decode()
    for text in ["Local mode", "the cloud release is ignored", "Held by a service", "override on", "2.95.12",
                 "http://10.0.0.9:48484", "10.0.0.9", device.public_url, "abcdef1", "Support access"]:  # fmt: skip
        assert text in html, text
    retired = make_device(p.fleet, is_active=False, deactivated_at=timezone.now(), online=False)
    assert "Deactivated" in client.get(f"/devices/{retired.uuid}/").content.decode()


def test_an_observer_sees_no_action_controls(client, p, device):
    client.force_login(p.observer)
    html = client.get(f"/devices/{device.uuid}/").content.decode()
    assert "/actions/reboot/" not in html and "Dangerous actions" not in html


def test_an_operator_sees_the_actions_menu_and_dangerous_actions(client, p, device):
    client.force_login(p.operator)
    html = client.get(f"/devices/{device.uuid}/").content.decode()
    assert f"/devices/{device.uuid}/actions/reboot/" in html
    assert "Dangerous actions" in html and "/actions/purge/" in html


def test_an_outsider_gets_404(client, p, device):
    client.force_login(p.outsider)
    assert client.get(f"/devices/{device.uuid}/").status_code == 404
    assert client.get(f"/devices/{device.uuid}/actions/reboot/").status_code == 404
    assert client.post(f"/devices/{device.uuid}/actions/reboot/").status_code == 404
    assert not DeviceAction.objects.exists()


def test_anonymous_users_are_sent_to_login(client, device):
    response = client.get(f"/devices/{device.uuid}/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_live_partial_refreshes_without_the_layout(client, p, device):
    client.force_login(p.observer)
    response = client.get(f"/devices/{device.uuid}/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="device-live")
    html = response.content.decode()
    assert 'id="device-live"' in html and "<html" not in html


def test_the_page_costs_a_constant_number_of_queries(client, p, device, django_assert_max_num_queries):
    client.force_login(p.operator)
    with django_assert_max_num_queries(8):
        client.get(f"/devices/{device.uuid}/")


class TestRebootConfirmation:
    def test_it_previews_the_reboot(self, client, p, device):
        client.force_login(p.operator)
        response = client.get(f"/devices/{device.uuid}/actions/reboot/")
        assert response.status_code == 200
        assert "Reboot: lobby-kiosk?" in response.content.decode()

    def test_the_htmx_dialog_opens_itself(self, client, p, device):
        client.force_login(p.operator)
        html = client.get(f"/devices/{device.uuid}/actions/reboot/", HTTP_HX_REQUEST="true").content.decode()
        assert "data-dialog-autoopen" in html and "<html" not in html and 'name="csrfmiddlewaretoken"' in html

    def test_observers_and_developers_get_403_and_nothing_is_recorded(self, client, p, device):
        for user in (p.observer, p.developer):
            client.force_login(user)
            assert client.get(f"/devices/{device.uuid}/actions/reboot/").status_code == 403
            assert client.post(f"/devices/{device.uuid}/actions/reboot/").status_code == 403
        assert not DeviceAction.objects.exists()

    def test_an_operator_records_a_reboot(self, client, p, device, django_capture_on_commit_callbacks):
        client.force_login(p.operator)
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = client.post(f"/devices/{device.uuid}/actions/reboot/")
        assert response.status_code == 302 and response["Location"] == f"/devices/{device.uuid}/"
        action = DeviceAction.objects.get()
        assert (action.kind, action.scope, action.device, action.actor) == (
            "reboot",
            "device",
            device,
            p.operator,
        )
        assert len(callbacks) == 1  # dispatch is enqueued only after the commit
        assert not ActionDelivery.objects.exists()  # expansion happens in the worker

    def test_purge_needs_the_device_name_typed(self, client, p, device):
        client.force_login(p.operator)
        response = client.post(f"/devices/{device.uuid}/actions/purge/", {"confirm": "lobby"})
        assert response.status_code == 400
        assert "Type lobby-kiosk exactly" in response.content.decode()
        assert not DeviceAction.objects.exists()

    def test_an_unknown_action_is_404(self, client, p, device):
        client.force_login(p.operator)
        assert client.post(f"/devices/{device.uuid}/actions/explode/").status_code == 404


class TestPublicUrlToggle:
    def test_an_operator_turns_the_public_url_on_from_the_device_page(self, client, p, device):
        client.force_login(p.operator)
        response = client.post(f"/devices/{device.uuid}/actions/public_url_on/")
        assert response.status_code == 302
        device.refresh_from_db()
        assert device.public_url_enabled
        action = DeviceAction.objects.get()
        assert action.state == "done" and action.succeeded_count == 1
        assert "Turn off" in client.get(f"/devices/{device.uuid}/").content.decode()

    def test_an_observer_cannot(self, client, p, device):
        client.force_login(p.observer)
        assert client.post(f"/devices/{device.uuid}/actions/public_url_on/").status_code == 403
        device.refresh_from_db()
        assert not device.public_url_enabled


class TestDeviceList:
    def test_it_lists_devices_of_every_visible_fleet_and_no_other(self, client, p, device):
        hidden = make_device(p.other_fleet, name="not-yours")
        client.force_login(p.observer)
        html = client.get("/devices/").content.decode()
        assert device.name in html and hidden.name not in html

    def test_it_finds_a_device_by_uuid_prefix(self, client, p, device):
        make_device(p.fleet, name="another")
        client.force_login(p.observer)
        html = client.get("/devices/", {"q": device.uuid[:8]}).content.decode()
        assert device.name in html and "another" not in html

    def test_support_staff_see_only_devices_under_a_live_grant(self, client, p, device):
        from datetime import timedelta

        from django.utils import timezone

        granted = make_device(
            p.fleet, name="granted", support_access_until=timezone.now() + timedelta(hours=1)
        )
        client.force_login(p.support)
        html = client.get("/devices/").content.decode()
        assert granted.name in html and device.name not in html

    def test_it_costs_the_same_queries_at_two_sizes(self, client, p, device, django_assert_max_num_queries):
        client.force_login(p.operator)
        with django_assert_max_num_queries(8) as small:
            client.get("/devices/", {"last": "1"})
        for _ in range(60):
            make_device(p.fleet)
            make_device(p.other_fleet)
        with django_assert_max_num_queries(len(small.captured_queries)) as large:
            page = client.get("/devices/", {"last": "1"}).context["page"]
        assert len(large.captured_queries) == len(small.captured_queries)
        assert len(page.rows) == 50 and all(d.fleet_id == p.fleet.pk for d in page.rows)

    def test_the_access_check_is_per_fleet_not_per_device(
        self, client, p, device, django_assert_max_num_queries
    ):
        """The rank subqueries run over fleets; the device query only asks "is its fleet one of those"."""
        client.force_login(p.observer)
        with django_assert_max_num_queries(8) as captured:
            client.get("/devices/")
        sql = next(q["sql"] for q in captured.captured_queries if 'FROM "devices_device"' in q["sql"])
        assert '"devices_device"."fleet_id" IN (SELECT' in sql
