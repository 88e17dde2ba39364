"""The agent API's security: who a request speaks for is decided by its key alone, keys are stored
only as hashes, and the server's pushes to agents are signed so that nothing else can push."""

import json
import secrets
import time

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from devices import ingest
from devices.keys import push_secret_for, sign_push
from devices.models import ActionDelivery, DeliveryState, Device, DeviceAction
from devices.services import engine, pushes
from devices.simulator import SimulatorThread
from devices.simulator.agent_api import CLOCK_SKEW_S
from fleets.services import provisioning_key_create
from tests.factories import Personas, make_fleet

pytestmark = pytest.mark.django_db

REGISTER = "/api/v1/devices/register"
STATE = "/api/v1/device/state"
TARGET = "/api/v1/device/target"
RESULT = "/api/v1/device/actions/result"


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def register(client, provisioning_key: str, **fields):
    payload = {"uuid": secrets.token_hex(16), "device_type": "raspberrypi3", "os_version": "2.58.3",
               "agent_version": "1.4.0"} | fields  # fmt: skip
    return client.post(REGISTER, payload, content_type="application/json", **bearer(provisioning_key))


def report(client, headers: dict, payload: dict | None = None):
    """Report, then write the buffer as a worker's flusher would (devices.ingest)."""
    response = client.patch(
        STATE, json.dumps(payload or {"status": "idle"}), content_type="application/json", **headers
    )
    ingest.flush()
    return response


def poll(client, headers: dict, query: str = ""):
    return client.get(TARGET + query, **headers)


def result(client, headers: dict, key: str, state: str = "succeeded"):
    response = client.post(RESULT, {"key": key, "state": state}, content_type="application/json", **headers)
    ingest.flush()
    return response


def rows(device: Device) -> dict:
    return Device.objects.filter(pk=device.pk).values().get()


@pytest.fixture
def fleet():
    return make_fleet(device_type="raspberrypi3")


@pytest.fixture
def provisioning_key(fleet):
    return provisioning_key_create(fleet=fleet, description="test")


@pytest.fixture
def registered(client, provisioning_key):
    """Two devices registered through the API: (device, api key, push secret) each."""
    devices = []
    for name in ("alpha", "beta"):
        body = register(client, provisioning_key, name=name).json()
        devices.append((Device.objects.get(uuid=body["uuid"]), body["api_key"], body["push_secret"]))
    return devices


def _open_delivery(device: Device, state=DeliveryState.SENT) -> ActionDelivery:
    action = DeviceAction.objects.create(
        organization=device.fleet.organization, fleet=device.fleet, fleet_name=device.fleet.name,
        actor_name="test", kind="reboot", scope="device", device=device, state="dispatching",
        target_count=1, sent_count=1,
    )  # fmt: skip
    return ActionDelivery.objects.create(
        action=action, device=device, device_uuid=device.uuid, device_name=device.name, state=state
    )


class TestKeys:
    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({}, id="no-authorization"),
            pytest.param(bearer(""), id="empty-bearer"),
            pytest.param(bearer("not-a-key"), id="wrong-key"),
            pytest.param({"HTTP_AUTHORIZATION": "Basic YWxwaGE6YmV0YQ=="}, id="basic-auth"),
            pytest.param({"HTTP_AUTHORIZATION": "Token x"}, id="other-scheme"),
        ],
    )
    def test_requests_without_a_valid_key_get_401_and_change_nothing(self, client, registered, headers):
        device, _, _ = registered[0]
        delivery = _open_delivery(device)
        before = rows(device)
        assert report(client, headers, {"status": "updating"}).status_code == 401
        assert poll(client, headers).status_code == 401
        assert result(client, headers, f"{delivery.action_id}-{device.pk}").status_code == 401
        assert rows(device) == before
        assert ActionDelivery.objects.get(pk=delivery.pk).state == DeliveryState.SENT

    def test_a_provisioning_key_is_not_a_device_key(self, client, registered, provisioning_key):
        for response in (
            report(client, bearer(provisioning_key)),
            poll(client, bearer(provisioning_key)),
            result(client, bearer(provisioning_key), "1-1"),
        ):
            assert response.status_code == 401
            assert response.json()["error"] == "invalid_api_key"

    def test_a_revoked_or_expired_provisioning_key_registers_nothing(self, client, fleet, provisioning_key):
        fleet.provisioning_keys.update(revoked_at=timezone.now())
        assert register(client, provisioning_key).status_code == 401
        expired = provisioning_key_create(fleet=fleet)
        fleet.provisioning_keys.filter(revoked_at=None).update(expires_at=timezone.now())
        assert register(client, expired).status_code == 401
        assert not Device.objects.exists()

    def test_a_deleted_device_s_key_gets_401_everywhere(self, client, registered):
        device, key, _ = registered[0]
        delivery_key = f"{_open_delivery(device).action_id}-{device.pk}"
        device.delete()
        assert report(client, bearer(key)).status_code == 401
        assert poll(client, bearer(key)).status_code == 401
        assert result(client, bearer(key), delivery_key).status_code == 401

    def test_a_deleted_fleet_orphans_its_devices(self, client, registered, fleet):
        _, key, _ = registered[0]
        from fleets.services import fleet_delete

        fleet_delete(actor=Personas().org_admin, fleet=fleet)
        assert report(client, bearer(key)).status_code == 401


