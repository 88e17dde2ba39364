"""Bad input is refused with a clear message and changes nothing: selections reaching outside the
fleet, forged parameters, unknown kinds, oversized or odd values, malformed agent reports."""

import base64
import json
import secrets

import pytest

from devices import ingest
from devices.models import ActionDelivery, DeliveryState, Device, DeviceAction
from fleets.services import provisioning_key_create
from tests.factories import Personas, make_device, make_fleet
from tests.security.conftest import changed_tables, snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    personas = Personas()
    personas.same_org_fleet = make_fleet(personas.org, "same-org-fleet")
    personas.devices = [make_device(personas.fleet, name=f"pump-{n}") for n in range(3)]
    personas.neighbour = make_device(personas.same_org_fleet, name="neighbour")
    personas.foreign = make_device(personas.other_fleet, name="foreign")
    return personas


def refused(response, status: int, message: str, before: dict) -> None:
    text = response.content.decode()
    assert response.status_code == status, text[:2000]
    assert message in text, text[:2000]
    assert changed_tables(before, snapshot()) == []


class TestSelections:
    @pytest.fixture
    def post(self, client, p):
        client.force_login(p.org_admin)

        def post(data, kind="reboot"):
            return client.post(f"/fleets/{p.fleet.pk}/actions/{kind}/", data)

        return post

    def test_ids_of_another_fleet_of_the_organization(self, p, post):
        before = snapshot()
        response = post({"ids": [p.devices[0].pk, p.neighbour.pk]})
        refused(
            response, 400, f"1 of the 2 selected devices are not in {p.fleet.name}; nothing was done.", before
        )

    def test_ids_of_another_organization(self, p, post):
        before = snapshot()
        refused(post({"ids": [p.foreign.pk]}), 400, "are not in", before)

    @pytest.mark.parametrize("bad", ["abc", "1.5", "", " ", "0x10", "1e3", "١"])
    def test_ids_that_are_not_integers(self, p, post, bad):
        before = snapshot()
        refused(post({"ids": [p.devices[0].pk, bad]}), 400, "The selection is not a list of devices.", before)

    @pytest.mark.parametrize("bad", ["-1", "0", str(2**63), str(10**30), "9" * 4000])
    def test_ids_out_of_range(self, p, post, bad):
        before = snapshot()
        response = post({"ids": [p.devices[0].pk, bad]})
        assert response.status_code == 400
        assert changed_tables(before, snapshot()) == []

    def test_more_ids_than_a_hand_selection_allows(self, p, post):
        before = snapshot()
        response = post({"ids": [str(n) for n in range(1, 1002)]})
        refused(response, 400, "Select at most 1000 devices by hand", before)

    def test_an_invalid_filter(self, p, post):
        before = snapshot()
        response = post({"all_matching": "1", "filter": "status=exploded&os_version=two"})
        refused(response, 400, "The filter is not valid", before)

    def test_an_oversized_filter(self, p, post):
        before = snapshot()
        response = post({"all_matching": "1", "filter": "q=pump&note=" + "x" * 100_000, "confirm": "3"})
        refused(response, 400, "The filter is too long", before)

    def test_an_unknown_action_kind(self, client, p):
        client.force_login(p.org_admin)
        before = snapshot()
        for kind in ("explode", "fleet_delete", "member_change", "RESTART", "restart%00"):
            refused(client.post(f"/fleets/{p.fleet.pk}/actions/{kind}/", {}), 404, "", before)
            refused(client.post(f"/devices/{p.devices[0].uuid}/actions/{kind}/", {}), 404, "", before)

    def test_an_unknown_offline_policy(self, p, post):
        before = snapshot()
        response = post({"ids": [p.devices[0].pk], "offline_policy": "whenever"})
        refused(response, 400, "Unknown offline policy.", before)

    @pytest.mark.parametrize("ttl", ["0", "-5", "169", "many", str(10**12), "9" * 5000])
    def test_a_queue_time_limit_out_of_range(self, p, post, ttl):
        before = snapshot()
        response = post({"ids": [p.devices[0].pk], "offline_policy": "queue", "ttl_hours": ttl})
        assert response.status_code == 400
        assert changed_tables(before, snapshot()) == []


