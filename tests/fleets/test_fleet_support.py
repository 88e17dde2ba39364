"""Support access to a whole fleet: granted for a period, revocable, enforced at every request.

Time travel is done by moving the grant's end, never by sleeping."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import ActionKind, DeviceAction
from fleets.models import Fleet
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


def grant(client, fleet, **data):
    return client.post(f"/fleets/{fleet.pk}/support/", data)


def until(fleet):
    return Fleet.objects.get(pk=fleet.pk).support_access_until


@pytest.mark.parametrize(
    ("duration", "period"),
    [("1h", timedelta(hours=1)), ("6h", timedelta(hours=6)), ("12h", timedelta(hours=12)),
     ("1d", timedelta(days=1)), ("7d", timedelta(days=7))],
)  # fmt: skip
def test_an_administrator_grants_a_period(client, p, duration, period):
    client.force_login(p.administrator)
    before = timezone.now()
    response = grant(client, p.fleet, duration=duration)
    assert response.status_code == 302
    assert before + period <= until(p.fleet) <= timezone.now() + period
    record = DeviceAction.objects.get()
    assert record.kind == ActionKind.SUPPORT_GRANT and record.scope == "fleet"


def test_a_custom_period_in_hours_or_days(client, p):
    client.force_login(p.administrator)
    assert grant(client, p.fleet, duration="custom", custom_amount="3", custom_unit="days").status_code == 302
    assert abs(until(p.fleet) - (timezone.now() + timedelta(days=3))) < timedelta(minutes=1)
    assert (
        grant(client, p.fleet, duration="custom", custom_amount="36", custom_unit="hours").status_code == 302
    )
    assert abs(until(p.fleet) - (timezone.now() + timedelta(hours=36))) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"duration": "custom"}, "Give the custom period"),
        ({"duration": "custom", "custom_amount": "0", "custom_unit": "hours"}, "greater than or equal to 1"),
        ({"duration": "custom", "custom_amount": "31", "custom_unit": "days"}, "at most 30 days"),
        ({"duration": "forever"}, "Select a valid choice"),
    ],
)
def test_bad_periods_are_refused(client, p, data, message):
    client.force_login(p.administrator)
    response = grant(client, p.fleet, **data)
    assert response.status_code == 400 and message in response.content.decode()
    assert until(p.fleet) is None and not DeviceAction.objects.exists()


def test_support_has_access_only_during_the_grant(client, p):
    device = make_device(p.fleet)
    client.force_login(p.support)
    # Before: nothing.
    assert client.get(f"/fleets/{p.fleet.pk}/").status_code == 404
    assert client.get(f"/devices/{device.uuid}/").status_code == 404

    client.force_login(p.administrator)
    grant(client, p.fleet, duration="6h")

    # During: the fleet and its devices, as an operator, not an administrator.
    client.force_login(p.support)
    assert client.get(f"/fleets/{p.fleet.pk}/").status_code == 200
    assert client.get(f"/devices/{device.uuid}/").status_code == 200
    assert client.get(f"/fleets/{p.fleet.pk}/actions/reboot/").status_code == 200
    assert client.get(f"/fleets/{p.fleet.pk}/rename/").status_code == 403

    # After: the grant ended (time travel), access is gone at the next request.
    Fleet.objects.filter(pk=p.fleet.pk).update(support_access_until=timezone.now() - timedelta(seconds=1))
    assert client.get(f"/fleets/{p.fleet.pk}/").status_code == 404
    assert client.get(f"/devices/{device.uuid}/").status_code == 404


def test_a_revoked_grant_ends_at_once(client, p):
    client.force_login(p.administrator)
    grant(client, p.fleet, duration="7d")
    actions_page = client.get(f"/fleets/{p.fleet.pk}/actions/").content.decode()
    assert "Granted until" in actions_page and f"/fleets/{p.fleet.pk}/support/revoke/" in actions_page

    response = client.post(f"/fleets/{p.fleet.pk}/support/revoke/")
    assert response.status_code == 302
    assert until(p.fleet) is None
    assert list(DeviceAction.objects.values_list("kind", flat=True).order_by("id")) == [
        ActionKind.SUPPORT_GRANT, ActionKind.SUPPORT_REVOKE,
    ]  # fmt: skip
    client.force_login(p.support)
    assert client.get(f"/fleets/{p.fleet.pk}/").status_code == 404


def test_revoking_without_a_live_grant_says_so_and_records_nothing(client, p):
    Fleet.objects.filter(pk=p.fleet.pk).update(support_access_until=timezone.now() - timedelta(hours=1))
    client.force_login(p.administrator)
    response = client.post(f"/fleets/{p.fleet.pk}/support/revoke/", follow=True)
    assert "there is nothing to revoke" in response.content.decode()
    assert not DeviceAction.objects.exists()


def test_a_new_grant_replaces_the_current_one(client, p):
    client.force_login(p.administrator)
    grant(client, p.fleet, duration="7d")
    grant(client, p.fleet, duration="1h")
    assert until(p.fleet) < timezone.now() + timedelta(hours=2)


def test_revoke_only_by_post(client, p):
    client.force_login(p.administrator)
    assert client.get(f"/fleets/{p.fleet.pk}/support/revoke/").status_code == 405
