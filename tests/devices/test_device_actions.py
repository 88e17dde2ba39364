"""Device-specific actions at the request level: each allowed path, every refusal (with nothing
changed), and the role checks. The agent side is in test_device_actions_end_to_end.py."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices import services
from devices.models import ActionDelivery, Device, DeviceAction
from fleets.models import BillingCharge
from tests.factories import Personas, make_device, make_fleet, make_member

pytestmark = pytest.mark.django_db

KINDS = ["lock_override", "move", "os_update", "local_mode_on", "local_mode_off", "deactivate", "delete",
         "support_grant", "support_revoke", "device_type"]


@pytest.fixture
def p():
    return Personas(device_type="raspberrypi3")


@pytest.fixture
def device(p):
    return make_device(p.fleet, name="pump-3", os_version="2.58.3")


def post(client, device, kind, data=None):
    return client.post(f"/devices/{device.uuid}/actions/{kind}/", data or {})


def snapshot(device):
    return Device.objects.filter(pk=device.pk).values().get()


def poll(client, api_key):
    """The device's agent fetches its target state."""
    return client.get("/api/v1/device/target", HTTP_AUTHORIZATION=f"Bearer {api_key}")


def backdate(action, **delta):
    DeviceAction.objects.filter(pk=action.pk).update(created_at=action.created_at - timedelta(**delta))


@pytest.mark.parametrize("kind", KINDS)
def test_observers_and_developers_are_refused_every_device_action(client, p, device, kind):
    before = snapshot(device)
    for user in (p.observer, p.developer):
        client.force_login(user)
        assert client.get(f"/devices/{device.uuid}/actions/{kind}/").status_code == 403
        assert post(client, device, kind, {"confirm": device.name}).status_code == 403
    client.force_login(p.outsider)
    assert post(client, device, kind).status_code == 404
    assert snapshot(device) == before and not DeviceAction.objects.exists()


class TestMove:
    def test_only_fleets_of_the_same_architecture_are_offered_and_the_others_say_why(self, client, p, device):
        bbb = make_fleet(p.org, name="beaglebones", device_type="beaglebone-black")
        nuc = make_fleet(p.org, name="nucs", device_type="intel-nuc")
        client.force_login(p.org_admin)
        response = client.get(f"/devices/{device.uuid}/actions/move/")
        form = response.context["form"]
        assert [f.pk for f in form.compatible] == [bbb.pk]
        assert [f.pk for f, _ in form.incompatible] == [nuc.pk]
        assert "amd64" in response.content.decode()

    def test_the_device_shows_in_the_target_fleet_at_once(self, client, p, device):
        bbb = make_fleet(p.org, name="beaglebones", device_type="beaglebone-black")
        client.force_login(p.org_admin)
        assert post(client, device, "move", {"target_fleet": bbb.pk}).status_code == 302
        device.refresh_from_db()
        assert device.fleet == bbb
        assert device.name in client.get(f"/fleets/{bbb.pk}/").content.decode()
        action = DeviceAction.objects.get()
        assert action.params["fleet_name"] == "beaglebones"
        # In the database at once, but not "Succeeded" until the device has fetched it.
        assert (action.sent_count, action.succeeded_count) == (1, 0)
        assert ActionDelivery.objects.get().reason == "In the target state; applies at the device's next poll"

    def test_a_forged_post_to_an_incompatible_fleet_is_refused(self, client, p, device):
        nuc = make_fleet(p.org, name="nucs", device_type="intel-nuc")
        client.force_login(p.org_admin)
        response = post(client, device, "move", {"target_fleet": nuc.pk})
        assert response.status_code == 400
        assert "same CPU architecture" in response.content.decode()
        device.refresh_from_db()
        assert device.fleet == p.fleet and not DeviceAction.objects.exists()

    def test_the_user_must_operate_the_target_fleet_too(self, client, p, device):
        other = make_fleet(p.org, name="not-mine", device_type="raspberrypi3")
        client.force_login(p.operator)  # operator of p.fleet only
        response = post(client, device, "move", {"target_fleet": other.pk})
        assert response.status_code == 400
        device.refresh_from_db()
        assert device.fleet == p.fleet

    def test_a_starter_fleet_that_would_overflow_is_refused(self, client, p, device):
        starter = make_fleet(p.org, name="tiny", fleet_type="starter", device_type="raspberrypi3")
        for _ in range(10):
            make_device(starter)
        client.force_login(p.org_admin)
        response = post(client, device, "move", {"target_fleet": starter.pk})
        assert response.status_code == 400 and "limited to 10 devices" in response.content.decode()

    def test_a_selection_of_mixed_architectures_is_refused(self, client, p):
        a = make_device(p.fleet)
        b = make_device(p.fleet, device_type="intel-nuc")  # wrongly provisioned: amd64 in an armv7 fleet
        target = make_fleet(p.org, device_type="beaglebone-black")
        client.force_login(p.org_admin)
        response = client.post(f"/fleets/{p.fleet.pk}/actions/move/", {"ids": [a.pk, b.pk], "target_fleet": target.pk})
        assert response.status_code == 400
        assert "different CPU architectures" in response.content.decode()
        assert Device.objects.filter(fleet=target).count() == 0


