"""The processes `bench_scale` runs (web server, flusher, worker, simulators) and what they cost.

Each process is started in a session of its own and stopped with its whole process group (gunicorn's
and Celery's children included). CPU and memory are read from /proc (Linux), per named group of
processes, sampled in a thread: no dependency, and the bench process itself is not counted.
"""

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


class Service:
    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path, cwd: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(self.pid):
            self.process.poll()
            time.sleep(0.1)
        if _group_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.log.close()

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def group_pids(pgid: int) -> list[int]:
    """The processes of a process group (a service and the children it forked)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
                    pids.append(int(entry))
    return pids


def pids_named(command: str) -> list[int]:
    """Processes whose command name is `command` (redis-server, postgres: servers the bench uses)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == command:
                    pids.append(int(entry))
    return pids


def _cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class ResourceSampler:
    """CPU (percent of one core, averaged over the window) and peak resident memory of groups of
    processes; `groups` maps a name to a callable returning the group's current pids."""

    def __init__(self, groups: dict, interval: float = 1.0):
        self.groups, self.interval = groups, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self._last: dict[int, int] = {}
        self.started = self.stopped = 0.0

    def __enter__(self) -> "ResourceSampler":
        self.started = time.monotonic()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.stopped = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        for name, pids in self.groups.items():
            rss = 0.0
            for pid in pids():
                try:
                    ticks, memory = _cpu_ticks(pid), _rss_mb(pid)
                except (OSError, ValueError, IndexError):
                    continue
                previous = self._last.get(pid)
                self._last[pid] = ticks
                if not first:
                    # A process born during the window counts from its birth (start of its CPU time).
                    self.cpu_seconds[name] = (
                        self.cpu_seconds.get(name, 0.0) + (ticks - (previous or 0)) / TICKS
                    )
                rss += memory
            self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), rss)

    def figures(self) -> dict[str, dict[str, float]]:
        elapsed = max(1e-9, (self.stopped or time.monotonic()) - self.started)
        return {
            name: {
                "cpu_percent": round(100 * self.cpu_seconds.get(name, 0.0) / elapsed, 1),
                "rss_mb": round(self.peak_rss_mb.get(name, 0.0), 1),
            }
            for name in self.groups
        }
