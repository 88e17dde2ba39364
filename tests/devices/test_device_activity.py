"""A device's Activity page: every action that reached the device, whatever its scope, with this
device's outcome; filterable, paged, exportable as CSV, and as private as the device page."""

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from devices import services
from devices.models import ActionDelivery, ActionKind, DeviceAction
from tests.factories import Personas, make_device, make_fleet

pytestmark = pytest.mark.django_db

START = timezone.now() - timedelta(days=1)
_minutes = iter(range(10_000))


@pytest.fixture
def p():
    return Personas()


@pytest.fixture
def pump(p):
    return make_device(p.fleet, name="pump")


@pytest.fixture
def other(p):
    return make_device(p.fleet, name="other")


def act(
    p, actor, *, kind="restart", scope="fleet", fleet=None, device=None, outcomes=None, reason="", **fields
):
    """An action by `actor` (a name: each test gives each action its own), newer than the last one,
    with an outcome for each device of `outcomes` ({device: state})."""
    fleet = fleet or p.fleet
    outcomes = outcomes or {}
    action = DeviceAction.objects.create(
        organization=fleet.organization, fleet=fleet, fleet_name=fleet.name, actor_name=actor, kind=kind,
        scope=scope, device=device, state="done", created_at=START + timedelta(minutes=next(_minutes)),
        target_count=len(outcomes), **fields,
    )  # fmt: skip
    for target, state in outcomes.items():
        ActionDelivery.objects.create(
            action=action, device=target, device_uuid=target.uuid, device_name=target.name, state=state,
            reason=reason,
        )  # fmt: skip
    return action


def page(client, device, **params) -> str:
    response = client.get(f"/devices/{device.uuid}/activity/", params)
    assert response.status_code == 200
    return response.content.decode()