class TestOSUpdate:
    def test_only_newer_versions_are_offered(self, client, p, device):
        client.force_login(p.operator)
        form = client.get(f"/devices/{device.uuid}/actions/os_update/").context["form"]
        offered = [v for v, _ in form.fields["version"].choices]
        assert offered and "2.58.3" not in offered and "2.9.7" not in offered and "6.0.13" in offered

    @pytest.mark.parametrize("version", ["2.9.7", "2.58.3"])
    def test_a_downgrade_or_reinstall_is_refused_with_its_reason(self, client, p, device, version):
        client.force_login(p.operator)
        response = post(client, device, "os_update", {"version": version})
        assert response.status_code == 400
        assert (
            f"The host OS cannot be downgraded or reinstalled: pump-3 runs 2.58.3, and {version} is not newer."
            in response.content.decode()
        )
        device.refresh_from_db()
        assert device.target_os_version == "" and not DeviceAction.objects.exists()

    def test_a_version_outside_the_catalog_is_refused(self, client, p, device):
        client.force_login(p.operator)
        response = post(client, device, "os_update", {"version": "99.0.0"})
        assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
        assert not DeviceAction.objects.exists()

    def test_the_update_waits_for_the_device_to_report_the_new_version(self, client, p, device):
        client.force_login(p.operator)
        assert post(client, device, "os_update", {"version": "5.1.20"}).status_code == 302
        device.refresh_from_db()
        assert device.target_os_version == "5.1.20"
        delivery = ActionDelivery.objects.get()
        assert delivery.state == "sent"

        services.device_report_state(device=device, fields={"os_version": "5.1.20", "os_version_key": 5001020})
        delivery.refresh_from_db()
        device.refresh_from_db()
        assert delivery.state == "succeeded" and delivery.reason == "Now running 5.1.20"
        assert device.target_os_version == "" and DeviceAction.objects.get().state == "done"

    def test_an_update_the_lock_holds_back_says_so_and_goes_on_once_let_through(self, client, p, device):
        client.force_login(p.operator)
        post(client, device, "os_update", {"version": "5.1.20"})
        services.device_report_state(device=device, fields={
            "update_lock_held": True, "update_blocked": "host OS 5.1.20: service main holds the update lock"})
        delivery = ActionDelivery.objects.get()
        assert delivery.state == "sent"  # still open: the override or the lock's release lets it through
        assert delivery.reason == "Blocked by update lock: host OS 5.1.20: service main holds the update lock"
        assert "Blocked by update lock" in client.get(f"/devices/{device.uuid}/").content.decode()

        services.device_report_state(device=device, fields={"update_blocked": ""})
        delivery.refresh_from_db()
        assert delivery.state == "sent" and "no longer holds it back" in delivery.reason
        services.device_report_state(device=device, fields={"os_version": "5.1.20", "os_version_key": 5001020})
        delivery.refresh_from_db()
        assert (delivery.state, delivery.reason) == ("succeeded", "Now running 5.1.20")

    def test_an_update_not_done_within_the_time_limit_fails_and_is_withdrawn(self, client, p, device, settings):
        settings.OS_UPDATE_TIMEOUT_S = 3600
        blocked = make_device(p.fleet, os_version="2.58.3")
        client.force_login(p.operator)
        ids = [device.pk, blocked.pk]
        client.post(f"/fleets/{p.fleet.pk}/actions/os_update/", {"ids": ids, "version": "5.1.20"})
        action = DeviceAction.objects.get()
        services.action_expand(action.pk)
        services.device_report_state(device=blocked, fields={"update_blocked": "host OS 5.1.20: main holds it"})
        services.actions_sweep()
        assert ActionDelivery.objects.filter(state="sent").count() == 2  # not yet

        backdate(action, hours=1, seconds=1)
        assert services.actions_sweep()["os_updates_timed_out"] == 2
        reasons = dict(ActionDelivery.objects.filter(state="failed").values_list("device_id", "reason"))
        assert reasons == {
            device.pk: "The device did not report 5.1.20 within 1 h; withdrawn",
            blocked.pk: "Not updated within 1 h: still blocked by the update lock; withdrawn",
        }
        targets = Device.objects.filter(pk__in=[device.pk, blocked.pk]).values_list("target_os_version", flat=True)
        assert set(targets) == {""}
        assert DeviceAction.objects.get().state == "done"

    def test_a_selection_skips_devices_already_newer(self, client, p, device):
        newer = make_device(p.fleet, os_version="6.0.13")
        client.force_login(p.operator)
        response = client.get(f"/fleets/{p.fleet.pk}/actions/os_update/", {"ids": [device.pk, newer.pk],
                                                                           "version": "5.1.20"})
        assert dict(response.context["preview"].skipped) == {"already on 5.1.20 or newer": 1}


