"""Agent traffic at fleet scale: reports and results are buffered in Redis, written in bulk.

A state report costs the web server one Redis round trip and no SQL: the device's identity comes
from a cache (keyed by the hash of its api key), and the report's fields are merged into a Redis
hash. A flusher (a thread in every Celery worker, or `manage.py flush_agent_reports --loop`)
drains the buffer every AGENT_FLUSH_INTERVAL_S with one UPDATE per thousand devices, and takes the
actions a report implies in bulk too: queued actions for devices that came back, OS updates that
reached their target or that the update lock holds back. Action results are buffered the same way
and applied as grouped transitions. Several flushers may run at once: ZPOPMIN (SPOP for urgent
ones) hands each device's report to one, and results go through a Redis stream consumer group,
acknowledged only after they are written, so a flusher killed mid-way loses none (reports are
snapshots: the next one repairs a lost one). A flush that fails on the database puts the reports
it had taken back into the buffer.
"""

import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from devices import targets
from devices.keys import hash_secret
from devices.models import GOING_DOWN, ActionDelivery, DeliveryState, Device, online_cutoff
from devices.versions import version_key

log = logging.getLogger(__name__)

# Devices with a buffered report, scored by when it must be written for the device not to look
# offline: when the first of them arrived, or, for a device fresh in the database (see _fresh_key),
# when that freshness ends. The flusher takes the lowest scores first, so however long the backlog,
# no device waits longer than the backlog takes to drain (with a set and SPOP, a random few waited
# several times that and looked offline), and the whole reports a fleet-wide restart makes every
# device send (new containers) wait behind the heartbeats of devices due for one, not in front of
# them (7,200 of 100,000 devices reporting all along were shown offline during one before). A sorted
# set under a new name: a Redis still holding the old set is not in the way.
DIRTY = "agent:pending"
URGENT = "agent:urgent"  # dirty devices written first: see _seen_key
RESULTS = "agent:results"  # a stream: a result stays until the flusher that read it has written it
RESULTS_GROUP = "flushers"
RESULTS_MAXLEN = 1_000_000
# A result read by a flusher that died is taken over by another after this long.
RESULT_RECLAIM_MS = 30_000
IDENTITY_TTL_S = 600
UNKNOWN_KEY_TTL_S = 10
# A deleted device's key stays marked wrong at least as long as an identity is cached: a request
# that read the device before the delete committed cannot write it back meanwhile (its SET is NX).
DELETED_KEY_TTL_S = IDENTITY_TTL_S
FLUSH_BATCH = 5000
# While results keep coming (a fleet-wide action), a flush writes batch after batch of them for up
# to this long before it writes reports: at 5,000 results a second against 1,500 when each batch of
# results waited for a batch of reports. Reports still get written every flush, so a device that
# comes back online is shown so within a few seconds even then.
RESULTS_FIRST_S = 2.0
UPDATE_CHUNK = 1000

_clients: dict[str, redis.Redis] = {}


def redis_client() -> redis.Redis:
    url = settings.REDIS_URL
    if url not in _clients:
        # A bounded pool that makes a burst of requests wait briefly for a connection rather than
        # open hundreds of them (or fail when a pool limit is reached).
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=10, socket_connect_timeout=2, socket_timeout=5
        )
        _clients[url] = redis.Redis(connection_pool=pool)
    return _clients[url]


def _identity_key(key_hash: str) -> str:
    return f"agent:key:{key_hash}"


def _report_key(device_id: int) -> str:
    return f"agent:report:{device_id}"


def _seen_key(device_id: int | str) -> str:
    """A device's last reported status, kept for the offline threshold after its last report. A
    report finding none (the device was silent long enough to look offline, or never reported) or
    another status (rebooting, updating, back from a reboot) makes the device urgent: the flusher
    writes urgent devices before the rest of a backlog, so "online" and status changes show on the
    pages at once however many heartbeats wait."""
    return f"agent:seen:{device_id}"


def _fresh_key(device_id: int | str) -> str:
    """Set by the flusher while a device's last_seen_at in the database is recent enough that a
    heartbeat (a report of nothing but being there) would change nothing there: the flusher would
    drop it (see heartbeat_refresh_s), so the report script does not buffer it at all. It expires
    when the next heartbeat is due to be written."""
    return f"agent:fresh:{device_id}"


# --- Who is calling --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentIdentity:
    id: int
    uuid: str


