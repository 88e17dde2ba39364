"""The expansion of an action into deliveries: chunks, batches, counters, resume after a crash.

Batches are real Celery messages in the test Redis (no worker runs here), read back from the queue.
"""

import base64
import json
import math

import pytest
from django.conf import settings

from devices import services
from devices.models import ActionDelivery, ActionScope, DeliveryState, DeviceAction
from devices.services import engine
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def p():
    return Personas()


@pytest.fixture
def small_chunks(monkeypatch, settings):
    """Chunks of 10 devices and batches of 4, so a handful of devices crosses every boundary."""
    monkeypatch.setattr(engine, "EXPAND_CHUNK", 10)
    settings.ACTION_BATCH_SIZE = 4


def batches(test_redis) -> list[tuple[int, int, int]]:
    """(action_id, first_device_id, last_device_id) of every deliver_batch message in the queue."""
    with test_redis.client() as client:
        raw = client.lrange(settings.CELERY_TASK_DEFAULT_QUEUE, 0, -1)
    found = []
    for message in map(json.loads, reversed(raw)):  # LPUSH: the oldest is last
        if message["headers"]["task"] == "devices.tasks.deliver_batch":
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append(tuple(args))
    return found


def fleet_restart(p) -> DeviceAction:
    return services.action_create(actor=p.operator, fleet=p.fleet, kind="restart", scope=ActionScope.FLEET)


def test_batches_run_across_chunks_so_n_pending_devices_take_ceil_n_over_size_messages(
    p, small_chunks, test_redis
):
    online = [make_device(p.fleet) for _ in range(23)]
    offline = [make_device(p.fleet, online=False) for _ in range(6)]
    action = fleet_restart(p)
    services.action_expand(action.pk)
    found = batches(test_redis)
    assert len(found) == math.ceil(23 / 4)
    covered = {d.pk for d in online if any(first <= d.pk <= last for _, first, last in found)}
    assert covered == {d.pk for d in online}
    assert not any(first <= d.pk <= last for d in offline for _, first, last in found)  # missed, not sent
    assert all(sum(1 for d in online if first <= d.pk <= last) <= 4 for _, first, last in found)


def test_the_counters_match_the_deliveries(p, small_chunks):
    for _ in range(13):
        make_device(p.fleet)
    for _ in range(5):
        make_device(p.fleet, online=False)
    for _ in range(4):
        make_device(p.fleet, agent_version="1.0.3")
    make_device(p.fleet, is_active=False)
    make_device(p.other_fleet)  # not in scope
    action = fleet_restart(p)
    services.action_expand(action.pk)
    action.refresh_from_db()
    states = dict.fromkeys(DeliveryState, 0)
    for state in ActionDelivery.objects.filter(action=action).values_list("state", flat=True):
        states[state] += 1
    assert action.target_count == 23 == ActionDelivery.objects.filter(action=action).count()
    assert (action.pending_count, action.missed_count, action.unsupported_count) == (13, 5, 5)
    assert all(action.count_of(state) == n for state, n in states.items())
    assert action.state == "dispatching"


def test_a_resumed_expansion_sends_the_pending_devices_of_chunks_written_before_the_crash(
    p, small_chunks, test_redis, monkeypatch
):
    devices = [make_device(p.fleet) for _ in range(25)]
    action = fleet_restart(p)
    real_enqueue = engine._enqueue_batches

    def crash(action_id, pending_ids):
        raise RuntimeError("worker killed")

    monkeypatch.setattr(engine, "_enqueue_batches", crash)
    with pytest.raises(RuntimeError):
        services.action_expand(action.pk)
    assert ActionDelivery.objects.filter(action=action).count() == 10  # the first chunk was committed
    monkeypatch.setattr(engine, "_enqueue_batches", real_enqueue)
    services.action_expand(action.pk)  # the redelivered expand_action message
    action.refresh_from_db()
    assert action.target_count == action.pending_count == 25
    assert ActionDelivery.objects.filter(action=action).count() == 25
    found = batches(test_redis)
    assert {d.pk for d in devices} <= {
        d.pk for d in devices for _, first, last in found if first <= d.pk <= last
    }
    assert len(found) == math.ceil(25 / 4)


def test_a_setting_reaches_every_chunk_and_no_deactivated_device(p, small_chunks, test_redis):
    active = [make_device(p.fleet, online=i % 2 == 0) for i in range(24)]
    deactivated = make_device(p.fleet, is_active=False)
    action = services.action_create(
        actor=p.administrator, fleet=p.fleet, kind="public_url_on", scope=ActionScope.FLEET
    )
    services.action_expand(action.pk)
    assert all(d.public_url_enabled for d in type(active[0]).objects.filter(pk__in=[d.pk for d in active]))
    deactivated.refresh_from_db()
    assert not deactivated.public_url_enabled
    action.refresh_from_db()
    assert (action.succeeded_count, action.unsupported_count, action.state) == (24, 1, "done")
    assert batches(test_redis) == []  # settings are not pushed