class TestForgedMoves:
    @pytest.fixture
    def move(self, client, p):
        client.force_login(p.org_admin)

        def move(target, device=None):
            device = device or p.devices[0]
            return client.post(f"/devices/{device.uuid}/actions/move/", {"target_fleet": target})

        return move

    @pytest.mark.parametrize("which", ["other_org", "same_fleet", "missing", "text", "huge", "negative"])
    def test_a_move_to_a_fleet_that_is_not_offered_is_refused(self, p, move, which):
        target = {
            "other_org": p.other_fleet.pk, "same_fleet": p.fleet.pk, "missing": 999_999, "text": "fleet",
            "huge": 10**30, "negative": -1,
        }[which]  # fmt: skip
        before = snapshot()
        refused(move(target), 400, "Select a valid choice", before)

    def test_the_allowed_move_goes_through(self, p, move):
        assert move(p.same_org_fleet.pk).status_code == 302
        assert Device.objects.get(pk=p.devices[0].pk).fleet == p.same_org_fleet


class TestOversizedForms:
    HUGE = "x" * 10_000

    @pytest.fixture
    def admin(self, client, p):
        client.force_login(p.org_admin)
        return client

    def test_a_huge_fleet_name(self, admin, p):
        before = snapshot()
        refused(admin.post(f"/fleets/{p.fleet.pk}/rename/", {"name": self.HUGE}), 400, "at most 150", before)
        data = {"organization": p.org.handle, "name": self.HUGE, "fleet_type": "essentials",
                "default_device_type": "raspberrypi3"}  # fmt: skip
        refused(admin.post("/fleets/new/", data), 400, "at most 150", before)

    def test_a_huge_username(self, admin, p):
        before = snapshot()
        data = {"username": self.HUGE, "role": "observer"}
        refused(admin.post(f"/fleets/{p.fleet.pk}/members/", data), 400, "at most 150", before)
        data = {"username": self.HUGE, "role": "member"}
        refused(admin.post(f"/orgs/{p.org.handle}/", data), 400, "at most 150", before)

    def test_huge_confirmations(self, admin, p):
        before = snapshot()
        data = {"confirm": self.HUGE}
        refused(
            admin.post(f"/fleets/{p.fleet.pk}/delete/", data), 400, f"Type {p.fleet.name} exactly", before
        )
        response = admin.post(f"/devices/{p.devices[0].uuid}/actions/purge/", data)
        refused(response, 400, f"Type {p.devices[0].name} exactly", before)

    @pytest.mark.parametrize(
        ("amount", "unit"), [("100000000000", "days"), ("9" * 30, "hours"), ("31", "days")]
    )
    def test_a_support_period_beyond_the_limit(self, admin, p, amount, unit):
        before = snapshot()
        data = {"duration": "custom", "custom_amount": amount, "custom_unit": unit}
        refused(admin.post(f"/fleets/{p.fleet.pk}/support/", data), 400, "at most 30 days", before)

    def test_a_huge_search(self, admin, p):
        response = admin.get(f"/fleets/{p.fleet.pk}/", {"q": self.HUGE})
        assert response.status_code == 200
        response = admin.get("/devices/", {"q": self.HUGE})
        assert response.status_code == 200

    def test_too_many_fields(self, admin, p):
        before = snapshot()
        query = "&".join(f"f{n}=1" for n in range(2100))
        refused(admin.get(f"/fleets/{p.fleet.pk}/?{query}"), 400, "too many fields", before)
        data = {"ids": [str(n) for n in range(1, 2100)], "confirm": "2099"}
        refused(admin.post(f"/fleets/{p.fleet.pk}/actions/restart/", data), 400, "too many fields", before)


class TestForgedIdsInUrls:
    def test_an_action_of_another_fleet_through_this_fleet_s_url(self, client, p):
        theirs = DeviceAction.objects.create(
            organization=p.other_fleet.organization, fleet=p.other_fleet, fleet_name="x", actor_name="x",
            kind="reboot", scope="fleet", state="dispatching", pending_count=1, target_count=1,
        )  # fmt: skip
        client.force_login(p.operator)
        before = snapshot()
        refused(client.get(f"/fleets/{p.fleet.pk}/activity/{theirs.pk}/"), 404, "", before)
        refused(client.get(f"/fleets/{p.fleet.pk}/activity/{theirs.pk}/?format=csv"), 404, "", before)
        refused(client.post(f"/fleets/{p.fleet.pk}/activity/{theirs.pk}/cancel/"), 404, "", before)

    def test_a_member_who_is_not_in_this_fleet(self, client, p):
        client.force_login(p.administrator)
        before = snapshot()
        refused(
            client.post(f"/fleets/{p.fleet.pk}/members/{p.outsider.pk}/", {"role": "observer"}),
            404,
            "",
            before,
        )
        refused(client.post(f"/fleets/{p.fleet.pk}/members/{p.outsider.pk}/remove/"), 404, "", before)

    @pytest.mark.parametrize("number", [str(2**63), str(10**30)])
    def test_ids_too_large_for_the_database(self, client, p, number):
        client.force_login(p.org_admin)
        for url in (
            f"/fleets/{number}/",
            f"/fleets/{p.fleet.pk}/activity/{number}/",
            f"/fleets/{p.fleet.pk}/members/{number}/remove/",
            f"/orgs/{p.org.handle}/members/{number}/remove/",
        ):
            method = client.post if url.endswith("remove/") else client.get
            assert method(url).status_code == 404, url


