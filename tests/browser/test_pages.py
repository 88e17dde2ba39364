"""Every main page at 1280 px and at 390 px: a screenshot of each, every control named, no page
that scrolls sideways on a phone, and the status badges of every device state."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    check_page,
    login,
    menu_off_screen,
    screenshot,
    stock_fleet,
    table_overflow,
)
from tests.factories import make_fleet

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "390"])
def test_a_tour_of_every_main_page(page, demo, viewport):
    page.set_viewport_size(viewport)
    devices = stock_fleet(demo.fleet)
    fleet = demo.fleet

    page.goto("/accounts/login/")
    check_page(page, "login")
    login(page, demo.operator)
    check_page(page, "fleets")

    page.get_by_role("link", name="kiosks").click()
    expect(page.get_by_role("heading", name="kiosks")).to_be_visible()
    check_page(page, "fleet-devices")
    if viewport == DESKTOP:  # every column of the device table, no sideways scrolling in it
        assert table_overflow(page, "#devices-table") <= 0, (
            "the fleet's device table scrolls sideways at 1280 px"
        )

    page.get_by_role("checkbox", name="Select kiosk-lobby-01").check()
    page.get_by_role("checkbox", name="Select kiosk-lobby-02").check()
    expect(page.get_by_text("2 selected")).to_be_visible()
    page.locator("[data-selection-bar] summary", has_text="Actions").click()
    expect(page.get_by_role("menuitem", name="Purge data…")).to_be_attached()
    menu = page.locator("[data-selection-bar] .dropdown-menu")
    assert menu_off_screen(menu) == [], "the selection's Actions menu runs off the screen"
    purge = menu.get_by_role("menuitem", name="Purge data…")
    purge.scroll_into_view_if_needed()  # a long menu scrolls inside itself
    expect(purge).to_be_in_viewport()
    menu.evaluate("menu => menu.scrollTop = 0")
    check_page(page, "fleet-devices-selection-menu", full_page=False)

    page.goto(f"/fleets/{fleet.pk}/actions/")
    check_page(page, "fleet-actions")
    page.goto(f"/fleets/{fleet.pk}/members/")
    check_page(page, "fleet-members")
    page.goto(f"/fleets/{fleet.pk}/activity/")
    check_page(page, "fleet-activity-empty")

    page.goto("/devices/")
    expect(page.get_by_role("link", name="kiosk-gate-02")).to_be_visible()
    check_page(page, "devices")
    if viewport == DESKTOP:
        assert table_overflow(page, "#devices-table") <= 0, "the device list scrolls sideways at 1280 px"

    page.goto(f"/devices/{devices['online'].uuid}/")
    expect(page.get_by_role("heading", name="kiosk-lobby-01")).to_be_visible()
    check_page(page, "device")
    recent = page.locator("section.card", has=page.get_by_role("heading", name="Recent actions"))
    expect(recent).to_contain_text("No actions on this device yet.")
    summary = page.locator("section.card", has=page.get_by_role("heading", name="Summary"))
    assert recent.bounding_box()["height"] < summary.bounding_box()["height"] / 2, (
        "the empty Recent actions card stretches to the Summary card's height"
    )
    page.locator("main summary", has_text="Actions").click()
    expect(page.get_by_role("menuitem", name="Reboot…")).to_be_visible()
    assert menu_off_screen(page.locator("main details[open] > .dropdown-menu")) == []
    check_page(page, "device-actions-menu", full_page=False)
    page.get_by_role("menuitem", name="Reboot…").click()
    expect(page.get_by_role("dialog")).to_be_visible()
    check_page(page, "device-reboot-dialog", full_page=False)
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("dialog")).to_be_hidden()

    page.get_by_role("link", name="Shut down…").click()
    expect(page.get_by_role("dialog")).to_be_visible()
    check_page(page, "device-shutdown-dialog", full_page=False)


def test_every_device_state_has_its_badge(page, demo):
    stock_fleet(demo.fleet)
    login(page, demo.observer)
    page.goto(f"/fleets/{demo.fleet.pk}/")
    rows = page.locator("#devices-table tbody tr")
    expected = {
        "kiosk-lobby-01": "Online",
        "kiosk-lobby-02": "Online",
        "kiosk-lobby-03": "Offline",
        "kiosk-cafe-01": "Updating",
        "kiosk-gate-02": "Deactivated",
    }
    for name, status in expected.items():
        row = rows.filter(has=page.get_by_role("link", name=name, exact=True))
        expect(row.locator(".badge").first).to_have_text(status)
        expect(row.locator(".badge").first).to_have_class(f"badge status-{status.lower()}")
    columns = page.locator("#devices-table thead th")
    for heading in ["Status", "Name", "UUID", "Device type", "Host OS", "Agent", "Release", "Last seen",
                    "IP address", "Flags"]:  # fmt: skip
        expect(columns.filter(has_text=heading)).to_be_in_viewport()

    def flags(name):
        return rows.filter(has=page.get_by_role("link", name=name, exact=True)).locator(".col-flags")

    expect(flags("kiosk-lobby-02").locator(".badge.status-locked")).to_have_text("Lock held")
    expect(flags("kiosk-lobby-01").locator(".badge")).to_have_text(["Public URL"])
    expect(flags("kiosk-cafe-02").locator(".badge")).to_have_text(["Local mode"])
    expect(flags("kiosk-lobby-03")).to_have_text("None")
    for flag in ["Public URL", "Local mode", "Lock held"]:  # in view at 1280 px, not behind a scroll
        expect(page.locator("#devices-table .col-flags .badge", has_text=flag)).to_be_in_viewport()
    assert table_overflow(page, "#devices-table") <= 0
    screenshot(page, "fleet-devices-badges")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "390"])
def test_the_organization_pages_and_the_new_fleet_form(page, demo, viewport):
    page.set_viewport_size(viewport)
    stock_fleet(demo.fleet)
    login(page, demo.org_admin)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Organizations").click()
    expect(page.get_by_role("heading", name="Organizations")).to_be_visible()
    expect(page.get_by_role("row", name=re.compile("Acme"))).to_contain_text("Administrator")
    check_page(page, "orgs")

    page.get_by_role("link", name="Acme").click()
    expect(page.get_by_role("heading", name="Acme", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="kiosks")).to_be_visible()
    check_page(page, "org")

    page.get_by_role("link", name="New fleet").click()
    expect(page.get_by_role("heading", name="New fleet")).to_be_visible()
    expect(page.get_by_label("Organization")).to_have_value(demo.org.handle)
    check_page(page, "fleet-new")


# (how it is opened, the label on the page, the device it is opened on)
DEVICE_CONFIRMATIONS = [
    ("menu", "Move to another fleet", "online"),
    ("menu", "Update host OS", "online"),
    ("menu", "Override update lock", "locked"),
    ("menu", "Enable local mode", "online"),
    ("menu", "Change device type", "online"),
    ("danger", "Deactivate", "offline"),
    ("danger", "Delete", "online"),
]


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "390"])
def test_each_device_confirmation_opens_from_the_device_page(page, demo, viewport):
    page.set_viewport_size(viewport)
    devices = stock_fleet(demo.fleet)
    make_fleet(demo.org, "kiosks-spare", device_type="raspberrypi4-64")  # somewhere to move to
    login(page, demo.org_admin)

    for opened_from, label, which in DEVICE_CONFIRMATIONS:
        device = devices[which]
        page.goto(f"/devices/{device.uuid}/")
        expect(page.get_by_role("heading", name=device.name)).to_be_visible()
        if opened_from == "menu":
            page.locator("main summary", has_text="Actions").click()
            item = page.get_by_role("menuitem", name=f"{label}…", exact=True)
            expect(item).to_be_visible()
            item.click()
        else:
            page.locator(".danger-zone").get_by_role("link", name=f"{label}…", exact=True).click()
        dialog = page.get_by_role("dialog", name=f"{label}: {device.name}?")
        expect(dialog).to_be_visible()
        assert menu_off_screen(dialog) == [], f"{label}: the dialog does not fit the screen"
        slug = re.sub(r"[^a-z]+", "-", label.lower()).strip("-")
        check_page(page, f"device-{slug}-dialog", full_page=False)
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
