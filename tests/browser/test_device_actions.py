"""A device's Actions menu: a reboot followed on the page without reloading it, and the keyboard."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import check_page, login, screenshot, stock_fleet

pytestmark = pytest.mark.browser


@pytest.mark.integration
def test_a_rebooted_device_goes_offline_and_comes_back_on_the_page_without_a_reload(
    page, demo, celery_worker, provision, simulator
):
    device = provision(demo.fleet, name="kiosk-lobby-01")
    # Dark for longer than two refreshes of the live partial (every 2 s while a delivery is open),
    # so the page cannot miss the device being away.
    simulator.simulator.reboot_seconds = 6.0
    login(page, demo.operator)
    page.goto(f"/devices/{device.uuid}/")
    status = page.locator("#device-status .badge").first
    expect(status).to_have_text("Online")

    page.locator("main summary", has_text="Actions").click()
    menu = page.get_by_role("menu")
    expect(menu.get_by_text("This device")).to_be_visible()
    expect(menu.get_by_text("Dangerous actions")).to_be_visible()
    menu.get_by_role("menuitem", name="Reboot…").click()
    dialog = page.get_by_role("dialog", name="Reboot: kiosk-lobby-01?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Reboot", exact=True).click()

    expect(page.get_by_role("status").filter(has_text="Reboot: sent to kiosk-lobby-01.")).to_be_visible()
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    live = page.locator("#device-live")
    expect(status).to_have_text("Offline", timeout=30_000)
    expect(live.get_by_text("Rebooting", exact=True)).to_be_visible()
    screenshot(page, "device-rebooting")
    expect(status).to_have_text("Online", timeout=30_000)
    recent = live.get_by_role("table").first.locator("tbody tr").first
    expect(recent).to_contain_text("Reboot")
    expect(recent.locator(".badge")).to_have_text("Succeeded", timeout=30_000)
    expect(recent).to_contain_text("rebooted; back after 6 s")
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded to show the device's state"
    check_page(page, "device-after-reboot")


def test_the_actions_menu_and_its_dialog_work_from_the_keyboard(page, demo):
    device = stock_fleet(demo.fleet)["online"]
    login(page, demo.operator)
    page.goto(f"/devices/{device.uuid}/")
    expect(page.get_by_role("heading", name="kiosk-lobby-01")).to_be_visible()

    actions = page.locator("main summary", has_text="Actions")
    for _ in range(40):  # Tab through the page until the menu button has the focus
        page.keyboard.press("Tab")
        if actions.evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail("the Actions menu cannot be reached with Tab")

    page.keyboard.press("Enter")
    first = page.get_by_role("menuitem", name="Restart services…")
    expect(first).to_be_focused()
    page.keyboard.press("ArrowDown")
    reboot = page.get_by_role("menuitem", name="Reboot…")
    expect(reboot).to_be_focused()
    page.keyboard.press("End")
    expect(page.get_by_role("menuitem", name="Delete…")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.get_by_role("menu")).to_be_hidden()
    expect(actions).to_be_focused()

    page.keyboard.press("ArrowDown")  # opens the menu again, on its first item
    expect(first).to_be_focused()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Reboot: kiosk-lobby-01?")
    expect(dialog).to_be_visible()
    focused_inside = dialog.evaluate("d => d.contains(document.activeElement)")
    assert focused_inside, "the dialog opened without the focus in it"
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    page.get_by_role("link", name="Purge data…").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Purge data: kiosk-lobby-01?")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Type kiosk-lobby-01 to confirm")).to_be_focused()
    page.keyboard.type("kiosk-lobby-01")
    expect(dialog.get_by_role("button", name="Purge data")).to_be_enabled()
    screenshot(page, "device-purge-dialog-typed", full_page=False)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_an_agent_without_action_api_says_why_in_the_menu(page, demo):
    device = stock_fleet(demo.fleet)["old_agent"]
    login(page, demo.operator)
    page.goto(f"/devices/{device.uuid}/")
    page.locator("main summary", has_text="Actions").click()
    reboot = page.get_by_role("menuitem", name="Reboot")
    expect(reboot).to_have_attribute("aria-disabled", "true")
    expect(reboot).to_contain_text("has no action API: needs 1.1.0 or newer")
    check_page(page, "device-old-agent-menu")