class TestLocalModeAndLockOverride:
    def test_local_mode_on_and_off(self, client, p, device):
        client.force_login(p.operator)
        post(client, device, "local_mode_on")
        device.refresh_from_db()
        assert device.local_mode
        assert "local mode" in client.get(f"/devices/{device.uuid}/").content.decode()
        post(client, device, "local_mode_off")
        device.refresh_from_db()
        assert not device.local_mode

    def test_the_lock_override_is_set_and_cleared(self, client, p, device):
        client.force_login(p.operator)
        post(client, device, "lock_override", {"enabled": "1"})
        device.refresh_from_db()
        assert device.lock_override
        post(client, device, "lock_override", {"enabled": "0"})
        device.refresh_from_db()
        assert not device.lock_override

    def test_the_lock_override_needs_agent_1_1(self, client, p):
        old = make_device(p.fleet, agent_version="1.0.3")
        client.force_login(p.operator)
        response = post(client, old, "lock_override", {"enabled": "1"})
        assert response.status_code == 400
        assert "Agent 1.0.3 has no action API: needs 1.1.0 or newer" in response.content.decode()
        old.refresh_from_db()
        assert not old.lock_override and not DeviceAction.objects.exists()

    @pytest.mark.parametrize(("kind", "data", "done"), [
        ("local_mode_on", {}, "Local mode on"),
        ("lock_override", {"enabled": "1"}, "Lock override on"),
        ("move", None, "Moved to beaglebones"),
    ])  # fmt: skip
    def test_a_setting_for_an_offline_device_is_sent_until_its_next_poll(self, client, p, kind, data, done):
        offline = make_device(p.fleet, online=False, api_key="offline-key")
        if data is None:
            data = {"target_fleet": make_fleet(p.org, name="beaglebones", device_type="beaglebone-black").pk}
        client.force_login(p.org_admin)
        assert post(client, offline, kind, data).status_code == 302
        delivery = ActionDelivery.objects.get()
        assert (delivery.state, delivery.reason) == ("sent", "In the target state; applies at the device's next poll")
        assert DeviceAction.objects.get().state == "dispatching"

        assert poll(client, "offline-key").status_code == 200  # it comes back and fetches its target
        delivery.refresh_from_db()
        assert (delivery.state, delivery.reason) == ("succeeded", f"{done}: the device has fetched it")
        assert DeviceAction.objects.get().state == "done"
        assert not Device.objects.get(pk=offline.pk).awaiting_poll

    def test_an_online_device_is_nudged_and_a_later_poll_changes_nothing_more(self, client, p,
                                                                           django_assert_num_queries):
        online = make_device(p.fleet, api_key="online-key", api_address="http://127.0.0.1:48484/d/x")
        client.force_login(p.operator)
        post(client, online, "local_mode_on")
        assert ActionDelivery.objects.get().reason == "In the target state; the device was nudged to poll it now"
        poll(client, "online-key")
        with django_assert_num_queries(1):  # the device row the poll reads anyway: nothing waits for it now
            assert poll(client, "online-key").status_code == 200
        assert ActionDelivery.objects.get().state == "succeeded"

    def test_a_setting_no_poll_confirms_expires_but_stays_in_the_target_state(self, client, p, settings):
        settings.SETTING_POLL_TIMEOUT_S = 7 * 24 * 3600
        offline = make_device(p.fleet, online=False)
        client.force_login(p.operator)
        post(client, offline, "local_mode_on")
        backdate(DeviceAction.objects.get(), days=7, seconds=1)
        assert services.actions_sweep()["settings_expired"] == 1
        delivery = ActionDelivery.objects.get()
        assert delivery.state == "expired"
        assert delivery.reason == "Not polled within 7 days; still in the target state, applied when polled"
        assert Device.objects.get(pk=offline.pk).local_mode


