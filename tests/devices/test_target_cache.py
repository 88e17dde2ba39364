"""Target polls answered 304 from Redis (devices.targets): only while the target an agent has is
still the one the view would build, whatever changed it and however it was written."""

import json

import pytest
from django.utils import timezone

from devices import ingest, targets
from devices.agent_wsgi import TARGET_PATH, AgentReportFastPath
from devices.models import Device
from fleets.models import Release
from fleets.services import fleet_rename
from tests.devices.test_agent_api import registered  # noqa: F401 (fixture)
from tests.devices.test_agent_fast_path import REPORT, Recorder, call
from tests.factories import make_fleet, make_member, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet():
    return make_fleet(device_type="raspberrypi3")


@pytest.fixture
def app():
    return AgentReportFastPath(Recorder())


def poll(app, key, etag=None):
    headers = {"HTTP_IF_NONE_MATCH": etag} if etag else {}
    return call(app, key, b"", method="GET", path=TARGET_PATH, headers=headers)


def polled(app, key) -> str:
    """The device's ETag, through the view (which remembers it)."""
    status, headers, _ = poll(app, key)
    assert status == 200
    return headers["ETag"]


def assert_answered_without_django(app, key, etag):
    calls = app.app.calls
    status, headers, body = poll(app, key, etag)
    assert (status, body, headers["ETag"]) == (304, b"", etag)
    assert app.app.calls == calls


def assert_view_answers(app, key, etag) -> dict:
    """The next poll with the old ETag reaches the view, and gets the new target."""
    calls = app.app.calls
    status, headers, body = poll(app, key, etag)
    assert app.app.calls == calls + 1
    assert status == 200 and headers["ETag"] != etag
    return json.loads(body)


def test_an_unchanged_target_is_answered_304_without_django_with_the_views_headers(app, registered):  # noqa: F811
    device, key = registered
    etag = polled(app, key)
    targets._new_epoch()  # nothing remembered counts: the view answers this 304
    status, view_headers, _ = poll(app, key, etag)
    assert status == 304 and app.app.calls == 2
    calls = app.app.calls
    status, fast_headers, body = poll(app, key, etag)  # the view remembered it again
    assert (status, body, app.app.calls) == (304, b"", calls)
    assert fast_headers == view_headers


def test_another_etag_a_wrong_key_or_no_etag_reaches_the_view(app, registered):  # noqa: F811
    device, key = registered
    etag = polled(app, key)
    for args in ((key, '"stale"'), ("wrong-key", etag), (key, None)):
        calls = app.app.calls
        status, _, _ = poll(app, *args)
        assert app.app.calls == calls + 1
        assert status == {'"stale"': 200, None: 200}.get(args[1], 401)


def test_a_deleted_device_is_refused_even_with_its_etag(app, registered, django_capture_on_commit_callbacks):  # noqa: F811
    from devices.services.device_actions import delete_devices

    device, key = registered
    etag = polled(app, key)
    with django_capture_on_commit_callbacks(execute=True):
        delete_devices(Device.objects.filter(pk=device.pk))
    status, _, _ = poll(app, key, etag)
    assert status == 401


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: Device.objects.filter(pk=d.pk).update(local_mode=True), id="queryset-update"),
        pytest.param(lambda d: d.fleet.devices.update(public_url_enabled=True), id="related-manager-update"),
        pytest.param(
            lambda d: Device.objects.bulk_update([Device(pk=d.pk, name="renamed")], ["name"]), id="bulk-update"
        ),
        pytest.param(lambda d: (setattr(d, "name", "saved"), d.save()), id="save"),
        pytest.param(lambda d: (setattr(d, "lock_override", True), d.save(update_fields=["lock_override"])),
                     id="save-update-fields"),
        pytest.param(lambda d: Device.objects.filter(pk=d.pk).update(target_os_version="6.0.0"), id="os-update"),
    ],
)  # fmt: skip
def test_every_way_of_writing_a_device_target_field_makes_the_next_poll_the_views(app, registered, change):  # noqa: F811
    device, key = registered
    etag = polled(app, key)
    assert_answered_without_django(app, key, etag)
    change(device)
    assert_view_answers(app, key, etag)


