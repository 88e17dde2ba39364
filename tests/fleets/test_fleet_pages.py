"""Fleet list, fleet summary with its device list, tabs, and the selection -> confirmation flow."""

from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import DeviceAction, SavedView
from tests.factories import Personas, make_device, make_fleet

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


def test_the_fleet_list_shows_only_fleets_the_user_may_see(client, p):
    client.force_login(p.observer)
    html = client.get("/fleets/").content.decode()
    assert p.fleet.name in html and p.other_fleet.name not in html


def test_org_admins_see_every_fleet_of_their_org(client, p):
    extra = make_fleet(p.org, name="unlisted-fleet")
    client.force_login(p.org_admin)
    assert extra.name in client.get("/fleets/").content.decode()


def test_the_summary_lists_devices_with_their_fields(client, p):
    device = make_device(p.fleet, name="pump-7", os_version="2.9.7", agent_version="1.0.3")
    client.force_login(p.observer)
    html = client.get(f"/fleets/{p.fleet.pk}/").content.decode()
    for text in ["pump-7", device.short_uuid, "2.9.7", "1.0.3", p.fleet.fleet_type.name]:
        assert text in html
    assert 'name="ids"' not in html  # observers get no selection checkboxes


def test_operators_get_checkboxes_and_the_actions_dropdown(client, p):
    make_device(p.fleet)
    client.force_login(p.operator)
    html = client.get(f"/fleets/{p.fleet.pk}/").content.decode()
    assert 'name="ids"' in html and f"/fleets/{p.fleet.pk}/actions/reboot/" in html


def test_outsiders_get_404_on_every_tab(client, p):
    client.force_login(p.outsider)
    for tab in ["", "actions/", "members/", "activity/", "actions/reboot/"]:
        assert client.get(f"/fleets/{p.fleet.pk}/{tab}").status_code == 404


def test_filters_narrow_the_list(client, p):
    make_device(p.fleet, name="old-os", os_version="2.9.7")
    make_device(p.fleet, name="new-os", os_version="2.58.3")
    client.force_login(p.observer)
    html = client.get(f"/fleets/{p.fleet.pk}/", {"os_version": "2.12.0", "os_op": "lt"}).content.decode()
    assert "old-os" in html and "new-os" not in html


def test_a_bad_filter_says_what_is_wrong(client, p):
    client.force_login(p.observer)
    html = client.get(f"/fleets/{p.fleet.pk}/", {"os_version": "latest"}).content.decode()
    assert "Use a version like 2.12.0." in html


