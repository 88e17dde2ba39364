"""Writes for devices: what the agent protocol changes, and the action engine.

The action engine in one paragraph: `action_create` records a DeviceAction (O(1) queries) and
enqueues `expand_action` after commit. Expansion inserts one ActionDelivery per device in scope
with INSERT ... SELECT in chunks of device ids, each row already classified (pending, missed
offline, waiting, unsupported) by SQL, and enqueues one `deliver_batch` message per
ACTION_BATCH_SIZE pending devices. A batch claims its rows with a conditional UPDATE, pushes to
the agents concurrently with a timeout, and records outcomes with one UPDATE per outcome group.
Agents report results later through the agent API. Every state change goes through
`_transition`, which moves the per-state counters on the action row in the same transaction, so
progress is one row read.
"""

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, CharField, Count, DateTimeField, F, IntegerField, Q, QuerySet, Value, When
from django.utils import timezone
from redis.exceptions import RedisError

from devices import ingest
from devices.filters import filtered_devices
from devices.keys import push_secret_for, sign_push
from devices.models import (
    FINAL_DELIVERY_STATES,
    ActionDelivery,
    ActionKind,
    ActionScope,
    ActionState,
    DeliveryState,
    Device,
    DeviceAction,
    OfflinePolicy,
    delivery_key,
)
from devices.selectors import online_q
from devices.services import pushes
from devices.services.agent import AgentError
from devices.services.specs import ACTIONS, NUDGED, POLL_KINDS, PUSH_KINDS, ActionError, ActionSpec, Rule
from devices.versions import AGENT_API_MIN
from fleets.models import Fleet

log = logging.getLogger(__name__)


def _rules(spec: ActionSpec, params: dict, offline_policy: str, now) -> list[Rule]:
    """The order in which devices are skipped: the kind's own rules, then being offline."""
    rules = spec.skip_rules(params)
    if spec.needs_agent_api:
        if offline_policy == OfflinePolicy.QUEUE:
            rules.append(
                Rule(
                    ~online_q(now),
                    DeliveryState.WAITING,
                    Value("Offline: will be sent when it reports"),
                    "offline: queued",
                )
            )
        else:
            rules.append(
                Rule(
                    ~online_q(now),
                    DeliveryState.MISSED,
                    Value("Offline when the action was sent"),
                    "offline: will miss it",
                )
            )
    return rules


@dataclass
class Preview:
    selected: int
    affected: int
    skipped: list[tuple[str, int]] = field(default_factory=list)
    queued: int = 0
    offline: int = 0

    @property
    def skipped_count(self) -> int:
        return sum(n for _, n in self.skipped)

    @property
    def possible(self) -> bool:
        """Whether any selected device could get it now or, with the queue policy, later."""
        return bool(self.affected or self.queued or self.offline)


def action_preview(
    *,
    kind: str,
    devices: QuerySet[Device],
    offline_policy: str = OfflinePolicy.ONLINE_ONLY,
    params: dict | None = None,
) -> Preview:
    """How many devices an action would reach, and which are skipped and why: one aggregate query."""
    rules = _rules(ACTIONS[kind], params or {}, offline_policy, timezone.now())
    counts = dict(
        devices.order_by()
        .annotate(_rule=_rule_index(rules))
        .values_list("_rule")
        .annotate(n=Count("id"))
        .values_list("_rule", "n")
    )
    preview = Preview(selected=sum(counts.values()), affected=counts.get(-1, 0))
    for i, rule in enumerate(rules):
        count = counts.get(i, 0)
        if not count:
            continue
        if rule.state == DeliveryState.WAITING:
            preview.queued += count
        else:
            preview.skipped.append((rule.label, count))
            if rule.state == DeliveryState.MISSED:
                preview.offline += count
    return preview


def action_possible(
    *,
    kind: str,
    devices: QuerySet[Device],
    offline_policy: str = OfflinePolicy.ONLINE_ONLY,
    params: dict | None = None,
) -> bool:
    """Preview.possible without the preview: whether any of `devices` could get the action now or
    later (anything but unsupported). One EXISTS query, which stops at the first such device, so
    the POST of a fleet-wide action does not count 100,000 devices again."""
    rules = _rules(ACTIONS[kind], params or {}, offline_policy, timezone.now())
    possible = [-1, *(i for i, rule in enumerate(rules) if rule.state != DeliveryState.UNSUPPORTED)]
    return devices.order_by().annotate(_rule=_rule_index(rules)).filter(_rule__in=possible).exists()


def _rule_index(rules: list[Rule]) -> Case:
    """The index of the first rule a device matches, -1 for none (it gets the default outcome)."""
    return Case(
        *(When(rule.when, then=Value(i)) for i, rule in enumerate(rules)),
        default=Value(-1),
        output_field=IntegerField(),
    )


def scope_devices(action: DeviceAction) -> QuerySet[Device]:
    """The devices an action covers, evaluated now (a filter selection re-applies its filter)."""
    devices = Device.objects.filter(fleet_id=action.fleet_id)
    if action.scope == ActionScope.DEVICE:
        return devices.filter(pk=action.device_id)
    if action.scope == ActionScope.SELECTION:
        if "ids" in action.selection:
            return devices.filter(pk__in=action.selection["ids"])
        queryset, _ = filtered_devices(devices, action.selection.get("filter", ""))
        return queryset
    return devices


def action_create(
    *,
    actor,
    fleet: Fleet,
    kind: str,
    scope: str,
    device: Device | None = None,
    selection: dict | None = None,
    params: dict | None = None,
    offline_policy: str = OfflinePolicy.ONLINE_ONLY,
    ttl: timedelta | None = None,
    rollout: dict | None = None,
) -> DeviceAction:
    """Record an action and enqueue its dispatch after commit. The caller has checked the actor's role."""
    spec = ACTIONS.get(kind)
    if spec is None:
        raise ActionError(f"Unknown action {kind!r}.")
    if scope not in spec.scopes:
        raise ActionError(f"{spec.label} cannot be applied to {ActionScope(scope).label.lower()}.")
    if offline_policy == OfflinePolicy.QUEUE and not ttl:
        raise ActionError("Queued delivery needs a time limit.")
    params = dict(params or {})
    if rollout:
        if not spec.needs_agent_api or scope == ActionScope.DEVICE:
            raise ActionError("Only actions sent to several devices can be rolled out in stages.")
        if offline_policy != OfflinePolicy.ONLINE_ONLY:
            raise ActionError(
                "A staged rollout reaches the devices online at each stage; it cannot also wait for offline ones."
            )
        if rollout["size"] < 1 or not 0 <= rollout["halt_failure_pct"] <= 100:
            raise ActionError("A stage has at least one device, and the halt threshold is a percentage.")
        params["rollout"] = {"size": rollout["size"], "halt_failure_pct": rollout["halt_failure_pct"]}
    now = timezone.now()
    action = DeviceAction.objects.create(
        organization_id=fleet.organization_id,
        fleet=fleet,
        fleet_name=fleet.name,
        device=device if scope == ActionScope.DEVICE else None,
        actor=actor,
        actor_name=actor.get_username(),
        kind=kind,
        scope=scope,
        selection=selection or {},
        params=params,
        offline_policy=offline_policy,
        deliver_until=now + ttl if offline_policy == OfflinePolicy.QUEUE else None,
        created_at=now,
    )
    if scope == ActionScope.DEVICE and not spec.needs_agent_api:
        action_expand(action.pk)  # one device, one setting: apply it now, the page shows it at once
    else:
        transaction.on_commit(lambda: _enqueue_expand(action.pk))
    return action


