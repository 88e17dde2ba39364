"""The fleet-specific actions of the Actions tab and the Members tab, each through to what the person
sees afterwards: rename, change type, support access granted and revoked, members added, changed
and removed, the fleet deleted, and ownership transferred to another organization as in the demo.

No worker or simulator: these actions are writes on the server, finished when the page answers."""

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from devices.models import Device
from fleets import services
from fleets.models import Fleet, FleetMembership, FleetRole, OrgRole
from tests.browser.conftest import PASSWORD, check_page, login, screenshot, stock_fleet
from tests.factories import make_fleet, make_org, make_org_admin, make_user

pytestmark = pytest.mark.browser


def logout(page) -> None:
    page.get_by_role("button", name=re.compile("^Account menu for")).or_(
        page.locator("summary.user-menu-button")
    ).first.click()
    page.get_by_role("menuitem", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()


def toast(page, text: str):
    return page.locator("#toasts .toast").filter(has_text=text)


def open_fleet_action(page, fleet, link: str, dialog_name):
    page.goto(f"/fleets/{fleet.pk}/actions/")
    page.get_by_role("link", name=link).click()
    dialog = page.get_by_role("dialog", name=dialog_name)
    expect(dialog).to_be_visible()
    return dialog


def test_an_administrator_renames_the_fleet_and_sees_the_new_name(page, page_guard, demo):
    login(page, demo.administrator)
    dialog = open_fleet_action(page, demo.fleet, "Rename fleet…", "Rename kiosks")
    name = dialog.get_by_label("New name")
    expect(name).to_have_value("kiosks")
    check_page(page, "fleet-rename-dialog", full_page=False)

    # A name the rules refuse: the page again with the reason (status 400), nothing renamed.
    page_guard.allow_console_error("400")
    name.fill("kiosks east")
    dialog.get_by_role("button", name="Rename fleet").click()
    expect(page.locator(".errorlist")).to_contain_text("not: space")
    assert Fleet.objects.get(pk=demo.fleet.pk).name == "kiosks"

    page.get_by_label("New name").fill("kiosks-east")
    page.get_by_role("button", name="Rename fleet").click()
    expect(toast(page, "Renamed kiosks to kiosks-east.")).to_be_visible()
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile(r"^kiosks-east Microservices$"))
    expect(page.get_by_role("navigation", name="Breadcrumb")).to_contain_text("kiosks-east")
    assert Fleet.objects.get(pk=demo.fleet.pk).name == "kiosks-east"

    page.get_by_role("link", name="Fleets", exact=True).first.click()
    expect(page.get_by_role("link", name="kiosks-east")).to_be_visible()


def test_the_change_type_dialog_lists_each_type_with_what_allows_or_blocks_it(page, demo):
    stock_fleet(demo.fleet)  # one device on host OS 2.9.7 blocks the types that need newer
    login(page, demo.administrator)
    dialog = open_fleet_action(page, demo.fleet, "Change fleet type…", "Change the type of kiosks")
    types = dialog.get_by_role("radiogroup", name="New fleet type")
    expect(types.get_by_role("radio", name=re.compile(r"^Microservices \(current\)"))).to_be_disabled()
    expect(types).to_contain_text("This is the fleet's type now.")
    check_page(page, "fleet-type-dialog", full_page=False)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()


def test_support_access_is_granted_for_a_period_and_revoked(page, demo):
    login(page, demo.administrator)
    dialog = open_fleet_action(page, demo.fleet, "Grant support access…", "Grant support access to kiosks")
    dialog.get_by_label("For how long").select_option(label="6 hours")
    check_page(page, "fleet-support-dialog", full_page=False)
    dialog.get_by_role("button", name="Grant access").click()

    expect(toast(page, "Support access to kiosks granted until")).to_be_visible()
    row = page.locator(".action-row", has_text="Grant support access")
    expect(row).to_contain_text(re.compile(r"Granted until \d+ \w+ \d{4} \d\d:\d\d"))
    fleet = Fleet.objects.get(pk=demo.fleet.pk)
    assert fleet.support_access_until is not None

    row.get_by_role("button", name="Revoke now").click()
    revoke = page.get_by_role("dialog", name="Revoke support access?")
    expect(revoke).to_be_visible()
    check_page(page, "fleet-support-revoke-dialog", full_page=False)
    revoke.get_by_role("button", name="Revoke access").click()

    expect(toast(page, "Support access to kiosks revoked: it ends now.")).to_be_visible()
    expect(page.locator(".action-row", has_text="Grant support access")).to_contain_text("Not granted")
    expect(page.get_by_role("button", name="Revoke now")).to_have_count(0)
    fleet.refresh_from_db()
    assert fleet.support_access_until is None or fleet.support_access_until <= timezone.now()


