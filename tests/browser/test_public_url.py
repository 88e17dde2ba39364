"""Public device URLs, from the device page to the device's own web page through the proxy.

Chromium resolves *.localhost to the loopback address, and the live server listens there, so
http://<uuid>.devices.localhost:<port>/ reaches the dashboard's proxy without leaving the machine.
"""

from urllib.parse import urlsplit

import pytest
from django.conf import settings
from playwright.sync_api import expect

from tests.browser.conftest import check_page, login, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_the_live_server_answers_on_device_host_names(live_server):
    assert ".localhost" in settings.ALLOWED_HOSTS
    assert urlsplit(live_server.url).hostname in ("localhost", "127.0.0.1")


# The development servers (runserver --insecure, the tests' live server) answer /static/ from the
# dashboard's static files before any middleware runs, whatever the host: a device page's own
# /static/ path is shadowed there (not behind a production static server). See the xfail below.
DASHBOARD_STATIC_SHADOWS_DEVICE = "/static/style.css"


def test_a_public_url_turned_on_opens_the_device_web_page_through_the_proxy(
    page, page_guard, demo, provision
):
    device = provision(demo.fleet, name="kiosk-lobby-01")
    page_guard.allow_console_error(DASHBOARD_STATIC_SHADOWS_DEVICE)
    login(page, demo.operator)
    page.goto(f"/devices/{device.uuid}/")
    live = page.locator("#device-live")
    expect(live.locator("#public-url").get_by_text("Off", exact=True)).to_be_visible()

    page.get_by_role("button", name="Turn the public device URL on").click()
    expect(
        page.get_by_role("status").filter(has_text="Enable public device URL: applied to kiosk-lobby-01.")
    ).to_be_visible()
    port = urlsplit(page.url).port
    link = live.get_by_role("link", name=f"http://{device.uuid}.{settings.PUBLIC_URL_DOMAIN}:{port}")
    expect(link).to_be_visible()
    expect(page.get_by_role("button", name="Turn the public device URL off")).to_be_visible()
    screenshot(page, "device-public-url-on")

    with page.context.expect_page() as opened:
        link.click()
    device_page = opened.value
    expect(device_page.get_by_role("heading", name="kiosk-lobby-01")).to_be_visible()
    expect(device_page.get_by_text(device.uuid)).to_be_visible()
    assert urlsplit(device_page.url).hostname == f"{device.uuid}.{settings.PUBLIC_URL_DOMAIN}"
    expect(device_page.get_by_role("link", name="status.json")).to_be_visible()
    screenshot(device_page, "public-url-device-page")

    page.bring_to_front()
    page.get_by_role("button", name="Turn the public device URL off").click()
    expect(live.locator("#public-url").get_by_text("Off", exact=True)).to_be_visible()
    page_guard.allow_console_error("status of 404 (Not Found)")
    device_page.reload()
    expect(device_page.get_by_role("heading", name="No public URL here")).to_be_visible()


def test_a_device_that_serves_nothing_gets_a_clear_error_page(page, page_guard, demo, provision):
    device = provision(demo.fleet, name="kiosk-sensor-01", serves_web=False)
    login(page, demo.operator)
    page.goto(f"/devices/{device.uuid}/")
    page.get_by_role("button", name="Turn the public device URL on").click()
    link = page.locator("#device-live").get_by_role("link", name=f"http://{device.uuid}")

    page_guard.allow_console_error("status of 502 (Bad Gateway)")
    with page.context.expect_page() as opened:
        link.click()
    error_page = opened.value
    expect(error_page.get_by_role("heading", name="Nothing is serving on port 80")).to_be_visible()
    expect(error_page.get_by_text("check that a service in its release listens on port 80")).to_be_visible()
    check_page(error_page, "public-url-error-nothing-serving")


@pytest.mark.xfail(
    strict=True, reason="the dev servers' static files handler answers /static/ on device hosts too"
)
def test_a_device_page_may_use_its_own_static_path(page, page_guard, demo, provision, live_server):
    device = provision(demo.fleet, name="kiosk-lobby-01")
    device.__class__.objects.filter(pk=device.pk).update(public_url_enabled=True)
    page_guard.allow_console_error(DASHBOARD_STATIC_SHADOWS_DEVICE)
    port = urlsplit(live_server.url).port
    response = page.goto(
        f"http://{device.uuid}.{settings.PUBLIC_URL_DOMAIN}:{port}{DASHBOARD_STATIC_SHADOWS_DEVICE}"
    )
    assert response.status == 200 and "font-family" in response.text()