def action_record(
    *,
    actor,
    kind: str,
    fleet: Fleet | None,
    summary: str,
    organization=None,
    device: Device | None = None,
    params: dict | None = None,
) -> DeviceAction:
    """Audit an action that is carried out in the request itself (a rename, a transfer, a member
    change): recorded as done, with no deliveries. Call it inside the change's transaction."""
    now = timezone.now()
    return DeviceAction.objects.create(
        organization=organization or fleet.organization,
        fleet=fleet,
        fleet_name=fleet.name if fleet else "",
        device=device,
        actor=actor,
        actor_name=actor.get_username(),
        kind=kind,
        scope=ActionScope.DEVICE if device else ActionScope.FLEET,
        params=params or {},
        summary=summary[:300],
        state=ActionState.DONE,
        created_at=now,
        started_at=now,
        finished_at=now,
    )


def _enqueue_expand(action_id: int) -> None:
    from devices.tasks import expand_action

    try:
        expand_action.delay(action_id)
    except Exception:  # the broker is down: the action stays queued and the sweeper sends it later
        log.exception("Could not enqueue action %s; the sweeper will retry", action_id)


# --- Delivery state changes ----------------------------------------------------------------------


# Counter changes a transaction makes at its end (_transition's `counts`), per action id.
CountChanges = defaultdict[int, Counter]


def _transition(
    action_id: int,
    deliveries: QuerySet,
    from_states,
    to_state: str,
    *,
    reason=None,
    now=None,
    changes=None,
    counts: CountChanges | None = None,
) -> int:
    """Move deliveries from any of `from_states` to `to_state` (setting `changes` too), keeping the
    action's counters exact: at once, or, given `counts`, by adding to them what _count_changes
    applies at the end of the transaction.

    `from_states` go in the order deliveries flow between them (sending before sent): a row that
    another transaction moves from one to a later one meanwhile is still caught. In READ COMMITTED
    each UPDATE sees what committed before it began and waits for a row another transaction holds,
    then skips it if it no longer matches: the next UPDATE, begun after that commit, takes it. In
    the other order that row would be missed by both (a result lost while its push was recorded)."""
    now = now or timezone.now()
    values = {"state": to_state, **(changes or {})}
    if reason is not None:
        values["reason"] = reason[:300]
    if to_state in FINAL_DELIVERY_STATES:
        values["finished_at"] = now
    moved = {}
    for state in from_states:
        count = deliveries.filter(state=state).update(**values)
        if count:
            moved[state] = count
    if moved:
        changed = Counter({f"{state}_count": -count for state, count in moved.items()})
        changed[f"{to_state}_count"] += sum(moved.values())
        if counts is None:
            _count_changes({action_id: changed})
        else:
            counts[action_id].update(changed)
    return sum(moved.values())


def _count_changes(counts: dict[int, Counter]) -> None:
    """Add counter changes to their actions: one UPDATE per action, in id order. Made last in a
    transaction, they lock the action's row (that every batch of it updates) from there to the
    commit only, not from the first of several transitions on."""
    for action_id in sorted(counts):
        changed = {name: F(name) + n for name, n in counts[action_id].items() if n}
        if changed:
            DeviceAction.objects.filter(pk=action_id).update(**changed)


# The advisory locks of actions (PostgreSQL): this first key, the action's id the second.
ACTION_LOCKS = 0x5AC7


def _hold_action(action_id: int, *, exclusive: bool = False) -> None:
    """Take the action's advisory lock for the rest of the transaction (PostgreSQL; elsewhere the
    database serializes writers as a whole). Shared: an expansion chunk or a batch's claim, which
    go on side by side, each sure the action stays open until it commits. Exclusive: what closes
    the action or takes claimed rows back (a cancel, the release of stale claims), after those in
    flight and before any that come later: the lock's queue is fair, so a stream of batches does
    not keep a cancel waiting. A shared holder then changes the action's row only last
    (_count_changes), never waiting with it locked for rows another transaction holds."""
    if connection.vendor != "postgresql":
        return
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s, %s)", [ACTION_LOCKS, action_id % 2**31])


def _finish_if_settled(action_id: int) -> None:
    """Once nothing of the action is on its way: the next stage of a staged rollout, or done."""
    settled = DeviceAction.objects.filter(
        pk=action_id,
        state=ActionState.DISPATCHING,
        pending_count=0,
        waiting_count=0,
        sending_count=0,
        sent_count=0,
    )
    if settled.filter(held_count__gt=0).exists():
        _next_stage(action_id)
    else:
        settled.update(state=ActionState.DONE, finished_at=timezone.now())


# --- Staged rollouts -----------------------------------------------------------------------------
# A staged action sends `size` devices at a time. When a stage has settled, it goes on with the next
# one, unless more than `halt_failure_pct` of the stage failed: then it halts, and the devices it held
# back are cancelled. Failures are results the devices report (or their silence, once the sweeper
# fails them): a device that does not come back from a reboot stops the rollout.


def _failures(action: DeviceAction) -> int:
    return action.failed_count + action.blocked_count