class TestOneDeviceCannotSpeakForAnother:
    def test_a_report_changes_only_the_device_whose_key_it_carries(self, client, registered):
        (alpha, alpha_key, _), (beta, _, _) = registered
        before = rows(beta)
        smuggled = {"uuid": beta.uuid, "id": beta.pk, "device": beta.uuid, "status": "updating",
                    "os_version": "2.95.12"}  # fmt: skip
        assert report(client, bearer(alpha_key), smuggled).status_code == 204
        response = client.patch(
            f"{STATE}?uuid={beta.uuid}", json.dumps({"status": "rebooting"}), content_type="application/json",
            **bearer(alpha_key),
        )  # fmt: skip
        ingest.flush()
        assert response.status_code == 204
        assert rows(beta) == before
        alpha.refresh_from_db()
        assert (alpha.uuid, alpha.agent_status, alpha.os_version) != (beta.uuid, "updating", "2.95.12")
        assert alpha.agent_status == "rebooting"

    def test_a_poll_returns_the_key_s_own_target_whatever_the_query_says(self, client, registered):
        (alpha, alpha_key, _), (beta, _, _) = registered
        Device.objects.filter(pk=beta.pk).update(public_url_enabled=True, local_mode=True)
        for query in (f"?uuid={beta.uuid}", f"?device={beta.pk}", f"?id={beta.pk}"):
            body = poll(client, bearer(alpha_key), query).json()
            assert body["uuid"] == alpha.uuid and body["config"]["local_mode"] is False

    def test_a_result_for_another_device_s_delivery_is_404_and_changes_nothing(self, client, registered):
        (alpha, alpha_key, _), (beta, _, _) = registered
        theirs = _open_delivery(beta)
        for key in (f"{theirs.action_id}-{beta.pk}", f"{theirs.action_id}-{alpha.pk}"):
            response = result(client, bearer(alpha_key), key)
            assert response.status_code == 404
            assert response.json()["error"] == "unknown_action"
        theirs.refresh_from_db()
        assert theirs.state == DeliveryState.SENT
        assert DeviceAction.objects.get(pk=theirs.action_id).sent_count == 1

    def test_a_result_for_its_own_delivery_is_recorded(self, client, registered):
        alpha, alpha_key, _ = registered[0]
        mine = _open_delivery(alpha)
        assert result(client, bearer(alpha_key), f"{mine.action_id}-{alpha.pk}").status_code == 204
        mine.refresh_from_db()
        assert mine.state == DeliveryState.SUCCEEDED


class TestCookiesOpenNothing:
    def test_a_signed_in_session_cannot_use_the_agent_api(self, client, registered):
        p = Personas()
        device, _, _ = registered[0]
        client.force_login(p.org_admin)
        before = rows(device)
        assert report(client, {}).status_code == 401
        assert poll(client, {}).status_code == 401
        assert result(client, {}, "1-1").status_code == 401
        assert client.post(REGISTER, {}, content_type="application/json").status_code == 401
        assert rows(device) == before

    def test_the_agent_api_needs_no_csrf_token_because_it_takes_no_cookies(self, registered):
        from django.test import Client

        _, key, _ = registered[0]
        strict = Client(enforce_csrf_checks=True)
        assert report(strict, bearer(key)).status_code == 204
        assert result(strict, bearer(key), "1-1").status_code == 404  # past CSRF, refused by the key check


def test_no_plaintext_key_or_push_secret_is_stored_anywhere(client, registered, provisioning_key):
    """Scan every column of every table for the plaintext secrets the API handed out."""
    secrets_given = {provisioning_key}
    for _, api_key, push_secret in registered:
        secrets_given |= {api_key, push_secret}
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                text = " ".join(str(value) for value in row)
                found += [(table, secret[:6]) for secret in secrets_given if secret in text]
    assert found == []
    device, api_key, _ = registered[0]
    assert len(device.api_key_hash) == 64 and api_key not in device.api_key_hash


