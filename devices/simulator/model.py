"""The simulated state of one virtual device.

No I/O here: only the data a real device would have (identity, containers, volumes, settings) and
the rules that change it (recreate containers, purge, move, boot). The agent runtime in `agent.py`
decides *when* these happen and talks to the server about it.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from devices.versions import AGENT_API_MIN, OS_NAMED_VOLUMES_MIN, version_key

ACTION_KINDS = ("restart", "purge", "reboot", "shutdown")

IDLE = "idle"
UPDATING = "updating"
REBOOTING = "rebooting"
SHUTTING_DOWN = "shutting_down"

# A device remembers this many accepted idempotency keys; older ones cannot come back as retries.
KEYS_REMEMBERED = 500

# How the agent encodes every JSON body. One encoder for all: json.dumps with options makes one per call.
encode_json = json.JSONEncoder(separators=(",", ":")).encode

# Where `VirtualDevice.report_body` puts what it fills in for each report; they are 0 in the encoded
# payload it cuts there. No JSON string can hold one of these: its quotes would be escaped.
REPORT_GAPS = ('"uptime_s":0', '"volumes":0')
# What an accepted report said, for the next one to send only what changed (`report_update`): the
# values the rest of the payload is made from, the encoded volumes, the boot time (whole seconds).
Reported = tuple[tuple, str, int]

# Whether a device has an agent API or named volumes is asked at every push and many reports: of
# a few versions, each parsed once.
_version_key = functools.lru_cache(maxsize=256)(version_key)


def hex_id(rng: random.Random, nbytes: int) -> str:
    return f"{rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"


@dataclass
class Service:
    name: str
    image: str
    container_id: str
    status: str = "running"
    holds_update_lock: bool = False
    ignores_sigterm: bool = False
    # Files written inside the container, outside persistent storage: lost when it is recreated.
    scratch_files: int = 0

    # The encoded report and what it was made from: unannotated, so no dataclass fields (neither
    # compared nor kept in the state file).
    _encoded_from = None
    _encoded = ""

    def report(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "status": self.status,
            "container_id": self.container_id,
            "holds_update_lock": self.holds_update_lock,
        }

    def report_json(self) -> str:
        """`report()` encoded, made again only when one of its values changed (see `report_body`)."""
        made_from = (self.name, self.image, self.status, self.container_id, self.holds_update_lock)
        if made_from != self._encoded_from:
            self._encoded_from, self._encoded = made_from, encode_json(self.report())
        return self._encoded


@dataclass
class Volume:
    name: str
    files: int = 0
    bytes: int = 0

    _encoded_from = None  # as Service's
    _encoded = ""

    def report(self) -> dict[str, Any]:
        return {"name": self.name, "files": self.files, "bytes": self.bytes}

    def report_json(self) -> str:
        """`report()` encoded, made again only when one of its values changed (see `report_body`)."""
        made_from = (self.name, self.files, self.bytes)
        if made_from != self._encoded_from:
            self._encoded_from, self._encoded = made_from, encode_json(self.report())
        return self._encoded


@dataclass
class VirtualDevice:
    uuid: str
    name: str
    device_type: str
    os_version: str
    agent_version: str
    ip_address: str
    services: list[Service]
    volumes: list[Volume]
    serves_web: bool = False
    provisioning_key: str | None = None
    api_key: str | None = None
    push_secret: str | None = None
    fleet_id: int | None = None
    fleet_name: str = ""
    release: str = ""
    local_mode: bool = False
    lock_override: bool = False
    public_url: bool = False
    target_os_version: str = ""
    powered: bool = True
    booted_at: float = field(default_factory=time.time)
    # OS < 2.12.0: the /data directory of each fleet the device left, kept on the host so moving
    # back shows it again. The current one is in `volumes`.
    data_by_fleet: dict[str, Volume] = field(default_factory=dict)
    # Ordered (insertion) so the oldest keys are forgotten first.
    accepted_keys: dict[str, float] = field(default_factory=dict)
    # How accepted actions ended, by key: a retried delivery is told the outcome instead of acting again.
    results: dict[str, tuple[str, str]] = field(default_factory=dict)
    actions_executed: Counter[str] = field(default_factory=Counter)

    # Runtime only, not persisted.
    status: str = IDLE
    os_update_progress: int | None = None
    # The pending update the update lock holds back ("host OS 5.1.20: service main holds the
    # update lock"), "" when none is: reported, so the dashboard can say why nothing happens.
    blocked_update: str = ""
    rebooting: bool = False
    orphaned: bool = False
    hung: bool = False
    registration_error: str = ""
    etag: str | None = None
    # Bumped whenever the device loses power or boots: a task that started before can tell the
    # world moved on and must not report for a device that is no longer the one it was.
    boot_id: int = 0
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=30))
    # report_body's cut payload and what it was made from: unannotated, so no dataclass fields.
    _report_made_from = None
    _report_parts = ("", "", "")

    # -- derived facts ---------------------------------------------------------------------

    @property
    def has_agent_api(self) -> bool:
        return _version_key(self.agent_version) >= AGENT_API_MIN

    @property
    def has_named_volumes(self) -> bool:
        return _version_key(self.os_version) >= OS_NAMED_VOLUMES_MIN

    @property
    def registered(self) -> bool:
        return self.api_key is not None

    @property
    def is_up(self) -> bool:
        """Powered and not in the dark part of a reboot: something answers on the network."""
        return self.powered and not self.rebooting

    @property
    def update_lock_holder(self) -> Service | None:
        return next((s for s in self.services if s.holds_update_lock), None)

    @property
    def update_blocked(self) -> bool:
        # The seed: lock override needs an agent with the API (>= 1.1.0); older agents never override.
        override = self.lock_override and self.has_agent_api
        return self.update_lock_holder is not None and not override

    @property
    def uptime_s(self) -> int:
        return max(0, int(time.time() - self.booted_at))

    # -- state changes -----------------------------------------------------------------------

    def log_event(self, kind: str, detail: str = "") -> None:
        self.events.append({"at": round(time.time(), 3), "kind": kind, "detail": detail})

    def remember_key(self, key: str) -> None:
        self.accepted_keys[key] = time.time()
        while len(self.accepted_keys) > KEYS_REMEMBERED:
            del self.accepted_keys[next(iter(self.accepted_keys))]

    def remember_result(self, key: str, state: str, reason: str) -> None:
        self.results[key] = (state, reason)
        while len(self.results) > KEYS_REMEMBERED:
            del self.results[next(iter(self.results))]

    def recreate_containers(self, rng: random.Random) -> None:
        """Remove and recreate every container: new ids, scratch files gone, volumes untouched."""
        for service in self.services:
            service.container_id = hex_id(rng, 32)
            service.scratch_files = 0
            service.status = "running"

    def clear_persistent_data(self) -> str:
        """Purge: empty /data (OS < 2.12.0) or delete and recreate every named volume."""
        if self.has_named_volumes:
            self.volumes = [Volume(v.name) for v in self.volumes]
            return f"{len(self.volumes)} named volume{'s' if len(self.volumes) != 1 else ''} recreated empty"
        self.volumes = [Volume("/data")]
        return "/data cleared"

    def move_to_fleet(self, fleet_id: int, fleet_name: str) -> str:
        old = self.fleet_id
        self.fleet_id, self.fleet_name = fleet_id, fleet_name
        if old is None or old == fleet_id:
            return ""
        if self.has_named_volumes:
            self.clear_persistent_data()
            return f"moved from fleet {old} to {fleet_id}; named volumes purged"
        # Older OS: the old /data stays on the host, the new fleet gets its own (or its old one back).
        self.data_by_fleet[str(old)] = self.volumes[0] if self.volumes else Volume("/data")
        self.volumes = [self.data_by_fleet.pop(str(fleet_id), None) or Volume("/data")]
        return f"moved from fleet {old} to {fleet_id}; /data switched"

    def upgrade_os(self, version: str) -> None:
        crossed = not self.has_named_volumes
        self.os_version = version
        if crossed and self.has_named_volumes:
            # The host OS migrates /data into the named volume resin-data.
            data = self.volumes[0] if self.volumes else Volume("/data")
            self.volumes = [Volume("resin-data", data.files, data.bytes)]
            self.data_by_fleet.clear()

    def use_release(self, commit: str, specs: list[dict[str, Any]], rng: random.Random) -> None:
        """Run the release's services, in new containers; behaviours (lock, SIGTERM) stay per service."""
        old_by_name = {s.name: s for s in self.services}
        new: list[Service] = []
        for index, spec in enumerate(specs):
            name = str(spec.get("name") or f"service{index}")
            # Keep what the service's code does (takes the lock, ignores SIGTERM) by name, else by position.
            old = old_by_name.get(name) or (self.services[index] if index < len(self.services) else None)
            new.append(
                Service(
                    name=name,
                    image=str(spec.get("image") or f"registry.local/{name}:{commit[:7]}"),
                    container_id=hex_id(rng, 32),
                    holds_update_lock=bool(old and old.holds_update_lock),
                    ignores_sigterm=bool(old and old.ignores_sigterm),
                )
            )
        if new:
            self.services = new
        self.release = commit

    def go_dark(self) -> None:
        self.rebooting = True
        for service in self.services:
            service.status = "exited"

    def power_off(self) -> None:
        self.powered = False
        self.rebooting = False
        self.boot_id += 1
        for service in self.services:
            service.status = "exited"

    def boot(self) -> None:
        """Come up: uptime from now, same containers started again (not recreated)."""
        self.powered = True
        self.rebooting = False
        self.booted_at = time.time()
        self.status = IDLE
        self.os_update_progress = None
        self.blocked_update = ""  # decided again at the poll on boot
        self.boot_id += 1
        for service in self.services:
            service.status = "running"

    def write_some_data(self, rng: random.Random) -> None:
        """Running services write a little now and then, so purges and restarts have visible effects."""
        if rng.random() < 0.3 and self.volumes:
            volume = self.volumes[0]
            volume.files += 1
            volume.bytes += rng.randint(1, 64) * 1024
        for service in self.services:
            if service.status == "running" and rng.random() < 0.3:
                service.scratch_files += 1

    # -- views -------------------------------------------------------------------------------

    def report_payload(self, base_url: str) -> dict[str, Any]:
        """The full state report of PROTOCOL.md; old agents have no API and omit api_address.

        What a new field depends on goes into `made_from` in `report_body` too.
        """
        payload: dict[str, Any] = {
            "status": self.status,
            "os_version": self.os_version,
            "agent_version": self.agent_version,
            "ip_address": self.ip_address,
            "web_address": f"{base_url}/w/{self.uuid}",
            "uptime_s": self.uptime_s,
            "release": self.release,
            "update_lock_held": self.update_lock_holder is not None,
            "os_update_progress": self.os_update_progress,
            "update_blocked": self.blocked_update or None,
            "local_mode": self.local_mode,
            "services": [s.report() for s in self.services],
            "volumes": [v.report() for v in self.volumes],
        }
        if self.has_agent_api:
            payload["api_address"] = f"{base_url}/d/{self.uuid}"
        return payload

    def report_body(self, base_url: str) -> bytes:
        """The report as the agent sends it: `encode_json(report_payload(base_url))`, byte for byte.

        Encoding the whole payload at every report cost a simulator about as much CPU as sending
        it. Between two reports little changes but the uptime, and a volume now and then: the
        encoded payload is kept cut around those two, with the values it was made from, and made
        again only when one of them differs. Services and volumes keep their own encoded reports
        the same way. Compared by value, so no code that changes a device needs to tell the cache.
        """
        return self.report_update(base_url, None)[0]

    def report_update(self, base_url: str, since: Reported | None) -> tuple[bytes, Reported]:
        """The report to send after the one the server accepted as `since`, and what it reports.

        As a real agent does, the device sends only what changed since (PROTOCOL.md, State
        report): `{}` when nothing did (a heartbeat: the device is alive), the volumes when their
        files grew, the uptime after a boot; the whole state when anything else changed, or
        without `since` (the first report, after a refusal, now and then to repair a lost one).
        """
        services = [s.report_json() for s in self.services]  # update_lock_held follows from them
        made_from = (
            self.status,
            self.os_version,
            self.agent_version,
            self.ip_address,
            self.release,
            self.os_update_progress,
            self.blocked_update,
            self.local_mode,
            base_url,
            *services,
        )
        volumes = ",".join([v.report_json() for v in self.volumes])
        booted = int(self.booted_at)
        reported = (made_from, volumes, booted)
        if since is not None and since[0] == made_from:
            parts = []
            if volumes != since[1]:
                parts.append(f'"volumes":[{volumes}]')
            if booted != since[2]:
                parts.append(f'"uptime_s":{self.uptime_s}')
            return ("{" + ",".join(parts) + "}").encode(), reported
        if made_from != self._report_made_from:
            rest = encode_json(self.report_payload(base_url) | {"uptime_s": 0, "volumes": 0})
            parts = []
            for gap in REPORT_GAPS:
                before, _, rest = rest.partition(gap)
                parts.append(before + gap[:-1])
            self._report_made_from, self._report_parts = made_from, (*parts, rest)
        head, before_volumes, tail = self._report_parts
        return f"{head}{self.uptime_s}{before_volumes}[{volumes}]{tail}".encode(), reported

    def to_state(self) -> dict[str, Any]:
        """What survives a simulator restart (the state file)."""
        return {
            "uuid": self.uuid,
            "name": self.name,
            "device_type": self.device_type,
            "os_version": self.os_version,
            "agent_version": self.agent_version,
            "ip_address": self.ip_address,
            "services": [asdict(s) for s in self.services],
            "volumes": [asdict(v) for v in self.volumes],
            "serves_web": self.serves_web,
            "provisioning_key": self.provisioning_key,
            "api_key": self.api_key,
            "push_secret": self.push_secret,
            "fleet_id": self.fleet_id,
            "fleet_name": self.fleet_name,
            "release": self.release,
            "local_mode": self.local_mode,
            "lock_override": self.lock_override,
            "etag": self.etag,  # an agent keeps its target across restarts: its next poll may be a 304
            "public_url": self.public_url,
            "target_os_version": self.target_os_version,
            "powered": self.powered,
            "booted_at": self.booted_at,
            "data_by_fleet": {k: asdict(v) for k, v in self.data_by_fleet.items()},
            "accepted_keys": self.accepted_keys,
            "actions_executed": dict(self.actions_executed),
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> VirtualDevice:
        fields = dict(data)
        fields["services"] = [Service(**s) for s in data.get("services", [])]
        fields["volumes"] = [Volume(**v) for v in data.get("volumes", [])]
        fields["data_by_fleet"] = {k: Volume(**v) for k, v in data.get("data_by_fleet", {}).items()}
        fields["accepted_keys"] = dict(data.get("accepted_keys", {}))
        fields["actions_executed"] = Counter(data.get("actions_executed", {}))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in fields.items() if k in known})

    def snapshot(self, base_url: str) -> dict[str, Any]:
        """Everything, for the control API: persisted state plus what only lives in memory."""
        # Secrets stay in: the control API is local, for tests and demos of simulated devices.
        data = self.to_state()
        data.update(
            status=self.status,
            os_update_progress=self.os_update_progress,
            blocked_update=self.blocked_update,
            uptime_s=self.uptime_s,
            up=self.is_up,
            rebooting=self.rebooting,
            orphaned=self.orphaned,
            hung=self.hung,
            registered=self.registered,
            registration_error=self.registration_error,
            update_lock_held=self.update_lock_holder is not None,
            has_agent_api=self.has_agent_api,
            api_address=f"{base_url}/d/{self.uuid}" if self.has_agent_api else None,
            web_address=f"{base_url}/w/{self.uuid}",
            etag=self.etag,
            accepted_keys=list(self.accepted_keys),
            events=list(self.events),
        )
        return data