def _next_stage(action_id: int) -> None:
    with transaction.atomic():
        action = (
            DeviceAction.objects.select_for_update()
            .filter(pk=action_id, state=ActionState.DISPATCHING)
            .first()
        )
        in_flight = (
            action and action.pending_count + action.waiting_count + action.sending_count + action.sent_count
        )
        if action is None or action.held_count == 0 or in_flight:
            return  # another transition got here first
        rollout = dict(action.params["rollout"])
        failed = _failures(action) - rollout["failed_before"]
        if failed * 100 > rollout["halt_failure_pct"] * rollout["stage_devices"]:
            reason = (
                f"Halted after stage {rollout['stage']}: {failed} of {rollout['stage_devices']} devices failed "
                f"(limit {rollout['halt_failure_pct']}%)"
            )
            rows = ActionDelivery.objects.filter(action_id=action_id)
            _transition(action_id, rows, [DeliveryState.HELD], DeliveryState.CANCELLED, reason=reason)
            DeviceAction.objects.filter(pk=action_id).update(
                state=ActionState.HALTED, finished_at=timezone.now(), summary=reason
            )
            return
        device_ids = _release_stage(action, rollout)
    transaction.on_commit(lambda: _enqueue_batches(action_id, device_ids))


def _release_stage(action: DeviceAction, rollout: dict) -> list[int]:
    """Move the next `size` held devices to pending; returns them (to be enqueued after commit)."""
    held = ActionDelivery.objects.filter(action_id=action.pk, state=DeliveryState.HELD)
    device_ids = list(held.order_by("device_id").values_list("device_id", flat=True)[: rollout["size"]])
    _transition(action.pk, held.filter(device_id__in=device_ids), [DeliveryState.HELD], DeliveryState.PENDING)
    rollout.update(stage=rollout["stage"] + 1, stage_devices=len(device_ids), failed_before=_failures(action))
    DeviceAction.objects.filter(pk=action.pk).update(params=action.params | {"rollout": rollout})
    return device_ids


def _hold_for_stages(action_id: int, size: int) -> list[int]:
    """At the end of a staged action's expansion: keep the first stage pending, hold the rest back."""
    pending = ActionDelivery.objects.filter(action_id=action_id, state=DeliveryState.PENDING)
    first = list(pending.order_by("device_id").values_list("device_id", flat=True)[:size])
    if first:
        _transition(
            action_id, pending.filter(device_id__gt=first[-1]), [DeliveryState.PENDING], DeliveryState.HELD
        )
    action = DeviceAction.objects.get(pk=action_id)
    rollout = action.params["rollout"] | {
        "stage": 1,
        "stage_devices": len(first),
        "failed_before": _failures(action),
    }
    DeviceAction.objects.filter(pk=action_id).update(params=action.params | {"rollout": rollout})
    return first


# --- Expansion -----------------------------------------------------------------------------------

EXPAND_CHUNK = 10_000


def action_expand(action_id: int) -> None:
    """Turn an action's scope into deliveries, chunk by chunk, enqueueing batches as it goes.

    A chunk is one statement: INSERT ... SELECT the next EXPAND_CHUNK devices in id order ...
    RETURNING device_id, state. The database builds and classifies the rows and says which
    devices are pending, so nothing is read twice; pending devices are enqueued ACTION_BATCH_SIZE
    at a time across chunk boundaries, ceil(pending / size) messages in all.
    """
    claimed = DeviceAction.objects.filter(
        pk=action_id, state__in=[ActionState.QUEUED, ActionState.EXPANDING]
    ).update(state=ActionState.EXPANDING, started_at=timezone.now())
    if not claimed:
        return  # cancelled, or a duplicate message for an action already expanded
    action = DeviceAction.objects.get(pk=action_id)
    devices = scope_devices(action)
    size = settings.ACTION_BATCH_SIZE
    # Resume after a crash: rows already inserted are skipped by starting after the last one, and
    # their pending devices are enqueued again (a batch claims its rows, so a repeat finds none).
    done = ActionDelivery.objects.filter(action_id=action_id)
    last = done.order_by("-device_id").values_list("device_id", flat=True).first() or 0
    backlog = list(
        done.filter(state=DeliveryState.PENDING).order_by("device_id").values_list("device_id", flat=True)
    )
    spec = ACTIONS[action.kind]
    rules = _rules(spec, action.params, action.offline_policy, action.created_at)
    default_state, _ = spec.default_outcome(action.params)
    staged = "rollout" in action.params
    if staged:
        backlog = []  # a resumed staged expansion holds and enqueues its first stage at the end
    while True:
        with transaction.atomic():
            _hold_action(action_id)
            if not DeviceAction.objects.filter(pk=action_id, state=ActionState.EXPANDING).exists():
                return  # cancelled while expanding
            if spec.lock_devices:  # before the INSERT ... SELECT reads them (see ActionSpec.lock_devices)
                list(
                    devices.filter(pk__gt=last)
                    .order_by("pk")
                    .select_for_update(of=("self",))
                    .values_list("pk", flat=True)[:EXPAND_CHUNK]
                )
            inserted = _insert_deliveries(action, devices, rules, after=last, limit=EXPAND_CHUNK)
            if inserted:
                upto = max(device_id for device_id, _ in inserted)
                _apply_setting(
                    action, spec, [device_id for device_id, state in inserted if state == default_state]
                )
                _count_chunk(action_id, inserted)
        finished = len(inserted) < EXPAND_CHUNK
        if not staged:
            backlog += sorted(device_id for device_id, state in inserted if state == DeliveryState.PENDING)
            ready = len(backlog) if finished else len(backlog) - len(backlog) % size
            _enqueue_batches(action_id, backlog[:ready])
            backlog = backlog[ready:]
        if finished:
            break
        last = upto
    if staged:
        with transaction.atomic():
            first_stage = _hold_for_stages(action_id, action.params["rollout"]["size"])
        _enqueue_batches(action_id, first_stage)
    DeviceAction.objects.filter(pk=action_id, state=ActionState.EXPANDING).update(
        state=ActionState.DISPATCHING
    )
    _finish_if_settled(action_id)


def _apply_setting(action: DeviceAction, spec: ActionSpec, device_ids: list[int]) -> None:
    """A setting's change on the devices no rule skipped, its after-hook, and the nudge that makes
    online agents poll at once. Runs in the chunk's transaction."""
    if spec.needs_agent_api or not device_ids:
        return
    applied = Device.objects.filter(pk__in=device_ids)
    changes = spec.changes(action.params, action.created_at)
    if spec.applied_on_poll:
        changes["awaiting_poll"] = True  # its next poll confirms the delivery (action_record_polled)
    if changes:
        applied.update(**changes)
    if spec.nudge:
        nudge_ids = list(
            applied.filter(online_q(), agent_version_key__gte=AGENT_API_MIN)
            .exclude(api_address="")
            .values_list("pk", flat=True)
        )
        if spec.applied_on_poll and nudge_ids:
            ActionDelivery.objects.filter(action_id=action.pk, device_id__in=nudge_ids).update(reason=NUDGED)
        transaction.on_commit(lambda: _enqueue_nudges(nudge_ids))
    if spec.after:
        spec.after(action, applied)