def test_an_administrator_adds_a_member_changes_the_role_and_removes_them(page, page_guard, demo):
    newcomer = make_user("nina-newcomer")
    # A fleet administrator adds people of the organization; only org administrators bring in others.
    services.org_member_set(organization=demo.org, user=newcomer, role=OrgRole.MEMBER)
    login(page, demo.administrator)
    page.goto(f"/fleets/{demo.fleet.pk}/")
    page.get_by_role("navigation", name="Fleet sections").get_by_role("link", name="Members").click()

    make_user("sam-stranger")  # not in the organization: refused (a 400 page), with who can add them
    page_guard.allow_console_error("status of 400 (Bad Request)")
    page.get_by_label("Username").fill("sam-stranger")
    page.get_by_role("button", name="Add member").click()
    expect(page.get_by_text("sam-stranger is not a member of Acme")).to_be_visible()
    assert not FleetMembership.objects.filter(fleet=demo.fleet, user__username="sam-stranger").exists()

    page.get_by_label("Username").fill("nina-newcomer")
    page.get_by_label("Role", exact=True).select_option(label="Operator")
    page.get_by_role("button", name="Add member").click()
    expect(toast(page, "Added nina-newcomer to kiosks as Operator.")).to_be_visible()
    role = page.get_by_label("Role of nina-newcomer")
    expect(role).to_have_value(FleetRole.OPERATOR)
    assert FleetMembership.objects.get(fleet=demo.fleet, user=newcomer).role == FleetRole.OPERATOR

    row = page.get_by_role("row", name=re.compile("nina-newcomer"))
    role.select_option(label="Developer")
    screenshot(page, "fleet-members-role-changing")
    row.get_by_role("button", name="Change").click()
    expect(toast(page, "nina-newcomer is now Developer of kiosks.")).to_be_visible()
    expect(page.get_by_label("Role of nina-newcomer")).to_have_value(FleetRole.DEVELOPER)
    assert FleetMembership.objects.get(fleet=demo.fleet, user=newcomer).role == FleetRole.DEVELOPER

    page.get_by_role("row", name=re.compile("nina-newcomer")).get_by_role("button", name="Remove").click()
    remove = page.get_by_role("dialog", name="Remove nina-newcomer from kiosks?")
    expect(remove).to_be_visible()
    check_page(page, "fleet-member-remove-dialog", full_page=False)
    remove.get_by_role("button", name="Remove").click()
    expect(toast(page, "Removed nina-newcomer from kiosks.")).to_be_visible()
    expect(page.get_by_role("row", name=re.compile("nina-newcomer"))).to_have_count(0)
    assert not FleetMembership.objects.filter(fleet=demo.fleet, user=newcomer).exists()


def test_deleting_a_fleet_warns_about_orphaned_devices_and_needs_the_typed_name(page, demo):
    devices = stock_fleet(demo.fleet)
    login(page, demo.administrator)
    dialog = open_fleet_action(page, demo.fleet, "Delete fleet…", "Delete kiosks?")
    expect(dialog.get_by_text("become orphaned")).to_be_visible()
    expect(dialog).to_contain_text(f"Devices orphaned{len(devices)}")
    confirm = dialog.get_by_role("button", name="Delete fleet")
    expect(confirm).to_be_disabled()
    dialog.get_by_label("Type kiosks to confirm").fill("kiosk")
    expect(confirm).to_be_disabled()
    dialog.get_by_label("Type kiosks to confirm").fill("kiosks")
    expect(confirm).to_be_enabled()
    check_page(page, "fleet-delete-dialog", full_page=False)
    confirm.click()

    expect(toast(page, f"Deleted the fleet kiosks: {len(devices)} devices orphaned.")).to_be_visible()
    expect(page.get_by_role("heading", name="Fleets", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="kiosks")).to_have_count(0)
    assert not Fleet.objects.filter(pk=demo.fleet.pk).exists()
    assert (
        Device.objects.filter(uuid__in=[d.uuid for d in devices.values()], fleet__isnull=False).count() == 0
    )


