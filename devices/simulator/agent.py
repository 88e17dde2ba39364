"""The agent of one virtual device: its schedule, its calls to the server and the actions it runs.

Each device runs as a few asyncio tasks in the simulator's one event loop. Everything that takes
time (SIGKILL grace, a reboot, an OS update) is an `asyncio.sleep`, and the report and poll
schedules sleep on the simulator's `Wakeups`, so thousands of devices cost little. Actions,
release and OS updates share one lock per device: like a real supervisor, a device does one such
thing at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from devices.versions import InvalidVersion, version_key

from .client import Response, header_lines
from .model import IDLE, REBOOTING, SHUTTING_DOWN, UPDATING, Reported, VirtualDevice, encode_json

if TYPE_CHECKING:
    from .core import Simulator

log = logging.getLogger("devices.simulator")

# What the client raises when the server cannot be reached or answered in time: a refused, reset or
# unreadable connection is a ConnectionError, and both are OSErrors.
NETWORK_ERRORS = (ConnectionError, TimeoutError, OSError)
# An agent keeps an action's result until the server takes it: with the backoff capped at 8 s,
# 40 attempts ride out about five minutes of an unreachable or overloaded server.
RESULT_ATTEMPTS = 40
# Between two reports of the whole state, this many that say only what changed (10 min at 20 s).
FULL_REPORT_EVERY = 30
# The most results one report carries (PROTOCOL.md, results).
MAX_CARRIED_RESULTS = 8
OS_UPDATE_STEPS = 5
JSON_CONTENT_TYPE = header_lines({"Content-Type": "application/json"})


class Agent:
    def __init__(self, sim: Simulator, device: VirtualDevice) -> None:
        self.sim = sim
        self.device = device
        self.target: dict[str, Any] | None = None
        self._main: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._action_lock = asyncio.Lock()
        # Reports are sent one at a time so a slow scheduled one cannot overtake a newer one.
        self._report_lock = asyncio.Lock()
        # What the server last accepted, with the key it was sent with: the next report says only
        # what changed since (VirtualDevice.report_update), and the whole state every
        # FULL_REPORT_EVERY reports, so a report the server lost is repaired within minutes.
        self._accepted: tuple[str | None, Reported] | None = None
        self._since_full = 0
        # When the last accepted report went out (loop time): a heartbeat is due one interval later.
        self._reported_at = float("-inf")
        self._heartbeat_due = float("-inf")  # when the report loop next wakes (loop time)
        # Results of ended actions waiting for the next report to carry them, by key (in order).
        self._riding: dict[str, dict[str, str]] = {}
        self._poll_lock = asyncio.Lock()
        self._updating = False  # a release or OS update is running or queued on the action lock
        self._last_blocked = ""
        self._warned: set[str] = set()
        self._headers_for: tuple[str, str | None] | None = None
        self._headers = b""
        # Cleared while the agent API hangs; requests wait on it.
        self.unhung = asyncio.Event()
        self.unhung.set()

    # -- task plumbing ---------------------------------------------------------------------

    def start(self, delay: float) -> None:
        self._main = asyncio.get_running_loop().create_task(
            self._run(delay), name=f"device-{self.device.uuid}"
        )

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("device %s: task failed", self.device.uuid, exc_info=task.exception())

    async def stop(self) -> None:
        self.unhung.set()
        tasks = [t for t in [self._main, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _alive(self, boot_id: int) -> bool:
        """Still the same boot, and up: a task begun before a power loss must stop quietly."""
        return self.device.boot_id == boot_id and self.device.is_up

    def _warn_once(self, what: str, message: str, *args: Any) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message, *args)

    # -- the schedule ----------------------------------------------------------------------

    async def _run(self, delay: float) -> None:
        await asyncio.sleep(delay)
        dev, sim = self.device, self.sim
        attempt = 0
        while not dev.registered:
            if not dev.provisioning_key:
                dev.registration_error = "no provisioning key and no api key"
                return
            outcome = await self.register() if dev.is_up else "retry"
            if outcome == "ok":
                break
            attempt += 1
            if outcome == "retry":  # server unreachable or busy: back off, but not past one interval
                wait = min(sim.report_interval, 0.5 * 2 ** min(attempt, 6))
            else:  # refused: the key may be fixed later; try again slowly
                wait = sim.report_interval * sim.orphan_retry_intervals
            # Jitter, so devices that failed together do not retry together.
            await asyncio.sleep(wait * (0.5 + sim.rng.random() / 2))
        self.spawn(self._poll_loop())
        await self._report_loop()

    async def _report_loop(self) -> None:
        sim, dev = self.sim, self.device
        loop = asyncio.get_running_loop()
        if dev.is_up:
            await self.report()  # announce at once after registration or when the simulator resumes
        interval = sim.report_interval
        due = loop.time() + interval
        orphan_skips = 0
        counted_from = self._reported_at
        while True:
            self._heartbeat_due = due
            if due > loop.time():
                await sim.wakeups.sleep_until(due)
            if self._reported_at != counted_from and dev.is_up and not dev.orphaned:
                # Another report went out since this loop's last (a change's, a restart's): it
                # said the device is alive, so the interval counts from it, as an agent that
                # reports on change and sends heartbeats only when quiet. Never longer than
                # `interval` without a report.
                counted_from = self._reported_at
                due = counted_from + interval
                continue
            if not dev.is_up:
                pass  # dark: nothing to say, and nobody to say it
            elif dev.orphaned:
                # Orphaned: keep running, only knock again every few intervals.
                orphan_skips += 1
                if orphan_skips >= sim.orphan_retry_intervals:
                    orphan_skips = 0
                    sim.metrics.count("orphan_retries")
                    await self.report()
            else:
                sim.metrics.record_lateness(loop.time() - due)
                dev.write_some_data(sim.rng)
                await self.report()
                counted_from = self._reported_at
            due += interval
            now = loop.time()
            if due < now:  # fell more than a whole interval behind: skip slots rather than burst
                missed = int((now - due) // interval) + 1
                sim.metrics.count("missed_report_slots", missed)
                due += missed * interval

    async def _poll_loop(self) -> None:
        sim, dev = self.sim, self.device
        loop = asyncio.get_running_loop()
        if dev.is_up and sim.poll_at_start:
            await self.poll()  # at boot (or resume) an agent fetches its target at once
        # Then on a schedule at a random phase: devices started together must not poll together.
        due = loop.time() + sim.rng.uniform(0, sim.poll_interval)
        while True:
            if due > loop.time():
                await sim.wakeups.sleep_until(due)
            if dev.is_up and not dev.orphaned:
                await self.poll()
            due += sim.poll_interval
            now = loop.time()
            if due < now:
                due += ((now - due) // sim.poll_interval + 1) * sim.poll_interval

    # -- server API ------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | bytes | None = None,
        *,
        auth: str | None,
        headers: dict[str, str] | None = None,
        first: bool = False,
    ) -> tuple[int, Any, Response]:
        """One call to the server API; `body` is JSON, as a dict or already encoded. `first`: ahead
        of the other devices' requests waiting for the simulator's connections (ServerClient).

        Status, the parsed JSON body (None when there is none) and the response, for its headers.
        """
        sim = self.sim
        assert sim.session is not None, "the simulator is not started"
        lines = self._header_lines(auth)
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else encode_json(body).encode()
            lines += JSON_CONTENT_TYPE
        if headers:
            lines += header_lines(headers)
        resp = await sim.session.request(method, path, body=data, headers=lines, first=first)
        parsed: Any = None
        if resp.body and resp.content_type == "application/json":
            try:
                parsed = json.loads(resp.body)
            except ValueError:
                parsed = None
        return resp.status, parsed, resp

    def _header_lines(self, auth: str | None) -> bytes:
        """User-Agent and Authorization, encoded again only when the agent version or the key changes."""
        agent_version = self.device.agent_version
        if self._headers_for != (agent_version, auth):
            headers = {"User-Agent": f"fleet-agent-sim/{agent_version}"}
            if auth:
                headers["Authorization"] = f"Bearer {auth}"
            self._headers_for, self._headers = (agent_version, auth), header_lines(headers)
        return self._headers

    async def register(self) -> str:
        """POST /devices/register with the provisioning key: "ok", "retry" or "refused"."""
        dev, metrics = self.device, self.sim.metrics
        body = {
            "uuid": dev.uuid,
            "name": dev.name,
            "device_type": dev.device_type,
            "os_version": dev.os_version,
            "agent_version": dev.agent_version,
        }
        try:
            status, data, _ = await self._request(
                "POST", "/api/v1/devices/register", body, auth=dev.provisioning_key
            )
        except NETWORK_ERRORS as exc:
            dev.registration_error = f"server unreachable: {exc.__class__.__name__}"
            return "retry"
        if status == 201 and isinstance(data, dict) and data.get("api_key"):
            dev.api_key = str(data["api_key"])
            dev.push_secret = str(data.get("push_secret") or "")
            dev.name = str(data.get("name") or dev.name)
            fleet = data.get("fleet") or {}
            dev.fleet_id, dev.fleet_name = fleet.get("id"), str(fleet.get("name") or "")
            dev.registration_error = ""
            dev.log_event("registered", f"fleet {dev.fleet_id} {dev.fleet_name}")
            metrics.count("registrations")
            return "ok"
        if status >= 500 or status == 429:
            dev.registration_error = f"server error {status}"
            return "retry"
        error = data.get("error", "") if isinstance(data, dict) else ""
        dev.registration_error = f"{status} {error}".strip()
        metrics.count("registrations_refused")
        self._warn_once(
            f"register-{status}", "device %s: registration refused: %s %s", dev.uuid, status, data or ""
        )
        return "refused"

    async def report(self) -> bool:
        """PATCH /device/state with what changed since the last accepted report (the whole state
        the first time and every FULL_REPORT_EVERY reports), carrying the results waiting for a
        report (report_with_result; PROTOCOL.md, results); a 401 orphans the device."""
        dev, metrics = self.device, self.sim.metrics
        if not dev.registered:
            return False
        async with self._report_lock:
            accepted, key = self._accepted, dev.api_key
            since = (
                accepted[1]
                if accepted and accepted[0] == key and self._since_full < FULL_REPORT_EVERY
                else None
            )
            body, reported = dev.report_update(self.sim.url, since)
            carried = self._take_riding()
            if carried:
                results = b'"results":' + encode_json(carried).encode()
                body = b"{%s}" % results if body == b"{}" else b"%s,%s}" % (body[:-1], results)
            started, sent_at = time.monotonic(), asyncio.get_running_loop().time()
            try:
                status, data, _ = await self._request(
                    "PATCH", "/api/v1/device/state", body, auth=key, first=bool(carried)
                )
            except NETWORK_ERRORS:
                # The server may have stored it all the same: what changed since the last accepted
                # report, then changed back, would be left out of a report against that one.
                self._accepted = None
                metrics.count("reports_failed")
                self._send_alone(carried)
                return False
            metrics.record_rtt(time.monotonic() - started)
            if 200 <= status < 300:
                self._accepted, self._reported_at = (key, reported), sent_at
                self._since_full = 0 if since is None else self._since_full + 1
                if carried:
                    metrics.count("results", len(carried))
            else:
                self._accepted = None  # refused or not stored: the next report says everything
                self._send_alone(carried)
        if status == 401:
            metrics.count("reports_refused")
            self._orphan()
            return False
        if 200 <= status < 300:
            metrics.count("reports")
            if dev.orphaned:  # the server takes us again (re-provisioned): back to normal
                dev.orphaned = False
                dev.log_event("adopted", "the server accepts reports again")
                log.warning("device %s: reports accepted again, no longer orphaned", dev.uuid)
            return True
        metrics.count("reports_failed")
        self._warn_once(f"report-{status}", "device %s: report refused: %s %s", dev.uuid, status, data or "")
        return False

    def _orphan(self) -> None:
        dev = self.device
        if dev.orphaned:
            return
        dev.orphaned = True
        dev.log_event("orphaned", "401 invalid_api_key")
        self.sim.metrics.count("orphaned")
        log.warning(
            "device %s (%s): refused with 401, deleted on the server; orphaned: keeps running, retries every %g s",
            dev.uuid,
            dev.name,
            self.sim.report_interval * self.sim.orphan_retry_intervals,
        )

    async def poll(self) -> None:
        """GET /device/target with the last ETag, then apply it (also on 304: blocked work is retried)."""
        dev, metrics = self.device, self.sim.metrics
        if not dev.registered or dev.orphaned:
            return
        async with self._poll_lock:
            headers = {"If-None-Match": dev.etag} if dev.etag else {}
            try:
                status, data, response = await self._request(
                    "GET", "/api/v1/device/target", auth=dev.api_key, headers=headers
                )
            except NETWORK_ERRORS:
                metrics.count("polls_failed")
                return
            if status == 401:
                self._orphan()
                return
            if status == 304:
                metrics.count("polls")
                metrics.count("polls_not_modified")
            elif status == 200 and isinstance(data, dict):
                metrics.count("polls")
                dev.etag = response.headers.get("etag")
                self.target = data
            else:
                metrics.count("polls_failed")
                self._warn_once(f"poll-{status}", "device %s: target poll got %s", dev.uuid, status)
                return
        if self.apply_target():
            await self.report()

    def apply_target(self) -> bool:
        """Bring the device towards the last target; True when the reported state changed at once."""
        dev, target = self.device, self.target
        if not target or not dev.is_up:
            return False
        changed = False
        fleet = target.get("fleet") or {}
        if isinstance(fleet.get("id"), int) and fleet["id"] != dev.fleet_id:
            detail = dev.move_to_fleet(fleet["id"], str(fleet.get("name") or ""))
            if detail:
                dev.log_event("move", detail)
                self.sim.metrics.count("moves")
            changed = True
        if isinstance(target.get("name"), str) and target["name"]:
            dev.name = target["name"]
        if isinstance(target.get("device_type"), str) and target["device_type"]:
            dev.device_type = target["device_type"]
        config = target.get("config") or {}
        local_mode = bool(config.get("local_mode", False))
        if local_mode != dev.local_mode:
            dev.local_mode = local_mode
            dev.log_event("local_mode", "on" if local_mode else "off")
            changed = True
        dev.lock_override = bool(config.get("lock_override", False))
        dev.public_url = bool(config.get("public_url", False))  # the server proxies; nothing to do here
        dev.target_os_version = str((target.get("os") or {}).get("target_version") or "")

        if self._updating:
            return changed
        blocked_before = dev.blocked_update
        release = target.get("release")
        if self._os_update_wanted(dev.target_os_version):
            self._start_update(f"host OS {dev.target_os_version}", self._os_update(dev.target_os_version))
        elif (
            isinstance(release, dict)
            and not dev.local_mode
            and release.get("commit")
            and release["commit"] != dev.release
        ):
            self._start_update(f"release {str(release['commit'])[:7]}", self._release_update(release))
        else:
            dev.blocked_update = ""  # nothing pending: nothing held back
        # A held-back update (or one let through) is news for the dashboard: report it now.
        return changed or dev.blocked_update != blocked_before

    def _os_update_wanted(self, version: str) -> bool:
        try:
            return bool(version) and version_key(version) > version_key(self.device.os_version)
        except InvalidVersion:
            return False

    def _start_update(self, what: str, work: Coroutine[Any, Any, None]) -> None:
        dev = self.device
        if dev.update_blocked:
            work.close()  # never started; retried at the next poll
            holder = dev.update_lock_holder
            dev.blocked_update = f"{what}: service {holder.name if holder else '?'} holds the update lock"
            if self._last_blocked != what:
                self._last_blocked = what
                dev.log_event("update_blocked", dev.blocked_update)
                self.sim.metrics.count("updates_blocked")
            return
        self._last_blocked = ""
        dev.blocked_update = ""
        self._updating = True
        self.spawn(work)

    async def report_with_result(
        self, key: str, state: str, reason: str, report_by: float | None = None
    ) -> None:
        """Report what an action changed, carrying its result: one request, not two (PROTOCOL.md).
        `report_by` (loop time: the push's report_within_s after it was accepted): the result may
        wait until then for a report. When the next heartbeat is due by then, it carries the result
        (no request of its own); else a report goes at a random moment of the time left, so a large
        action's results spread evenly. An action that took the whole window (a service killed
        after the grace period) reports at once. A report that is not accepted sends its results
        on their own (post_result)."""
        self.device.remember_result(key, state, reason)
        self._riding[key] = {"key": key, "state": state, "reason": reason}
        now = asyncio.get_running_loop().time()
        left = 0.0 if report_by is None else report_by - now
        if left <= 0:
            await self.report()
            return
        if self._next_heartbeat() - now > left:  # else the heartbeat takes it
            self.spawn(self._report_at(now + self.sim.rng.uniform(0, left), key))

    async def _report_at(self, when: float, key: str) -> None:
        await self.sim.wakeups.sleep_until(when)
        if key in self._riding:  # no report has taken it meanwhile
            await self.report()

    def _next_heartbeat(self) -> float:
        """When the report loop sends its next heartbeat (loop time): at its next wake-up, or one
        interval after a report sent since (_report_loop); never, as far as a waiting result can
        tell, while the loop has not started (the agent still waits for its start or registers)."""
        if self._heartbeat_due == float("-inf"):
            return float("inf")
        return max(self._heartbeat_due, self._reported_at + self.sim.report_interval)

    def _take_riding(self) -> list[dict[str, str]]:
        if not self._riding:  # nearly every report: nothing waits
            return []
        taken = list(itertools.islice(self._riding.values(), MAX_CARRIED_RESULTS))
        for result in taken:
            del self._riding[result["key"]]
        return taken

    def _send_alone(self, results: list[dict[str, str]]) -> None:
        """The results a report carried that was not accepted: each on its own, retried."""
        for result in results:
            self.spawn(self.post_result(result["key"], result["state"], result["reason"]))

    async def post_result(self, key: str, state: str, reason: str) -> bool:
        """POST the action's result, retrying with backoff while the server is unreachable."""
        dev, metrics = self.device, self.sim.metrics
        dev.remember_result(key, state, reason)
        body = {"key": key, "state": state, "reason": reason}
        for attempt in range(RESULT_ATTEMPTS):
            if dev.orphaned:
                return False
            if attempt:
                await asyncio.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
            try:
                status, data, _ = await self._request(
                    "POST", "/api/v1/device/actions/result", body, auth=dev.api_key, first=True
                )
            except NETWORK_ERRORS:
                continue
            if status == 401:
                self._orphan()
                return False
            if status >= 500:
                continue
            if 200 <= status < 300:
                metrics.count("results")
                return True
            log.warning("device %s: result of %s refused: %s %s", dev.uuid, key, status, data or "")
            return False
        metrics.count("results_failed")
        return False

    # -- agent API: one-shot actions -------------------------------------------------------

    def accept_action(self, kind: str, key: str, within: float = 0.0) -> tuple[int, dict[str, Any]]:
        """Decide at once (the HTTP answer); the action itself runs in the background."""
        dev, metrics = self.device, self.sim.metrics
        if key in dev.accepted_keys:
            metrics.count("pushes_duplicate")
            known = dev.results.get(key)
            if known:
                return 200, {"duplicate": True, "result": {"state": known[0], "reason": known[1]}}
            return 200, {"duplicate": True}
        if kind == "restart" and dev.update_blocked and (holder := dev.update_lock_holder) is not None:
            metrics.count("pushes_refused_lock")
            # Not remembered: once the lock is released the same delivery may be retried.
            return 409, {
                "error": "update_lock",
                "detail": f"Service {holder.name} holds the update lock and the target state has no lock override.",
            }
        dev.remember_key(key)
        metrics.count("pushes")
        # The window counts from now: the time the action itself takes (a grace period) is part of it.
        report_by = asyncio.get_running_loop().time() + within if within > 0 else None
        self.spawn(self._run_action(kind, key, report_by))
        return 202, {"accepted": True}

    async def _run_action(self, kind: str, key: str, report_by: float | None = None) -> None:
        """Run one accepted action. `report_by`: until when a restart's or a purge's result may
        wait for a report (report_with_result); a reboot and a shutdown report at once, as the
        device goes dark."""
        async with self._action_lock:
            dev = self.device
            boot = dev.boot_id
            if not self._alive(boot):
                return  # lost power before its turn: never done, never reported
            dev.actions_executed[kind] += 1
            wait = (
                f"; the result may wait {report_by - asyncio.get_running_loop().time():.0f} s"
                if report_by
                else ""
            )
            dev.log_event(kind, f"key {key}{wait}")
            self.sim.metrics.count(f"executed_{kind}")
            if kind == "restart":
                await self._restart(key, boot, report_by)
            elif kind == "purge":
                await self._purge(key, boot, report_by)
            elif kind == "reboot":
                await self._reboot(key, boot)
            elif kind == "shutdown":
                await self._shutdown(key, boot)

    async def _stop_services(self, boot: int) -> list[str] | None:
        """SIGTERM every container; one ignoring it gets SIGKILL after the grace period.

        Returns the names of the killed services, or None when the device lost power meanwhile.
        """
        dev = self.device
        for service in dev.services:
            service.status = "stopping"
        killed = [s.name for s in dev.services if s.ignores_sigterm]
        if killed:
            # Stopping for the grace period: worth a report. Containers that stop at once are only
            # reported running again, as an agent that throttles its reports (balena's supervisor
            # sends at most one every 10 s) never tells of a state that lasted milliseconds.
            await self.report()
            await asyncio.sleep(self.sim.sigkill_after)
        if not self._alive(boot):
            return None
        for service in dev.services:
            service.status = "exited"
        return killed

    def _services_reason(self, verb: str, killed: list[str]) -> str:
        count = len(self.device.services)
        reason = f"{count} service{'s' if count != 1 else ''} {verb}"
        if killed:
            reason += f"; {', '.join(killed)} killed after {self.sim.sigkill_after:g} s"
        return reason

    async def _restart(self, key: str, boot: int, report_by: float | None) -> None:
        killed = await self._stop_services(boot)
        if killed is None:
            return
        self.device.recreate_containers(self.sim.rng)
        reason = self._services_reason("recreated", killed)
        await self.report_with_result(key, "succeeded", reason, report_by)

    async def _purge(self, key: str, boot: int, report_by: float | None) -> None:
        killed = await self._stop_services(boot)
        if killed is None:
            return
        what = self.device.clear_persistent_data()
        self.device.recreate_containers(self.sim.rng)
        reason = f"{what}; {self._services_reason('restarted', killed)}"
        await self.report_with_result(key, "succeeded", reason, report_by)

    async def _go_down_and_boot(self, boot: int) -> bool:
        """Report `rebooting`, stay dark for reboot_seconds, boot. False if power was lost meanwhile."""
        dev = self.device
        dev.status = REBOOTING
        await self.report()
        if not self._alive(boot):
            return False
        dev.go_dark()
        await asyncio.sleep(self.sim.reboot_seconds)
        if dev.boot_id != boot or not dev.powered:
            return False
        dev.boot()
        dev.log_event("boot", "after reboot")
        return True

    async def _reboot(self, key: str, boot: int) -> None:
        if not await self._go_down_and_boot(boot):
            return
        await self.report_with_result(key, "succeeded", f"rebooted; back after {self.sim.reboot_seconds:g} s")
        self.spawn(self.poll())  # an agent polls its target at boot

    async def _shutdown(self, key: str, boot: int) -> None:
        dev = self.device
        dev.status = SHUTTING_DOWN
        # The result goes out before power-off: a device that is off cannot report anything.
        await self.report_with_result(key, "succeeded", "shut down; stays off until powered on at the device")
        if dev.boot_id == boot:
            dev.power_off()
            dev.log_event("power_off", "shutdown")

    # -- target state: updates -------------------------------------------------------------

    async def _release_update(self, release: dict[str, Any]) -> None:
        try:
            async with self._action_lock:
                dev = self.device
                boot = dev.boot_id
                if not self._alive(boot) or dev.update_blocked:
                    return
                dev.status = UPDATING
                killed = await self._stop_services(boot)
                if killed is None:
                    return
                commit = str(release["commit"])
                specs = [s for s in release.get("services") or [] if isinstance(s, dict)]
                dev.use_release(commit, specs, self.sim.rng)
                dev.status = IDLE
                dev.log_event(
                    "release", f"running {commit[:7]}" + (f"; killed {', '.join(killed)}" if killed else "")
                )
                self.sim.metrics.count("release_updates")
                await self.report()
        finally:
            self._updating = False

    async def _os_update(self, version: str) -> None:
        try:
            async with self._action_lock:
                dev = self.device
                boot = dev.boot_id
                if not self._alive(boot) or dev.update_blocked:
                    return
                dev.log_event("os_update", f"{dev.os_version} -> {version}")
                dev.status = UPDATING
                dev.os_update_progress = 0
                await self.report()
                for step in range(1, OS_UPDATE_STEPS + 1):
                    await asyncio.sleep(self.sim.os_update_seconds / OS_UPDATE_STEPS)
                    if not self._alive(boot):
                        return  # power lost: comes back on the old OS, and tries again at a poll
                    dev.os_update_progress = step * 100 // OS_UPDATE_STEPS
                    await self.report()
                if not await self._go_down_and_boot(boot):
                    return
                dev.upgrade_os(version)
                self.sim.metrics.count("os_updates")
                await self.report()
                self.spawn(self.poll())
        finally:
            self._updating = False

    # -- control (the simulator's own API, standing in for hands on the device) -------------

    async def _after_boot(self) -> None:
        await self.report()
        await self.poll()

    def power_on(self) -> bool:
        dev = self.device
        if dev.powered:
            return False
        dev.boot()
        dev.log_event("power_on")
        if dev.registered:
            self.spawn(self._after_boot())
        return True

    def power_off(self) -> bool:
        """Lose power or network: dark at once, without telling the server."""
        dev = self.device
        if not dev.powered:
            return False
        dev.power_off()
        dev.log_event("power_off", "power or network lost")
        return True

    def set_lock(self, held: bool, service: str | None = None) -> bool:
        dev = self.device
        if not dev.services:
            return False
        if held:
            chosen = (
                next((s for s in dev.services if s.name == service), None) if service else dev.services[0]
            )
            if chosen is None:
                return False
            chosen.holds_update_lock = True
        else:
            for s in dev.services:
                s.holds_update_lock = False
        dev.log_event("lock" if held else "unlock", service or "")
        if dev.is_up:
            self.spawn(self._after_lock_change())
        return True

    async def _after_lock_change(self) -> None:
        self.apply_target()  # a released lock lets a blocked update through now
        await self.report()

    def set_hung(self, hung: bool) -> None:
        self.device.hung = hung
        if hung:
            self.unhung.clear()
        else:
            self.unhung.set()
