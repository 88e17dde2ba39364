"""Saved views: a member names the device list's current filters; they are listed on the fleet page."""

import json

import pytest

from devices.models import SavedView
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db

FILTERS = {"q": "", "status": "offline", "device_type": "", "os_op": "lt", "os_version": "2.12.0", "agent_version": "",
           "public_url": "", "local_mode": "", "lock_held": "", "sort": "name"}  # fmt: skip


@pytest.fixture
def p():
    return Personas()


def _url(p, suffix=""):
    return f"/fleets/{p.fleet.pk}/views/{suffix}"


def test_a_member_saves_the_filters_on_screen(client, p):
    client.force_login(p.operator)
    response = client.post(_url(p), FILTERS | {"name": "Old and offline"})
    view = SavedView.objects.get()
    assert (view.fleet, view.owner, view.name) == (p.fleet, p.operator, "Old and offline")
    assert view.query == "status=offline&os_version=2.12.0&os_op=lt"  # no blanks, no default sort
    assert response.status_code == 302 and response["Location"] == f"/fleets/{p.fleet.pk}/?{view.query}"


def test_observers_may_save_views_too(client, p):
    client.force_login(p.observer)
    assert client.post(_url(p), FILTERS | {"name": "Mine"}).status_code == 302
    assert SavedView.objects.get().owner == p.observer


def test_without_javascript_the_pages_query_is_saved(client, p):
    client.force_login(p.operator)
    client.post(_url(p), {"name": "By last seen", "query": "sort=last_seen&after=abc&status=online"})
    assert SavedView.objects.get().query == "status=online&sort=last_seen"


def test_the_view_is_listed_and_choosing_it_applies_it(client, p):
    make_device(p.fleet, name="old-offline", os_version="2.9.7", online=False)
    make_device(p.fleet, name="new-online")
    view = SavedView.objects.create(fleet=p.fleet, owner=p.operator, name="Old and offline",
                                    query="status=offline&os_version=2.12.0&os_op=lt")  # fmt: skip
    client.force_login(p.operator)
    html = client.get(f"/fleets/{p.fleet.pk}/").content.decode()
    assert "Old and offline" in html and f'href="?{view.query.replace("&", "&amp;")}"' in html
    applied = client.get(f"/fleets/{p.fleet.pk}/?{view.query}")
    html = applied.content.decode()
    assert applied.context["active_view"] == view and 'aria-current="true"' in html
    assert "old-offline" in html and "new-online" not in html


def test_other_members_views_are_listed_under_their_name_without_delete(client, p):
    view = SavedView.objects.create(fleet=p.fleet, owner=p.developer, name="Developer's view", query="status=online")
    client.force_login(p.operator)
    html = client.get(f"/fleets/{p.fleet.pk}/").content.decode()
    assert "Developer&#x27;s view" in html and p.developer.username in html
    assert f"/views/{view.pk}/delete/" not in html


def test_a_name_is_required(client, p):
    client.force_login(p.operator)
    response = client.post(_url(p), FILTERS | {"name": "  "}, follow=True)
    assert not SavedView.objects.exists()
    assert "This field is required." in response.content.decode()


def test_names_are_unique_per_member_and_fleet(client, p):
    SavedView.objects.create(fleet=p.fleet, owner=p.operator, name="Offline", query="status=offline")
    client.force_login(p.operator)
    response = client.post(_url(p), FILTERS | {"name": "offline"}, follow=True)
    assert "You already have a view named “offline”" in response.content.decode()
    assert SavedView.objects.count() == 1
    client.force_login(p.observer)  # another member may use the same name
    client.post(_url(p), FILTERS | {"name": "Offline"})
    assert SavedView.objects.count() == 2


def test_the_filters_must_be_valid(client, p):
    client.force_login(p.operator)
    response = client.post(_url(p), FILTERS | {"name": "Bad", "os_version": "latest"}, follow=True)
    assert not SavedView.objects.exists()
    assert "The filters are not valid" in response.content.decode()


def test_there_must_be_something_to_save(client, p):
    client.force_login(p.operator)
    client.post(_url(p), {"name": "Everything", "q": "", "status": "", "sort": "name"})
    assert not SavedView.objects.exists()


def test_with_htmx_an_error_is_a_toast_and_the_dialog_stays(client, p):
    client.force_login(p.operator)
    response = client.post(_url(p), FILTERS | {"name": ""}, headers={"HX-Request": "true"})
    assert response.status_code == 204
    assert json.loads(response["HX-Trigger"])["toast"]["level"] == "error"


def test_with_htmx_a_saved_view_sends_the_browser_to_it(client, p):
    client.force_login(p.operator)
    response = client.post(_url(p), FILTERS | {"name": "Old"}, headers={"HX-Request": "true"})
    assert response["HX-Redirect"] == f"/fleets/{p.fleet.pk}/?{SavedView.objects.get().query}"


def test_members_delete_their_own_views(client, p):
    view = SavedView.objects.create(fleet=p.fleet, owner=p.observer, name="Mine", query="status=online")
    client.force_login(p.observer)
    response = client.post(_url(p, f"{view.pk}/delete/"), {"return_to": "status=online&after=x"})
    assert response.status_code == 302 and response["Location"] == f"/fleets/{p.fleet.pk}/?status=online"
    assert not SavedView.objects.exists()


def test_nobody_deletes_another_members_view(client, p):
    view = SavedView.objects.create(fleet=p.fleet, owner=p.observer, name="Theirs", query="status=online")
    client.force_login(p.administrator)
    assert client.post(_url(p, f"{view.pk}/delete/")).status_code == 403
    assert SavedView.objects.filter(pk=view.pk).exists()


def test_outsiders_get_404(client, p):
    view = SavedView.objects.create(fleet=p.fleet, owner=p.operator, name="Ours", query="status=online")
    client.force_login(p.outsider)
    assert client.post(_url(p), FILTERS | {"name": "Sneaky"}).status_code == 404
    assert client.post(_url(p, f"{view.pk}/delete/")).status_code == 404
    assert SavedView.objects.count() == 1


def test_a_view_of_another_fleet_cannot_be_deleted_through_this_one(client, p):
    other = SavedView.objects.create(
        fleet=p.other_fleet, owner=p.operator, name="Elsewhere", query="status=online"
    )
    client.force_login(p.operator)
    assert client.post(_url(p, f"{other.pk}/delete/")).status_code == 404


def test_saving_needs_a_post(client, p):
    client.force_login(p.operator)
    assert client.get(_url(p)).status_code == 405
