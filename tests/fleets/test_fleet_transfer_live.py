"""Ownership transfer with live devices: the simulator keeps reporting and polling through the live
server before, during and after the transfer, and online devices stay online throughout."""

import threading
import time

import pytest
from django.utils import timezone

from devices.models import Device
from fleets import services
from fleets.models import Fleet, FleetRole
from tests.conftest import wait_until
from tests.factories import Personas, make_fleet, make_org, make_org_admin

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_online_devices_stay_online_and_keep_reporting_across_a_transfer(client, provision):
    p = Personas(fleet_type="essentials", device_type="intel-nuc")
    devices = [provision(p.fleet, name=f"live-{i}") for i in range(3)]
    globex = make_org("Globex")
    placeholder = make_fleet(globex, name=p.fleet.name, fleet_type="starter", device_type="intel-nuc")
    services.fleet_member_add(
        actor=make_org_admin(globex),
        fleet=placeholder,
        username=p.org_admin.username,
        role=FleetRole.DEVELOPER,
    )
    # Watch the devices while the transfer happens: every sample must find all of them online.
    offline_seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            offline_seen.extend(
                d.name for d in Device.objects.filter(pk__in=[d.pk for d in devices]) if not d.is_online
            )
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        time.sleep(1.5)
        client.force_login(p.org_admin)
        transferred_at = timezone.now()
        response = client.post(
            f"/fleets/{p.fleet.pk}/transfer/", {"organization": globex.handle, "confirm": p.fleet.name}
        )
        assert response.status_code == 302
        assert Fleet.objects.get(pk=p.fleet.pk).organization == globex
        # Every device reports again after the transfer, from the same row with the same key.
        wait_until(
            lambda: Device.objects.filter(pk__in=[d.pk for d in devices], last_seen_at__gt=transferred_at).count() == 3,
            timeout=30, message="every device to report after the transfer",
        )  # fmt: skip
        time.sleep(1.5)
    finally:
        stop.set()
        watcher.join()
    assert offline_seen == []
    for before in devices:
        after = Device.objects.get(pk=before.pk)
        assert (after.uuid, after.api_key_hash, after.fleet_id) == (
            before.uuid,
            before.api_key_hash,
            p.fleet.pk,
        )
        assert after.is_online