def test_a_device_awaiting_a_poll_has_its_poll_recorded_by_the_view(app, registered):  # noqa: F811
    device, key = registered
    etag = polled(app, key)
    Device.objects.filter(pk=device.pk).update(awaiting_poll=True)
    calls = app.app.calls
    status, _, _ = poll(app, key, etag)
    assert (status, app.app.calls) == (304, calls + 1)
    assert not Device.objects.get(pk=device.pk).awaiting_poll
    assert poll(app, key, etag)[0] == 304  # through the view once more: the recording was a change
    assert_answered_without_django(app, key, etag)


def test_writes_no_target_is_built_from_keep_it(app, registered):  # noqa: F811
    device, key = registered
    etag = polled(app, key)
    Device.objects.filter(pk=device.pk).update(last_seen_at=timezone.now(), agent_status="updating")
    device.support_access_until = timezone.now()
    device.save(update_fields=["support_access_until"])
    call(app, key, REPORT)  # reports go through the flusher's raw UPDATE
    call(app, key, REPORT)
    ingest.flush()
    assert_answered_without_django(app, key, etag)


def test_fleet_changes_reach_the_poll(app, registered):  # noqa: F811
    device, key = registered
    fleet = device.fleet
    etag = polled(app, key)
    fleet_rename(actor=make_user(), fleet=fleet, name="renamed-fleet")
    target = assert_view_answers(app, key, etag)
    assert target["fleet"]["name"] == "renamed-fleet"

    etag = polled(app, key)
    release = Release.objects.create(fleet=fleet, commit="c" * 40, version="1.0.0", services=[])
    assert_answered_without_django(app, key, etag)  # a new release is no one's target yet
    type(fleet).objects.filter(pk=fleet.pk).update(target_release=release)
    assert assert_view_answers(app, key, etag)["release"]["version"] == "1.0.0"

    etag = polled(app, key)
    release.delete()  # the fleet's target_release is set to NULL by the delete, without update()
    assert assert_view_answers(app, key, etag)["release"] is None


def test_a_finished_os_update_the_flusher_records_reaches_the_poll(app, registered):  # noqa: F811
    device, key = registered
    Device.objects.filter(pk=device.pk).update(target_os_version="2.95.12")
    etag = polled(app, key)
    call(app, key, {})  # caches the identity through the view
    call(app, key, REPORT)  # now running 2.95.12
    ingest.flush()
    assert assert_view_answers(app, key, etag)["os"] == {"target_version": ""}


def test_a_setting_applied_by_an_action_reaches_the_poll_and_the_poll_confirms_it(
    app,
    registered,  # noqa: F811
    django_capture_on_commit_callbacks,
):
    from devices import services
    from devices.models import ActionDelivery, ActionScope, DeliveryState
    from fleets.models import FleetRole

    device, key = registered
    etag = polled(app, key)
    operator = make_member(device.fleet, FleetRole.OPERATOR)
    with django_capture_on_commit_callbacks(execute=True):
        action = services.action_create(
            actor=operator, fleet=device.fleet, kind="local_mode_on", scope=ActionScope.DEVICE,
            device=device,
        )  # fmt: skip
        services.action_expand(action.pk)
    assert assert_view_answers(app, key, etag)["config"]["local_mode"] is True
    assert ActionDelivery.objects.get(action=action).state == DeliveryState.SUCCEEDED


def test_without_redis_every_poll_is_the_views(app, registered, monkeypatch):  # noqa: F811
    from redis.exceptions import ConnectionError as RedisConnectionError

    device, key = registered
    etag = polled(app, key)

    def down(*args, **kwargs):
        raise RedisConnectionError("down")

    monkeypatch.setattr(targets, "_scripts", {id(ingest.redis_client()): down})
    calls = app.app.calls
    status, _, _ = poll(app, key, etag)
    assert (status, app.app.calls) == (304, calls + 1)