class TestForgedCursors:
    @staticmethod
    def cursor(values) -> str:
        return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")

    @pytest.mark.parametrize(
        "values",
        [
            [{"a": 1}, 1], [[1, 2], 1], ["pump-1", {"x": 1}], ["pump-1", 10**30], ["pump-1", "1"],
            [None, None], ["pump-1"], "not-a-list", [True, 1],
        ],
    )  # fmt: skip
    def test_a_forged_page_cursor_is_ignored(self, client, p, values):
        client.force_login(p.operator)
        action = DeviceAction.objects.create(
            organization=p.org, fleet=p.fleet, fleet_name="x", actor_name="x", kind="reboot", scope="fleet",
        )  # fmt: skip
        after = self.cursor(values)
        for url in (
            f"/fleets/{p.fleet.pk}/?after={after}",
            f"/devices/?after={after}",
            f"/fleets/{p.fleet.pk}/activity/?after={after}",
            f"/fleets/{p.fleet.pk}/activity/{action.pk}/?after={after}",
        ):
            assert client.get(url).status_code == 200, url
        assert client.get(f"/fleets/{p.fleet.pk}/?after=%%%garbage").status_code == 200


# --- The agent API ---------------------------------------------------------------------------------

STATE = "/api/v1/device/state"


@pytest.fixture
def agent(client):
    fleet = make_fleet(device_type="raspberrypi3")
    body = client.post(
        "/api/v1/devices/register",
        {
            "uuid": secrets.token_hex(16),
            "device_type": "raspberrypi3",
            "os_version": "2.58.3",
            "agent_version": "1.4.0",
        },
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {provisioning_key_create(fleet=fleet)}",
    ).json()
    return Device.objects.get(uuid=body["uuid"]), {"HTTP_AUTHORIZATION": f"Bearer {body['api_key']}"}


def unchanged(device: Device, before: dict) -> bool:
    return Device.objects.filter(pk=device.pk).values().get() == before