def identity_for_api_key(api_key: str) -> AgentIdentity | None:
    """The device an api key belongs to: from the cache, or one indexed read on a miss."""
    key_hash = hash_secret(api_key)
    r = redis_client()
    cached = r.get(_identity_key(key_hash))
    if cached is not None:
        if cached == b"-":
            return None
        device_id, uuid = cached.decode().split("|")
        return AgentIdentity(int(device_id), uuid)
    row = Device.objects.filter(api_key_hash=key_hash).values_list("id", "uuid").first()
    if row is None:
        remember_identity(key_hash, None)  # a wrong key costs no read for a while
        return None
    if not remember_identity(key_hash, row):
        # Someone wrote the key meanwhile: most likely forget_api_keys, the device being deleted
        # after our read. What is cached now wins.
        cached = r.get(_identity_key(key_hash))
        if cached == b"-":
            return None
    return AgentIdentity(*row)


def remember_identity(key_hash: str, row: tuple[int, str] | None) -> bool:
    """Cache what a read found (None: no such key), unless the key is cached already: SET NX, so a
    read that raced a delete never overwrites the "-" forget_api_keys wrote. False if not written."""
    value, ttl = ("-", UNKNOWN_KEY_TTL_S) if row is None else (f"{row[0]}|{row[1]}", IDENTITY_TTL_S)
    return bool(redis_client().set(_identity_key(key_hash), value, ex=ttl, nx=True))


def forget_api_keys(key_hashes) -> None:
    """Deleted devices: their api keys stop working at once, not when the cache expires. The keys
    are marked wrong rather than dropped, so a request that read the device just before the delete
    committed cannot put it back (see remember_identity)."""
    keys = [_identity_key(h) for h in key_hashes]
    for start in range(0, len(keys), 10_000):
        pipe = redis_client().pipeline(transaction=False)
        for key in keys[start : start + 10_000]:
            pipe.set(key, "-", ex=DELETED_KEY_TTL_S)
        pipe.execute()


# --- Buffering ---------------------------------------------------------------------------------------