def _enqueue_nudges(device_ids: list[int]) -> None:
    from devices.tasks import nudge_devices

    size = settings.ACTION_BATCH_SIZE
    for start in range(0, len(device_ids), size):
        nudge_devices.delay(device_ids[start : start + size])


def _insert_deliveries(
    action: DeviceAction, devices: QuerySet[Device], rules: list[Rule], *, after: int, limit: int
) -> list[tuple[int, str]]:
    """INSERT ... SELECT of the next `limit` devices after id `after`: every delivery row built by
    the database, classified by `rules`. Returns (device_id, state) of the rows inserted."""
    default_state, default_reason = ACTIONS[action.kind].default_outcome(action.params)
    state = Case(
        *(When(rule.when, then=Value(rule.state.value)) for rule in rules),
        default=Value(default_state.value),
        output_field=CharField(),
    )
    reason = Case(
        *(When(rule.when, then=rule.reason) for rule in rules),
        default=Value(default_reason),
        output_field=CharField(),
    )
    final = [rule.when for rule in rules if rule.state in FINAL_DELIVERY_STATES]
    default_finished = Value(timezone.now() if default_state in FINAL_DELIVERY_STATES else None)
    finished = Case(
        *(When(q, then=Value(action.created_at)) for q in final),
        default=default_finished,
        output_field=DateTimeField(),
    )
    select = (
        devices.filter(pk__gt=after)
        .annotate(
            _action=Value(action.pk, output_field=IntegerField()),
            _state=state,
            _reason=reason,
            _attempts=Value(0, output_field=IntegerField()),
            _finished=finished,
        )
        .order_by("pk")
        .values_list("_action", "pk", "uuid", "name", "_state", "_reason", "_attempts", "_finished")[:limit]
    )
    sql, params = select.query.sql_with_params()
    table = ActionDelivery._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (action_id, device_id, device_uuid, device_name, state, reason, attempts, finished_at) "
            f"{sql} RETURNING device_id, state",
            params,
        )
        return cursor.fetchall()


def _count_chunk(action_id: int, inserted: list[tuple[int, str]]) -> None:
    """Add a chunk's deliveries to the action's per-state counters: one UPDATE."""
    counts = Counter(state for _, state in inserted)
    DeviceAction.objects.filter(pk=action_id).update(
        target_count=F("target_count") + len(inserted),
        **{f"{state}_count": F(f"{state}_count") + n for state, n in counts.items()},
    )


def _enqueue_batches(action_id: int, pending_ids: list[int]) -> None:
    from devices.tasks import deliver_batch

    size = settings.ACTION_BATCH_SIZE
    for start in range(0, len(pending_ids), size):
        batch = pending_ids[start : start + size]
        deliver_batch.delay(action_id, batch[0], batch[-1])


# --- Delivery ------------------------------------------------------------------------------------


@dataclass
class PushResult:
    device_id: int
    state: DeliveryState
    reason: str = ""


def action_deliver_range(
    action_id: int, first_device_id: int, last_device_id: int, *, claim: str | None = None
) -> None:
    """Deliver a batch: the action's pending deliveries for devices in the id range, and those this
    same batch (`claim`: its task id, kept by a redelivered message) had claimed before it died."""
    rows = ActionDelivery.objects.filter(
        action_id=action_id, device_id__gte=first_device_id, device_id__lte=last_device_id
    )
    _deliver(action_id, rows, claim or uuid.uuid4().hex)


def action_deliver_waiting(device_id: int, *, claim: str | None = None) -> None:
    """A device came back: send it what queued-policy actions kept for it, unless their time ran out."""
    now = timezone.now()
    claim = claim or uuid.uuid4().hex
    waiting = ActionDelivery.objects.filter(device_id=device_id, state=DeliveryState.WAITING)
    for action_id, deliver_until in waiting.values_list("action_id", "action__deliver_until").distinct():
        rows = ActionDelivery.objects.filter(action_id=action_id, device_id=device_id)
        with transaction.atomic():
            if deliver_until and deliver_until < now:
                _transition(
                    action_id,
                    rows,
                    [DeliveryState.WAITING],
                    DeliveryState.EXPIRED,
                    reason="Time limit passed before the device came back",
                )
                _finish_if_settled(action_id)
                continue
            _transition(action_id, rows, [DeliveryState.WAITING], DeliveryState.PENDING)
        _deliver(action_id, rows, claim)


DELIVERABLE_ACTION_STATES = (ActionState.EXPANDING, ActionState.DISPATCHING)
CANCELLED_WHILE_SENDING = "Cancelled while it was being sent: the device may have received it"


def _deliver(action_id: int, rows: QuerySet, claim: str) -> None:
    """Claim, push, record. The claim is conditional UPDATEs under the action's shared lock
    (_hold_action; other batches claim meanwhile), so a cancel, which takes it exclusively, either
    comes first (nothing is claimed) or after (what was claimed is on its way):
    pending rows become this batch's, and rows this batch had claimed before (a redelivered
    message after its worker died: the agent dedups by key) are taken again. Rows another batch
    holds, and every row of an action that is no longer open, are never pushed from here."""
    with transaction.atomic():
        _hold_action(action_id)
        action = (
            DeviceAction.objects.filter(pk=action_id)
            .values("kind", "params", "state", "target_count", "pending_count", "started_at")
            .first()
        )
        if action is None:
            return
        mine = rows.filter(state=DeliveryState.SENDING, claim=claim)
        if action["state"] not in DELIVERABLE_ACTION_STATES:
            # Cancelled (or halted) after this batch claimed its rows and before it recorded them.
            _transition(
                action_id,
                mine,
                [DeliveryState.SENDING],
                DeliveryState.CANCELLED,
                reason=CANCELLED_WHILE_SENDING,
            )
            return
        now = timezone.now()
        counts: CountChanges = defaultdict(Counter)
        mine.update(attempts=F("attempts") + 1, sent_at=now)
        _transition(
            action_id,
            rows,
            [DeliveryState.PENDING],
            DeliveryState.SENDING,
            changes={"claim": claim, "attempts": F("attempts") + 1, "sent_at": now},
            counts=counts,
        )
        device_ids = list(mine.values_list("device_id", flat=True))
        _count_changes(counts)
    if not device_ids:
        return
    targets = list(
        Device.objects.filter(pk__any_of=device_ids).order_by("pk").values("pk", "uuid", "api_address")
    )
    with contextlib.suppress(RedisError):  # without it the agents' results take the database read
        ingest.remember_sent(action_id, device_ids)
    expanded = action["state"] == ActionState.DISPATCHING  # else not every delivery is there to count
    within = report_window_s(
        action["kind"],
        action["target_count"],
        batch=len(device_ids),
        pending=max(0, action["pending_count"] - len(device_ids)) if expanded else None,
        elapsed_s=(now - action["started_at"]).total_seconds() if action["started_at"] else 0.0,
    )
    results = pushes.run(_push_all(action["kind"], action["params"], action_id, targets, within))
    missing = set(device_ids) - {t["pk"] for t in targets}
    results += [PushResult(pk, DeliveryState.FAILED, "Device was deleted") for pk in missing]
    _record_push_results(action_id, rows.filter(claim=claim), results)


