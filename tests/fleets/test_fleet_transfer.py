"""Transfer fleet ownership, as in the seed: the target organization has an empty fleet with the same
name in which the transferring org administrator is a Developer (or they administer the target
organization). Until then the button is disabled and says exactly what is missing."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import services as device_services
from devices.models import (
    ActionDelivery,
    ActionKind,
    ActionScope,
    ActionState,
    DeliveryState,
    Device,
    DeviceAction,
    OfflinePolicy,
)
from fleets import services
from fleets.models import (
    Fleet,
    FleetMembership,
    FleetRole,
    FleetUserObjectPermission,
    OrgMembership,
    OrgRole,
    Release,
)
from fleets.selectors import fleet_activity_log, fleet_for_user
from tests.factories import Personas, make_device, make_fleet, make_org, make_org_admin, make_user

pytestmark = pytest.mark.django_db


class World:
    """Acme's "gateways" (the Personas fleet) with devices and a release; Globex with its own admin."""

    def __init__(self):
        self.p = Personas(fleet_type="essentials", device_type="intel-nuc")
        Fleet.objects.filter(pk=self.p.fleet.pk).update(name="gateways")
        self.fleet = Fleet.objects.get(pk=self.p.fleet.pk)
        self.devices = [make_device(self.fleet, name=f"gw-{i}") for i in range(3)]
        self.release = Release.objects.create(fleet=self.fleet, commit="f" * 40, version="5.0.0")
        Fleet.objects.filter(pk=self.fleet.pk).update(target_release=self.release)
        self.globex = make_org("Globex")
        self.globex_admin = make_org_admin(self.globex)
        self.actor = self.p.org_admin

    def placeholder(self, name="gateways", **kwargs) -> Fleet:
        return make_fleet(self.globex, name=name, fleet_type="starter", device_type="intel-nuc", **kwargs)

    def add_actor_to(self, fleet, role=FleetRole.DEVELOPER):
        # What Globex's administrator does on the Members tab of their empty fleet.
        services.fleet_member_add(
            actor=self.globex_admin, fleet=fleet, username=self.actor.username, role=role
        )


@pytest.fixture
def w():
    return World()


def actions_tab(client, w) -> str:
    client.force_login(w.actor)
    return client.get(f"/fleets/{w.fleet.pk}/actions/").content.decode()


def transfer(client, w, org_handle=None, confirm=None):
    client.force_login(w.actor)
    data = {
        "organization": org_handle or w.globex.handle,
        "confirm": w.fleet.name if confirm is None else confirm,
    }
    return client.post(f"/fleets/{w.fleet.pk}/transfer/", data)


def assert_nothing_changed(w):
    fleet = Fleet.objects.get(pk=w.fleet.pk)
    assert fleet.organization_id == w.p.org.pk
    assert Device.objects.filter(fleet=fleet).count() == 3
    assert FleetMembership.objects.filter(fleet=fleet).count() == 4
    assert not DeviceAction.objects.filter(kind=ActionKind.FLEET_TRANSFER).exists()