def _encode(value) -> str:
    """`value` as JSON, exactly as json.dumps writes it. The scalars a report is mostly made of are
    written directly (json.dumps's own C string encoder for strings): 5,000 reports a second with
    fifteen fields each make json.dumps's per-call overhead a tenth of the agent API server's time."""
    kind = type(value)
    if kind is str:
        return _encode_string(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if isinstance(value, datetime):
        return _encode_string(value.isoformat())
    return json.dumps(value)


_encode_string = json.encoder.encode_basestring_ascii


def buffer_report(device_id: int, fields: dict, now: datetime) -> None:
    """Merge a validated report into the device's pending state: one round trip, no SQL."""
    pipe = redis_client().pipeline(transaction=False)
    pipe.hset(
        _report_key(device_id),
        mapping={name: _encode(v) for name, v in (fields | {"last_seen_at": now}).items()},
    )
    pipe.zadd(DIRTY, {device_id: now.timestamp()}, nx=True)
    # The view takes the reports the fast path cannot: mostly a device's first after a long silence.
    pipe.sadd(URGENT, device_id)
    pipe.set(_seen_key(device_id), str(fields.get("agent_status", "")), ex=settings.DEVICE_OFFLINE_AFTER_S)
    pipe.execute()


# Reports from devices whose api keys are in the identity cache, any number in one round trip and
# one script: for each, look the key up (and keep it cached for IDENTITY_TTL_S more: a device that
# keeps reporting is never read from the database again; a deleted one is forgotten at once, see
# forget_api_keys), merge the fields into the device's pending report, mark it dirty (scored by the
# report's time, or when the device's freshness ends: see DIRTY; unless it is already), and mark it
# urgent too when a page would show the difference at once (see `_seen_key`). A heartbeat (nothing
# reported but being there, the status unchanged) while the device is fresh in the database (see
# `_fresh_key`) only keeps it seen. KEYS: the identity key of each report, then the dirty and the
# urgent set; ARGV: the identity TTL, how long a device's last status is remembered, then each
# report's fields, status, time (the dirty score) and "1" for a heartbeat. For each report the
# script answers the cached identity ("<id>|<uuid>"), "-" for a key known to be wrong, or "" when
# the key is not cached (then nothing was written for it and the caller takes the full path, which
# reads the database). The report, seen and fresh keys are derived inside the script: fine on one
# Redis server, not on a Redis Cluster.
_REPORTS_BY_KEY = f"""
local dirty, urgent = KEYS[#KEYS - 1], KEYS[#KEYS]
local answers = {{}}
for i = 1, #KEYS - 2 do
  local identity = redis.call('GET', KEYS[i])
  if identity and identity ~= '-' then
    redis.call('EXPIRE', KEYS[i], ARGV[1])
    local id = string.match(identity, '^(%d+)|')
    local at = 4 * i - 1
    local status, seen, write = ARGV[at + 1], '{_seen_key("")}' .. id, true
    if status == '' then  -- a report without a status: only whether the device was silent counts
      if redis.call('EXPIRE', seen, ARGV[2]) == 0 then
        redis.call('SET', seen, '', 'EX', ARGV[2])
        redis.call('SADD', urgent, id)
      elseif ARGV[at + 3] == '1' and redis.call('EXISTS', '{_fresh_key("")}' .. id) == 1 then
        write = false
      end
    elseif redis.call('SET', seen, status, 'EX', ARGV[2], 'GET') ~= status then
      redis.call('SADD', urgent, id)
    end
    if write then
      local fields = {{}}
      for part in string.gmatch(ARGV[at], '[^\\31]+') do fields[#fields + 1] = part end
      redis.call('HSET', '{_report_key("")}' .. id, unpack(fields))
      local score, fresh_ms = tonumber(ARGV[at + 2]), redis.call('PTTL', '{_fresh_key("")}' .. id)
      if fresh_ms > 0 then score = score + fresh_ms / 1000 end  -- not due before its freshness ends
      redis.call('ZADD', dirty, 'NX', score, id)
    end
  end
  answers[i] = identity or ''
end
return answers
"""
# Names and JSON values joined by the unit separator (0x1f) into one argument: JSON escapes control
# characters, so no value contains it, and one argument costs redis-py far less than thirty.
_SEPARATOR = "\x1f"
_scripts: dict[str, object] = {}


def report_script(client: redis.Redis):
    """The script above, registered on `client` (sync or asyncio)."""
    return client.register_script(_REPORTS_BY_KEY)


def report_args(fields: dict, now: datetime) -> tuple[str, str, float, str]:
    """A validated report as the script's arguments: its fields, its status, its time, whether it
    is a heartbeat."""
    encoded = _SEPARATOR.join(
        f"{name}{_SEPARATOR}{_encode(value)}" for name, value in (fields | {"last_seen_at": now}).items()
    )
    return encoded, str(fields.get("agent_status", "")), now.timestamp(), "" if fields else "1"


def report_script_prefix() -> list:
    return [IDENTITY_TTL_S, settings.DEVICE_OFFLINE_AFTER_S]


def identity_from_answer(answer: bytes) -> AgentIdentity | None:
    if not answer or answer == b"-":
        return None
    device_id, uuid = answer.decode().split("|")
    return AgentIdentity(int(device_id), uuid)


def buffer_report_by_key(key_hash: str, fields: dict, now: datetime) -> AgentIdentity | None:
    """`buffer_report` for a caller that has only the api key's hash: one round trip, no SQL. None
    when the key is not known to the cache as a device's (nothing is written then)."""
    r = redis_client()
    script = _scripts.get(settings.REDIS_URL)
    if script is None:
        script = _scripts[settings.REDIS_URL] = report_script(r)
    (answer,) = script(
        keys=[_identity_key(key_hash), DIRTY, URGENT],
        args=[*report_script_prefix(), *report_args(fields, now)],
    )
    return identity_from_answer(answer)


def buffer_result(device_id: int, key: str, state: str, reason: str) -> None:
    redis_client().xadd(
        RESULTS, {"r": result_entry(device_id, key, state, reason)}, maxlen=RESULTS_MAXLEN, approximate=True
    )


def result_entry(device_id: int, key: str, state: str, reason: str) -> str:
    return json.dumps([device_id, key, state, reason])


def _sent_key(action_id: int | str) -> str:
    return f"agent:sent:{action_id}"


def remember_sent(action_id: int, device_ids: list[int]) -> None:
    """The deliveries of an action pushed to agents: their results can then be taken without a
    database read (`_RESULTS_BY_KEY`), for as long as a result may come back."""
    pipe = redis_client().pipeline(transaction=False)
    pipe.sadd(_sent_key(action_id), *device_ids)
    pipe.expire(_sent_key(action_id), int(2 * settings.ACTION_RESULT_TIMEOUT_S) + 60)
    pipe.execute()


# Action results from agents, any number in one round trip: a result is taken when the caller's api
# key is cached as the device the delivery key names and that delivery was pushed to it
# (remember_sent); it is then added to the results stream, as the view does after its database read.
# KEYS: the identity key of each result; ARGV: the stream's length, then for each result its action
# id, device id and stream entry. Answers 1 (taken) or 0 (the view decides) for each.
_RESULTS_BY_KEY = f"""
local answers = {{}}
for i = 1, #KEYS do
  local taken = 0
  local identity = redis.call('GET', KEYS[i])
  if identity and identity ~= '-' then
    local action, device = ARGV[3 * i - 1], ARGV[3 * i]
    if string.match(identity, '^(%d+)|') == device
        and redis.call('SISMEMBER', '{_sent_key("")}' .. action, device) == 1 then
      redis.call('XADD', '{RESULTS}', 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[3 * i + 1])
      taken = 1
    end
  end
  answers[i] = taken
end
return answers
"""


def results_script(client: redis.Redis):
    return client.register_script(_RESULTS_BY_KEY)


# --- Flushing ----------------------------------------------------------------------------------------

DATETIME_FIELDS = {"last_seen_at", "booted_at"}


@dataclass
class FlushStats:
    reports: int = 0
    results: int = 0
    seconds: float = 0.0
    results_seconds: float = 0.0  # of which writing the results
    kept_seen: int = 0  # devices of a backlog whose last_seen_at alone was written (_keep_seen)
    full: bool = False  # took as many reports or results as it could: more may be waiting


def flush(limit: int = FLUSH_BATCH) -> FlushStats:
    """Write what is buffered now to the database: the results first, `limit` at a time for up to
    RESULTS_FIRST_S while whole batches of them wait (what the person who started an action waits
    for; a report is a snapshot that the device's next one repeats, and while the cores are busy
    with a fleet-wide restart there are tens of thousands of them waiting behind each flush), then
    up to `limit` devices' reports: urgent devices first, then in the order they would go stale
    (DIRTY). A short queue is taken whole, whatever the scores."""
    started = time.monotonic()
    r = redis_client()
    stats = FlushStats()
    results = stats.results = _flush_results(r, limit)
    while results >= limit and time.monotonic() - started < RESULTS_FIRST_S:
        results = _flush_results(r, limit)  # the last batch: full while more are waiting
        stats.results += results
    stats.results_seconds = time.monotonic() - started
    urgent = [int(i) for i in r.spop(URGENT, limit) or []]
    pipe = r.pipeline(transaction=False)
    if urgent:
        pipe.zrem(DIRTY, *urgent)  # taken now: not again when their turn in the queue comes
    if len(urgent) < limit:
        pipe.zpopmin(DIRTY, limit - len(urgent))
    answers = pipe.execute()
    queued = {int(i): score for i, score in answers[-1]} if len(urgent) < limit else {}
    device_ids = list(dict.fromkeys([*urgent, *queued]))
    if device_ids:
        # Read and delete together: a report arriving now starts afresh.
        taken = _take_script(r)(args=device_ids)
        raw_reports = {device_id: raw for device_id, raw in zip(device_ids, taken, strict=True) if raw}
        reports = {device_id: json.loads(raw) for device_id, raw in raw_reports.items()}
        try:
            fresh = apply_reports(reports)
        except Exception:
            # Taken out of Redis above: the next flush writes them, in their old place in the queue.
            _rebuffer(r, raw_reports, queued)
            raise
        _mark_fresh(r, fresh)
        stats.reports = len(reports)
    if len(queued) >= limit - len(urgent) > 0:  # more may wait: a backlog
        stats.kept_seen = _keep_seen(r)
    stats.full = len(device_ids) >= limit or results >= limit
    stats.seconds = time.monotonic() - started
    log.debug(
        "flushed %d results in %.2f s, then %d reports (%d kept seen), %.2f s in all",
        stats.results, stats.results_seconds, stats.reports, stats.kept_seen, stats.seconds,
    )  # fmt: skip
    return stats


# Devices of a backlog whose last_seen_at alone one flush writes, at most.
KEEP_SEEN_BATCH = 20_000


def keep_seen_after_s() -> float:
    """How long past its turn a device waits before a backlog's flush writes its last_seen_at
    alone: 0.25 x the offline threshold, so that more than a third of the threshold is left
    (0.4 x of it went by before its turn, see heartbeat_refresh_s). Sooner, the flusher spent its
    time on devices the queue would have reached in time (a 100,000-device restart took 68.5 s
    instead of 56-57 s when every device past its turn was looked at in every flush)."""
    return 0.25 * settings.DEVICE_OFFLINE_AFTER_S


def _keep_seen(r: redis.Redis) -> int:
    """Under a backlog, write only last_seen_at for the devices that this flush did not reach and whose
    turn came keep_seen_after_s ago or more (their DIRTY score): a whole report costs the flusher
    ten times a heartbeat (its services, read and written), and during a fleet-wide restart on busy
    cores the whole reports of the restarted devices queued long enough for tens of thousands of
    devices reporting all along to be shown offline (21,263 of 100,000 with 50 dashboard users
    browsing). Only for devices the database shows online and active, not going down, and not
    urgent: a device that comes back, or changes status, waits for its whole report, whose writing
    acts on that (apply_reports). Each stays in the queue with its report, scored by its new
    freshness; its next heartbeats are dropped (_mark_fresh), and its report is written when its
    turn comes again (the report's last_seen_at is never older than what is written here: the report
    script only drops heartbeats, it never moves that field back)."""
    overdue = time.time() - keep_seen_after_s()
    due = [int(i) for i in r.zrangebyscore(DIRTY, "-inf", overdue, start=0, num=KEEP_SEEN_BATCH)]
    if not due:
        return 0
    pipe = r.pipeline(transaction=False)
    pipe.smismember(URGENT, due)
    for device_id in due:
        pipe.hget(_report_key(device_id), "last_seen_at")
    urgent, *seen = pipe.execute()
    rows = [
        (device_id, datetime.fromisoformat(json.loads(value)))
        for device_id, is_urgent, value in zip(due, urgent, seen, strict=True)
        if value and not is_urgent
    ]
    if not rows:
        return 0
    table = connection.ops.quote_name(Device._meta.db_table)
    going_down = ", ".join(["%s"] * len(GOING_DOWN))
    where = (
        f"{table}.id = v.id AND {table}.is_active AND {table}.last_seen_at >= %s"
        f" AND {table}.last_seen_at < v.seen AND {table}.agent_status NOT IN ({going_down})"
    )
    cutoff, kept_ids = online_cutoff(), []
    with transaction.atomic(), connection.cursor() as cursor:
        # Locked in id order first, as apply_reports locks them: several flushers (one per worker
        # by default) may hold the same devices, and an UPDATE's join locks in no particular order.
        list(
            Device.objects.filter(pk__any_of=[i for i, _ in rows])
            .order_by("id")
            .select_for_update()
            .values_list("id")
        )
        if connection.vendor == "postgresql":  # one statement, one JSON document (bulk_update_devices)
            document = json.dumps([{"id": device_id, "seen": at.isoformat()} for device_id, at in rows])
            cursor.execute(
                f"UPDATE {table} SET last_seen_at = v.seen FROM json_to_recordset(%s::json)"
                f" AS v(id bigint, seen timestamptz) WHERE {where} RETURNING {table}.id",
                [document, cutoff, *GOING_DOWN],
            )
            kept_ids += [device_id for (device_id,) in cursor.fetchall()]
        else:
            adapt = connection.ops.adapt_datetimefield_value
            for start in range(0, len(rows), UPDATE_CHUNK):
                chunk = rows[start : start + UPDATE_CHUNK]
                cursor.execute(
                    f"UPDATE {table} SET last_seen_at = v.seen FROM (SELECT column1 AS id,"
                    f" column2 AS seen FROM (VALUES {', '.join(['(%s, %s)'] * len(chunk))})) AS v"
                    f" WHERE {where} RETURNING {table}.id",
                    [
                        *(x for device_id, at in chunk for x in (device_id, adapt(at))),
                        adapt(cutoff),
                        *GOING_DOWN,
                    ],
                )
                kept_ids += [device_id for (device_id,) in cursor.fetchall()]
    seen_at = dict(rows)
    kept = {device_id: seen_at[device_id] for device_id in kept_ids}
    _mark_fresh(r, kept)
    refresh = heartbeat_refresh_s()
    if kept:
        r.zadd(DIRTY, {device_id: at.timestamp() + refresh for device_id, at in kept.items()}, xx=True)
    return len(kept)


def _rebuffer(r: redis.Redis, raw_reports: dict[int, bytes], queued: dict[int, float]) -> None:
    """Put back reports a failed flush had taken (a database error): merged under what the devices
    reported since (HSETNX: a newer field wins), and marked dirty again (urgent ones first in line)."""
    if not raw_reports:
        return
    pipe = r.pipeline(transaction=False)
    for device_id, raw in raw_reports.items():
        for name, value in json.loads(raw).items():
            pipe.hsetnx(_report_key(device_id), name, json.dumps(value))
    pipe.zadd(DIRTY, {device_id: queued.get(device_id, 0) for device_id in raw_reports})
    pipe.execute()


def _mark_fresh(r: redis.Redis, fresh: dict[int, datetime]) -> None:
    """Devices online whose last_seen_at in the database is now `fresh[id]`: until that is
    heartbeat_refresh_s old, the report script drops their heartbeats (see _fresh_key)."""
    if not fresh:
        return
    now, refresh = timezone.now(), timedelta(seconds=heartbeat_refresh_s())
    pipe = r.pipeline(transaction=False)
    for device_id, seen_at in fresh.items():
        ms = int((seen_at + refresh - now).total_seconds() * 1000)
        if ms > 0:
            pipe.set(_fresh_key(device_id), "", px=ms)
    pipe.execute()


# Take the pending reports of the devices in ARGV: each device's hash is deleted and answered as one
# JSON object ("" when it has none), built from the JSON values it holds (see _encode). One string a
# device rather than thirty array items, and one json.loads: a flush of 5,000 devices spends most of
# its time parsing otherwise.
_TAKE_REPORTS = f"""
local taken = {{}}
for i, id in ipairs(ARGV) do
  local key = '{_report_key("")}' .. id
  local flat = redis.call('HGETALL', key)
  if #flat > 0 then
    local parts = {{}}
    for j = 1, #flat, 2 do parts[#parts + 1] = '"' .. flat[j] .. '":' .. flat[j + 1] end
    redis.call('DEL', key)
    taken[i] = '{{' .. table.concat(parts, ',') .. '}}'
  else
    taken[i] = ''
  end
end
return taken
"""


def _take_script(r: redis.Redis):
    script = _scripts.get(f"take:{settings.REDIS_URL}")
    if script is None:
        script = _scripts[f"take:{settings.REDIS_URL}"] = r.register_script(_TAKE_REPORTS)
    return script


_consumer = f"{socket.gethostname()}-{os.getpid()}"


def _create_group(r: redis.Redis) -> None:
    try:
        r.xgroup_create(RESULTS, RESULTS_GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def _read_results(r: redis.Redis, consumer: str, limit: int) -> list:
    _, reclaimed, *_ = r.xautoclaim(RESULTS, RESULTS_GROUP, consumer, RESULT_RECLAIM_MS, "0-0", count=limit)
    fresh = r.xreadgroup(RESULTS_GROUP, consumer, {RESULTS: ">"}, count=limit) or []
    return list(reclaimed) + [entry for _, stream_entries in fresh for entry in stream_entries]


def _flush_results(r: redis.Redis, limit: int) -> int:
    """Results are read through a consumer group and acknowledged only once written: a flusher
    killed in between leaves them pending, and another one takes them over (XAUTOCLAIM)."""
    consumer = f"{_consumer}-{threading.get_ident()}"
    try:
        entries = _read_results(r, consumer, limit)
    except redis.ResponseError as error:
        if "NOGROUP" not in str(error):
            raise
        _create_group(r)  # first use, or Redis lost its data
        entries = _read_results(r, consumer, limit)
    if not entries:
        return 0
    apply_results([json.loads(fields[b"r"]) for _, fields in entries])
    ids = [entry_id for entry_id, _ in entries]
    r.xack(RESULTS, RESULTS_GROUP, *ids)
    r.xdel(RESULTS, *ids)
    return len(entries)


# What a report may set (agent_api.clean_report's fields), read back to write only what changed.
REPORTED_COLUMNS = (
    "agent_status", "os_version", "os_version_key", "agent_version", "agent_version_key", "ip_address",
    "api_address", "web_address", "booted_at", "release_commit", "update_lock_held", "os_update_progress",
    "update_blocked", "services", "volumes",
)  # fmt: skip
# JSON lists, read back (and decoded) only for the devices whose reports carry them: a heartbeat's
# flush spent a fifth of its time decoding services nobody compared.
HEAVY_COLUMNS = ("services", "volumes")
# booted_at is the report's time less its uptime, so it moves by the rounding of both.
BOOT_TIME_JITTER_S = 5


def heartbeat_refresh_s() -> float:
    """How old last_seen_at may grow in the database before an unchanged heartbeat rewrites it.

    A heartbeat that changes nothing else still costs an UPDATE of the device row (in place on its
    page since last_seen_at is not indexed, see Device.Meta, but a new row version and its WAL), so a
    device online and unchanged has its last_seen_at refreshed only when it is this old: 0.4 x the
    offline threshold, so that with reports more often than that it never goes stale enough to look
    offline (at most 0.4 + one report interval < 1 threshold). A device coming back, or any other
    change, is written at once."""
    return 0.4 * settings.DEVICE_OFFLINE_AFTER_S


def _changed_fields(old: dict, fields: dict) -> dict:
    changed = {}
    for name, value in fields.items():
        if name == "last_seen_at" or name not in old:
            continue
        previous = old[name]
        if name == "booted_at" and previous is not None and value is not None:
            if abs((value - previous).total_seconds()) <= BOOT_TIME_JITTER_S:
                continue
        elif name == "ip_address" and previous is not None and value is not None:
            if str(previous) == str(value):
                continue
        elif previous == value:
            continue
        changed[name] = value
    return changed


def apply_reports(reports: dict[int, dict]) -> dict[int, datetime]:
    """Write reports in bulk and act on what they imply (devices back online, OS updates done).

    Answers, for the devices online after it and not going down, their last_seen_at in the database
    now: a heartbeat from one of them changes nothing until that is heartbeat_refresh_s old."""
    if not reports:
        return {}
    for fields in reports.values():
        for name in DATETIME_FIELDS & fields.keys():
            if isinstance(fields[name], str):  # buffered reports went through JSON
                fields[name] = datetime.fromisoformat(fields[name])
    # One transaction from the read to the writes, the rows locked in id order: two flushers (the
    # process and a worker's safety net) may hold the same device, reported again after one took it,
    # and without one order their UPDATEs deadlock.
    with transaction.atomic():
        before = {row["id"]: row for row in _rows_before(reports)}
        cutoff = online_cutoff()
        refresh_before = timezone.now() - timedelta(seconds=heartbeat_refresh_s())
        came_back, updated, blocking, fresh = [], [], [], {}
        for device_id, fields in list(reports.items()):
            old = before.get(device_id)
            if old is None:
                continue  # deleted since it reported
            was_online = (
                old["is_active"]
                and old["last_seen_at"] is not None
                and old["last_seen_at"] >= cutoff
                and old["agent_status"] not in GOING_DOWN
            )
            if not was_online:
                came_back.append(device_id)
            changed = _changed_fields(old, fields)
            if was_online and not changed and old["last_seen_at"] >= refresh_before:
                del reports[device_id]  # a heartbeat that changes nothing a page would show: see above
                fresh[device_id] = old["last_seen_at"]
                continue
            if old["is_active"] and changed.get("agent_status", old["agent_status"]) not in GOING_DOWN:
                fresh[device_id] = fields["last_seen_at"]
            reports[device_id] = changed | {"last_seen_at": fields["last_seen_at"]}
            fields = reports[device_id] | {"os_version_key": fields.get("os_version_key", 0)}
            target = old["target_os_version"]
            if target and fields.get("os_version_key", 0) >= version_key(target):
                reports[device_id]["target_os_version"] = ""
                updated.append((device_id, fields.get("os_version") or old["os_version"]))
            elif target and "update_blocked" in fields:  # rare: the lock began or ceased to block
                blocking.append((device_id, fields["update_blocked"]))
        groups = defaultdict(list)
        for device_id in sorted(reports):
            if device_id in before:
                fields = reports[device_id]
                groups[tuple(sorted(fields))].append((device_id, fields))
        for names, rows in groups.items():
            bulk_update_devices(names, rows)
        if blocking:
            from devices.services.engine import action_record_update_blocked

            for device_id, detail in blocking:
                action_record_update_blocked(device_id, detail)
        if updated:
            from devices.services.engine import action_record_update_done

            targets.changed()  # their target_os_version was cleared above, by raw SQL

            for device_id, version in updated:
                action_record_update_done(device_id, f"Now running {version}")
    if came_back:
        waiting = set(
            ActionDelivery.objects.filter(device_id__in=came_back, state=DeliveryState.WAITING)
            .values_list("device_id", flat=True)
            .distinct()
        )
        if waiting:
            from devices.tasks import deliver_waiting

            for device_id in waiting:
                deliver_waiting.delay(device_id)
    return fresh


def _rows_before(reports: dict[int, dict]) -> list[dict]:
    """The reporting devices' rows, locked (in id order), with what their reports may change: the
    heavy columns as they are only for the devices that reported them, None for the others."""
    columns = [name for name in REPORTED_COLUMNS if name not in HEAVY_COLUMNS]
    heavy = {}
    for name in HEAVY_COLUMNS:
        ids = [device_id for device_id, fields in reports.items() if name in fields]
        if len(ids) > len(reports) / 2:
            columns.append(name)  # most of them: one IN list fewer
        elif ids:
            heavy[f"reported_{name}"] = Case(
                When(pk__any_of=ids, then=F(name)),
                default=Value(None),
                output_field=Device._meta.get_field(name),
            )
    rows = list(
        Device.objects.filter(pk__any_of=list(reports))
        .select_for_update()
        .order_by("id")
        .annotate(**heavy)
        .values("id", "is_active", "last_seen_at", "target_os_version", *columns, *heavy)
    )
    for row in rows:
        for alias in heavy:
            row[alias.removeprefix("reported_")] = row.pop(alias)
    return rows


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()  # microseconds kept (DjangoJSONEncoder would cut them)
    return str(value)  # an IP address


def bulk_update_devices(names: tuple[str, ...], rows: list[tuple[int, dict]]) -> None:
    """The reported fields of many devices, each with its own values. On PostgreSQL one statement
    whatever the number of rows: UPDATE ... FROM json_to_recordset(one JSON document). psycopg binds
    parameters on the client, and VALUES of thousands of placeholders, or arrays of thousands of
    items, are quoted one item at a time in Python: an array of the services of 5,000 whole reports
    (each device's after a fleet-wide restart) was a sixth of the flusher's time; one JSON string is
    encoded and quoted in C. Elsewhere UPDATE ... FROM (VALUES ...), a thousand devices a statement."""
    fields = [Device._meta.get_field(name) for name in names]
    table = connection.ops.quote_name(Device._meta.db_table)
    if connection.vendor == "postgresql":
        columns = ", ".join(f"{connection.ops.quote_name(f.column)} = v.c{i}" for i, f in enumerate(fields))
        record = ", ".join(
            ["id bigint"]
            + [
                f"c{i} {'jsonb' if f.get_internal_type() == 'JSONField' else f.db_type(connection)}"
                for i, f in enumerate(fields)
            ]
        )
        prepared = [  # as the ORM would save them (a blank IP address: NULL), JSON as it is
            (i, f.name, (lambda v: v) if f.get_internal_type() == "JSONField" else f.get_prep_value)
            for i, f in enumerate(fields)
        ]
        document = json.dumps(
            [
                {"id": device_id} | {f"c{i}": prepare(values[name]) for i, name, prepare in prepared}
                for device_id, values in rows
            ],
            default=_json_default,
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET {columns} FROM json_to_recordset(%s::json) AS v({record}) "
                f"WHERE {table}.id = v.id",
                [document],
            )
        return
    columns = ", ".join(
        f"{connection.ops.quote_name(f.column)} = v.column{i + 2}" for i, f in enumerate(fields)
    )
    placeholder = "(" + ", ".join(["%s"] * (len(fields) + 1)) + ")"
    with connection.cursor() as cursor:
        for start in range(0, len(rows), UPDATE_CHUNK):
            chunk = rows[start : start + UPDATE_CHUNK]
            params = []
            for device_id, values in chunk:
                params.append(device_id)
                params.extend(f.get_db_prep_save(values[f.name], connection) for f in fields)
            cursor.execute(
                f"UPDATE {table} SET {columns} FROM (VALUES {', '.join([placeholder] * len(chunk))}) AS v "
                f"WHERE {table}.id = v.column1",
                params,
            )


def apply_results(results: list[list]) -> None:
    """Agents' action results, grouped so each (action, outcome, reason) is one transition."""
    from devices.services.engine import record_results

    groups = defaultdict(list)
    for device_id, key, state, reason in results:
        action_part, _, device_part = key.partition("-")
        if action_part.isdigit() and device_part == str(device_id):
            groups[(int(action_part), state, reason)].append(device_id)
    record_results(groups)


# --- Running the flusher ---------------------------------------------------------------------------


def run_flusher(stop: threading.Event, interval: float | None = None) -> None:
    """Flush every `interval` seconds until `stop` is set; errors are logged, never fatal."""
    interval = settings.AGENT_FLUSH_INTERVAL_S if interval is None else interval
    while not stop.wait(interval):
        try:
            while flush().full:  # keep up when more than a batch piled up
                pass
        except Exception:
            log.exception("flushing agent reports failed; retrying")
        finally:
            close_old_connections()


def start_flusher_thread() -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=run_flusher, args=(stop,), name="agent-flusher", daemon=True).start()
    return stop