class TestAgentReports:
    def patch(self, client, auth, body: bytes | str, **extra):
        return client.patch(STATE, body, content_type="application/json", **auth, **extra)

    def test_a_body_over_64_kib_is_413(self, client, agent):
        device, auth = agent
        before = Device.objects.filter(pk=device.pk).values().get()
        response = self.patch(client, auth, json.dumps({"status": "idle", "pad": "x" * 70_000}))
        assert response.status_code == 413 and response.json()["error"] == "too_large"
        assert unchanged(device, before)

    def test_a_body_over_the_server_s_upload_limit_is_413_too(self, client, agent):
        device, auth = agent
        before = Device.objects.filter(pk=device.pk).values().get()
        response = self.patch(client, auth, json.dumps({"pad": "x" * 3_000_000}))
        assert response.status_code == 413 and response.json()["error"] == "too_large"
        assert unchanged(device, before)

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param("[" * 30_000 + "]" * 30_000, id="deeply-nested-array"),
            pytest.param('{"a":' * 10_000 + "1" + "}" * 10_000, id="deeply-nested-object"),
            pytest.param('{"services": ' + "[" * 30_000 + "]" * 30_000 + "}", id="deep-field"),
            pytest.param("[]", id="array"),
            pytest.param('"idle"', id="string"),
            pytest.param("null", id="null"),
            pytest.param("{not json", id="broken"),
            pytest.param('{"uptime_s": ' + "9" * 5000 + "}", id="integer-too-long-to-parse"),
            pytest.param(b'{"status": "\xff\xfe"}', id="not-utf8"),
        ],
    )
    def test_a_body_that_is_not_a_json_object_is_400(self, client, agent, body):
        device, auth = agent
        before = Device.objects.filter(pk=device.pk).values().get()
        response = self.patch(client, auth, body)
        assert response.status_code == 400, response.content[:300]
        assert response.json()["error"] == "invalid"
        assert unchanged(device, before)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("status", "exploding"), ("status", None), ("os_version", "99999.1.1"), ("os_version", 2),
            ("agent_version", "1.4"), ("ip_address", "10.0.0.999"), ("ip_address", "fe80::1%eth0"),
            ("uptime_s", float("nan")), ("uptime_s", 1e400), ("uptime_s", -1), ("uptime_s", True),
            ("uptime_s", 10**20), ("release", {"commit": "x"}), ("release", "x" * 41),
            ("update_lock_held", "yes"), ("os_update_progress", 101), ("services", [{"image": "x"}]),
            ("services", [{"name": "x" * 101}]), ("services", [{"name": "web"}] * 51), ("volumes", "data"),
            ("volumes", [{"name": "v", "bytes": -1}]), ("web_address", "http://10.0.0.1/?q=1"),
            ("web_address", "http://10.0.0.1/#x"), ("api_address", "http://10.0.0.1:99999/"),
            ("web_address", "http://" + "1" * 300),
        ],
    )  # fmt: skip
    def test_a_malformed_field_is_named_and_nothing_is_recorded(self, client, agent, field, value):
        device, auth = agent
        before = Device.objects.filter(pk=device.pk).values().get()
        body = json.dumps({"status": "updating", "os_version": "2.95.12", field: value})
        response = self.patch(client, auth, body)
        assert response.status_code == 400, response.content
        assert response.json()["detail"] == "The report has invalid fields; nothing was recorded."
        assert field in response.json()["fields"]
        assert unchanged(device, before)


class TestAgentResults:
    @pytest.mark.parametrize(
        "key",
        ["", "1", "1-", "-1", "a-b", "1-2-3", f"{10**30}-1", f"1-{10**30}", f"{2**63}-{2**63}", " 1-1",
         "1" * 61],
    )  # fmt: skip
    def test_a_malformed_or_unknown_delivery_key_is_refused(self, client, agent, key):
        device, auth = agent
        if key.startswith(str(10**30)):  # this device's own id: only the action id is out of range
            key = f"{10**30}-{device.pk}"
        response = client.post(
            "/api/v1/device/actions/result", {"key": key, "state": "succeeded"}, content_type="application/json",
            **auth,
        )  # fmt: skip
        assert response.status_code in (400, 404)
        assert response.json()["error"] in ("invalid", "unknown_action")

    def test_a_huge_reason_is_cut_not_refused(self, client, agent):
        device, auth = agent
        action = DeviceAction.objects.create(
            organization=device.fleet.organization, fleet=device.fleet, fleet_name="x", actor_name="x",
            kind="reboot", scope="device", state="dispatching", sent_count=1, target_count=1,
        )  # fmt: skip
        ActionDelivery.objects.create(action=action, device=device, device_uuid=device.uuid, device_name="x",
                                      state=DeliveryState.SENT)  # fmt: skip
        response = client.post(
            "/api/v1/device/actions/result",
            {"key": f"{action.pk}-{device.pk}", "state": "failed", "reason": "r" * 10_000},
            content_type="application/json", **auth,
        )  # fmt: skip
        assert response.status_code == 204
        ingest.flush()  # as a worker's flusher does
        assert len(ActionDelivery.objects.get(action=action).reason) == 300


class TestRegistration:
    @pytest.mark.parametrize(
        ("field", "value"),
        [("uuid", "A" * 32), ("uuid", "a" * 31), ("uuid", "a" * 32 + "\n"), ("name", "n" * 101), ("name", 5),
         ("device_type", None), ("device_type", "toaster"), ("os_version", "latest")],
    )  # fmt: skip
    def test_a_malformed_registration_registers_nothing(self, client, field, value):
        key = provisioning_key_create(fleet=make_fleet(device_type="raspberrypi3"))
        payload = {"uuid": secrets.token_hex(16), "device_type": "raspberrypi3", "os_version": "2.58.3",
                   "agent_version": "1.4.0", field: value}  # fmt: skip
        response = client.post(
            "/api/v1/devices/register",
            payload,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key}",
        )
        assert response.status_code == 400
        assert not Device.objects.exists()