class TestPreconditions:
    def test_without_another_organization_the_button_says_whom_to_ask(self, client, w):
        html = actions_tab(client, w)
        assert 'aria-disabled="true" title="You are not a member of any other organization.' in html
        assert (
            f"create an empty fleet named “gateways” and to add you ({w.actor.username}) to it as a Developer."
            in html
        )
        assert f'href="/fleets/{w.fleet.pk}/transfer/"' not in html
        assert transfer(client, w).status_code == 400
        assert_nothing_changed(w)

    def test_a_target_without_a_fleet_of_that_name(self, client, w):
        services.org_member_set(organization=w.globex, user=w.actor, role=OrgRole.MEMBER)
        html = actions_tab(client, w)
        assert (
            "Globex: Globex has no fleet named “gateways”: ask an administrator of Globex to create an empty one"
            in html
        )
        response = transfer(client, w)
        assert (
            response.status_code == 400
            and "Globex has no fleet named “gateways”" in response.content.decode()
        )
        assert_nothing_changed(w)

    def test_a_target_fleet_with_devices_or_releases_is_not_empty(self, client, w):
        placeholder = w.placeholder()
        w.add_actor_to(placeholder)
        make_device(placeholder)
        Release.objects.create(fleet=placeholder, commit="e" * 40, version="0.1.0")
        html = actions_tab(client, w)
        assert "Globex’s fleet “gateways” is not empty (it has devices and releases)" in html
        assert transfer(client, w).status_code == 400
        assert_nothing_changed(w)

    def test_the_actor_must_be_a_member_of_the_target_fleet(self, client, w):
        w.placeholder()
        services.org_member_set(organization=w.globex, user=w.actor, role=OrgRole.MEMBER)
        html = actions_tab(client, w)
        assert (
            f"You ({w.actor.username}) are not a member of Globex’s fleet “gateways”: ask an administrator of "
            "Globex to add you to it as a Developer."
        ) in html
        assert transfer(client, w).status_code == 400
        assert_nothing_changed(w)

    def test_an_observer_of_the_target_fleet_is_not_enough(self, client, w):
        w.add_actor_to(w.placeholder(), FleetRole.OBSERVER)
        html = actions_tab(client, w)
        assert "You are an Observer of Globex’s fleet “gateways”: you need the Developer role there" in html
        assert transfer(client, w).status_code == 400
        assert_nothing_changed(w)

    def test_the_target_must_be_allowed_the_fleet_type(self, client, w):
        w.add_actor_to(w.placeholder())
        w.globex.billing_account_valid = False
        w.globex.save()
        html = actions_tab(client, w)
        assert "Globex has no valid billing account, which Essentials fleets need." in html
        assert transfer(client, w).status_code == 400
        assert_nothing_changed(w)

    def test_a_developer_of_the_empty_fleet_may_transfer(self, client, w):
        w.add_actor_to(w.placeholder())
        html = actions_tab(client, w)
        assert f'hx-get="/fleets/{w.fleet.pk}/transfer/"' in html
        dialog = client.get(f"/fleets/{w.fleet.pk}/transfer/", HTTP_HX_REQUEST="true").content.decode()
        assert "Ready: has an empty fleet named “gateways”; you are its Developer." in dialog
        assert 'data-confirm-text="gateways"' in dialog

    def test_an_administrator_of_the_target_organization_needs_no_fleet_membership(self, client, w):
        w.placeholder(name="GATEWAYS")  # names match whatever the case, as their uniqueness does
        services.org_member_set(organization=w.globex, user=w.actor, role=OrgRole.ADMINISTRATOR)
        assert f'hx-get="/fleets/{w.fleet.pk}/transfer/"' in actions_tab(client, w)
        assert transfer(client, w).status_code == 302

    def test_fleet_administrators_who_are_not_org_administrators_may_not(self, client, w):
        w.actor = w.p.administrator
        w.add_actor_to(w.placeholder())
        html = actions_tab(client, w)
        assert f"Only administrators of {w.p.org.name} can transfer its fleets." in html
        assert transfer(client, w).status_code == 403
        assert_nothing_changed(w)

    def test_the_fleet_name_must_be_typed(self, client, w):
        w.add_actor_to(w.placeholder())
        response = transfer(client, w, confirm="gateway")
        assert (
            response.status_code == 400 and "Type gateways exactly to confirm." in response.content.decode()
        )
        assert_nothing_changed(w)

    def test_an_organization_the_actor_does_not_belong_to_is_refused(self, client, w):
        w.add_actor_to(w.placeholder())
        initech = make_org("Initech")
        make_fleet(initech, name="gateways")
        response = transfer(client, w, org_handle=initech.handle)
        assert (
            response.status_code == 400
            and "Choose one of the organizations listed." in response.content.decode()
        )
        assert_nothing_changed(w)

    def test_the_service_checks_again_what_the_page_checked(self, w):
        placeholder = w.placeholder()
        w.add_actor_to(placeholder)
        make_device(placeholder)  # it filled up after the page was shown
        with pytest.raises(services.ActionError, match="is not empty"):
            services.fleet_transfer(actor=w.actor, fleet=w.fleet, organization=w.globex)
        assert_nothing_changed(w)