def _record_push_results(action_id: int, rows: QuerySet, results: list[PushResult]) -> None:
    groups = defaultdict(list)
    for result in results:
        groups[(result.state, result.reason)].append(result.device_id)
    now = timezone.now()
    counts: CountChanges = defaultdict(Counter)
    with transaction.atomic():
        for (state, reason), ids in groups.items():
            _transition(
                action_id,
                rows.filter(device_id__any_of=ids),
                [DeliveryState.SENDING],
                state,
                reason=reason,
                now=now,
                counts=counts,
            )
        _count_changes(counts)
        _finish_if_settled(action_id)


class _PushSlot:
    """One of AGENT_PUSH_CONCURRENCY requests in flight, then AGENT_PUSH_TIMEOUT_S for this one
    (its one retry on a new connection included, see pushes.StaleConnectionError), counted from
    when it has its slot. A class, not an asynccontextmanager: one per push, and a generator-based
    one cost a few percent of a push's CPU."""

    __slots__ = ("_slots", "_limit")

    def __init__(self, slots: asyncio.Semaphore | None) -> None:
        self._slots = slots

    async def __aenter__(self) -> None:
        if self._slots is not None:
            await self._slots.acquire()
        try:
            self._limit = asyncio.timeout(settings.AGENT_PUSH_TIMEOUT_S)
            await self._limit.__aenter__()
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, *exc) -> None:
        try:
            await self._limit.__aexit__(*exc)  # a cancel by the time limit: TimeoutError
        finally:
            self._release()

    def _release(self) -> None:
        if self._slots is not None:
            self._slots.release()


def _closes_after(remaining: Counter | None, where: pushes.Target) -> bytes:
    """The batch's last push to an address closes the connection after its answer (pushes): the
    header line that says so, or nothing."""
    if remaining is None:
        return b""
    remaining[where.address] -= 1
    return b"Connection: close\r\n" if remaining[where.address] <= 0 else b""


def _signed_request(
    where: pushes.Target, uuid: str, path: str, body: bytes, headers: bytes, remaining: Counter | None
) -> tuple[pushes.Target, bytes]:
    """A POST to `path` of the agent API at `where`, signed now (when sent, not when queued behind
    other pushes) with the device's push secret: `headers` are header lines of its own."""
    timestamp = int(time.time())
    signature = sign_push(push_secret_for(uuid), timestamp, "POST", path, body)
    head = (
        f"POST {where.prefix}{path} HTTP/1.1\r\nHost: {where.host_header}\r\n"
        f"X-Fleet-Timestamp: {timestamp}\r\nX-Fleet-Signature: {signature}\r\n"
    ).encode("latin-1")
    close = _closes_after(remaining, where)
    return where, b"%s%s%sContent-Length: %d\r\n\r\n%s" % (head, headers, close, len(body), body)


def _addressed(targets: list[dict]) -> tuple[list[tuple[dict, pushes.Target | None, str]], Counter]:
    """Each target with its agent API address checked and parsed (pushes.agent_target; a missing
    address refused), and the number of targets per address (_closes_after)."""
    addressed = [
        (t, *(pushes.agent_target(t["api_address"]) if t["api_address"] else (None, ""))) for t in targets
    ]
    return addressed, Counter(where.address for _, where, _ in addressed if where is not None)


# The kinds whose results may wait for the device's next report (PROTOCOL.md, report_within_s): a
# reboot and a shutdown report at once, as the device goes dark.
RESULTS_MAY_WAIT = ("restart", "purge")


