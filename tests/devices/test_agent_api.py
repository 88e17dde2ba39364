"""The server side of the agent protocol: register, report, poll, results (devices/PROTOCOL.md)."""

import json
import secrets
from datetime import timedelta

import pytest
from django.utils import timezone

from devices import ingest
from devices.keys import push_secret_for
from devices.models import AgentStatus, Device
from fleets.services import provisioning_key_create
from tests.factories import make_device, make_fleet, make_user

pytestmark = pytest.mark.django_db

REGISTER = "/api/v1/devices/register"
STATE = "/api/v1/device/state"
TARGET = "/api/v1/device/target"
RESULT = "/api/v1/device/actions/result"


def auth(key):
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def patch(client, key, payload):
    """Report, then flush the buffer as a worker's flusher would (devices.ingest)."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    response = client.patch(STATE, body, content_type="application/json", **auth(key))
    ingest.flush()
    return response


@pytest.fixture
def fleet():
    return make_fleet(device_type="raspberrypi3")


@pytest.fixture
def registered(client, fleet):
    """A device registered through the API, with its api key."""
    key = provisioning_key_create(fleet=fleet)
    uuid = secrets.token_hex(16)
    response = client.post(
        REGISTER,
        {"uuid": uuid, "device_type": "raspberrypi3", "os_version": "2.58.3", "agent_version": "1.4.0"},
        content_type="application/json",
        **auth(key),
    )
    assert response.status_code == 201, response.content
    return Device.objects.get(uuid=uuid), response.json()["api_key"]


def register(client, key, **overrides):
    payload = {"uuid": secrets.token_hex(16), "device_type": "raspberrypi3", "os_version": "2.58.3",
               "agent_version": "1.4.0"} | overrides
    return client.post(REGISTER, payload, content_type="application/json", **auth(key))


class TestRegister:
    def test_it_registers_a_device_and_returns_its_keys(self, client, fleet):
        response = register(client, provisioning_key_create(fleet=fleet), name="lobby-1")
        assert response.status_code == 201
        body = response.json()
        device = Device.objects.get(uuid=body["uuid"])
        assert device.fleet == fleet and device.name == "lobby-1"
        assert body["push_secret"] == push_secret_for(device.uuid)
        assert body["api_key"] not in device.api_key_hash  # only the hash is stored
        assert len(device.api_key_hash) == 64

    def test_it_refuses_an_unknown_provisioning_key(self, client, fleet):
        response = register(client, "not-a-key")
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_provisioning_key"
        assert not Device.objects.exists()

    def test_it_refuses_a_revoked_key(self, client, fleet):
        key = provisioning_key_create(fleet=fleet)
        fleet.provisioning_keys.update(revoked_at=timezone.now())
        assert register(client, key).status_code == 401

    def test_it_refuses_a_device_type_of_another_architecture(self, client, fleet):
        response = register(client, provisioning_key_create(fleet=fleet), device_type="intel-nuc")
        assert response.status_code == 400
        assert "amd64" in response.json()["detail"]
        assert not Device.objects.exists()

    def test_it_accepts_another_type_of_the_same_architecture(self, client, fleet):
        assert register(client, provisioning_key_create(fleet=fleet), device_type="beaglebone-black").status_code == 201

    def test_it_refuses_a_uuid_already_registered(self, client, fleet):
        key = provisioning_key_create(fleet=fleet)
        uuid = secrets.token_hex(16)
        assert register(client, key, uuid=uuid).status_code == 201
        assert register(client, key, uuid=uuid).status_code == 409

    def test_it_lists_every_malformed_field(self, client, fleet):
        response = register(client, provisioning_key_create(fleet=fleet), uuid="xyz", os_version="two")
        assert response.status_code == 400
        assert set(response.json()["fields"]) == {"uuid", "os_version"}

    def test_a_starter_fleet_refuses_its_eleventh_device(self, client):
        starter = make_fleet(fleet_type="starter")
        for _ in range(10):
            make_device(starter)
        response = register(client, provisioning_key_create(fleet=starter))
        assert response.status_code == 409
        assert "limited to 10" in response.json()["detail"]


class TestReport:
    def test_it_records_the_reported_state(self, client, registered):
        device, key = registered
        response = patch(client, key, {
            "status": "idle", "os_version": "2.95.12", "agent_version": "1.5.0", "ip_address": "10.0.0.7",
            "api_address": "http://127.0.0.1:48484/d/" + device.uuid, "uptime_s": 60, "update_lock_held": True,
            "services": [{"name": "web", "image": "web:1", "status": "running", "container_id": "ab" * 32}],
            "volumes": [{"name": "resin-data", "files": 3, "bytes": 1024}],
            "some_future_field": {"ignored": True},
        })
        assert response.status_code == 204
        device.refresh_from_db()
        assert device.os_version == "2.95.12" and device.os_version_key == 2095012
        assert device.agent_version == "1.5.0" and device.ip_address == "10.0.0.7"
        assert device.update_lock_held and device.services[0]["container_id"] == "ab" * 32
        assert device.volumes == [{"name": "resin-data", "files": 3, "bytes": 1024}]
        assert device.is_online
        assert timezone.now() - device.booted_at >= timedelta(seconds=59)

    def test_a_malformed_report_changes_nothing(self, client, registered):
        device, key = registered
        before = Device.objects.filter(pk=device.pk).values().get()
        response = patch(client, key, {"os_version": "2.95.12", "uptime_s": "soon", "services": "web",
                                       "web_address": "ftp://example.com"})
        assert response.status_code == 400
        assert set(response.json()["fields"]) == {"uptime_s", "services", "web_address"}
        assert Device.objects.filter(pk=device.pk).values().get() == before

    def test_invalid_json_is_refused(self, client, registered):
        device, key = registered
        assert patch(client, key, "{not json").status_code == 400

    def test_an_unknown_key_gets_401_and_changes_nothing(self, client, registered):
        device, _ = registered
        before = Device.objects.filter(pk=device.pk).values().get()
        response = patch(client, "wrong", {"status": "updating"})
        assert response.status_code == 401
        assert Device.objects.filter(pk=device.pk).values().get() == before

    def test_a_deleted_device_is_refused(self, client, registered):
        device, key = registered
        device.delete()
        assert patch(client, key, {"status": "idle"}).status_code == 401

    def test_going_down_shows_the_device_offline_at_once(self, client, registered):
        device, key = registered
        patch(client, key, {"status": "idle"})
        patch(client, key, {"status": AgentStatus.REBOOTING})
        device.refresh_from_db()
        assert not device.is_online

    def test_a_web_address_with_credentials_is_refused(self, client, registered):
        _, key = registered
        response = patch(client, key, {"web_address": "http://user:pw@10.0.0.1"})
        assert response.status_code == 400


class TestBufferedIngestion:
    def test_a_report_costs_no_sql_once_the_device_is_known(self, client, registered, django_assert_num_queries):
        _, key = registered
        client.patch(STATE, "{}", content_type="application/json", **auth(key))  # caches the identity
        with django_assert_num_queries(0):
            response = client.patch(STATE, json.dumps({"status": "idle", "uptime_s": 5}),
                                    content_type="application/json", **auth(key))
        assert response.status_code == 204

    def test_reports_of_many_devices_are_written_with_a_constant_number_of_queries(
        self, fleet, django_assert_max_num_queries
    ):
        from django.utils import timezone

        devices = [make_device(fleet, online=False) for _ in range(40)]
        now = timezone.now()
        for device in devices:
            ingest.buffer_report(device.pk, {"os_version": "2.95.12", "os_version_key": 2095012, "booted_at": now}, now)
        with django_assert_max_num_queries(6):
            stats = ingest.flush()
        assert stats.reports == 40
        assert set(Device.objects.filter(pk__in=[d.pk for d in devices]).values_list("os_version", flat=True)) == {
            "2.95.12"}
        assert all(d.is_online for d in Device.objects.filter(pk__in=[d.pk for d in devices]))

    @pytest.mark.parametrize("heavy", [1, 30], ids=["a few report services", "most report services"])
    def test_a_batch_of_heartbeats_and_service_changes_writes_exactly_what_changed(self, fleet, heavy):
        """Services are read back only for the devices that reported them: the others keep theirs,
        and one reporting the services it has is a heartbeat."""
        from django.utils import timezone

        running = [{"name": "main", "image": "main:1", "status": "running", "container_id": "a" * 64}]
        devices = [make_device(fleet, services=running, volumes=[{"name": "data", "files": 1, "bytes": 9}])
                   for _ in range(40)]  # fmt: skip
        Device.objects.filter(pk__in=[d.pk for d in devices]).update(last_seen_at=timezone.now())
        stopping = [running[0] | {"status": "stopping"}]
        now = timezone.now()
        for n, device in enumerate(devices):
            report = {"services": stopping} if n < heavy else {}
            ingest.buffer_report(device.pk, report, now)
        ingest.buffer_report(devices[-1].pk, {"services": running}, now)  # what it has: nothing new
        ingest.flush()
        rows = {d.pk: d for d in Device.objects.filter(pk__in=[d.pk for d in devices])}
        assert [rows[d.pk].services[0]["status"] for d in devices] == ["stopping"] * heavy + ["running"] * (40 - heavy)
        assert all(rows[d.pk].volumes == [{"name": "data", "files": 1, "bytes": 9}] for d in devices)
        assert rows[devices[0].pk].last_seen_at == now
        assert rows[devices[-1].pk].last_seen_at < now  # unchanged and fresh: not rewritten

    def test_later_fields_win_and_earlier_ones_are_kept(self, client, registered):
        device, key = registered
        client.patch(STATE, json.dumps({"status": "updating", "os_update_progress": 10}),
                     content_type="application/json", **auth(key))
        client.patch(STATE, json.dumps({"os_update_progress": 60}), content_type="application/json", **auth(key))
        ingest.flush()
        device.refresh_from_db()
        assert (device.agent_status, device.os_update_progress) == ("updating", 60)

    def test_a_deleted_device_is_refused_at_once_despite_the_cache(self, client, registered, django_capture_on_commit_callbacks):
        device, key = registered
        assert patch(client, key, {"status": "idle"}).status_code == 204  # identity now cached
        with django_capture_on_commit_callbacks(execute=True):
            device.delete()
        assert patch(client, key, {"status": "idle"}).status_code == 401



class TestHeartbeatWrites:
    """An unchanged heartbeat of an online device does not rewrite its row (and its indexes) every
    time; anything that changes, and a device coming back, is written at once."""

    HEARTBEAT = {"status": "idle", "os_version": "2.58.3", "ip_address": "10.0.0.7", "uptime_s": 600}

    def seen(self, device):
        return Device.objects.values_list("last_seen_at", flat=True).get(pk=device.pk)

    def test_an_unchanged_heartbeat_soon_after_the_last_write_is_not_written(self, client, registered):
        device, key = registered
        patch(client, key, self.HEARTBEAT)
        first = self.seen(device)
        assert patch(client, key, self.HEARTBEAT | {"uptime_s": 601}).status_code == 204
        assert self.seen(device) == first
        assert Device.objects.get(pk=device.pk).is_online

    def test_an_unchanged_heartbeat_refreshes_last_seen_before_it_could_look_offline(
        self, client, registered, settings
    ):
        device, key = registered
        patch(client, key, self.HEARTBEAT)
        refresh = ingest.heartbeat_refresh_s()
        assert refresh < settings.DEVICE_OFFLINE_AFTER_S - settings.AGENT_REPORT_INTERVAL_S
        aged = timezone.now() - timedelta(seconds=refresh + 1)
        Device.objects.filter(pk=device.pk).update(last_seen_at=aged)
        patch(client, key, self.HEARTBEAT)
        assert self.seen(device) > aged + timedelta(seconds=refresh)

    def test_a_change_is_written_at_once(self, client, registered):
        device, key = registered
        patch(client, key, self.HEARTBEAT)
        first = self.seen(device)
        patch(client, key, self.HEARTBEAT | {"ip_address": "10.0.0.8"})
        device.refresh_from_db()
        assert device.ip_address == "10.0.0.8" and device.last_seen_at > first

    def test_a_report_of_only_what_changed_keeps_everything_else(self, client, registered):
        """Agents send their whole state now and then and otherwise only what changed (`{}` when
        nothing did): a field a report leaves out keeps what the last report said."""
        device, key = registered
        whole = self.HEARTBEAT | {
            "services": [{"name": "main", "image": "main:1", "status": "running", "container_id": "ab" * 32}],
            "volumes": [{"name": "resin-data", "files": 3, "bytes": 4096}],
        }
        patch(client, key, whole)
        before = Device.objects.get(pk=device.pk)
        Device.objects.filter(pk=device.pk).update(last_seen_at=timezone.now() - timedelta(seconds=50))

        assert patch(client, key, {}).status_code == 204  # alive, nothing changed
        after = Device.objects.get(pk=device.pk)
        assert after.last_seen_at > before.last_seen_at - timedelta(seconds=1) and after.is_online
        assert (after.agent_status, after.ip_address, after.services, after.volumes, after.booted_at) == (
            before.agent_status, before.ip_address, before.services, before.volumes, before.booted_at
        )  # fmt: skip

        grown = [{"name": "resin-data", "files": 4, "bytes": 8192}]
        assert patch(client, key, {"volumes": grown}).status_code == 204
        after = Device.objects.get(pk=device.pk)
        assert after.volumes == grown and after.services == before.services and after.agent_status == "idle"

    def test_a_device_coming_back_is_written_at_once(self, client, registered):
        device, key = registered
        patch(client, key, self.HEARTBEAT)
        Device.objects.filter(pk=device.pk).update(last_seen_at=timezone.now() - timedelta(days=1))
        patch(client, key, self.HEARTBEAT)
        assert Device.objects.get(pk=device.pk).is_online

class TestTarget:
    def test_it_returns_the_target_with_an_etag_and_304_when_unchanged(self, client, registered):
        device, key = registered
        first = client.get(TARGET, **auth(key))
        assert first.status_code == 200
        body = first.json()
        assert body["fleet"]["id"] == device.fleet_id and body["config"]["public_url"] is False
        again = client.get(TARGET, HTTP_IF_NONE_MATCH=first["ETag"], **auth(key))
        assert again.status_code == 304

    def test_a_changed_setting_changes_the_etag(self, client, registered):
        device, key = registered
        etag = client.get(TARGET, **auth(key))["ETag"]
        Device.objects.filter(pk=device.pk).update(local_mode=True)
        response = client.get(TARGET, HTTP_IF_NONE_MATCH=etag, **auth(key))
        assert response.status_code == 200 and response.json()["config"]["local_mode"] is True

    def test_a_device_can_only_read_its_own_target(self, client, registered, fleet):
        _, key = registered
        other = make_device(fleet)
        body = client.get(TARGET, **auth(key)).json()
        assert body["uuid"] != other.uuid


class TestResult:
    def test_a_result_is_recorded_when_the_buffer_is_flushed(self, client, registered):
        from devices.models import ActionDelivery, DeviceAction
        from devices.services import action_record

        device, key = registered
        action = action_record(actor=make_user(), kind="reboot", fleet=device.fleet, summary="")
        DeviceAction.objects.filter(pk=action.pk).update(state="dispatching", sent_count=1, target_count=1)
        ActionDelivery.objects.create(action=action, device=device, device_uuid=device.uuid,
                                      device_name=device.name, state="sent")
        response = client.post(RESULT, {"key": f"{action.pk}-{device.pk}", "state": "succeeded", "reason": "ok"},
                               content_type="application/json", **auth(key))
        assert response.status_code == 204
        ingest.flush()
        action.refresh_from_db()
        assert (action.succeeded_count, action.sent_count, action.state) == (1, 0, "done")

    def test_a_result_is_recorded_before_the_reports_waiting_with_it(self, client, registered, monkeypatch):
        from devices.models import ActionDelivery, DeviceAction
        from devices.services import action_record

        device, key = registered
        action = action_record(actor=make_user(), kind="restart", fleet=device.fleet, summary="")
        DeviceAction.objects.filter(pk=action.pk).update(state="dispatching", sent_count=1, target_count=1)
        ActionDelivery.objects.create(action=action, device=device, device_uuid=device.uuid,
                                      device_name=device.name, state="sent")
        report = client.patch(STATE, {"ip_address": "10.9.9.9"}, content_type="application/json", **auth(key))
        assert report.status_code == 204
        client.post(RESULT, {"key": f"{action.pk}-{device.pk}", "state": "succeeded", "reason": "ok"},
                    content_type="application/json", **auth(key))

        def database_gone(reports):
            raise RuntimeError("the reports could not be written")

        monkeypatch.setattr(ingest, "apply_reports", database_gone)
        with pytest.raises(RuntimeError):
            ingest.flush()
        action.refresh_from_db()
        assert (action.succeeded_count, action.state) == (1, "done")  # the result, written first
        monkeypatch.undo()
        assert ingest.flush().reports == 1  # and the report, put back, by the next flush

    def test_a_key_of_another_device_is_refused(self, client, registered, fleet):
        device, key = registered
        other = make_device(fleet)
        response = client.post(RESULT, {"key": f"1-{other.pk}", "state": "succeeded"},
                               content_type="application/json", **auth(key))
        assert response.status_code == 404

    def test_an_unknown_state_is_refused(self, client, registered):
        device, key = registered
        response = client.post(RESULT, {"key": f"1-{device.pk}", "state": "great"},
                               content_type="application/json", **auth(key))
        assert response.status_code == 400

    def test_results_carried_in_a_report_are_recorded_with_it_and_another_device_s_are_ignored(
        self, client, registered, fleet
    ):
        from devices.models import ActionDelivery, DeviceAction
        from devices.services import action_record

        device, key = registered
        other = make_device(fleet)
        action = action_record(actor=make_user(), kind="restart", fleet=device.fleet, summary="")
        DeviceAction.objects.filter(pk=action.pk).update(state="dispatching", sent_count=2, target_count=2)
        for target in (device, other):
            ActionDelivery.objects.create(action=action, device=target, device_uuid=target.uuid,
                                          device_name=target.name, state="sent")  # fmt: skip
        carried = [
            {"key": f"{action.pk}-{device.pk}", "state": "succeeded", "reason": "1 service recreated"},
            {"key": f"{action.pk}-{other.pk}", "state": "failed"},
            {"key": "not-a-delivery", "state": "failed"},
        ]
        assert patch(client, key, {"uptime_s": 60, "results": carried}).status_code == 204
        ingest.flush()
        outcomes = dict(ActionDelivery.objects.filter(action=action).values_list("device_id", "state"))
        assert outcomes == {device.pk: "succeeded", other.pk: "sent"}
        assert Device.objects.get(pk=device.pk).booted_at is not None

    @pytest.mark.parametrize(
        "results",
        [{"key": "1-1"}, [{"key": "1-1", "state": "great"}], ["1-1"], [{"key": "1-1", "state": "failed"}] * 9],
    )
    def test_a_report_carrying_malformed_results_is_refused_whole(self, client, registered, results):
        device, key = registered
        response = patch(client, key, {"uptime_s": 60, "results": results})
        assert response.status_code == 400 and "results" in response.json()["fields"]
        assert Device.objects.get(pk=device.pk).booted_at is None
