"""`manage.py bench_scale`'s parts that run in seconds: the bulk provisioning must write what
registration writes, and the table must read the figures it merges (the full run takes minutes)."""

import json

import pytest
from django.test import Client

from dashboard.bench.provision import PROBES, provision
from dashboard.management.commands.bench_scale import table
from devices import ingest
from devices.keys import hash_secret, push_secret_for
from devices.models import ActionDelivery, ActionScope, Device, DeviceAction
from devices.services import action_create, action_expand

# Transactional: provisioning ends with VACUUM ANALYZE, which cannot run inside a transaction.
pytestmark = pytest.mark.django_db(transaction=True)


def test_provisioned_devices_are_registered_as_the_agent_api_would_register_them(tmp_path):
    fleet = provision(
        30, processes=2, state_dir=tmp_path, server_url="http://127.0.0.1:8100", first_port=21100
    )
    assert [(port, count) for port, _, count in fleet.shards] == [(21100, 15), (21101, 15)]
    states = [item for _, path, _ in fleet.shards for item in json.loads(path.read_text())["devices"]]
    assert len(states) == Device.objects.filter(fleet=fleet.fleet).count() == 30
    for item in states:
        device = Device.objects.get(uuid=item["uuid"])
        assert device.api_key_hash == hash_secret(item["api_key"]) and item["provisioning_key"] is None
        assert item["push_secret"] == push_secret_for(item["uuid"]) and item["fleet_id"] == fleet.fleet.pk
    assert len(fleet.probes) == PROBES

    # A device reports with the key its state file holds, like a registered one.
    item = states[0]
    response = Client().patch("/api/v1/device/state", json.dumps({"status": "idle", "uptime_s": 5}),
                              content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {item['api_key']}")  # fmt: skip
    assert response.status_code == 204
    assert ingest.flush().reports == 1


def test_a_second_run_reuses_the_fleet(tmp_path):
    first = provision(10, processes=1, state_dir=tmp_path, server_url="http://x", first_port=1)
    ids = set(Device.objects.filter(fleet=first.fleet).values_list("pk", flat=True))
    earlier = action_create(actor=first.operator, fleet=first.fleet, kind="restart", scope=ActionScope.FLEET)
    action_expand(earlier.pk)
    again = provision(
        10, processes=1, state_dir=tmp_path, server_url="http://x", first_port=1, log=lambda _: None
    )
    assert set(Device.objects.filter(fleet=again.fleet).values_list("pk", flat=True)) == ids
    assert again.probes == first.probes
    # Without the earlier run's action and its outcomes: each run starts as the first did.
    assert not DeviceAction.objects.filter(fleet=again.fleet).exists()
    assert not ActionDelivery.objects.filter(device_id__in=ids).exists()


def test_the_table_names_each_figure_with_its_key():
    text = table(
        {"state_reports.per_s": 2500.5, "restart_fleet.end_to_end_s.100k": 95.0, "liveness_lag_s": 1.2},
        "100k",
    )
    assert "state_reports.per_s" in text and "2,500.5" in text and "restart_fleet.end_to_end_s.100k" in text


def test_the_seeded_target_cache_answers_the_agents_polls_as_after_their_first(tmp_path):
    from types import SimpleNamespace

    from dashboard.bench.scale import seed_target_cache
    from devices.agent_wsgi import TARGET_PATH, AgentReportFastPath
    from devices.simulator.model import VirtualDevice
    from tests.devices.test_agent_fast_path import Recorder, call

    fleet = provision(4, processes=1, state_dir=tmp_path, server_url="http://x", first_port=1)
    seed_target_cache(SimpleNamespace(fleet=fleet))
    item = json.loads(fleet.shards[0][1].read_text())["devices"][0]
    device = VirtualDevice.from_state(item)
    assert device.etag
    ingest.remember_identity(
        hash_secret(device.api_key), (Device.objects.get(uuid=device.uuid).pk, device.uuid)
    )
    app = AgentReportFastPath(Recorder())
    status, headers, _ = call(app, device.api_key, b"", method="GET", path=TARGET_PATH,
                              headers={"HTTP_IF_NONE_MATCH": device.etag})  # fmt: skip
    assert (status, headers["ETag"], app.app.calls) == (304, device.etag, 0)