class TestDeactivate:
    @pytest.fixture
    def offline(self, p):
        return make_device(p.fleet, name="dead-pump", online=False)

    def test_an_offline_device_is_deactivated_and_charged_once(self, client, p, offline):
        client.force_login(p.operator)
        assert post(client, offline, "deactivate").status_code == 302
        offline.refresh_from_db()
        assert not offline.is_active and offline.deactivated_at
        charge = BillingCharge.objects.get()
        assert (charge.organization, charge.device_uuid, charge.amount_cents) == (p.org, offline.uuid, 500)

    def test_a_second_deactivation_racing_the_first_charges_nothing(self, client, p, offline):
        # Two clicks that both passed the check before either was applied: the second action's
        # expansion locks the device row and finds it deactivated.
        client.force_login(p.operator)
        first = services.action_create(actor=p.operator, fleet=p.fleet, kind="deactivate", scope="device",
                                       device=offline)
        second = DeviceAction.objects.create(
            organization=p.org, fleet=p.fleet, fleet_name=p.fleet.name, device=offline, actor=p.operator,
            actor_name=p.operator.username, kind="deactivate", scope="device", created_at=first.created_at)
        services.action_expand(second.pk)
        assert BillingCharge.objects.count() == 1
        assert ActionDelivery.objects.get(action=second).reason == "Device is deactivated"

    def test_the_fee_shows_to_org_administrators_only(self, client, p, offline):
        client.force_login(p.operator)
        post(client, offline, "deactivate")
        client.force_login(p.org_admin)
        html = client.get(f"/orgs/{p.org.handle}/").content.decode()
        assert "Deactivation of dead-pump" in html and "5.00" in html
        for user in (p.operator, p.administrator):  # members, not its administrators
            client.force_login(user)
            response = client.get(f"/orgs/{p.org.handle}/")
            assert response.status_code == 403 and "Deactivation of" not in response.content.decode()
        client.force_login(p.outsider)
        assert client.get(f"/orgs/{p.org.handle}/").status_code == 404

    def test_an_online_device_is_refused(self, client, p, device):
        client.force_login(p.operator)
        response = post(client, device, "deactivate")
        assert response.status_code == 400 and "only an offline device" in response.content.decode()
        device.refresh_from_db()
        assert device.is_active and not BillingCharge.objects.exists()

    def test_a_starter_fleet_is_refused(self, client):
        starter = make_fleet(fleet_type="starter")
        operator = make_member(starter, "operator")
        device = make_device(starter, online=False)
        client.force_login(operator)
        response = post(client, device, "deactivate")
        assert response.status_code == 400 and "Starter fleet" in response.content.decode()
        assert not BillingCharge.objects.exists()

    def test_an_invalid_billing_account_is_refused(self, client, p, offline):
        p.org.billing_account_valid = False
        p.org.save()
        client.force_login(p.operator)
        response = post(client, offline, "deactivate")
        assert response.status_code == 400 and "no valid billing account" in response.content.decode()
        offline.refresh_from_db()
        assert offline.is_active

    def test_a_deactivated_device_gets_no_actions(self, client, p, offline):
        client.force_login(p.operator)
        post(client, offline, "deactivate")
        assert post(client, offline, "reboot").status_code == 400
        html = client.get(f"/devices/{offline.uuid}/").content.decode()
        assert "Deactivated" in html and "The device is deactivated" in html


