"""The browser suite: Playwright for Python driving Debian's Chromium against the live server.

Chromium
    One Chromium for the whole browser suite, launched from /usr/bin/chromium (Playwright's own
    browser download does not work here). Without it the suite is skipped with the reason, unless
    BROWSER_TESTS_REQUIRED is set (CI sets it in .ci/run): then the missing browser is an error.
    The fixture is package scoped, not session scoped: Playwright's sync API marks an asyncio loop
    as running in the main thread while it lives, which would break asyncio.run() and Django's
    async-safety check in every test module collected after this one. For the same reason ORM
    calls of the browser tests themselves need DJANGO_ALLOW_ASYNC_UNSAFE while it lives (worker
    subprocesses started meanwhile inherit it; the integration tests run them without it).

`page`
    A fresh browser context per test, 1280 x 900, reduced motion (no animation half way through a
    screenshot). The test fails on any console error or uncaught page error, and on any request to
    a host other than the live server (and the public device URLs it serves at
    <uuid>.devices.localhost:<port>): such requests are aborted, nothing leaves the machine.
    On failure every open tab is saved as a screenshot under $SCREENSHOT_DIR/failures/.
    A test expecting an error in the console says so: page_guard.allow_console_error("502").

Screenshots
    screenshot(page, "fleet-summary") saves $SCREENSHOT_DIR/fleet-summary-1280.png (the suffix is
    the viewport width). $SCREENSHOT_DIR defaults to .run/screenshots; the list is printed at the
    end of the run, so CI keeps it in its log.
"""

import contextlib
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from fleets.models import FleetRole
from tests.factories import make_fleet, make_member, make_org, make_org_admin

BASE_DIR = Path(__file__).resolve().parent.parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT_DIR = Path(os.environ.get("SCREENSHOT_DIR") or BASE_DIR / ".run" / "screenshots").resolve()
PASSWORD = "browser-test-password"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Generous: two cores are shared with other test runs, a real worker and a simulator.
TIMEOUT_MS = 20_000

_screenshots: list[Path] = []


# --- Chromium -----------------------------------------------------------------------------------


def pytest_collection_modifyitems(config, items):
    if CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK):
        return
    if os.environ.get("BROWSER_TESTS_REQUIRED"):
        raise pytest.UsageError(
            f"{CHROMIUM} is missing and BROWSER_TESTS_REQUIRED is set: apt-get install chromium"
        )
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason=f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    for item in items:
        if here in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="package")
def browser():
    from playwright.sync_api import expect, sync_playwright

    shutil.rmtree(SCREENSHOT_DIR / "failures", ignore_errors=True)  # only this run's failures
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    expect.set_options(timeout=TIMEOUT_MS)
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


# --- One page per test, guarded -----------------------------------------------------------------