# --- Pushes to the agent --------------------------------------------------------------------------


@pytest.fixture
def agent():
    """One simulated device with an agent API (its server is the simulator's), registered already."""
    sim = SimulatorThread("http://127.0.0.1:9", report_interval=60, poll_interval=60, start_spread=0, seed=3)
    sim.start()
    uuid = secrets.token_hex(16)
    device = sim.add_device(uuid=uuid, device_type="raspberrypi3", os_version="2.58.3", agent_version="1.4.0",
                            api_key="k", push_secret=push_secret_for(uuid))  # fmt: skip
    other = secrets.token_hex(16)
    sim.add_device(uuid=other, device_type="raspberrypi3", os_version="2.58.3", agent_version="1.4.0",
                   api_key="k2", push_secret=push_secret_for(other))  # fmt: skip
    yield sim, device.uuid, other
    sim.stop()


def signed_push(sim, uuid, kind="restart", *, key="1-1", skew=0, secret=None, body=None,
                signed_body=None, signed_path=None, method="POST"):  # fmt: skip
    path = f"/v1/actions/{kind}"
    raw = body if body is not None else json.dumps({"key": key, "params": {}}).encode()
    ts = int(time.time()) + skew
    signature = sign_push(
        secret or push_secret_for(uuid),
        ts,
        "POST",
        signed_path or path,
        raw if signed_body is None else signed_body,
    )
    headers = {
        "X-Fleet-Timestamp": str(ts),
        "X-Fleet-Signature": signature,
        "Content-Type": "application/json",
    }
    return httpx.request(method, f"{sim.url}/d/{uuid}{path}", content=raw, headers=headers, timeout=5)


def executed(sim, uuid) -> dict:
    return sim.snapshot(uuid)["actions_executed"]


class TestPushesAreAuthenticated:
    def test_a_correctly_signed_push_is_accepted_once_and_a_replay_acts_no_more(self, agent):
        sim, uuid, _ = agent
        assert signed_push(sim, uuid, key="7-1").status_code == 202
        assert signed_push(sim, uuid, key="7-1").status_code == 200  # the same request again: a duplicate
        time.sleep(0.3)
        assert executed(sim, uuid).get("restart", 0) <= 1

    @pytest.mark.parametrize(
        "tamper",
        [
            # Two seconds past the window: the signed timestamp is whole seconds, so one second
            # of margin is lost to truncation and could land a push at exactly the limit.
            pytest.param({"skew": -(CLOCK_SKEW_S + 2)}, id="timestamp-5-minutes-old"),
            pytest.param({"skew": CLOCK_SKEW_S + 2}, id="timestamp-5-minutes-ahead"),
            pytest.param({"signed_body": b'{"key": "1-1", "params": {}}  '}, id="body-changed-after-signing"),
            pytest.param({"secret": push_secret_for("0" * 32)}, id="another-device-s-secret"),
            pytest.param({"secret": "guessed"}, id="wrong-secret"),
            pytest.param({"signed_path": "/v1/actions/reboot"}, id="signed-for-another-action"),
            pytest.param({"method": "PUT"}, id="signed-for-another-method"),
        ],
    )
    def test_a_push_that_is_not_exactly_what_was_signed_is_refused(self, agent, tamper):
        sim, uuid, _ = agent
        response = signed_push(sim, uuid, **tamper)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_signature"
        assert executed(sim, uuid) == {}

    def test_a_push_signed_for_one_device_is_refused_by_another(self, agent):
        sim, uuid, other = agent
        path = "/v1/actions/shutdown"
        raw, ts = b'{"key": "1-1", "params": {}}', int(time.time())
        headers = {
            "X-Fleet-Timestamp": str(ts),
            "X-Fleet-Signature": sign_push(push_secret_for(uuid), ts, "POST", path, raw),
        }
        assert httpx.post(f"{sim.url}/d/{other}{path}", content=raw, headers=headers).status_code == 401
        assert executed(sim, other) == {}

    def test_a_push_without_signature_headers_is_refused(self, agent):
        sim, uuid, _ = agent
        response = httpx.post(f"{sim.url}/d/{uuid}/v1/actions/reboot", json={"key": "1-1", "params": {}})
        assert response.status_code == 401
        assert httpx.post(f"{sim.url}/d/{uuid}/v1/update").status_code == 401

    def test_the_server_s_own_push_is_accepted(self, agent):
        sim, uuid, _ = agent

        target = {"pk": 1, "uuid": uuid, "api_address": f"{sim.url}/d/{uuid}"}
        (result,) = pushes.run(engine._push_all("reboot", {}, 99, [target]))
        assert result.state == DeliveryState.SENT