class TestAfterTheTransfer:
    @pytest.fixture
    def done(self, client, w):
        self.placeholder = w.placeholder()
        w.add_actor_to(self.placeholder)
        # Globex's administrator had also put one of their people on the empty fleet.
        self.globex_dev = make_user("globex-dev")
        services.fleet_member_add(
            actor=w.globex_admin, fleet=self.placeholder, username="globex-dev", role="operator"
        )
        self.before = {d.pk: Device.objects.filter(pk=d.pk).values().get() for d in w.devices}
        self.response = transfer(client, w)
        return w

    def test_the_fleet_its_devices_and_releases_belong_to_the_target(self, done):
        w = done
        assert self.response.status_code == 302 and self.response.url == f"/orgs/{w.p.org.handle}/"
        fleet = Fleet.objects.get(pk=w.fleet.pk)
        assert (fleet.organization, fleet.name, fleet.fleet_type.slug) == (w.globex, "gateways", "essentials")
        assert (
            fleet.target_release_id == w.release.pk
            and w.release.__class__.objects.get(pk=w.release.pk).fleet_id == fleet.pk
        )
        # Devices are untouched, row for row: same ids, keys, state, fleet.
        after = {d.pk: Device.objects.filter(pk=d.pk).values().get() for d in w.devices}
        assert after == self.before
        assert not Fleet.objects.filter(pk=self.placeholder.pk).exists()

    def test_members_keep_their_roles_and_the_actor_is_no_longer_one(self, done):
        w = done
        roles = dict(FleetMembership.objects.filter(fleet=w.fleet).values_list("user__username", "role"))
        assert roles == {
            w.p.observer.username: "observer", w.p.developer.username: "developer",
            w.p.operator.username: "operator", w.p.administrator.username: "administrator",
            "globex-dev": "operator",
        }  # fmt: skip
        assert not FleetUserObjectPermission.objects.filter(user=w.actor).exists()
        assert (
            FleetUserObjectPermission.objects.filter(content_object=w.fleet, user=w.p.operator).count() == 3
        )
        assert (
            FleetUserObjectPermission.objects.filter(content_object=w.fleet, user=self.globex_dev).count()
            == 3
        )
        assert fleet_for_user(w.p.operator, w.fleet.pk).access.can_operate
        assert fleet_for_user(w.globex_admin, w.fleet.pk).access.can_administer
        # Every member of the fleet is now also a member of Globex.
        globex_members = set(
            OrgMembership.objects.filter(organization=w.globex).values_list("user__username", "role")
        )
        assert (w.p.operator.username, "member") in globex_members
        assert (w.globex_admin.username, "administrator") in globex_members

    def test_the_source_organization_loses_the_fleet(self, client, done):
        w = done
        client.force_login(w.actor)
        assert client.get(f"/fleets/{w.fleet.pk}/").status_code == 404
        client.force_login(make_org_admin(w.p.org))
        assert client.get(f"/fleets/{w.fleet.pk}/").status_code == 404

    def test_both_organizations_record_it_in_their_activity(self, client, done):
        w = done
        records = DeviceAction.objects.filter(kind=ActionKind.FLEET_TRANSFER)
        assert set(records.values_list("organization_id", flat=True)) == {w.p.org.pk, w.globex.pk}
        for record in records:
            assert record.fleet_id == w.fleet.pk and record.actor == w.actor
            assert record.summary == f"Transferred gateways with 3 devices from {w.p.org.name} to Globex"
        client.force_login(w.actor)
        source_page = client.get(f"/orgs/{w.p.org.handle}/").content.decode()
        assert (
            "Transferred gateways with 3 devices" in source_page
            and "(now in another organization)" in source_page
        )
        client.force_login(w.globex_admin)
        assert (
            "Transferred gateways with 3 devices" in client.get(f"/orgs/{w.globex.handle}/").content.decode()
        )

    def test_the_fleets_activity_lists_it_once(self, client, done):
        w = done
        client.force_login(w.globex_admin)
        html = client.get(f"/fleets/{w.fleet.pk}/activity/").content.decode()
        assert html.count("Transferred gateways with 3 devices from") == 1
        response = client.get(f"/fleets/{w.fleet.pk}/activity/?format=csv")
        csv = b"".join(response.streaming_content).decode()
        assert csv.count("Transferred gateways with 3 devices from") == 1

    def test_a_transfer_back_is_listed_once_too(self, done):
        w = done
        home = make_fleet(w.p.org, name="gateways", device_type="intel-nuc")  # Acme's new empty one
        services.fleet_member_add(
            actor=w.p.org_admin, fleet=home, username=w.globex_admin.username, role=FleetRole.DEVELOPER
        )
        services.fleet_transfer(actor=w.globex_admin, fleet=w.fleet, organization=w.p.org)
        transfers = fleet_activity_log(w.fleet).filter(kind=ActionKind.FLEET_TRANSFER).order_by("pk")
        assert [(t.organization_id, t.params["to"]) for t in transfers] == [
            (w.globex.pk, w.globex.handle),
            (w.p.org.pk, w.p.org.handle),
        ]
        assert (
            DeviceAction.objects.filter(kind=ActionKind.FLEET_TRANSFER).count() == 4
        )  # each org keeps its own

    def test_the_toast_says_what_happened(self, client, done):
        w = done
        client.force_login(w.actor)
        assert "Transferred gateways to Globex" in client.get(self.response.url).content.decode()