@dataclass
class PageGuard:
    """What a test's pages did that they should not have: console errors, requests off the machine."""

    server: str  # host:port of the live server
    console_errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    allowed_errors: list[str] = field(default_factory=list)

    def allow_console_error(self, text: str) -> None:
        """A console error containing `text` is expected (e.g. the status of an error page)."""
        self.allowed_errors.append(text)

    def is_local(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            return True
        host, port = parts.hostname or "", parts.port
        server_host, server_port = self.server.rsplit(":", 1)
        if str(port) != server_port:
            return False
        public = re.fullmatch(rf"[0-9a-f]{{32}}\.{re.escape(settings.PUBLIC_URL_DOMAIN)}", host)
        return host == server_host or public is not None

    def on_route(self, route) -> None:
        if self.is_local(route.request.url):
            route.continue_()
        else:
            self.foreign_requests.append(f"{route.request.method} {route.request.url}")
            route.abort("blockedbyclient")

    def on_console(self, message) -> None:
        if message.type == "error":
            location = message.location or {}
            self.console_errors.append(
                f"{message.text} ({location.get('url', '')}:{location.get('lineNumber', '')})"
            )

    def on_page_error(self, error) -> None:
        self.console_errors.append(f"uncaught: {error}")

    def problems(self) -> list[str]:
        errors = [e for e in self.console_errors if not any(a in e for a in self.allowed_errors)]
        return [f"console error: {e}" for e in errors] + [
            f"request leaving the machine (aborted): {r}" for r in self.foreign_requests
        ]


@pytest.fixture
def page_guard(live_server):
    return PageGuard(server=urlsplit(live_server.url).netloc)


@pytest.fixture
def browser_context(browser, live_server, page_guard):
    context = browser.new_context(
        base_url=live_server.url, viewport=DESKTOP, reduced_motion="reduce", locale="en-US", timezone_id="UTC"
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.route("**/*", page_guard.on_route)
    context.on("console", page_guard.on_console)
    context.on("weberror", lambda web_error: page_guard.on_page_error(web_error.error))
    yield context
    with contextlib.suppress(Exception):  # the browser may already be gone after a crash
        context.close()


@pytest.fixture
def page(browser_context, request):
    page = browser_context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for index, tab in enumerate(browser_context.pages):
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name) + (f"-tab{index}" if index else "")
            path = SCREENSHOT_DIR / "failures" / f"{name}.png"
            with contextlib.suppress(Exception):
                tab.screenshot(path=path, full_page=True)
                _screenshots.append(path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test whose pages logged console errors or reached off the machine fails, even if it passed."""
    result = yield
    guard = item.funcargs.get("page_guard") if hasattr(item, "funcargs") else None
    if guard is not None and guard.problems():
        raise AssertionError("the pages misbehaved:\n  " + "\n  ".join(guard.problems()))
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report


# --- Helpers ------------------------------------------------------------------------------------


def login(page, user, password: str = PASSWORD) -> None:
    """Log in through the form, as a person would; lands on the fleet list."""
    from playwright.sync_api import expect

    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(user.get_username())
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleets", exact=True)).to_be_visible()


def settle(page) -> None:
    """Wait until the page a person would see is laid out: the document and its stylesheet loaded.

    A click that navigates (a form post, a link) returns once the new page's elements exist, which
    can be before app.css has arrived. Measured then, the unstyled page is four times as tall (and
    wider than a phone): a full-page screenshot sized from those measurements is mostly empty, and
    the overflow check measures the wrong page. Chromium paints nothing before the stylesheet, so
    this is only ever the capture's problem; it waits for what a person waits for."""
    page.wait_for_load_state("load")
    page.wait_for_function(
        "document.readyState === 'complete'"
        " && [...document.querySelectorAll('link[rel=stylesheet]')].every(link => link.sheet)"
    )
    page.evaluate("document.fonts.ready.then(() => true)")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG from its header."""
    with open(path, "rb") as png:
        header = png.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def tab_to(page, target, *, backwards: bool = False, limit: int = 80) -> None:
    """Press Tab (Shift+Tab backwards) until `target` has the focus, as a keyboard user would."""
    key = "Shift+Tab" if backwards else "Tab"
    for _ in range(limit):
        page.keyboard.press(key)
        if target.evaluate("el => el === document.activeElement"):
            return
    pytest.fail(f"{target} cannot be reached with {key} in {limit} presses")


def screenshot(page, name: str, *, full_page: bool = True) -> Path:
    """Save the page as $SCREENSHOT_DIR/<name>-<viewport width>.png and remember it for the summary."""
    path = SCREENSHOT_DIR / f"{name}-{page.viewport_size['width']}.png"
    settle(page)
    if full_page:  # from the top, so sticky bars sit where a person sees them
        page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=path, full_page=full_page, animations="disabled", caret="hide")
    if path not in _screenshots:
        _screenshots.append(path)
    return path


def pytest_terminal_summary(terminalreporter):
    if not _screenshots:
        return
    terminalreporter.section(f"browser screenshots ({len(_screenshots)}) in {SCREENSHOT_DIR}")
    for path in _screenshots:
        terminalreporter.write_line(str(path))


# --- People and a fleet -------------------------------------------------------------------------


@dataclass
class Demo:
    """Acme's kiosks fleet and one person per role, each able to log in with PASSWORD."""

    org: object
    fleet: object
    observer: object
    developer: object
    operator: object
    administrator: object
    org_admin: object

    def users(self):
        return [self.observer, self.developer, self.operator, self.administrator, self.org_admin]


@pytest.fixture
def demo(transactional_db) -> Demo:
    org = make_org("Acme")
    fleet = make_fleet(org, "kiosks", device_type="raspberrypi4-64")
    people = {
        "observer": make_member(fleet, FleetRole.OBSERVER, "olivia-observer"),
        "developer": make_member(fleet, FleetRole.DEVELOPER, "dev-dana"),
        "operator": make_member(fleet, FleetRole.OPERATOR, "oscar-operator"),
        "administrator": make_member(fleet, FleetRole.ADMINISTRATOR, "ada-admin"),
        "org_admin": make_org_admin(org, "otto-orgadmin"),
    }
    for user in people.values():
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
    return Demo(org=org, fleet=fleet, **people)


# --- Checks every page gets -----------------------------------------------------------------------

# Roles of the controls a person operates: each needs an accessible name (a label, aria-label, text).
CONTROL_ROLES = {
    "button", "checkbox", "combobox", "link", "listbox", "menuitem", "radio", "searchbox", "slider",
    "spinbutton", "switch", "tab", "textbox",
}  # fmt: skip


def unnamed_controls(page) -> list[str]:
    """Controls without an accessible name, as Chromium's accessibility tree computes it
    (label[for], wrapping label, aria-label(ledby), text content, title), visible ones only."""
    cdp = page.context.new_cdp_session(page)
    try:
        nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
        unnamed = []
        for node in nodes:
            role = (node.get("role") or {}).get("value")
            if node.get("ignored") or role not in CONTROL_ROLES:
                continue
            if ((node.get("name") or {}).get("value") or "").strip():
                continue
            described = cdp.send("DOM.describeNode", {"backendNodeId": node["backendDOMNodeId"]})["node"]
            attributes = described.get("attributes", [])
            pairs = " ".join(f'{k}="{v}"' for k, v in zip(attributes[::2], attributes[1::2], strict=True))
            unnamed.append(f"{role}: <{described['nodeName'].lower()} {pairs}>")
        return unnamed
    finally:
        cdp.detach()


def horizontal_overflow(page) -> int:
    """How many CSS pixels the page is wider than the viewport (0: no sideways scrolling)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def table_overflow(page, selector: str) -> int:
    """How many CSS pixels a table is wider than its scrolling .table-wrap (0: every column shows)."""
    return page.locator(selector).evaluate(
        "table => { const wrap = table.closest('.table-wrap') || table.parentElement;"
        " return wrap.scrollWidth - wrap.clientWidth; }"
    )


def menu_off_screen(menu) -> list[str]:
    """The sides of an open menu that are cut off: past the viewport, or under the sticky top bar."""
    return menu.evaluate(
        """menu => {
            const r = menu.getBoundingClientRect();
            const bar = document.querySelector('.topbar');
            const ceiling = bar ? bar.getBoundingClientRect().bottom : 0;
            const cut = [];
            if (r.top < ceiling - 0.5) cut.push(`top ${Math.round(r.top)} < ${Math.round(ceiling)}`);
            if (r.bottom > innerHeight + 0.5) cut.push(`bottom ${Math.round(r.bottom)} > ${innerHeight}`);
            if (r.left < -0.5) cut.push(`left ${Math.round(r.left)}`);
            if (r.right > innerWidth + 0.5) cut.push(`right ${Math.round(r.right)} > ${innerWidth}`);
            return cut;
        }"""
    )


def squashed_controls(page, min_width: int = 48) -> list[str]:
    """Visible text fields and selects narrower than min_width CSS pixels: too narrow to read or use
    (a select collapsed to its arrow in an auto-sized table column, say)."""
    return page.evaluate(
        """min => [...document.querySelectorAll('select, textarea, input:not([type=checkbox]):not([type=radio]):not([type=hidden])')]
            .filter(el => el.checkVisibility() && el.getBoundingClientRect().width < min)
            .map(el => `${el.tagName.toLowerCase()}#${el.id || el.name}: ${Math.round(el.getBoundingClientRect().width)} px`)""",
        min_width,
    )


def check_page(page, name: str, *, full_page: bool = True) -> None:
    """Screenshot the page, and check what every page must do: named controls, no sideways scroll.
    Open menus and dialogs are shot as the viewport (full_page=False): what the person sees."""
    path = screenshot(page, name, full_page=full_page)
    width = page.viewport_size["width"]
    assert unnamed_controls(page) == [], f"{name}: controls without an accessible name"
    assert horizontal_overflow(page) <= 0, f"{name}: the page scrolls sideways at {width} px"
    assert squashed_controls(page) == [], f"{name}: controls too narrow to use at {width} px"
    # The capture itself: a full-page shot is as wide as the page was when it was taken, so an
    # overflow that came and went (or a shot of a half-loaded page) shows here too.
    assert png_size(path)[0] == width, f"{name}: the screenshot is {png_size(path)[0]} px wide at {width} px"


def stock_fleet(fleet) -> dict:
    """Devices in every state the dashboard shows, for pages that need no simulator."""
    from datetime import timedelta

    from django.utils import timezone

    from tests.factories import make_device

    services = [
        {"name": "web", "image": "registry.local/web:2.4", "status": "running",
         "container_id": "3f9a8c1e2b4d6f708192a3b4c5d6e7f8", "holds_update_lock": False},
        {"name": "worker", "image": "registry.local/worker:2.4", "status": "running",
         "container_id": "8e7d6c5b4a3928171605f4e3d2c1b0a9", "holds_update_lock": False},
    ]  # fmt: skip
    volumes = [
        {"name": "resin-data", "files": 42, "bytes": 3_276_800},
        {"name": "worker-cache", "files": 7, "bytes": 81_920},
    ]
    common = {"ip_address": "10.0.4.21", "release_commit": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
              "booted_at": timezone.now() - timedelta(hours=5)}  # fmt: skip
    devices = {
        "online": make_device(fleet, name="kiosk-lobby-01", public_url_enabled=True, services=services,
                              volumes=volumes, **common),
        "locked": make_device(fleet, name="kiosk-lobby-02", update_lock_held=True, **common),
        "offline": make_device(fleet, name="kiosk-lobby-03", online=False, ip_address="10.0.4.23"),
        "updating": make_device(fleet, name="kiosk-cafe-01", agent_status="updating", os_update_progress=40,
                                target_os_version="2.60.1", **common),
        "local": make_device(fleet, name="kiosk-cafe-02", local_mode=True, **common),
        "old_agent": make_device(fleet, name="kiosk-gate-01", os_version="2.9.7", agent_version="1.0.3", **common),
        "deactivated": make_device(fleet, name="kiosk-gate-02", online=False, is_active=False,
                                   deactivated_at=timezone.now() - timedelta(days=3)),
    }  # fmt: skip
    return devices


@pytest.fixture
def provision_many(simulator):
    """provision_many(fleet, names, **fields) -> Devices, once all have registered and reported.

    Like the suite's `provision`, but the simulated devices start together instead of one by one."""
    from devices.models import Device
    from fleets.services import provisioning_key_create
    from tests.conftest import wait_until

    def provision_many(fleet, names, **fields):
        key = provisioning_key_create(fleet=fleet, description="browser tests")
        fields.setdefault("device_type", fleet.default_device_type.slug)
        fields.setdefault("os_version", "2.58.3")
        fields.setdefault("agent_version", "1.4.0")
        uuids = [simulator.add_device(provisioning_key=key, name=name, **fields).uuid for name in names]
        reported = Device.objects.filter(uuid__in=uuids, booted_at__isnull=False)
        wait_until(
            lambda: reported.count() == len(uuids), message=f"{len(uuids)} devices to register and report"
        )
        by_uuid = {device.uuid: device for device in reported}
        return [by_uuid[uuid] for uuid in uuids]

    return provision_many
