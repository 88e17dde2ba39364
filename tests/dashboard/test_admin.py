"""The Django admin: every model registered, staff only, devices searchable by UUID and name."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import User

from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("root", "root@example.com", None)
    client.force_login(user)
    return user


def test_every_model_of_ours_is_in_the_admin():
    from django.apps import apps

    for app_label in ("fleets", "devices"):
        for model in apps.get_app_config(app_label).get_models():
            assert admin.site.is_registered(model), model


def test_every_changelist_loads(client, staff):
    p = Personas()
    make_device(p.fleet)
    for model in admin.site._registry:
        if model._meta.app_label in ("fleets", "devices"):
            url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
            assert client.get(url).status_code == 200, url


def test_devices_are_found_by_uuid_and_by_name(client, staff):
    p = Personas()
    device = make_device(p.fleet, name="boiler-room")
    other = make_device(p.fleet, name="attic")
    html = client.get("/admin/devices/device/", {"q": device.uuid[:10]}).content.decode()
    assert "boiler-room" in html and "attic" not in html
    assert other.name in client.get("/admin/devices/device/", {"q": "att"}).content.decode()


def test_guardian_object_permissions_page_on_a_fleet(client, staff):
    p = Personas()
    response = client.get(f"/admin/fleets/fleet/{p.fleet.pk}/permissions/")
    assert response.status_code == 200
    assert p.operator.username in response.content.decode()


def test_the_permissions_page_grants_nothing_behind_the_members_tab(client, staff):
    from guardian.shortcuts import get_perms

    from fleets.models import FleetUserObjectPermission

    p = Personas()
    before = FleetUserObjectPermission.objects.count()
    url = f"/admin/fleets/fleet/{p.fleet.pk}/permissions/user-manage/{p.outsider.pk}/"
    response = client.post(url, {"permissions": ["fleets.operate_fleet"]}, follow=True)
    assert "Members tab" in response.content.decode()
    assert FleetUserObjectPermission.objects.count() == before
    assert get_perms(p.outsider, p.fleet) == []


def test_permission_rows_are_read_only_in_the_admin(client, staff):
    from fleets.models import FleetUserObjectPermission

    p = Personas()
    row = FleetUserObjectPermission.objects.filter(content_object=p.fleet).first()
    assert client.get("/admin/fleets/fleetuserobjectpermission/add/").status_code == 403
    assert (
        client.post(f"/admin/fleets/fleetuserobjectpermission/{row.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert FleetUserObjectPermission.objects.filter(pk=row.pk).exists()


def test_members_who_are_not_staff_are_kept_out(client):
    p = Personas()
    client.force_login(p.administrator)
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