def test_the_devices_keep_their_support_grant_and_settings(w):
    Device.objects.filter(pk=w.devices[0].pk).update(
        public_url_enabled=True, support_access_until=timezone.now() + timedelta(hours=1)
    )
    w.add_actor_to(w.placeholder())
    services.fleet_transfer(actor=w.actor, fleet=w.fleet, organization=w.globex)
    device = Device.objects.get(pk=w.devices[0].pk)
    assert device.public_url_enabled and device.support_access_until and device.fleet_id == w.fleet.pk


def snapshot(w) -> dict:
    """Every row a transfer touches, to compare before and after one that must change nothing."""
    return {
        "fleets": set(Fleet.objects.values_list("pk", "organization_id", "name")),
        "members": set(FleetMembership.objects.values_list("fleet_id", "user_id", "role")),
        "permissions": set(
            FleetUserObjectPermission.objects.values_list("content_object_id", "user_id", "permission_id")
        ),
        "org_members": set(OrgMembership.objects.values_list("organization_id", "user_id", "role")),
        "devices": list(Device.objects.order_by("pk").values()),
        "releases": set(Release.objects.values_list("pk", "fleet_id")),
        "actions": set(DeviceAction.objects.values_list("pk", "state", "fleet_id", "organization_id")),
        "deliveries": set(ActionDelivery.objects.values_list("pk", "state")),
    }


def open_actions_of(w) -> dict[str, DeviceAction]:
    """What may be under way on a fleet: a reboot queued for an offline device until its time limit,
    a staged restart holding its later stages, and a device reboot not yet expanded."""
    make_device(w.fleet, name="gw-offline", online=False)
    queued = device_services.action_create(
        actor=w.p.operator, fleet=w.fleet, kind="reboot", scope=ActionScope.FLEET,
        offline_policy=OfflinePolicy.QUEUE, ttl=timedelta(hours=6),
    )  # fmt: skip
    staged = device_services.action_create(
        actor=w.p.operator, fleet=w.fleet, kind="restart", scope=ActionScope.FLEET,
        rollout={"size": 1, "halt_failure_pct": 50},
    )  # fmt: skip
    for action in (queued, staged):
        device_services.action_expand(action.pk)  # the worker's part
    pending = device_services.action_create(
        actor=w.p.operator, fleet=w.fleet, kind="reboot", scope=ActionScope.DEVICE, device=w.devices[0]
    )
    actions = {"queued": queued, "staged": staged, "pending": pending}
    assert ActionDelivery.objects.filter(action=queued, state=DeliveryState.WAITING).count() == 1
    assert ActionDelivery.objects.filter(action=staged, state=DeliveryState.HELD).count() == 2
    assert DeviceAction.objects.get(pk=pending.pk).state == ActionState.QUEUED
    return actions


