"""Saved views: name the current filters, reopen them later, act on what they show."""

import re

import pytest
from playwright.sync_api import expect

from devices.models import Device, DeviceAction
from tests.browser.conftest import check_page, login
from tests.factories import make_device

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
]


def test_a_saved_view_is_reopened_and_acted_on(page, demo, celery_worker):
    lobby = [make_device(demo.fleet, name=f"kiosk-lobby-0{n}") for n in (1, 2, 3, 4)]
    make_device(demo.fleet, name="kiosk-cafe-01")
    login(page, demo.operator)
    page.goto(f"/fleets/{demo.fleet.pk}/")
    page.get_by_label("Name or UUID").fill("lobby")
    expect(page.locator("#devices-table tbody tr")).to_have_count(4)

    page.get_by_role("button", name=re.compile(r"^Save (this )?view")).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Name").fill("Lobby kiosks")
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status").filter(has_text="Lobby kiosks")).to_be_visible()

    page.get_by_role("link", name="Reset").click()
    expect(page.locator("#devices-table tbody tr")).to_have_count(5)
    page.get_by_role("link", name="Lobby kiosks").click()
    expect(page.locator("#devices-table tbody tr")).to_have_count(4)
    expect(page.get_by_label("Name or UUID")).to_have_value("lobby")
    check_page(page, "fleet-devices-saved-view")

    page.get_by_role("checkbox", name="Select all devices on this page").check()
    page.locator("[data-selection-bar] summary", has_text="Actions").click()
    page.get_by_role("menuitem", name="Enable public device URL…").click()
    page.get_by_role("button", name="Enable public device URL 4 devices").click()
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100", timeout=45_000)

    assert set(Device.objects.filter(public_url_enabled=True).values_list("name", flat=True)) == {
        d.name for d in lobby
    }
    assert DeviceAction.objects.get().target_count == 4


def test_a_user_deletes_a_saved_view_of_their_own(page, demo):
    login(page, demo.operator)
    page.goto(f"/fleets/{demo.fleet.pk}/?q=lobby")
    page.get_by_role("button", name=re.compile(r"^Save (this )?view")).click()
    page.get_by_role("dialog").get_by_label("Name").fill("Lobby kiosks")
    page.get_by_role("dialog").get_by_role("button", name="Save").click()
    expect(page.get_by_role("link", name="Lobby kiosks")).to_be_visible()

    page.get_by_role("button", name="Delete the view Lobby kiosks").click()
    expect(page.get_by_role("link", name="Lobby kiosks")).to_have_count(0)
