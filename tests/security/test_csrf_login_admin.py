"""CSRF on every dashboard POST, the sign-in rate limit, and the Django admin for staff only."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from devices.models import Device
from fleets.models import Fleet
from tests.factories import make_user
from tests.security.conftest import PERSONAS, changed_tables, snapshot
from tests.security.test_permission_matrix import ENDPOINTS, request

CSRF_SECRET = "s" * 32  # a cookie secret; Django also accepts the unmasked secret as the token

POSTS = [pytest.param(endpoint, id=endpoint.name) for endpoint in ENDPOINTS if endpoint.method == "POST"]


@pytest.mark.parametrize("endpoint", POSTS)
def test_every_dashboard_post_without_a_csrf_token_is_refused(world, db, endpoint):
    """Signed in as the org administrator (allowed nearly everywhere): without the token, 403 and
    nothing changed; the same POST with the token gets what the permission matrix expects."""
    world.prepare("org_admin")
    strict = world.client_for("org_admin", enforce_csrf_checks=True)
    strict.cookies["csrftoken"] = CSRF_SECRET
    before = snapshot()
    response = request(world, endpoint, "org_admin", "own", client=strict)
    assert response.status_code == 403
    assert "CSRF" in response.content.decode()
    assert changed_tables(before, snapshot()) == []

    response = request(
        world, endpoint, "org_admin", "own", client=strict, headers={"X-CSRFToken": CSRF_SECRET}
    )
    assert response.status_code == endpoint.rule.expect("org_admin", "own", endpoint.ok_status)


def test_sign_out_needs_the_token_too(world, db):
    strict = world.client_for("operator", enforce_csrf_checks=True)
    assert strict.post("/accounts/logout/").status_code == 403
    assert strict.get("/fleets/").status_code == 200  # still signed in


def test_sign_in_needs_the_token(db):
    make_user("ann", password="right-password")
    strict = Client(enforce_csrf_checks=True)
    response = strict.post("/accounts/login/", {"username": "ann", "password": "right-password"})
    assert response.status_code == 403
    assert "_auth_user_id" not in strict.session


class TestSignInRateLimit:
    def sign_in(self, client, username, password, address="10.0.0.1"):
        return client.post(
            "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address
        )

    def test_after_too_many_failures_even_the_right_password_is_refused(self, client, db, settings):
        make_user("ann", password="right-password")
        for _ in range(settings.LOGIN_MAX_FAILURES):
            assert self.sign_in(client, "ann", "wrong").status_code == 200
        response = self.sign_in(client, "ann", "right-password")
        assert response.status_code == 429
        assert "Too many failed sign-ins" in response.content.decode()
        assert "_auth_user_id" not in client.session

    def test_the_count_is_per_username_across_addresses(self, client, db, settings):
        make_user("ann", password="right-password")
        for n in range(settings.LOGIN_MAX_FAILURES):
            self.sign_in(client, "ann", "wrong", address=f"10.0.1.{n}")
        assert self.sign_in(client, "ANN ", "right-password", address="10.0.2.1").status_code == 429

    def test_the_count_is_per_address_across_usernames(self, client, db, settings):
        make_user("ann", password="right-password")
        for n in range(settings.LOGIN_MAX_FAILURES):
            self.sign_in(client, f"guess{n}", "wrong")
        assert self.sign_in(client, "ann", "right-password").status_code == 429
        assert self.sign_in(client, "ann", "right-password", address="10.0.0.2").status_code == 302

    def test_a_success_before_the_limit_clears_the_count(self, client, db, settings):
        make_user("ann", password="right-password")
        for _ in range(settings.LOGIN_MAX_FAILURES - 1):
            self.sign_in(client, "ann", "wrong")
        assert self.sign_in(client, "ann", "right-password").status_code == 302
        client.logout()
        for _ in range(settings.LOGIN_MAX_FAILURES - 1):
            self.sign_in(client, "ann", "wrong")
        assert self.sign_in(client, "ann", "right-password").status_code == 302


ADMIN_PAGES = ["/admin/", "/admin/devices/device/", "/admin/fleets/fleet/", "/admin/auth/user/"]


@pytest.mark.parametrize("persona", [p for p in PERSONAS if p != "support_expired"])
def test_the_admin_is_for_staff_only(world, db, persona):
    """Every persona, the org administrator and support staff included, is sent to the admin's
    sign-in page; a forged admin POST changes nothing."""
    client = world.client_for(persona)
    for page in ADMIN_PAGES:
        response = client.get(page)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), page
    fleet = world.places["own"].fleet
    device = world.places["own"].pump
    before = snapshot()
    client.post(f"/admin/fleets/fleet/{fleet.pk}/delete/", {"post": "yes"})
    client.post(f"/admin/devices/device/{device.pk}/change/", {"name": "renamed-in-admin"})
    client.post(
        "/admin/auth/user/add/", {"username": "sneaky", "password1": "x-y-z-123", "password2": "x-y-z-123"}
    )
    assert changed_tables(before, snapshot()) == []
    assert Fleet.objects.filter(pk=fleet.pk).exists() and Device.objects.get(pk=device.pk).name == device.name


def test_members_cannot_sign_in_to_the_admin(db):
    member = make_user("member", password="right-password")
    client = Client()
    response = client.post("/admin/login/", {"username": "member", "password": "right-password"})
    assert response.status_code == 200
    assert "staff account" in response.content.decode()
    assert client.get("/admin/").status_code == 302
    assert not User.objects.get(pk=member.pk).is_staff


def test_staff_without_permissions_see_no_models(db):
    staff = make_user("staff", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
    for page in ADMIN_PAGES[1:]:
        assert client.get(page).status_code == 403, page


@pytest.mark.parametrize(
    "next_url",
    ["http://evil.example/", "//evil.example/", "/\\evil.example/", "http://abababababababababababababababab.devices.localhost/",
     "javascript:alert(1)"],
)  # fmt: skip
def test_sign_in_never_redirects_off_the_dashboard(client, db, next_url):
    make_user("ann", password="right-password")
    response = client.post(
        "/accounts/login/?next=" + next_url,
        {"username": "ann", "password": "right-password", "next": next_url},
    )
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_deploy_checks_warn_about_the_default_secret_and_loopback_devices(settings):
    from django.core.checks import Tags, run_checks

    ids = {message.id for message in run_checks(tags=[Tags.security], include_deployment_checks=True)}
    assert {"dashboard.W001", "dashboard.W002"} <= ids
    settings.SECRET_KEY = "a-real-secret-" + "x" * 50
    settings.DEVICE_ALLOWED_NETWORKS = ["10.8.0.0/16"]
    ids = {message.id for message in run_checks(tags=[Tags.security], include_deployment_checks=True)}
    assert not {"dashboard.W001", "dashboard.W002"} & ids
