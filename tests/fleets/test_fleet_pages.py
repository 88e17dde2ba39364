"""Fleet list, fleet summary with its device list, tabs, and the selection -> confirmation flow."""

import pytest

from devices.models import DeviceAction
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


def test_pages_follow_a_cursor(client, p):
    for i in range(55):
        make_device(p.fleet, name=f"dev-{i:03d}")
    client.force_login(p.observer)
    first = client.get(f"/fleets/{p.fleet.pk}/")
    html = first.content.decode()
    assert "dev-049" in html and "dev-050" not in html
    cursor = first.context["page"].next_cursor
    second = client.get(f"/fleets/{p.fleet.pk}/", {"after": cursor}).content.decode()
    assert "dev-050" in second and "dev-054" in second and "dev-049" not in second


def test_the_device_list_costs_the_same_queries_at_any_size(client, p, django_assert_max_num_queries):
    client.force_login(p.operator)
    make_device(p.fleet)
    with django_assert_max_num_queries(10) as few:
        client.get(f"/fleets/{p.fleet.pk}/")
    for _ in range(60):
        make_device(p.fleet)
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get(f"/fleets/{p.fleet.pk}/")


class TestSelection:
    def test_ticked_devices_are_previewed(self, client, p):
        online = make_device(p.fleet)
        offline = make_device(p.fleet, online=False)
        old = make_device(p.fleet, agent_version="1.0.3")
        make_device(p.fleet)  # not ticked
        client.force_login(p.operator)
        response = client.get(f"/fleets/{p.fleet.pk}/actions/reboot/", {"ids": [online.pk, offline.pk, old.pk]})
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