class TestPaging:
    @pytest.fixture
    def fleet_of_55(self, p):
        for i in range(55):
            make_device(
                p.fleet, name=f"dev-{i:03d}", last_seen_at=timezone.now() - timedelta(milliseconds=300 * i)
            )
        return p.fleet

    def test_pages_follow_a_cursor(self, client, p, fleet_of_55):
        client.force_login(p.observer)
        first = client.get(f"/fleets/{p.fleet.pk}/")
        html = first.content.decode()
        assert "dev-049" in html and "dev-050" not in html
        cursor = first.context["page"].next_cursor
        second = client.get(f"/fleets/{p.fleet.pk}/", {"after": cursor}).content.decode()
        assert "dev-050" in second and "dev-054" in second and "dev-049" not in second

    def test_the_last_page_reads_the_list_from_its_end(self, client, p, fleet_of_55):
        client.force_login(p.observer)
        page = client.get(f"/fleets/{p.fleet.pk}/", {"last": "1"}).context["page"]
        assert [d.name for d in page.rows] == [f"dev-{i:03d}" for i in range(5, 55)]
        assert page.has_previous and not page.has_next

    def test_previous_goes_back_one_page(self, client, p, fleet_of_55):
        client.force_login(p.observer)
        last = client.get(f"/fleets/{p.fleet.pk}/", {"last": "1"}).context["page"]
        before = client.get(f"/fleets/{p.fleet.pk}/", {"before": last.previous_cursor}).context["page"]
        assert [d.name for d in before.rows] == [f"dev-{i:03d}" for i in range(5)]
        assert not before.has_previous and before.has_next

    def test_the_last_page_follows_the_sort_and_the_filters(self, client, p, fleet_of_55):
        make_device(p.fleet, name="zz-offline", online=False)
        client.force_login(p.observer)
        params = {"last": "1", "sort": "-last_seen", "status": "online"}
        page = client.get(f"/fleets/{p.fleet.pk}/", params).context["page"]
        assert [d.name for d in page.rows][-3:] == ["dev-052", "dev-053", "dev-054"]  # oldest last
        assert "zz-offline" not in [d.name for d in page.rows]

    def test_the_links_keep_the_filters_and_refresh_the_table_with_htmx(self, client, p, fleet_of_55):
        client.force_login(p.observer)
        html = client.get(f"/fleets/{p.fleet.pk}/", {"status": "online", "q": ""}).content.decode()
        assert 'hx-boost="true" hx-target="#device-table"' in html
        assert 'href="?status=online&amp;after=' in html and 'href="?status=online&amp;last=1"' in html

    def test_a_filter_change_puts_only_the_filters_in_the_address_bar(self, client, p, fleet_of_55):
        client.force_login(p.observer)
        headers = {"HX-Request": "true", "HX-Target": "device-table", "HX-Trigger": "device-filters"}
        params = {"q": "", "status": "online", "os_op": "eq", "os_version": "", "sort": "name"}
        response = client.get(f"/fleets/{p.fleet.pk}/", params, headers=headers)
        assert response["HX-Push-Url"] == f"/fleets/{p.fleet.pk}/?status=online"
        refresh = client.get(
            f"/fleets/{p.fleet.pk}/", params, headers=headers | {"HX-Trigger": "device-table"}
        )
        assert "HX-Push-Url" not in refresh  # the 10 s refresh leaves history alone

    def test_a_cursor_that_is_not_ours_shows_the_first_page(self, client, p, fleet_of_55):
        client.force_login(p.observer)
        page = client.get(f"/fleets/{p.fleet.pk}/", {"before": "garbage"}).context["page"]
        assert page.rows[0].name == "dev-000" and not page.has_previous

    def test_the_htmx_partial_is_the_table_alone(self, client, p, fleet_of_55):
        client.force_login(p.observer)
        headers = {"HX-Request": "true", "HX-Target": "device-table"}
        html = client.get(f"/fleets/{p.fleet.pk}/", {"last": "1"}, headers=headers).content.decode()
        assert html.lstrip().startswith('<div id="device-table"') and "<html" not in html


LIST_VARIANTS = [{}, {"status": "online", "os_version": "2.60.0", "os_op": "lt"}, {"last": "1"},
                 {"device_type": "raspberrypi3", "sort": "-last_seen"}]  # fmt: skip


@pytest.mark.parametrize("params", LIST_VARIANTS)
def test_the_device_list_costs_the_same_queries_at_two_sizes(
    client, p, params, django_assert_max_num_queries
):
    SavedView.objects.create(fleet=p.fleet, owner=p.operator, name="Mine", query="status=online")
    client.force_login(p.operator)
    make_device(p.fleet)
    client.get(f"/fleets/{p.fleet.pk}/", params)  # fleet counts in the cache, as on any later view
    with django_assert_max_num_queries(10) as small:
        client.get(f"/fleets/{p.fleet.pk}/", params)
    for _ in range(120):
        make_device(p.fleet, os_version="2.9.7")
    with django_assert_max_num_queries(len(small.captured_queries)) as large:
        client.get(f"/fleets/{p.fleet.pk}/", params)
    assert len(large.captured_queries) == len(small.captured_queries)
    assert not any("COUNT(" in q["sql"].upper() for q in large.captured_queries)  # no count per view