def csv_rows(client, device, **params) -> list[list[str]]:
    response = client.get(f"/devices/{device.uuid}/activity/", params | {"format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_it_lists_fleet_wide_selection_and_device_actions_that_reached_the_device_and_no_others(
    client, p, pump, other
):
    act(p, "actor-fleetwide", outcomes={pump: "succeeded", other: "succeeded"})
    act(p, "actor-selection", kind="reboot", scope="selection", selection={"ids": [pump.pk, other.pk]},
        outcomes={pump: "missed", other: "succeeded"})  # fmt: skip
    act(p, "actor-onpump", kind="purge", scope="device", device=pump, outcomes={pump: "failed"})
    services.action_record(actor=p.operator, kind=ActionKind.SUPPORT_GRANT, fleet=p.fleet, device=pump,
                           summary="Support access until tomorrow")  # fmt: skip
    act(p, "actor-onother", kind="purge", scope="device", device=other, outcomes={other: "succeeded"})
    act(
        p, "actor-othersonly", scope="selection", selection={"ids": [other.pk]}, outcomes={other: "succeeded"}
    )
    act(p, "actor-elsewhere", fleet=p.other_fleet, outcomes={make_device(p.other_fleet): "succeeded"})

    client.force_login(p.observer)
    html = page(client, pump)

    shown = ["Support access until tomorrow", "actor-onpump", "actor-selection", "actor-fleetwide"]
    assert all(text in html for text in shown)
    assert [html.index(text) for text in shown] == sorted(html.index(text) for text in shown)  # newest first
    assert "actor-onother" not in html and "actor-othersonly" not in html and "actor-elsewhere" not in html
    assert "Missed: offline" in html and "Whole fleet" in html and "Selected devices" in html


def test_each_row_links_to_the_actions_progress_page(client, p, pump):
    action = act(p, "actor-ann", outcomes={pump: "succeeded"})
    client.force_login(p.observer)
    assert f'href="/fleets/{p.fleet.pk}/activity/{action.pk}/"' in page(client, pump)


def test_it_filters_by_this_devices_outcome_and_shows_the_reason(client, p, pump, other):
    act(p, "failed-here", outcomes={pump: "failed", other: "succeeded"}, reason="No answer within 2 s")
    act(p, "succeeded-here", outcomes={pump: "succeeded", other: "failed"})
    client.force_login(p.observer)
    html = page(client, pump, outcome="failed")
    assert "failed-here" in html and "No answer within 2 s" in html
    assert "succeeded-here" not in html
    html = page(client, pump, outcome="succeeded")
    assert "succeeded-here" in html and "failed-here" not in html


def test_it_filters_like_the_activity_tab(client, p, pump):
    act(p, "restarter", kind="restart", outcomes={pump: "succeeded"})
    act(p, "rebooter", kind="reboot", scope="device", device=pump, outcomes={pump: "succeeded"})
    client.force_login(p.observer)
    html = page(client, pump, kind="reboot")
    assert "rebooter" in html and "restarter" not in html
    html = page(client, pump, scope="fleet", actor="restart")
    assert "restarter" in html and "rebooter" not in html


def test_an_invalid_filter_shows_nothing_and_says_why(client, p, pump):
    act(p, "actor-ann", outcomes={pump: "succeeded"})
    client.force_login(p.observer)
    html = page(client, pump, outcome="exploded")
    assert "Check the filters" in html and "actor-ann" not in html


def test_the_htmx_table_is_the_partial_alone(client, p, pump):
    act(p, "actor-ann", outcomes={pump: "succeeded"})
    client.force_login(p.observer)
    response = client.get(
        f"/devices/{pump.uuid}/activity/", {"outcome": "succeeded"},
        headers={"HX-Request": "true", "HX-Target": "activity-table"},
    )  # fmt: skip
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="activity-table">') and "actor-ann" in html
    assert "filter-bar" not in html


def test_it_pages_older_actions_by_cursor(client, p, pump):
    for i in range(55):
        act(p, f"actor-{i:02d}", outcomes={pump: "succeeded"})
    client.force_login(p.observer)
    first = page(client, pump)
    assert "actor-54" in first and "actor-05" in first and "actor-04" not in first
    cursor = first.split("after=")[1].split('"')[0]
    older = page(client, pump, after=cursor)
    assert "actor-04" in older and "actor-00" in older and "actor-05" not in older


def test_it_exports_the_filtered_log_with_this_devices_outcome_as_csv(client, p, pump, other):
    act(p, "failed-here", outcomes={pump: "failed", other: "succeeded"}, reason="No answer within 2 s")
    act(p, "succeeded-here", kind="reboot", outcomes={pump: "succeeded"})
    act(p, "actor-onother", scope="device", device=other, outcomes={other: "failed"})
    client.force_login(p.observer)

    rows = csv_rows(client, pump)
    header = rows[0]
    assert header[:4] == ["id", "created_at", "actor", "action"] and header[-2:] == [
        "device_outcome",
        "device_reason",
    ]
    by_actor = {row[header.index("actor")]: dict(zip(header, row, strict=True)) for row in rows[1:]}
    assert set(by_actor) == {"failed-here", "succeeded-here"}
    failed = by_actor["failed-here"]
    assert (failed["device_outcome"], failed["device_reason"]) == ("failed", "No answer within 2 s")
    assert (failed["devices"], failed["scope"]) == ("2", "Whole fleet")

    rows = csv_rows(client, pump, outcome="succeeded")
    assert [row[header.index("actor")] for row in rows[1:]] == ["succeeded-here"]


def test_the_csv_quotes_cells_a_spreadsheet_would_evaluate(client, p, pump):
    act(p, "=evil()", outcomes={pump: "failed"}, reason='=HYPERLINK("http://evil.example")', summary="+1+1")
    client.force_login(p.observer)
    row = csv_rows(client, pump)[1]
    assert not [cell for cell in row if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert """'=HYPERLINK("http://evil.example")""" in row and "'=evil()" in row


def test_an_action_of_a_fleet_the_device_has_left_shows_its_outcome_but_not_that_fleets_counts(
    client, p, pump
):
    """The device moved into p.fleet from `old`, a fleet of the organization its observer is not in."""
    old = make_fleet(p.org, "old-fleet")
    action = act(p, "before-the-move", fleet=old, outcomes={pump: "succeeded"}, succeeded_count=7321,
                 selection={"filter": "q=secret-filter"}, scope="selection")  # fmt: skip

    client.force_login(p.observer)
    html = page(client, pump)
    assert "before-the-move" in html and "in old-fleet" in html and "status-succeeded" in html
    assert f"/fleets/{old.pk}/activity/{action.pk}/" not in html and ">7321<" not in html
    row = dict(zip(*csv_rows(client, pump), strict=True))
    assert row["device_outcome"] == "succeeded"
    assert row["succeeded"] == row["selection"] == row["devices"] == ""

    client.force_login(p.org_admin)  # administers every fleet of the organization
    html = page(client, pump)
    assert f"/fleets/{old.pk}/activity/{action.pk}/" in html and ">7321<" in html
    row = dict(zip(*csv_rows(client, pump), strict=True))
    assert (row["succeeded"], row["selection"]) == ("7321", "q=secret-filter")


def test_outsiders_get_404_for_the_page_the_table_and_the_csv(client, p, pump):
    act(p, "actor-ann", outcomes={pump: "succeeded"})
    client.force_login(p.outsider)
    assert client.get(f"/devices/{pump.uuid}/activity/").status_code == 404
    assert client.get(f"/devices/{pump.uuid}/activity/", {"format": "csv"}).status_code == 404
    hx = {"HX-Request": "true", "HX-Target": "activity-table"}
    assert client.get(f"/devices/{pump.uuid}/activity/", headers=hx).status_code == 404


def test_an_unknown_device_is_404(client, p):
    client.force_login(p.administrator)
    assert client.get(f"/devices/{'0' * 32}/activity/").status_code == 404


def test_anonymous_visitors_are_sent_to_sign_in(client, pump):
    response = client.get(f"/devices/{pump.uuid}/activity/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_observers_may_read_it(client, p, pump):
    act(p, "actor-ann", outcomes={pump: "succeeded"})
    client.force_login(p.observer)
    assert "actor-ann" in page(client, pump)


def test_the_device_page_links_to_it_and_keeps_its_recent_actions(client, p, pump):
    act(p, "actor-ann", outcomes={pump: "succeeded"})
    client.force_login(p.observer)
    html = client.get(f"/devices/{pump.uuid}/").content.decode()
    assert f'href="/devices/{pump.uuid}/activity/"' in html and "All actions on this device" in html
    assert "Recent actions" in html and "actor-ann" in html


def test_the_page_costs_the_same_queries_however_long_the_log_is(
    client, p, pump, django_assert_max_num_queries
):
    old = make_fleet(p.org)
    act(p, "first", outcomes={pump: "succeeded"})
    client.force_login(p.observer)
    # The session, the user, the device with the user's rank, the page, which of its fleets the user sees.
    with django_assert_max_num_queries(5) as few:
        page(client, pump)
    for i in range(60):  # more than a page: of several scopes and fleets, with and without an outcome
        if i % 3 == 0:
            act(p, f"a{i}", fleet=old, outcomes={pump: "failed"}, reason="no answer")
        elif i % 3 == 1:
            act(p, f"a{i}", scope="device", device=pump, outcomes={pump: "succeeded"})
        else:
            services.action_record(actor=p.operator, kind=ActionKind.SUPPORT_GRANT, fleet=p.fleet, device=pump,
                                   summary=f"a{i}")  # fmt: skip
    with django_assert_max_num_queries(len(few.captured_queries)):
        html = page(client, pump)
    assert "after=" in html  # a full page, with an older one
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get(
            f"/devices/{pump.uuid}/activity/", headers={"HX-Request": "true", "HX-Target": "activity-table"}
        )