def report_window_s(
    kind: str, target_count: int, *, batch: int = 0, pending: int | None = None, elapsed_s: float = 0.0
) -> int:
    """How long each device of a `kind` action of `target_count` devices may hold its result for a
    report it sends anyway (PROTOCOL.md, report_within_s): 0 (at once) up to ACTION_RESULTS_PER_S
    devices, then a second more for each ACTION_RESULTS_PER_S, up to one report interval. A
    100,000-device restart's results then come with the fleet's heartbeats, spread over one
    interval, instead of as 100,000 reports on top of them while the pushes still go out.

    For a `batch` of an action whose deliveries all exist (`pending`: those still to claim after
    the batch's; `elapsed_s` since the action started), no longer than the rest of the fan-out
    should take at the pace of the claims so far, but no shorter than the batch's own results take
    at ACTION_RESULTS_PER_S: a result that waits past the last push only delays the action's end,
    so a device of a batch sent 5 s before the end rides its heartbeat only if that is due within
    5 s, and the last batches' devices report at once. Rows that were final without a push
    (unsupported, offline) count as claimed: the pace is overestimated, which errs towards
    results coming earlier."""
    rate = settings.ACTION_RESULTS_PER_S
    if kind not in RESULTS_MAY_WAIT or rate <= 0:
        return 0
    window = min(settings.AGENT_REPORT_INTERVAL_S, target_count // rate)
    claimed = target_count - (pending or 0)
    if pending is not None and elapsed_s > 0 and claimed > 0:
        window = min(window, max(int(pending * elapsed_s / claimed), batch // rate))
    return window


async def _push_all(
    kind: str, params: dict, action_id: int, targets: list[dict], within: int = 0
) -> list[PushResult]:
    slots = asyncio.Semaphore(settings.AGENT_PUSH_CONCURRENCY)
    addressed, remaining = _addressed(targets)
    async with pushes.pool() as pool:
        push = functools.partial(
            _push_one,
            pool,
            kind,
            action_id,
            slots=slots,
            remaining=remaining,
            body_rest=_body_rest(params, within),
        )
        return await asyncio.gather(*(push(*target) for target in addressed))


async def _push_one(
    pool: pushes.PushPool,
    kind: str,
    action_id: int,
    target: dict,
    where: pushes.Target | None,
    refusal: str,
    *,
    body_rest: bytes,
    slots: asyncio.Semaphore | None = None,
    remaining: Counter | None = None,
) -> PushResult:
    """Push one action to one agent, at `where` (or not: `refusal`, see _addressed). `remaining`:
    pushes of the batch per address still to start (_closes_after); `body_rest`: the params and
    the rest of the body, encoded once for the batch (_body_rest)."""
    device_id = target["pk"]
    if where is None:
        if not refusal:
            return PushResult(device_id, DeliveryState.FAILED, "The agent has not reported an API address")
        return PushResult(device_id, DeliveryState.FAILED, f"The agent's API address {refusal}"[:300])
    key = delivery_key(action_id, device_id)
    path = f"/v1/actions/{kind}"
    body = _action_body(key, body_rest)
    headers = b"Content-Type: application/json\r\nIdempotency-Key: %s\r\n" % key.encode()
    try:
        async with _PushSlot(slots):
            response = await pool.request(
                *_signed_request(where, target["uuid"], path, body, headers, remaining)
            )
    except TimeoutError:
        return PushResult(
            device_id, DeliveryState.FAILED, f"No answer within {settings.AGENT_PUSH_TIMEOUT_S:g} s"
        )
    except pushes.PushError as error:
        return PushResult(device_id, DeliveryState.FAILED, f"Unreachable: {error.reason}"[:300])
    if response.status == 202:
        return PushResult(device_id, DeliveryState.SENT)
    if response.status == 200:  # a repeated key: the agent did not act again
        return _duplicate_result(response, device_id) or PushResult(device_id, DeliveryState.SENT)
    detail = _error_detail(response)
    if response.status == 409:
        return PushResult(device_id, DeliveryState.BLOCKED, detail or "Blocked by the update lock")
    return PushResult(
        device_id, DeliveryState.FAILED, f"Agent answered {response.status}: {detail}".strip(": ")[:300]
    )


def _body_rest(params: dict, within: int = 0) -> bytes:
    """What follows the key in each push body of a batch (_action_body), encoded once."""
    rest = json.dumps(params).encode()
    return b'%s, "report_within_s": %d' % (rest, within) if within > 0 else rest


def _action_body(key: str, body_rest: bytes) -> bytes:
    """json.dumps({"key": key, "params": params, ...}).encode(), with the params (and what follows
    them, _body_rest) encoded already (a key is digits and a dash: nothing to escape)."""
    return b'{"key": "%s", "params": %s}' % (key.encode(), body_rest)


def devices_nudge(device_ids: list[int]) -> int:
    """Ask agents to poll their target state now (a setting changed); best effort, not recorded."""
    targets = list(
        Device.objects.filter(pk__in=device_ids, agent_version_key__gte=AGENT_API_MIN)
        .exclude(api_address="")
        .values("uuid", "api_address")
    )
    return sum(pushes.run(_nudge_all(targets)))


async def _nudge_all(targets: list[dict]) -> list[bool]:
    slots = asyncio.Semaphore(settings.AGENT_PUSH_CONCURRENCY)
    addressed, remaining = _addressed(targets)
    async with pushes.pool() as pool:
        return await asyncio.gather(
            *(_nudge_one(pool, t, where, slots, remaining) for t, where, _ in addressed if where is not None)
        )


async def _nudge_one(
    pool: pushes.PushPool, target: dict, where: pushes.Target, slots: asyncio.Semaphore, remaining: Counter
) -> bool:
    try:
        async with _PushSlot(slots):
            response = await pool.request(
                *_signed_request(where, target["uuid"], "/v1/update", b"", b"", remaining)
            )
    except (TimeoutError, pushes.PushError):
        return False
    return response.status == 202


def _answer(response) -> dict:
    """The agent's JSON answer, or {} when it is not a JSON object."""
    try:
        payload = json.loads(response.body)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _duplicate_result(response, device_id: int) -> PushResult | None:
    """The outcome an agent remembers for a delivery it already carried out, if it says."""
    result = _answer(response).get("result")
    state = RESULT_STATES.get(result.get("state")) if isinstance(result, dict) else None
    return PushResult(device_id, state, str(result.get("reason", ""))[:300]) if state else None


def _error_detail(response) -> str:
    payload = _answer(response)
    return str(payload.get("detail") or payload.get("error") or "")


# --- Results, cancel, sweep ----------------------------------------------------------------------

# "<action id>-<device id>" (models.delivery_key); at most 18 digits each, so the ids fit the database.
DELIVERY_KEY = re.compile(r"(?P<action>[0-9]{1,18})-(?P<device>[0-9]{1,18})")
RESULT_STATES = {
    "succeeded": DeliveryState.SUCCEEDED,
    "failed": DeliveryState.FAILED,
    "blocked": DeliveryState.BLOCKED,
}


def action_record_result(*, device: Device, key: str, state: str, reason: str = "") -> bool:
    """One agent result applied at once (the agent API buffers them; see devices.ingest)."""
    action_id, device_id = parse_delivery_key(key)
    if device_id != device.pk:
        raise AgentError(404, "unknown_action", "That key is not an action delivery of this device.")
    return bool(record_results({(action_id, state, reason): [device.pk]}))


def parse_delivery_key(key: str) -> tuple[int, int]:
    """`<action id>-<device id>`, each at most 18 digits (ASCII only: no int() surprises)."""
    match = DELIVERY_KEY.fullmatch(key)
    if match is None:
        raise AgentError(404, "unknown_action", "That key is not an action delivery.")
    return int(match["action"]), int(match["device"])


@transaction.atomic
def action_record_update_done(device_id: int, reason: str) -> None:
    """A tracked OS update reached the device: every open delivery of it succeeds."""
    open_updates = ActionDelivery.objects.filter(
        device_id=device_id, state=DeliveryState.SENT, action__kind=ActionKind.OS_UPDATE
    )
    for action_id in open_updates.values_list("action_id", flat=True):
        rows = ActionDelivery.objects.filter(action_id=action_id, device_id=device_id)
        _transition(action_id, rows, [DeliveryState.SENT], DeliveryState.SUCCEEDED, reason=reason)
        _finish_if_settled(action_id)


@transaction.atomic
def action_record_polled(device_id: int) -> Device | None:
    """The device is fetching its target state while a setting waits for it (`awaiting_poll`): the
    device row, locked and read again, is what the answer is built from, and every setting delivery
    still open for the device succeeds. The lock orders this poll with a setting being applied right
    now: either the poll sees that setting (and confirms it) or it waits for the next poll."""
    device = (
        Device.objects.select_for_update(of=("self",))
        .select_related("fleet", "device_type", "fleet__target_release")
        .filter(pk=device_id)
        .first()
    )
    if device is None or not device.awaiting_poll:
        return device
    Device.objects.filter(pk=device_id).update(awaiting_poll=False)
    device.awaiting_poll = False
    waiting = ActionDelivery.objects.filter(
        device_id=device_id, state=DeliveryState.SENT, action__kind__in=POLL_KINDS
    )
    action_ids = list(waiting.values_list("action_id", flat=True).distinct())
    for action in DeviceAction.objects.filter(pk__in=action_ids).only("pk", "kind", "params"):
        reason = f"{ACTIONS[action.kind].reason(action.params)}: the device has fetched it"
        rows = ActionDelivery.objects.filter(action_id=action.pk, device_id=device_id)
        _transition(action.pk, rows, [DeliveryState.SENT], DeliveryState.SUCCEEDED, reason=reason)
        _finish_if_settled(action.pk)
    return device


BLOCKED_BY_LOCK = "Blocked by update lock"


def action_record_update_blocked(device_id: int, detail: str) -> None:
    """The device says the update lock holds its pending update back (`detail`), or no longer does.

    The delivery of a tracked OS update stays "sent", with the reason saying it is blocked by the
    update lock, rather than moving to the final "blocked" state a refused restart gets: the update
    is still in the device's target state, so the lock override (or the lock's release) lets this
    same delivery through and it succeeds when the new version is reported. Its time limit
    (OS_UPDATE_TIMEOUT_S, in the sweep) is what ends one that stays blocked.
    """
    open_updates = ActionDelivery.objects.filter(
        device_id=device_id, state=DeliveryState.SENT, action__kind=ActionKind.OS_UPDATE
    )
    if detail:
        open_updates.update(reason=f"{BLOCKED_BY_LOCK}: {detail}"[:300])
    else:
        open_updates.filter(reason__startswith=BLOCKED_BY_LOCK).update(
            reason="The update lock no longer holds it back: waiting for the device to update"
        )


@transaction.atomic
def record_results(groups: dict[tuple[int, str, str], list[int]]) -> int:
    """Agents' results, grouped by (action, outcome, reason): one transition per group. The first
    final result of a delivery wins; a repeat, or a key of an action that does not exist, changes
    nothing. The counters change after every delivery has moved (_count_changes)."""
    moved = 0
    counts: CountChanges = defaultdict(Counter)
    for (action_id, state, reason), device_ids in groups.items():
        rows = ActionDelivery.objects.filter(action_id=action_id, device_id__any_of=device_ids)
        moved += _transition(
            action_id,
            rows,
            [DeliveryState.SENDING, DeliveryState.SENT],  # in this order: see _transition
            RESULT_STATES[state],
            reason=reason[:300],
            counts=counts,
        )
    _count_changes(counts)
    for action_id in sorted({action_id for action_id, _, _ in groups}):
        _finish_if_settled(action_id)
    return moved


@transaction.atomic
def action_cancel(*, action: DeviceAction) -> int:
    """Cancel what has not been sent yet; what is already on its way still reports its outcome.
    The deliveries move first and the action's row last (_count_changes): a result being recorded
    meanwhile holds its delivery's row and then waits for the action's, never the other way."""
    _hold_action(action.pk, exclusive=True)  # after the batches and chunks in flight
    action.refresh_from_db(fields=["state"])
    if not action.is_open:
        raise ActionError("This action has already finished.")
    now = timezone.now()
    counts: CountChanges = defaultdict(Counter)
    rows = ActionDelivery.objects.filter(action_id=action.pk)
    # A tracked setting (an OS update not yet done) is withdrawn from the target state too.
    if ACTIONS[action.kind].tracked:
        waiting = Device.objects.filter(
            pk__in=rows.filter(state=DeliveryState.SENT).values("device_id"),
            target_os_version=action.params.get("version"),
        )
        waiting.update(target_os_version="")
        _transition(
            action.pk,
            rows,
            [DeliveryState.SENT],
            DeliveryState.CANCELLED,
            reason="Cancelled before the device applied it",
            now=now,
            counts=counts,
        )
    cancelled = _transition(
        action.pk,
        rows,
        [DeliveryState.HELD, DeliveryState.WAITING, DeliveryState.PENDING],  # see _transition
        DeliveryState.CANCELLED,
        reason="Cancelled before it was sent",
        now=now,
        counts=counts,
    )
    _count_changes(counts)
    DeviceAction.objects.filter(pk=action.pk).update(state=ActionState.CANCELLED, finished_at=now)
    return cancelled


def actions_sweep(now=None) -> dict:
    """Periodic: expire what waited too long, fail what never reported, send what waits for a device
    that is back, re-send what was never dispatched or never recorded."""
    now = now or timezone.now()
    stats = {"expired": 0, "timed_out": 0, "requeued": 0}
    for action_id in DeviceAction.objects.filter(deliver_until__lt=now, waiting_count__gt=0).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            stats["expired"] += _transition(
                action_id,
                ActionDelivery.objects.filter(action_id=action_id),
                [DeliveryState.WAITING],
                DeliveryState.EXPIRED,
                reason="Time limit passed before the device came back",
                now=now,
            )
            _finish_if_settled(action_id)
    result_deadline = now - timedelta(seconds=settings.ACTION_RESULT_TIMEOUT_S)
    pushed = DeviceAction.objects.filter(sent_count__gt=0, kind__in=PUSH_KINDS)
    for action_id in pushed.values_list("pk", flat=True):
        late = ActionDelivery.objects.filter(action_id=action_id, sent_at__lt=result_deadline)
        with transaction.atomic():
            stats["timed_out"] += _transition(
                action_id,
                late,
                [DeliveryState.SENT],
                DeliveryState.FAILED,
                reason=f"No result from the device within {settings.ACTION_RESULT_TIMEOUT_S} s",
                now=now,
            )
            _finish_if_settled(action_id)
    stats["os_updates_timed_out"] = _time_out_os_updates(now)
    stats["settings_expired"] = _expire_unpolled_settings(now)
    stale = now - timedelta(seconds=10)
    for action_id in DeviceAction.objects.filter(state=ActionState.QUEUED, created_at__lt=stale).values_list(
        "pk", flat=True
    ):
        _enqueue_expand(action_id)
        stats["requeued"] += 1
    stats["sent_waiting"] = _send_waiting_online(now)
    stats["released"] = _release_stale_claims(now)
    stats["redispatched"] = _redispatch_stranded(now)
    return stats


def _send_waiting_online(now) -> int:
    """Queued-policy deliveries whose device is online now are sent, one message per batch. A report
    normally sends them (ingest: a device that came back), but one flushed while the expansion that
    made its row had not committed yet, or a flush that failed after writing, leaves them waiting
    for a device that is already back, until they expire."""
    open_actions = DeviceAction.objects.filter(
        state__in=DELIVERABLE_ACTION_STATES, waiting_count__gt=0
    ).filter(Q(deliver_until__isnull=True) | Q(deliver_until__gte=now))
    online = Device.objects.filter(online_q(now)).values("pk")
    sent = 0
    for action_id in open_actions.values_list("pk", flat=True):
        rows = ActionDelivery.objects.filter(
            action_id=action_id, state=DeliveryState.WAITING, device_id__in=online
        )
        device_ids = sorted(rows.values_list("device_id", flat=True))
        if not device_ids:
            continue
        with transaction.atomic():
            moved = ActionDelivery.objects.filter(action_id=action_id, device_id__in=device_ids)
            sent += _transition(action_id, moved, [DeliveryState.WAITING], DeliveryState.PENDING)
        # A device another path sent meanwhile is skipped by the batch: it is no longer pending.
        _enqueue_batches(action_id, device_ids)
    return sent


SENDING_STALE_AFTER_S = 600


def _release_stale_claims(now) -> int:
    """Rows a batch claimed and never recorded, long after any redelivery of its message would have
    come (it was lost for good): pending again, for the redispatch below (the agent acts once per
    key). Those of an action closed since are cancelled instead."""
    deadline = now - timedelta(seconds=SENDING_STALE_AFTER_S)
    released = 0
    for action_id in DeviceAction.objects.filter(sending_count__gt=0).values_list("pk", flat=True):
        stale = ActionDelivery.objects.filter(action_id=action_id, sent_at__lt=deadline)
        with transaction.atomic():
            _hold_action(action_id, exclusive=True)  # a redelivered batch may be taking them again
            state = (
                DeviceAction.objects.select_for_update()
                .filter(pk=action_id)
                .values_list("state", flat=True)[0]
            )
            if state in DELIVERABLE_ACTION_STATES:
                released += _transition(
                    action_id, stale, [DeliveryState.SENDING], DeliveryState.PENDING, changes={"claim": ""}
                )
            else:
                released += _transition(
                    action_id,
                    stale,
                    [DeliveryState.SENDING],
                    DeliveryState.CANCELLED,
                    reason=CANCELLED_WHILE_SENDING,
                )
    return released


REDISPATCH_AFTER_S = 120


def _redispatch_stranded(now) -> int:
    """Pending deliveries whose batch message was lost (a task that failed for good, a broker that
    lost its data) are sent again, at most every REDISPATCH_AFTER_S per action. Harmless when the
    message was only slow: a batch claims its rows, and agents act once per idempotency key."""
    from django.core.cache import cache

    stranded = DeviceAction.objects.filter(
        state=ActionState.DISPATCHING,
        pending_count__gt=0,
        started_at__lt=now - timedelta(seconds=REDISPATCH_AFTER_S),
    ).values_list("pk", flat=True)
    count = 0
    for action_id in stranded:
        if not cache.add(f"redispatch:{action_id}", 1, REDISPATCH_AFTER_S):
            continue
        pending = ActionDelivery.objects.filter(action_id=action_id, state=DeliveryState.PENDING)
        _enqueue_batches(action_id, list(pending.order_by("device_id").values_list("device_id", flat=True)))
        count += 1
    return count


def _duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day{'s' if seconds != 86400 else ''}"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds} s"


def _time_out_os_updates(now) -> int:
    """A host OS update not reported done within OS_UPDATE_TIMEOUT_S fails, and is withdrawn from
    the target state like a cancelled one (a device must not update long after the audit gave up)."""
    limit = settings.OS_UPDATE_TIMEOUT_S
    late = DeviceAction.objects.filter(
        kind=ActionKind.OS_UPDATE, sent_count__gt=0, created_at__lt=now - timedelta(seconds=limit)
    )
    count = 0
    for action_id, params in late.values_list("pk", "params"):
        version = params.get("version", "")
        with transaction.atomic():
            rows = ActionDelivery.objects.filter(action_id=action_id, state=DeliveryState.SENT)
            Device.objects.filter(pk__in=rows.values("device_id"), target_os_version=version).update(
                target_os_version=""
            )
            blocked = rows.filter(reason__startswith=BLOCKED_BY_LOCK)
            count += _transition(
                action_id,
                blocked,
                [DeliveryState.SENT],
                DeliveryState.FAILED,
                reason=f"Not updated within {_duration(limit)}: still blocked by the update lock; withdrawn",
                now=now,
            )
            count += _transition(
                action_id,
                ActionDelivery.objects.filter(action_id=action_id),
                [DeliveryState.SENT],
                DeliveryState.FAILED,
                reason=f"The device did not report {version} within {_duration(limit)}; withdrawn",
                now=now,
            )
            _finish_if_settled(action_id)
    return count


def _expire_unpolled_settings(now) -> int:
    """A setting no poll has confirmed within SETTING_POLL_TIMEOUT_S expires in the audit. The
    change itself stays in the target state: the device applies it whenever it polls again."""
    limit = settings.SETTING_POLL_TIMEOUT_S
    late = DeviceAction.objects.filter(
        kind__in=POLL_KINDS, sent_count__gt=0, created_at__lt=now - timedelta(seconds=limit)
    )
    count = 0
    for action_id in late.values_list("pk", flat=True):
        with transaction.atomic():
            count += _transition(
                action_id,
                ActionDelivery.objects.filter(action_id=action_id),
                [DeliveryState.SENT],
                DeliveryState.EXPIRED,
                reason=f"Not polled within {_duration(limit)}; still in the target state, applied when polled",
                now=now,
            )
            _finish_if_settled(action_id)
    return count