class TestMatchingCount:
    def test_it_counts_the_devices_matching_the_filter_with_one_count(
        self, client, p, django_assert_max_num_queries
    ):
        for _ in range(3):
            make_device(p.fleet, os_version="2.9.7")
        make_device(p.fleet, os_version="2.58.3")
        make_device(p.other_fleet, os_version="2.9.7")
        client.force_login(p.operator)
        with django_assert_max_num_queries(5) as captured:
            response = client.get(
                f"/fleets/{p.fleet.pk}/devices/count/", {"os_version": "2.12.0", "os_op": "lt"}
            )
        assert response.json() == {"count": 3}
        assert sum("COUNT(" in q["sql"].upper() for q in captured.captured_queries) == 1

    def test_a_bad_filter_is_refused(self, client, p):
        client.force_login(p.operator)
        response = client.get(f"/fleets/{p.fleet.pk}/devices/count/", {"os_version": "newest"})
        assert response.status_code == 400 and "version" in response.json()["error"]

    def test_outsiders_get_404(self, client, p):
        client.force_login(p.outsider)
        assert client.get(f"/fleets/{p.fleet.pk}/devices/count/").status_code == 404

    def test_the_list_asks_for_it_only_when_a_selection_starts(self, client, p):
        make_device(p.fleet)
        client.force_login(p.operator)
        html = client.get(f"/fleets/{p.fleet.pk}/", {"status": "online"}).content.decode()
        assert f'data-total-src="/fleets/{p.fleet.pk}/devices/count/?status=online"' in html
        assert "data-total=" not in html


