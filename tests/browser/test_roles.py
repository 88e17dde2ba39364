"""Logging in as each role, and what each role is offered: an observer sees no action controls."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import login, screenshot
from tests.factories import make_device

pytestmark = pytest.mark.browser

OPENS_AN_ACTION = re.compile("…$")
TURN_ON_OR_OFF = re.compile(r"^Turn (on|off)$|public device URL (on|off)")

ROLES = [
    ("observer", "Observer"),
    ("developer", "Developer"),
    ("operator", "Operator"),
    ("administrator", "Administrator"),
    ("org_admin", "Administrator"),
]


@pytest.mark.parametrize(("persona", "role_label"), ROLES, ids=[persona for persona, _ in ROLES])
def test_each_role_logs_in_and_sees_its_role_on_the_fleet(page, demo, persona, role_label):
    make_device(demo.fleet, name="kiosk-lobby-01")
    login(page, getattr(demo, persona))

    fleets = page.get_by_role("table")
    expect(fleets.get_by_role("link", name="kiosks")).to_be_visible()
    page.get_by_role("link", name="kiosks").click()

    expect(page.get_by_role("heading", name="kiosks")).to_be_visible()
    expect(page.get_by_text(f"Your role: {role_label}")).to_be_visible()
    expect(page.get_by_role("link", name="kiosk-lobby-01")).to_be_visible()


def test_a_wrong_password_is_refused_with_a_message(page, demo):
    page.goto("/accounts/login/")
    screenshot(page, "login")
    page.get_by_label("Username").fill(demo.operator.username)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("enter a correct username and password")
    screenshot(page, "login-error")


def test_an_observer_sees_no_action_controls(page, demo):
    device = make_device(demo.fleet, name="kiosk-lobby-01")
    login(page, demo.observer)

    page.goto(f"/fleets/{demo.fleet.pk}/")
    expect(page.get_by_role("link", name="kiosk-lobby-01")).to_be_visible()
    _expect_no_action_controls(page)
    expect(page.get_by_role("link", name="Fleet actions")).to_have_count(0)

    page.get_by_role("link", name="Actions", exact=True).click()
    expect(page.get_by_role("heading", name="Dangerous actions")).to_be_visible()
    expect(page.get_by_text("running them needs the Operator role")).to_be_visible()
    expect(page.locator("main").get_by_role("link", name=OPENS_AN_ACTION)).to_have_count(0)
    expect(page.locator("main").get_by_role("button")).to_have_count(0)

    page.goto(f"/devices/{device.uuid}/")
    expect(page.get_by_role("heading", name="kiosk-lobby-01")).to_be_visible()
    _expect_no_action_controls(page)
    expect(page.get_by_role("button", name="Turn the public device URL on")).to_have_count(0)
    expect(page.get_by_role("heading", name="Dangerous actions")).to_have_count(0)


def test_an_operator_gets_the_controls_an_observer_does_not(page, demo):
    """The other side of the observer test: the same selectors find the controls for an operator."""
    device = make_device(demo.fleet, name="kiosk-lobby-01")
    login(page, demo.operator)

    page.goto(f"/fleets/{demo.fleet.pk}/")
    expect(page.get_by_role("checkbox", name="Select kiosk-lobby-01")).to_be_visible()
    page.get_by_role("checkbox", name="Select kiosk-lobby-01").check()
    expect(page.locator("summary", has_text="Actions")).to_be_visible()

    page.goto(f"/devices/{device.uuid}/")
    expect(page.locator("summary", has_text="Actions")).to_be_visible()
    expect(page.get_by_role("button", name="Turn the public device URL on")).to_be_visible()
    expect(page.get_by_role("heading", name="Dangerous actions")).to_be_visible()


def _expect_no_action_controls(page):
    expect(page.get_by_role("checkbox")).to_have_count(0)
    expect(page.locator("main summary", has_text="Actions")).to_have_count(0)
    expect(page.get_by_role("menuitem")).to_have_count(0)
    expect(page.get_by_role("button", name=TURN_ON_OR_OFF)).to_have_count(0)
