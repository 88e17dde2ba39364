"""The fleet's Actions tab: a fleet-wide restart with typed confirmation, followed live to 100 %.

Real worker, Redis and simulated devices; one device is offline and misses it, as the seed says.
"""

import re

import pytest
from playwright.sync_api import expect

from devices.models import DeviceAction
from tests.browser.conftest import PHONE, check_page, login, screenshot
from tests.factories import make_device

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_a_fleet_wide_restart_with_typed_confirmation_runs_to_100_percent(
    page, demo, celery_worker, provision_many, simulator
):
    online = provision_many(demo.fleet, ["kiosk-lobby-01", "kiosk-lobby-02", "kiosk-lobby-03"])
    make_device(demo.fleet, name="kiosk-cellar-01", online=False)
    login(page, demo.operator)

    page.goto(f"/fleets/{demo.fleet.pk}/")
    page.get_by_role("navigation", name="Fleet sections").get_by_role("link", name="Actions").click()
    expect(page.get_by_text("These apply to the whole fleet: all 4 devices.")).to_be_visible()
    page.get_by_role("link", name="Restart services…").click()

    dialog = page.get_by_role("dialog", name="Restart services: all 4 devices of kiosks?")
    expect(dialog).to_be_visible()
    confirm = dialog.get_by_role("button", name="Restart services 4 devices")
    typed = dialog.get_by_label("Type kiosks to confirm")
    expect(dialog.get_by_text("3 online now")).to_be_visible()
    expect(confirm).to_be_disabled()
    typed.fill("kiosk")
    expect(confirm).to_be_disabled()
    typed.fill("kiosks")
    expect(confirm).to_be_enabled()
    screenshot(page, "fleet-restart-dialog", full_page=False)
    confirm.click()

    expect(page.get_by_role("heading", name="Restart services", exact=True)).to_be_visible()
    expect(
        page.get_by_role("status").filter(has_text="Restart services: sent to every device of kiosks")
    ).to_be_visible()
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    screenshot(page, "action-progress-started")

    progress = page.get_by_role("progressbar")
    expect(progress).to_have_attribute("aria-valuenow", "100", timeout=45_000)
    expect(page.locator(".progress-label")).to_have_text("Done")
    assert page.evaluate("window.__sameDocument === true"), "the progress was shown by reloading the page"

    outcomes = page.locator("#outcomes tbody tr")
    expect(outcomes).to_have_count(4)
    for device in online:
        row = outcomes.filter(has=page.get_by_role("link", name=device.name))
        expect(row.locator(".badge")).to_have_text("Succeeded")
        expect(row).to_contain_text(re.compile(r"\d+ services? recreated"))
    cellar = outcomes.filter(has=page.get_by_role("link", name="kiosk-cellar-01"))
    expect(cellar.locator(".badge")).to_have_text("Missed: offline")
    expect(cellar).to_contain_text("Offline when the action was sent")
    check_page(page, "action-done")

    page.get_by_label("Outcome", exact=True).select_option(label="Missed: offline")
    expect(outcomes).to_have_count(1)
    expect(outcomes.first).to_contain_text("kiosk-cellar-01")

    for device in online:
        snapshot = simulator.call(_snapshot(simulator, device.uuid))
        assert snapshot["actions_executed"].get("restart") == 1, device.name
    action = DeviceAction.objects.get()
    assert (action.kind, action.scope) == ("restart", "fleet")
    assert (action.succeeded_count, action.missed_count) == (3, 1)

    page.goto(f"/fleets/{demo.fleet.pk}/activity/")
    expect(page.get_by_role("link", name="Restart services")).to_be_visible()
    check_page(page, "fleet-activity")
    page.set_viewport_size(PHONE)
    page.goto(f"/fleets/{demo.fleet.pk}/activity/{action.pk}/")
    check_page(page, "action-done")


async def _snapshot(simulator, uuid):
    return simulator.simulator.snapshot(uuid)
