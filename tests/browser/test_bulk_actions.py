"""The device list: filter, tick devices or select all matching, and act on exactly those."""

import re

import pytest
from playwright.sync_api import expect

from devices.models import Device, DeviceAction
from tests.browser.conftest import check_page, login, screenshot
from tests.factories import make_device

pytestmark = pytest.mark.browser


@pytest.mark.integration
def test_three_ticked_devices_of_a_filtered_list_are_purged(
    page, demo, celery_worker, provision_many, simulator
):
    names = ["kiosk-lobby-01", "kiosk-lobby-02", "kiosk-lobby-03", "kiosk-lobby-04", "kiosk-cafe-01"]
    *lobby, cafe = provision_many(demo.fleet, names, services=["main", "worker"])
    ticked, unticked = lobby[:3], [lobby[3], cafe]
    login(page, demo.operator)
    page.goto(f"/fleets/{demo.fleet.pk}/")

    page.get_by_label("Name or UUID").fill("lobby")
    rows = page.locator("#devices-table tbody tr")
    expect(rows).to_have_count(4)
    expect(page).to_have_url(re.compile(r"[?&]q=lobby(&|$)"))  # the filter is in the address, to share
    for device in ticked:
        page.get_by_role("checkbox", name=f"Select {device.name}").check()
    expect(page.get_by_text("3 selected")).to_be_visible()
    page.locator("[data-selection-bar] summary", has_text="Actions").click()
    page.get_by_role("menuitem", name="Purge data…").click()

    expect(page.get_by_role("heading", name="Purge data: 3 selected devices of kiosks?")).to_be_visible()
    expect(page.locator(".preview")).to_contain_text("3 online now")
    confirm = page.get_by_role("button", name="Purge data 3 devices")
    expect(confirm).to_be_disabled()
    page.get_by_label("Type 3 to confirm").fill("3")
    expect(confirm).to_be_enabled()
    check_page(page, "selection-purge-confirm")
    confirm.click()

    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100", timeout=45_000)
    outcomes = page.locator("#outcomes tbody tr")
    expect(outcomes).to_have_count(3)
    for device in ticked:
        row = outcomes.filter(has=page.get_by_role("link", name=device.name))
        expect(row.locator(".badge")).to_have_text("Succeeded")
        expect(row).to_contain_text("2 named volumes recreated empty")
    screenshot(page, "selection-purge-done")

    action = DeviceAction.objects.get()
    assert (action.kind, action.scope, action.target_count) == ("purge", "selection", 3)
    for device in ticked:
        state = simulator.call(_snapshot(simulator, device.uuid))
        assert state["actions_executed"].get("purge") == 1, device.name
        # Services write to their first volume now and then; the others stay as the purge left them.
        assert [(v["name"], v["files"], v["bytes"]) for v in state["volumes"][1:]] == [("worker-cache", 0, 0)]
    for device in unticked:
        state = simulator.call(_snapshot(simulator, device.uuid))
        assert state["actions_executed"].get("purge") is None, device.name
        assert all(v["files"] > 0 for v in state["volumes"]), device.name

    page.get_by_role("link", name=ticked[0].name).click()
    volumes = page.get_by_role("table").filter(has_text="Volume")
    expect(volumes.get_by_role("row", name="worker-cache 0 0 bytes")).to_be_visible()


@pytest.mark.integration
def test_select_all_matching_reaches_exactly_the_devices_of_the_filter(page, demo, celery_worker):
    # More than a page (50) match, so "all matching" cannot be the ticked rows of the page.
    lobby = [make_device(demo.fleet, name=f"kiosk-lobby-{n:02}") for n in range(1, 56)]
    others = [make_device(demo.fleet, name=f"kiosk-cafe-0{n}") for n in (1, 2, 3)]
    login(page, demo.operator)
    page.goto(f"/fleets/{demo.fleet.pk}/?q=lobby")
    expect(page.locator("#devices-table tbody tr")).to_have_count(50)

    page.get_by_role("checkbox", name="Select all devices on this page").check()
    expect(page.get_by_text("50 selected")).to_be_visible()
    page.get_by_role("button", name="Select all 55 matching").click()
    expect(page.get_by_text("All 55 matching selected")).to_be_visible()
    screenshot(page, "fleet-devices-all-matching")
    page.locator("[data-selection-bar] summary", has_text="Actions").click()
    page.get_by_role("menuitem", name="Enable public device URL…").click()

    expect(
        page.get_by_role("heading", name="Enable public device URL: 55 selected devices of kiosks?")
    ).to_be_visible()
    page.get_by_role("button", name="Enable public device URL 55 devices").click()
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100", timeout=45_000)
    expect(page.locator(".stat", has_text="Succeeded").locator(".stat-value")).to_have_text("55")

    on = set(Device.objects.filter(public_url_enabled=True).values_list("name", flat=True))
    assert on == {d.name for d in lobby}
    assert not Device.objects.filter(pk__in=[d.pk for d in others], public_url_enabled=True).exists()
    action = DeviceAction.objects.get()
    assert (
        action.selection == {"filter": action.selection["filter"]} and "q=lobby" in action.selection["filter"]
    )


def test_cancel_on_the_confirmation_goes_back_to_the_filtered_list(page, demo):
    for n in (1, 2):
        make_device(demo.fleet, name=f"kiosk-lobby-0{n}")
    make_device(demo.fleet, name="kiosk-cafe-01")
    login(page, demo.operator)
    page.goto(f"/fleets/{demo.fleet.pk}/?q=lobby")
    page.get_by_role("checkbox", name="Select kiosk-lobby-01").check()
    page.locator("[data-selection-bar] summary", has_text="Actions").click()
    page.get_by_role("menuitem", name="Restart services…").click()
    expect(page.get_by_role("heading", name="Restart services: 1 selected device of kiosks?")).to_be_visible()

    page.get_by_role("link", name="Cancel").click()
    expect(page.get_by_label("Name or UUID")).to_have_value("lobby")
    expect(page.locator("#devices-table tbody tr")).to_have_count(2)
    assert not DeviceAction.objects.exists()


async def _snapshot(simulator, uuid):
    return simulator.simulator.snapshot(uuid)