class TestSelection:
    def test_ticked_devices_are_previewed(self, client, p):
        online = make_device(p.fleet)
        offline = make_device(p.fleet, online=False)
        old = make_device(p.fleet, agent_version="1.0.3")
        make_device(p.fleet)  # not ticked
        client.force_login(p.operator)
        response = client.get(
            f"/fleets/{p.fleet.pk}/actions/reboot/", {"ids": [online.pk, offline.pk, old.pk]}
        )
        preview = response.context["preview"]
        assert (preview.selected, preview.affected) == (3, 1)
        assert dict(preview.skipped) == {"agent older than 1.1.0": 1, "offline: will miss it": 1}

    def test_a_device_of_another_fleet_in_the_selection_refuses_it_all(self, client, p):
        mine = make_device(p.fleet)
        theirs = make_device(p.other_fleet)
        client.force_login(p.operator)
        response = client.post(f"/fleets/{p.fleet.pk}/actions/reboot/", {"ids": [mine.pk, theirs.pk]})
        assert response.status_code == 400
        assert "1 of the 2 selected devices are not in" in response.content.decode()
        assert not DeviceAction.objects.exists()

    def test_all_matching_carries_the_filter_not_ids(self, client, p):
        for _ in range(3):
            make_device(p.fleet, os_version="2.9.7")
        make_device(p.fleet, os_version="2.58.3")
        client.force_login(p.operator)
        data = {"all_matching": "1", "filter": "os_version=2.12.0&os_op=lt", "confirm": "3"}
        response = client.post(f"/fleets/{p.fleet.pk}/actions/restart/", data)
        assert response.status_code == 302
        action = DeviceAction.objects.get()
        assert action.scope == "selection" and action.selection == {"filter": "os_version=2.12.0&os_op=lt"}

    def test_a_fleet_wide_restart_needs_the_fleet_name_typed(self, client, p):
        make_device(p.fleet)
        client.force_login(p.operator)
        assert client.post(f"/fleets/{p.fleet.pk}/actions/restart/", {"confirm": "nope"}).status_code == 400
        assert not DeviceAction.objects.exists()
        response = client.post(f"/fleets/{p.fleet.pk}/actions/restart/", {"confirm": p.fleet.name})
        assert response.status_code == 302
        assert DeviceAction.objects.get().scope == "fleet"

    def test_the_queue_policy_needs_a_time_limit_in_range(self, client, p):
        make_device(p.fleet)
        client.force_login(p.operator)
        url = f"/fleets/{p.fleet.pk}/actions/reboot/"
        assert client.post(url, {"offline_policy": "queue", "ttl_hours": "9999"}).status_code == 400
        assert client.post(url, {"offline_policy": "queue", "ttl_hours": "6"}).status_code == 302
        assert DeviceAction.objects.get().deliver_until is not None

    def test_all_matching_is_previewed_from_the_filter_and_carries_no_ids(self, client, p):
        make_device(p.fleet, os_version="2.9.7")
        make_device(p.fleet, os_version="2.9.7", online=False)
        make_device(p.fleet, os_version="2.9.7", agent_version="1.0.3")
        make_device(p.fleet, os_version="2.58.3")  # does not match
        client.force_login(p.operator)
        query = "os_version=2.12.0&os_op=lt"
        response = client.get(f"/fleets/{p.fleet.pk}/actions/reboot/", {"all_matching": "1", "filter": query})
        preview = response.context["preview"]
        assert (preview.selected, preview.affected, preview.skipped_count) == (3, 1, 2)
        html = response.content.decode()
        assert (
            'name="all_matching" value="1"' in html
            and f'name="filter" value="{query.replace("&", "&amp;")}"' in html
        )
        assert 'name="ids"' not in html

    @pytest.mark.parametrize("data", [{}, {"all_matching": "1", "filter": "status=online"}])
    def test_the_post_costs_the_same_queries_at_two_sizes(
        self, client, p, data, django_assert_max_num_queries
    ):
        client.force_login(p.operator)
        make_device(p.fleet)
        url = f"/fleets/{p.fleet.pk}/actions/reboot/"
        with django_assert_max_num_queries(12) as small:
            assert client.post(url, data).status_code == 302
        for _ in range(60):
            make_device(p.fleet)
        with django_assert_max_num_queries(len(small.captured_queries)) as large:
            assert client.post(url, data).status_code == 302
        # Nothing counts the fleet: a reboot asks for no typed count, and "can any device get it" is an EXISTS.
        assert not any("COUNT(" in q["sql"].upper() for q in large.captured_queries)

    def test_a_selection_no_device_can_receive_is_refused(self, client, p):
        old = make_device(p.fleet, agent_version="1.0.3")
        client.force_login(p.operator)
        response = client.post(f"/fleets/{p.fleet.pk}/actions/reboot/", {"ids": [old.pk]})
        assert response.status_code == 400
        assert "None of the selected devices can receive this action." in response.content.decode()
        assert not DeviceAction.objects.exists()

    def test_offline_devices_still_make_an_action_possible(self, client, p):
        offline = make_device(p.fleet, online=False)
        client.force_login(p.operator)
        assert client.post(f"/fleets/{p.fleet.pk}/actions/reboot/", {"ids": [offline.pk]}).status_code == 302

    def test_developers_get_403(self, client, p):
        client.force_login(p.developer)
        assert client.get(f"/fleets/{p.fleet.pk}/actions/reboot/").status_code == 403


class TestPublicUrlsFleetWide:
    def test_operators_may_enable_a_selection_but_not_the_whole_fleet(self, client, p):
        device = make_device(p.fleet)
        client.force_login(p.operator)
        url = f"/fleets/{p.fleet.pk}/actions/public_url_on/"
        assert client.post(url, {"ids": [device.pk]}).status_code == 302
        assert client.post(url).status_code == 403

    def test_administrators_enable_all_public_urls(self, client, p):
        make_device(p.fleet)
        client.force_login(p.administrator)
        assert client.post(f"/fleets/{p.fleet.pk}/actions/public_url_on/").status_code == 302
        assert DeviceAction.objects.get().scope == "fleet"