class TestDelete:
    def test_it_needs_the_name_typed(self, client, p, device):
        client.force_login(p.operator)
        response = post(client, device, "delete", {"confirm": "pump-4"})
        assert response.status_code == 400 and "Type pump-3 exactly to confirm." in response.content.decode()
        assert Device.objects.filter(pk=device.pk).exists() and not DeviceAction.objects.exists()

    def test_the_device_disappears_and_its_agent_is_refused(self, client, p):
        from fleets.services import provisioning_key_create

        key = provisioning_key_create(fleet=p.fleet)
        import secrets

        uuid = secrets.token_hex(16)
        api_key = client.post("/api/v1/devices/register", {"uuid": uuid, "device_type": "raspberrypi3",
                                                           "os_version": "2.58.3", "agent_version": "1.4.0"},
                              content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}").json()["api_key"]
        device = Device.objects.get(uuid=uuid)
        client.force_login(p.operator)
        response = post(client, device, "delete", {"confirm": device.name})
        assert response.status_code == 302 and response["Location"] == f"/fleets/{p.fleet.pk}/"
        assert not Device.objects.filter(uuid=uuid).exists()
        delivery = ActionDelivery.objects.get()
        assert (delivery.device_uuid, delivery.state) == (uuid, "succeeded")  # the audit keeps it
        auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key}"}
        assert client.patch("/api/v1/device/state", "{}", content_type="application/json", **auth).status_code == 401
        assert client.get("/api/v1/device/target", **auth).status_code == 401

    def test_a_selection_is_deleted_in_bulk(self, client, p):
        doomed = [make_device(p.fleet) for _ in range(3)]
        kept = make_device(p.fleet)
        client.force_login(p.operator)
        response = client.post(f"/fleets/{p.fleet.pk}/actions/delete/",
                               {"ids": [d.pk for d in doomed], "confirm": "3"})
        assert response.status_code == 302
        from devices.services import action_expand

        action_expand(DeviceAction.objects.get().pk)  # the worker's part, here in-process
        assert list(Device.objects.filter(fleet=p.fleet)) == [kept]


