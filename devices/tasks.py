"""Celery interface of the action engine: tasks take ids and call a service."""

from celery import shared_task
from django.db import DatabaseError
from redis.exceptions import RedisError

from devices import ingest, selectors, services

# A database or Redis that is briefly unreachable must not strand an action half-way: retry with
# backoff (the work is idempotent: rows are claimed, pushes carry their idempotency key).
TRANSIENT = {
    "autoretry_for": (DatabaseError, RedisError),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": 12,
    "acks_late": True,
}


@shared_task(**TRANSIENT)
def expand_action(action_id: int) -> None:
    services.action_expand(action_id)


# A batch claims its rows under its task id, which a redelivered or retried message keeps.
@shared_task(bind=True, **TRANSIENT)
def deliver_batch(self, action_id: int, first_device_id: int, last_device_id: int) -> None:
    services.action_deliver_range(action_id, first_device_id, last_device_id, claim=self.request.id)


@shared_task(bind=True, **TRANSIENT)
def deliver_waiting(self, device_id: int) -> None:
    services.action_deliver_waiting(device_id, claim=self.request.id)


@shared_task
def nudge_devices(device_ids: list[int]) -> int:
    return services.devices_nudge(device_ids)


@shared_task
def sweep_actions() -> dict:
    return services.actions_sweep()


@shared_task
def refresh_fleet_counts(fleet_id: int) -> None:
    selectors.recount_fleet(fleet_id)


@shared_task
def flush_agent_reports() -> int:
    return ingest.flush().reports
