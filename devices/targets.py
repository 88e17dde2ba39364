"""Target-state polls answered from Redis while nothing a target state is built from has changed.

An agent polls `GET /api/v1/device/target` with the ETag of the target it has; nearly always the
answer is 304. Through the view that costs a database read (the device, its fleet, type and release)
and Django's whole stack: at 100,000 devices polling every 15 minutes, 111 reads a second for
nothing. So the view remembers, per device, the ETag it answered (`remember`), tagged with the
*epoch* it read before reading the database; the agent API server (`agent_server`,
`agent_wsgi`) answers 304 itself when the device's remembered ETag is the one the agent sends and
its epoch is still the current one (`_NOT_MODIFIED`, one script call for a batch of polls).

The epoch is a random token that every change to a target's inputs replaces (`changed`): the
device fields in DEVICE_FIELDS, the fleet fields in FLEET_FIELDS, a release or device type. Their
writers are covered where they are made: `Device.objects` and `Fleet.objects` querysets' update()
and bulk_update() (models.TargetAwareQuerySet), saves and deletes of those models (signals below),
and the report flusher's raw UPDATE that clears a finished OS update. One change anywhere makes every
remembered ETag stale: the next poll of each device goes to the view once, which remembers it again.
Changes are rare next to polls, and a cheap, global invalidation cannot miss a device.

Why it cannot answer 304 for a target that changed: the view reads the epoch *before* the database,
and a writer replaces the epoch when its transaction commits. A poll that read the old row either
read the epoch before the replacement (what it remembers is stale already) or after the commit (then
it read the new row). Left open: the moment between a commit and its replacement of the epoch, in
which a poll may still get 304; the change is pushed or nudged to the agent anyway, and the next poll
sees it. If Redis cannot be reached to replace the epoch, remembered ETags expire after
CACHE_TTL_S. A random token rather than a counter: an epoch evicted or lost with Redis's data can
never come back equal to one that remembered ETags carry.
"""

import contextlib
import logging
import secrets

from django.db import transaction
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

EPOCH = "agent:target-epoch"
CACHE_TTL_S = 3600

# What devices.services.device_target_state reads, by model (field names and attnames).
DEVICE_FIELDS = frozenset({
    "uuid", "name", "fleet", "fleet_id", "device_type", "device_type_id", "public_url_enabled",
    "local_mode", "lock_override", "target_os_version", "awaiting_poll",
})  # fmt: skip
FLEET_FIELDS = frozenset({"name", "target_release", "target_release_id"})


def _target_key(device_id: int | str) -> str:
    return f"agent:target:{device_id}"


def _redis():
    from devices.ingest import redis_client

    return redis_client()


# --- Invalidation ------------------------------------------------------------------------------


def _new_epoch() -> None:
    try:
        _redis().set(EPOCH, secrets.token_hex(8))
    except RedisError as error:
        log.error("could not replace the target epoch (%s): polls may get 304 for %s s", error, CACHE_TTL_S)


def changed() -> None:
    """Something a target state is built from has changed: remembered ETags stop counting, now and
    when the current transaction commits (at once outside one)."""
    _new_epoch()
    transaction.on_commit(_new_epoch)


def touches(fields, model_fields: frozenset) -> bool:
    """Whether writing `fields` (names, or None for every field) may change a target state."""
    return fields is None or not model_fields.isdisjoint(fields)


# --- Remembering -------------------------------------------------------------------------------


def epoch() -> str | None:
    """The current epoch (a new one if there is none), read before the database; None without Redis."""
    try:
        r = _redis()
        current = r.get(EPOCH)
        if current is None:
            r.set(EPOCH, secrets.token_hex(8), nx=True)
            current = r.get(EPOCH)
    except RedisError:
        return None
    return current.decode() if current is not None else None


def remember(device_id: int, read_epoch: str | None, etag: str) -> None:
    """The view answered `etag` from a read made after `read_epoch`: polls with it may be answered
    304 without the view until the epoch changes."""
    if read_epoch is None:
        return
    with contextlib.suppress(RedisError):
        _redis().set(_target_key(device_id), f"{read_epoch}|{etag}", ex=CACHE_TTL_S)


# Polls with an If-None-Match, any number in one script call: KEYS are each poll's identity key (see
# ingest: "<device id>|<uuid>", or "-" for a key known to be wrong), then the epoch; ARGV the identity
# TTL, then each poll's If-None-Match value. Answers 1 for a poll whose device's remembered ETag is
# that value under the current epoch (its identity is kept cached as a report would), else 0: the
# view answers it.
_NOT_MODIFIED = f"""
local epoch = redis.call('GET', KEYS[#KEYS])
local answers = {{}}
for i = 1, #KEYS - 1 do
  local hit = 0
  if epoch then
    local identity = redis.call('GET', KEYS[i])
    if identity and identity ~= '-' then
      local id = string.match(identity, '^(%d+)|')
      if id and redis.call('GET', '{_target_key("")}' .. id) == epoch .. '|' .. ARGV[i + 1] then
        redis.call('EXPIRE', KEYS[i], ARGV[1])
        hit = 1
      end
    end
  end
  answers[i] = hit
end
return answers
"""


def not_modified_script(client):
    """The script above, registered on `client` (sync or asyncio)."""
    return client.register_script(_NOT_MODIFIED)


_scripts: dict[int, object] = {}


def not_modified(key_hash: str, etag: str) -> bool:
    """One poll through the script (the WSGI fast path); False whenever the view should answer."""
    from devices import ingest

    r = _redis()
    script = _scripts.get(id(r))
    if script is None:
        script = _scripts[id(r)] = not_modified_script(r)
    try:
        (answer,) = script(keys=[ingest._identity_key(key_hash), EPOCH], args=[ingest.IDENTITY_TTL_S, etag])
    except RedisError:
        return False
    return answer == 1


# --- Where targets change ------------------------------------------------------------------------


class TargetAwareQuerySet:
    """Mixin for a model's QuerySet: update() and bulk_update() report writes of `target_fields`."""

    target_fields: frozenset = frozenset()

    def update(self, **kwargs):
        rows = super().update(**kwargs)
        if rows and touches(kwargs, self.target_fields):
            changed()
        return rows

    def bulk_update(self, objs, fields, batch_size=None):
        rows = super().bulk_update(objs, fields, batch_size=batch_size)
        if rows and touches(fields, self.target_fields):
            changed()
        return rows


def _saved(sender, instance, created, update_fields=None, **kwargs):
    if created:
        return  # nothing can have been remembered for what did not exist
    fields = _SAVED_FIELDS.get(sender)
    if fields is None or touches(update_fields, fields):
        changed()


def _deleted(sender, instance, **kwargs):
    changed()


_SAVED_FIELDS: dict = {}


def connect() -> None:
    """Saves and deletes through the ORM (forms, the admin, services that save one object)."""
    from django.apps import apps
    from django.db.models.signals import post_delete, post_save

    models = {
        apps.get_model("devices", "Device"): DEVICE_FIELDS,
        apps.get_model("fleets", "Fleet"): FLEET_FIELDS,
        apps.get_model("fleets", "Release"): None,  # any field: a target carries the release's
        apps.get_model("devices", "DeviceType"): None,
    }
    for model, fields in models.items():
        _SAVED_FIELDS[model] = fields
        post_save.connect(_saved, sender=model, dispatch_uid=f"target-saved-{model._meta.label}")
        if model._meta.label != "devices.Device":  # a deleted device's key is refused before this
            post_delete.connect(_deleted, sender=model, dispatch_uid=f"target-deleted-{model._meta.label}")
