"""Transfer ownership: disabled with the exact missing condition, enabled once it holds."""

import re

import pytest
from playwright.sync_api import expect

from fleets import services
from fleets.models import FleetRole, OrgRole
from tests.browser.conftest import check_page, login
from tests.factories import make_fleet, make_org

pytestmark = pytest.mark.browser


def transfer_button(page):
    name = "Transfer ownership…"
    return page.get_by_role("button", name=name).or_(page.get_by_role("link", name=name))


def test_the_transfer_button_says_why_it_is_disabled_until_the_preconditions_hold(page, demo):
    globex = make_org("Globex")
    services.org_member_set(organization=globex, user=demo.org_admin, role=OrgRole.MEMBER)
    login(page, demo.org_admin)
    page.goto(f"/fleets/{demo.fleet.pk}/actions/")

    button = transfer_button(page)
    expect(button).to_be_visible()
    expect(button).to_be_disabled()
    expect(page.get_by_text(re.compile(r"no fleet named .?kiosks", re.IGNORECASE))).to_be_visible()
    check_page(page, "fleet-actions-transfer-disabled")

    target = make_fleet(globex, "kiosks", device_type="raspberrypi4-64")
    page.reload()
    expect(transfer_button(page)).to_be_disabled()
    expect(page.get_by_text(re.compile(r"Developer", re.IGNORECASE))).to_be_visible()

    services.fleet_member_set(fleet=target, user=demo.org_admin, role=FleetRole.DEVELOPER)
    page.reload()
    expect(transfer_button(page)).to_be_enabled()
    transfer_button(page).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Globex")
    check_page(page, "fleet-transfer-dialog")


def test_only_org_administrators_see_the_transfer_enabled(page, demo):
    login(page, demo.administrator)
    page.goto(f"/fleets/{demo.fleet.pk}/actions/")
    expect(transfer_button(page)).to_be_disabled()
    expect(
        page.get_by_text(re.compile(r"Only administrators of .* can transfer", re.IGNORECASE))
    ).to_be_visible()