class TestEveryFilter:
    """Each filter of the device list keeps exactly the devices it names."""

    @pytest.fixture
    def devices(self, p):
        return {
            "nuc": make_device(p.fleet, name="f-nuc", device_type="raspberrypi3"),
            "bbb": make_device(p.fleet, name="f-bbb", device_type="beaglebone-black"),
            "old-agent": make_device(p.fleet, name="f-old-agent", agent_version="1.0.3"),
            "public": make_device(p.fleet, name="f-public", public_url_enabled=True),
            "local": make_device(p.fleet, name="f-local", local_mode=True),
            "locked": make_device(p.fleet, name="f-locked", update_lock_held=True),
            "offline": make_device(p.fleet, name="f-offline", online=False),
            "off": make_device(p.fleet, name="f-off", is_active=False, online=False),
        }

    def listed(self, client, p, **params) -> set[str]:
        client.force_login(p.observer)
        html = client.get(f"/fleets/{p.fleet.pk}/", params).content.decode()
        return {name for name in self.names if f">{name}<" in html}

    names = ["f-nuc", "f-bbb", "f-old-agent", "f-public", "f-local", "f-locked", "f-offline", "f-off"]

    def test_device_type(self, client, p, devices):
        assert self.listed(client, p, device_type="beaglebone-black") == {"f-bbb"}

    def test_agent_version(self, client, p, devices):
        assert self.listed(client, p, agent_version="1.0.3") == {"f-old-agent"}

    def test_public_url(self, client, p, devices):
        assert self.listed(client, p, public_url="yes") == {"f-public"}
        assert "f-public" not in self.listed(client, p, public_url="no")

    def test_local_mode(self, client, p, devices):
        assert self.listed(client, p, local_mode="yes") == {"f-local"}

    def test_update_lock_held(self, client, p, devices):
        assert self.listed(client, p, lock_held="yes") == {"f-locked"}

    def test_status(self, client, p, devices):
        assert self.listed(client, p, status="offline") == {"f-offline"}
        assert self.listed(client, p, status="deactivated") == {"f-off"}
        assert self.listed(client, p, status="online") == set(self.names) - {"f-offline", "f-off"}

    def test_filters_combine(self, client, p, devices):
        assert self.listed(client, p, status="online", lock_held="yes") == {"f-locked"}
        assert self.listed(client, p, status="offline", lock_held="yes") == set()


def test_sorting_by_last_seen_puts_the_most_recent_first(client, p):
    now = timezone.now()
    for name, minutes in [("seen-long-ago", 90), ("seen-just-now", 0), ("seen-a-while-ago", 30)]:
        make_device(p.fleet, name=name, last_seen_at=now - timedelta(minutes=minutes))
    client.force_login(p.observer)
    html = client.get(f"/fleets/{p.fleet.pk}/", {"sort": "-last_seen"}).content.decode()
    positions = [html.index(name) for name in ["seen-just-now", "seen-a-while-ago", "seen-long-ago"]]
    assert positions == sorted(positions)


def test_the_summary_counts_devices_by_status(client, p):
    for _ in range(3):
        make_device(p.fleet)
    make_device(p.fleet, online=False)
    make_device(p.fleet, is_active=False, online=False)
    make_device(p.other_fleet)  # another organization's: never counted here
    client.force_login(p.observer)
    counts = client.get(f"/fleets/{p.fleet.pk}/").context["counts"]
    assert (counts["total"], counts["online"], counts["offline"], counts["deactivated"]) == (5, 3, 1, 1)


def test_the_fleet_list_shows_device_totals_without_counting_devices_per_view(
    client, p, django_assert_max_num_queries
):
    for _ in range(4):
        make_device(p.fleet)
    second = make_fleet(p.org, name="second-fleet")
    make_device(second)
    client.force_login(p.org_admin)
    client.get("/fleets/")  # the first view counts once and caches the totals
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = client.get("/fleets/")
    assert not [q for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]
    totals = {fleet.name: fleet.device_count for fleet in response.context["fleets"]}
    assert totals[p.fleet.name] == 4 and totals["second-fleet"] == 1