def test_a_fleet_is_transferred_to_another_organization_as_in_the_demo(page, demo):
    """README: the target org's admin adds the source org's admin as Developer of the empty fleet of
    the same name; then the source org's admin transfers it, and it shows under the target org."""
    devices = stock_fleet(demo.fleet)
    globex = make_org("Globex")
    gina = make_org_admin(globex, "gina-globex")
    gina.set_password(PASSWORD)
    gina.save(update_fields=["password"])
    placeholder = make_fleet(globex, "kiosks", device_type="raspberrypi4-64")

    login(page, demo.org_admin)
    page.goto(f"/fleets/{demo.fleet.pk}/actions/")
    expect(page.get_by_role("button", name="Transfer ownership…")).to_be_disabled()
    logout(page)

    # As Globex's administrator: the source org's admin joins the empty kiosks as a Developer.
    login(page, gina)
    page.goto(f"/fleets/{placeholder.pk}/members/")
    page.get_by_label("Username").fill(demo.org_admin.get_username())
    page.get_by_label("Role", exact=True).select_option(label="Developer")
    page.get_by_role("button", name="Add member").click()
    expect(toast(page, f"Added {demo.org_admin.get_username()} to kiosks as Developer.")).to_be_visible()
    logout(page)

    # As Acme's administrator: Transfer is enabled now.
    login(page, demo.org_admin)
    page.goto(f"/fleets/{demo.fleet.pk}/actions/")
    transfer = page.get_by_role("link", name="Transfer ownership…")
    expect(transfer).to_be_enabled()
    transfer.click()
    dialog = page.get_by_role("dialog", name="Transfer kiosks to another organization")
    expect(dialog).to_be_visible()
    dialog.get_by_role("radio", name=re.compile("Globex")).check()
    confirm = dialog.get_by_role("button", name="Transfer fleet")
    expect(confirm).to_be_disabled()
    dialog.get_by_label("Type kiosks to confirm").fill("kiosks")
    expect(confirm).to_be_enabled()
    check_page(page, "fleet-transfer-confirm-dialog", full_page=False)
    confirm.click()

    expect(toast(page, "Transferred kiosks to Globex")).to_be_visible()
    expect(page.get_by_role("heading", name="Acme")).to_be_visible()  # back on Acme's page
    acme_fleets = page.locator("section, .card").filter(has=page.get_by_role("link", name="kiosks"))
    expect(acme_fleets).to_have_count(0)
    screenshot(page, "org-after-transfer-out")
    logout(page)

    # Globex now owns kiosks with its devices; the transfer is in its activity.
    login(page, gina)
    page.goto("/orgs/")
    page.get_by_role("link", name="Globex").click()
    expect(page.get_by_role("heading", name="Globex")).to_be_visible()
    fleets = page.locator("table").filter(has=page.get_by_role("columnheader", name="Default device type"))
    row = fleets.get_by_role("row").filter(has=page.get_by_role("link", name="kiosks", exact=True))
    expect(row).to_have_count(1)
    expect(row.locator("td.num")).to_have_text(str(len(devices)))
    activity = page.locator("#activity ~ .card").first
    expect(activity).to_contain_text(f"Transferred kiosks with {len(devices)} devices from Acme to Globex")
    check_page(page, "org-after-transfer-in")
    row.get_by_role("link", name="kiosks").click()
    expect(page.get_by_text("Globex", exact=True).first).to_be_visible()
    expect(page.locator("#devices-table tbody tr")).to_have_count(len(devices))

    moved = Fleet.objects.get(pk=demo.fleet.pk)
    assert moved.organization == globex
    assert not Fleet.objects.filter(pk=placeholder.pk).exists()
    assert not FleetMembership.objects.filter(fleet=moved, user=demo.org_admin).exists()
