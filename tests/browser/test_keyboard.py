"""The keyboard alone: the selection bar's Actions menu and the fleet-wide restart dialog open,
move and close from the keyboard, and the focus goes back where it was (the device page's menu
and dialogs: test_device_actions.py)."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import login, screenshot, stock_fleet, tab_to

pytestmark = pytest.mark.browser


def test_the_selection_actions_menu_works_from_the_keyboard(page, demo):
    stock_fleet(demo.fleet)
    login(page, demo.operator)
    page.goto(f"/fleets/{demo.fleet.pk}/")
    expect(page.get_by_role("heading", name="kiosks", exact=False).first).to_be_visible()

    tick = page.get_by_role("checkbox", name="Select kiosk-cafe-01")
    tab_to(page, tick)
    page.keyboard.press("Space")
    expect(tick).to_be_checked()
    bar = page.locator("[data-selection-bar]")
    expect(bar.get_by_text("1 selected")).to_be_visible()

    actions = bar.locator("summary", has_text="Actions")
    tab_to(page, actions, backwards=True)  # the bar sits above the table
    page.keyboard.press("Enter")
    menu = bar.get_by_role("menu")
    items = menu.get_by_role("menuitem")
    expect(items.first).to_be_focused()
    expect(items.first).to_have_text("Restart services…")
    page.keyboard.press("ArrowDown")
    expect(items.nth(1)).to_be_focused()
    page.keyboard.press("End")
    expect(items.last).to_be_focused()
    expect(items.last).to_be_in_viewport()  # a long menu scrolls to the focused item
    screenshot(page, "fleet-devices-selection-menu-keyboard", full_page=False)
    page.keyboard.press("Home")
    expect(items.first).to_be_focused()
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    expect(actions).to_be_focused()

    page.keyboard.press("ArrowDown")  # opens it again, on its first item
    expect(items.first).to_be_focused()
    page.keyboard.press("Enter")  # chooses it: the confirmation of a restart of the one device
    expect(page).to_have_url(re.compile(rf"/fleets/{demo.fleet.pk}/actions/restart/"))
    expect(page.get_by_role("heading", name="Restart services: 1 selected device of kiosks?")).to_be_visible()


def test_the_fleet_restart_dialog_opens_and_closes_from_the_keyboard(page, demo):
    stock_fleet(demo.fleet)
    login(page, demo.operator)
    page.goto(f"/fleets/{demo.fleet.pk}/actions/")

    restart = page.get_by_role("link", name="Restart services…")
    tab_to(page, restart)
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name=re.compile(r"^Restart services: all \d+ devices of kiosks\?$"))
    expect(dialog).to_be_visible()
    typed = dialog.get_by_label("Type kiosks to confirm")
    expect(typed).to_be_focused()
    page.keyboard.type("kiosks")
    confirm = dialog.get_by_role("button", name=re.compile("^Restart services"))
    expect(confirm).to_be_enabled()
    page.keyboard.press("Tab")  # the focus stays in the modal dialog
    assert dialog.evaluate("d => d.contains(document.activeElement)"), "Tab left the open dialog"
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(restart).to_be_focused()

    page.keyboard.press("Enter")  # again: a fresh dialog, nothing typed
    dialog = page.get_by_role("dialog", name=re.compile(r"^Restart services: all \d+ devices"))
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Type kiosks to confirm")).to_have_value("")
    expect(dialog.get_by_role("button", name=re.compile("^Restart services"))).to_be_disabled()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(restart).to_be_focused()
