"""Deliveries moved by two transactions at once: a device's result arriving while its worker records
the push. Real connections, one per thread, on the test database (PostgreSQL in CI)."""

import threading
import time
from collections import Counter, defaultdict

import pytest
from django.db import connection, connections, transaction

from devices import services
from devices.models import ActionDelivery, ActionScope, ActionState, DeliveryState, DeviceAction
from devices.services import engine
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db(transaction=True)


def wait_until_blocked(thread: threading.Thread) -> None:
    """Until the other connection waits for a row lock (PostgreSQL), or a moment (SQLite, whose
    writer waits for the database lock as a whole)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and thread.is_alive():
        if connection.vendor != "postgresql":
            time.sleep(0.5)
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")  # live, unlike pg_stat_activity
            if cursor.fetchone()[0]:
                return
        time.sleep(0.02)
    raise AssertionError("the result's transaction never waited for the push's")


class OtherConnection(threading.Thread):
    """`work` run at once in a thread, on a connection of its own; what it raised is kept in
    `errors` for the test to report, not lost in the thread."""

    def __init__(self, work) -> None:
        super().__init__()
        self.work, self.errors = work, []
        self.start()

    def run(self) -> None:
        try:
            self.work()
        except BaseException as error:
            self.errors.append(error)
        finally:
            connections.close_all()


def expanded_restart(p: Personas, devices: int):
    """A fleet restart of `devices` new devices, its deliveries inserted (pending)."""
    made = [make_device(p.fleet) for _ in range(devices)]
    action = services.action_create(actor=p.operator, fleet=p.fleet, kind="restart", scope=ActionScope.FLEET)
    services.action_expand(action.pk)
    return action, made


def test_a_result_that_arrives_while_its_push_is_being_recorded_is_not_lost():
    """The worker moves a delivery from sending to sent while the flusher records the device's
    result: the result waits for the worker's commit, then wins, and the action is done."""
    action, (device,) = expanded_restart(Personas(), 1)
    rows = ActionDelivery.objects.filter(action=action)
    engine._transition(action.pk, rows, [DeliveryState.PENDING], DeliveryState.SENDING)

    def flusher():
        engine.record_results({(action.pk, "succeeded", "1 service recreated"): [device.pk]})

    with transaction.atomic():  # the worker's _record_push_results, held open
        engine._transition(action.pk, rows, [DeliveryState.SENDING], DeliveryState.SENT)
        thread = OtherConnection(flusher)
        wait_until_blocked(thread)
    thread.join(timeout=30)

    assert not thread.errors and not thread.is_alive()
    delivery = rows.get()
    assert (delivery.state, delivery.reason) == (DeliveryState.SUCCEEDED, "1 service recreated")
    action = DeviceAction.objects.get(pk=action.pk)
    assert (action.sent_count, action.sending_count, action.succeeded_count) == (0, 0, 1)
    assert action.state == ActionState.DONE


def test_results_of_several_outcomes_and_a_push_record_at_once_do_not_deadlock():
    """The flusher records two outcomes of one action while a worker records the push of one of
    those devices. Each moves its deliveries first and changes the action's counters last, so the
    flusher waits for the worker's row and the worker never waits for the flusher: no deadlock
    (PostgreSQL would abort one of them after a second), and the counters add up."""
    action, devices = expanded_restart(Personas(), 2)
    rows = ActionDelivery.objects.filter(action=action)
    engine._transition(action.pk, rows, [DeliveryState.PENDING], DeliveryState.SENDING)
    engine._transition(action.pk, rows.filter(device=devices[0]), [DeliveryState.SENDING], DeliveryState.SENT)

    def flusher():
        engine.record_results(
            {
                (action.pk, "succeeded", "1 service recreated"): [devices[0].pk],
                (action.pk, "succeeded", "1 service recreated; main killed after 10 s"): [devices[1].pk],
            }
        )

    with transaction.atomic():  # the worker's _record_push_results for the second device, held open
        counts = defaultdict(Counter)
        mine = rows.filter(device=devices[1])
        engine._transition(action.pk, mine, [DeliveryState.SENDING], DeliveryState.SENT, counts=counts)
        thread = OtherConnection(flusher)
        wait_until_blocked(thread)  # on the second device's row
        engine._count_changes(counts)
        engine._finish_if_settled(action.pk)
    thread.join(timeout=30)

    assert not thread.errors and not thread.is_alive()
    assert set(rows.values_list("state", flat=True)) == {DeliveryState.SUCCEEDED}
    action = DeviceAction.objects.get(pk=action.pk)
    assert (action.sent_count, action.sending_count, action.succeeded_count) == (0, 0, 2)
    assert action.state == ActionState.DONE


def claim_in_flight(action, device):
    """A batch's claim of `device`, its transaction left open before it changes the counters (a
    claim's last step): the action's lock shared, the delivery's row taken. Returns the counter
    changes to apply before the commit."""
    engine._hold_action(action.pk)
    counts = defaultdict(Counter)
    rows = ActionDelivery.objects.filter(action=action, device=device)
    engine._transition(action.pk, rows, [DeliveryState.PENDING], DeliveryState.SENDING, counts=counts)
    return counts


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has one writer at a time")
def test_batches_of_one_action_claim_their_devices_side_by_side():
    action, devices = expanded_restart(Personas(), 2)

    with transaction.atomic():
        counts = claim_in_flight(action, devices[0])
        thread = OtherConnection(lambda: engine.action_deliver_range(action.pk, devices[1].pk, devices[1].pk))
        thread.join(timeout=20)
        assert not thread.is_alive(), "the second batch waited for the first one's claim"
        assert not thread.errors
        engine._count_changes(counts)

    outcomes = dict(ActionDelivery.objects.filter(action=action).values_list("device_id", "state"))
    assert outcomes == {devices[0].pk: DeliveryState.SENDING, devices[1].pk: DeliveryState.FAILED}
    action = DeviceAction.objects.get(pk=action.pk)
    assert (action.pending_count, action.sending_count, action.failed_count) == (0, 1, 1)


def test_a_cancel_waits_for_a_claim_in_flight_then_cancels_the_rest():
    """The claimed device is on its way (its outcome will come); the other one is cancelled, and the
    counters say so."""
    action, devices = expanded_restart(Personas(), 2)

    with transaction.atomic():
        counts = claim_in_flight(action, devices[0])
        thread = OtherConnection(
            lambda: services.action_cancel(action=DeviceAction.objects.get(pk=action.pk))
        )
        wait_until_blocked(thread)
        assert thread.is_alive()
        engine._count_changes(counts)
    thread.join(timeout=30)

    assert not thread.errors and not thread.is_alive()
    outcomes = dict(ActionDelivery.objects.filter(action=action).values_list("device_id", "state"))
    assert outcomes == {devices[0].pk: DeliveryState.SENDING, devices[1].pk: DeliveryState.CANCELLED}
    action = DeviceAction.objects.get(pk=action.pk)
    assert action.state == ActionState.CANCELLED
    assert (action.pending_count, action.sending_count, action.cancelled_count) == (0, 1, 1)