class TestSupportAccess:
    def test_support_sees_the_device_only_while_the_grant_lasts(self, client, p, device):
        client.force_login(p.support)
        assert client.get(f"/devices/{device.uuid}/").status_code == 404  # before

        client.force_login(p.operator)
        assert post(client, device, "support_grant", {"period": "6"}).status_code == 302
        device.refresh_from_db()
        assert timedelta(hours=5, minutes=59) < device.support_access_until - timezone.now() <= timedelta(hours=6)

        client.force_login(p.support)
        assert client.get(f"/devices/{device.uuid}/").status_code == 200  # during
        assert client.get(f"/devices/{device.uuid}/actions/reboot/").status_code == 200

        Device.objects.filter(pk=device.pk).update(support_access_until=timezone.now() - timedelta(seconds=1))
        assert client.get(f"/devices/{device.uuid}/").status_code == 404  # after: enforced per request

    def test_support_acts_on_the_device_during_the_grant_and_not_after(self, client, p, device):
        grant = timezone.now() + timedelta(hours=1)
        Device.objects.filter(pk=device.pk).update(support_access_until=grant)
        client.force_login(p.support)
        assert post(client, device, "local_mode_on").status_code == 302  # during: allowed, applied
        device.refresh_from_db()
        assert device.local_mode
        action = DeviceAction.objects.get()
        assert (action.actor, action.kind) == (p.support, "local_mode_on")

        Device.objects.filter(pk=device.pk).update(support_access_until=timezone.now() - timedelta(seconds=1))
        before = snapshot(device)
        assert post(client, device, "local_mode_off").status_code == 404  # after: checked at the request
        assert post(client, device, "reboot").status_code == 404
        assert snapshot(device) == before and DeviceAction.objects.count() == 1

    def test_support_cannot_extend_its_own_grant(self, client, p, device):
        Device.objects.filter(pk=device.pk).update(support_access_until=timezone.now() + timedelta(hours=1))
        client.force_login(p.support)
        assert post(client, device, "support_grant", {"period": "168"}).status_code == 403
        assert not DeviceAction.objects.exists()

    def test_a_custom_period_and_revoking(self, client, p, device):
        client.force_login(p.operator)
        assert post(client, device, "support_grant", {"period": "custom", "custom_hours": "30"}).status_code == 302
        device.refresh_from_db()
        assert device.support_access_until - timezone.now() > timedelta(hours=29)
        assert post(client, device, "support_revoke").status_code == 302
        device.refresh_from_db()
        assert device.support_access_until is None
        client.force_login(p.support)
        assert client.get(f"/devices/{device.uuid}/").status_code == 404

    def test_a_custom_period_needs_hours(self, client, p, device):
        client.force_login(p.operator)
        assert post(client, device, "support_grant", {"period": "custom"}).status_code == 400
        device.refresh_from_db()
        assert device.support_access_until is None


class TestDeviceType:
    def test_only_types_of_the_same_architecture_are_offered(self, client, p, device):
        client.force_login(p.operator)
        form = client.get(f"/devices/{device.uuid}/actions/device_type/").context["form"]
        assert {t.arch for t in form.fields["device_type"].queryset} == {"armv7hf"}

    def test_it_changes_the_type_and_warns_the_os_is_unchanged(self, client, p, device):
        client.force_login(p.operator)
        html = client.get(f"/devices/{device.uuid}/actions/device_type/").content.decode()
        assert "changes no software on the device" in html
        from devices.models import DeviceType

        bbb = DeviceType.objects.get(slug="beaglebone-black")
        assert post(client, device, "device_type", {"device_type": bbb.pk}).status_code == 302
        device.refresh_from_db()
        assert device.device_type == bbb and device.os_version == "2.58.3"

    def test_a_forged_type_of_another_architecture_is_refused(self, client, p, device):
        from devices.models import DeviceType

        nuc = DeviceType.objects.get(slug="intel-nuc")
        client.force_login(p.operator)
        response = post(client, device, "device_type", {"device_type": nuc.pk})
        assert response.status_code == 400
        # Not offered, so Django's own refusal: the form never takes a type of another architecture.
        assert "Select a valid choice" in response.content.decode()
        device.refresh_from_db()
        assert device.device_type.slug == "raspberrypi3" and not DeviceAction.objects.exists()
