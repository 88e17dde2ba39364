"""The Activity tab: the audit log of a fleet, filterable, exportable as CSV."""

import csv
import io

import pytest

from devices import services
from devices.models import ActionKind
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


def record(p, kind, actor=None, **kwargs):
    return services.action_record(actor=actor or p.operator, kind=kind, fleet=p.fleet, summary=f"{kind} test", **kwargs)


def test_it_lists_who_did_what_and_when(client, p):
    record(p, ActionKind.FLEET_RENAME, actor=p.administrator)
    client.force_login(p.observer)
    html = client.get(f"/fleets/{p.fleet.pk}/activity/").content.decode()
    assert "Rename fleet" in html and p.administrator.username in html


def test_it_filters_by_kind_and_actor(client, p):
    record(p, ActionKind.FLEET_RENAME, actor=p.administrator)
    record(p, ActionKind.REBOOT, actor=p.operator)
    client.force_login(p.observer)
    html = client.get(f"/fleets/{p.fleet.pk}/activity/", {"kind": "reboot"}).content.decode()
    assert "reboot test" in html and "fleet_rename test" not in html
    html = client.get(f"/fleets/{p.fleet.pk}/activity/", {"actor": p.administrator.username}).content.decode()
    assert "fleet_rename test" in html and "reboot test" not in html


def test_it_exports_the_filtered_log_as_csv(client, p):
    record(p, ActionKind.FLEET_RENAME)
    record(p, ActionKind.REBOOT)
    client.force_login(p.observer)
    response = client.get(f"/fleets/{p.fleet.pk}/activity/", {"kind": "reboot", "format": "csv"})
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:4] == ["id", "created_at", "actor", "action"]
    assert [r[3] for r in rows[1:]] == ["Reboot"]


def test_an_action_exports_its_outcomes_as_csv(client, p):
    device = make_device(p.fleet, name="csv-device")
    client.force_login(p.operator)
    client.post(f"/devices/{device.uuid}/actions/public_url_on/")
    action = p.fleet.actions.get()
    response = client.get(f"/fleets/{p.fleet.pk}/activity/{action.pk}/", {"format": "csv"})
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[1][1:3] == ["csv-device", "succeeded"]


def test_outsiders_get_404_and_no_csv(client, p):
    record(p, ActionKind.REBOOT)
    client.force_login(p.outsider)
    assert client.get(f"/fleets/{p.fleet.pk}/activity/", {"format": "csv"}).status_code == 404


def test_the_log_costs_the_same_queries_however_long_it_is(client, p, django_assert_max_num_queries):
    record(p, ActionKind.REBOOT)
    client.force_login(p.observer)
    with django_assert_max_num_queries(12) as few:
        client.get(f"/fleets/{p.fleet.pk}/activity/")
    for _ in range(30):
        record(p, ActionKind.REBOOT, device=make_device(p.fleet))
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get(f"/fleets/{p.fleet.pk}/activity/")


@pytest.mark.parametrize(("kind", "shown"), [(ActionKind.RESTART, True), (ActionKind.REBOOT, False)])
def test_a_large_restart_s_progress_says_its_results_come_with_the_devices_next_reports(
    client, p, settings, kind, shown
):
    settings.ACTION_RESULTS_PER_S, settings.AGENT_REPORT_INTERVAL_S = 1000, 20
    action = record(p, kind)
    p.fleet.actions.filter(pk=action.pk).update(target_count=100_000, sent_count=60_000)
    client.force_login(p.observer)
    html = client.get(f"/fleets/{p.fleet.pk}/activity/{action.pk}/").content.decode()
    assert ("results come with the devices' next reports, within 20 s" in html) is shown