class TestOpenActions:
    def test_the_dialog_says_the_open_actions_are_cancelled(self, client, w):
        open_actions_of(w)
        w.add_actor_to(w.placeholder())
        client.force_login(w.actor)
        dialog = client.get(f"/fleets/{w.fleet.pk}/transfer/", HTTP_HX_REQUEST="true").content.decode()
        assert "3 actions still under way on gateways are cancelled" in dialog
        assert "becomes a member of the target organization if not one already" in dialog

    def test_they_are_cancelled_in_the_transfer_and_nothing_waits_for_the_devices(self, client, w):
        actions = open_actions_of(w)
        finished = device_services.action_create(
            actor=w.p.operator,
            fleet=w.fleet,
            kind="public_url_on",
            scope=ActionScope.DEVICE,
            device=w.devices[1],
        )  # applied at once: done
        elsewhere = device_services.action_create(
            actor=w.p.outsider, fleet=w.p.other_fleet, kind="reboot", scope=ActionScope.FLEET
        )
        w.add_actor_to(w.placeholder())
        assert transfer(client, w).status_code == 302

        for name, action in actions.items():
            action.refresh_from_db()
            assert action.state == ActionState.CANCELLED and action.finished_at, name
            assert not ActionDelivery.objects.filter(
                action=action,
                state__in=[DeliveryState.WAITING, DeliveryState.HELD, DeliveryState.PENDING],
            ).exists(), name
        assert DeviceAction.objects.get(pk=finished.pk).state == ActionState.DONE
        assert DeviceAction.objects.get(pk=elsewhere.pk).state == ActionState.QUEUED
        # A later expansion of the cancelled pending one (its message was in the queue) sends nothing.
        device_services.action_expand(actions["pending"].pk)
        assert not ActionDelivery.objects.filter(action=actions["pending"]).exists()

    def test_a_refused_transfer_leaves_them_running(self, w):
        actions = open_actions_of(w)
        w.add_actor_to(w.placeholder(), FleetRole.OBSERVER)
        with pytest.raises(services.ActionError, match="you need the Developer role"):
            services.fleet_transfer(actor=w.actor, fleet=w.fleet, organization=w.globex)
        assert all(DeviceAction.objects.get(pk=a.pk).is_open for a in actions.values())


class TestLockingAndRollback:
    def test_both_fleets_are_locked_before_any_condition_is_read(self, w):
        w.add_actor_to(w.placeholder())
        with CaptureQueriesContext(connection) as queries:
            services.fleet_transfer(actor=w.actor, fleet=w.fleet, organization=w.globex)
        statements = [
            q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))
        ]
        first = statements[0]
        assert first.startswith("SELECT") and '"fleets_fleet"' in first and "ORDER BY" in first
        assert str(w.fleet.pk) in first and "gateways" in first  # the fleet and the target's namesake
        if connection.features.has_select_for_update:
            assert "FOR UPDATE" in first

    def test_a_refusal_found_under_the_lock_changes_nothing(self, w):
        placeholder = w.placeholder()
        w.add_actor_to(placeholder)
        open_actions_of(w)
        # The page said ready; then Globex's administrator lowered the actor to Observer.
        services.fleet_member_change(actor=w.globex_admin, fleet=placeholder, user=w.actor, role="observer")
        before = snapshot(w)
        with pytest.raises(services.ActionError, match="you need the Developer role"):
            services.fleet_transfer(actor=w.actor, fleet=w.fleet, organization=w.globex)
        assert snapshot(w) == before

    def test_a_failure_after_the_placeholder_is_deleted_rolls_everything_back(self, w, monkeypatch):
        placeholder = w.placeholder()
        w.add_actor_to(placeholder)
        services.fleet_member_add(
            actor=w.globex_admin,
            fleet=placeholder,
            username=make_user("globex-dev").username,
            role="operator",
        )
        open_actions_of(w)
        before = snapshot(w)
        deleted = []

        def recording_fails(**kwargs):
            deleted.append(not Fleet.objects.filter(pk=placeholder.pk).exists())
            raise RuntimeError("the audit record could not be written")

        monkeypatch.setattr(services, "action_record", recording_fails)
        with pytest.raises(RuntimeError):
            services.fleet_transfer(actor=w.actor, fleet=w.fleet, organization=w.globex)
        assert deleted == [True]  # it failed with the placeholder gone and the fleet moved
        assert snapshot(w) == before
        assert Fleet.objects.get(pk=w.fleet.pk).organization_id == w.p.org.pk
        assert set(FleetMembership.objects.filter(fleet=placeholder).values_list("user__username", flat=True)) == {
            w.actor.username, "globex-dev",
        }  # fmt: skip
