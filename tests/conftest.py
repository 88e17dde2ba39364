"""Test infrastructure for the whole suite: a Redis of its own and real Celery processes.

Redis
    Without REDIS_URL, one embedded redis-server (dashboard.embedded_redis) runs for the session.
    With REDIS_URL (CI), the tests use that server but their own database index (TEST_REDIS_DB,
    default 15), flushed at session start, so a developer's data in db 0 is never touched.
    pytest-django reads the Django settings before this file is imported, and settings take
    REDIS_URL from the environment at import: so the settings module is re-executed here, before
    any test or fixture runs, and the test process, its Celery producer and every subprocess agree.

Celery
    `celery_worker` starts a real worker subprocess on the same test database and Redis as the test
    (it needs transactional_db: data must be committed to be visible), waits until it is ready and
    stops it at teardown. `celery_beat` adds a beat process. The test Redis database is flushed
    before and after, so no message leaks from one test into another.
"""

import contextlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import pytest
import redis
from django.conf import settings

from dashboard.embedded_redis import EmbeddedRedis, die_with_parent, free_port

BASE_DIR = Path(__file__).resolve().parent.parent
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB") or 15)


def _reload_settings() -> None:
    """Re-execute the settings module so that values derived from the environment are re-read."""
    from django.conf import Settings

    databases = settings.DATABASES  # django.db.connections may hold these dicts already: keep them
    importlib.reload(sys.modules[settings.SETTINGS_MODULE])
    settings._wrapped = Settings(settings.SETTINGS_MODULE)
    settings.DATABASES = databases

    from dashboard.celery import app

    if app.configured:  # read the old settings already: point it at the new broker too
        app.conf.broker_url = settings.CELERY_BROKER_URL


@dataclass(frozen=True)
class RedisForTests:
    url: str
    embedded: bool  # True: our own redis-server; False: the server REDIS_URL names, db TEST_REDIS_DB

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def flush(self) -> None:
        with self.client() as client:
            client.flushdb()


def _start_session_redis() -> tuple[RedisForTests, EmbeddedRedis | None]:
    if os.environ.get("REDIS_URL"):
        url = urlsplit(os.environ["REDIS_URL"])._replace(path=f"/{TEST_REDIS_DB}").geturl()
        server = None
    else:
        server = EmbeddedRedis(Path(settings.RUN_DIR) / f"test-redis-{os.getpid()}").start()
        url = server.url
    os.environ["REDIS_URL"] = url
    _reload_settings()
    assert settings.REDIS_URL == settings.CELERY_BROKER_URL == url, "settings did not pick up REDIS_URL"
    # The live server answers each request in a thread of its own: a connection kept for reuse
    # would outlive its thread, and a burst of agents would exhaust PostgreSQL's connections.
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
    test_redis = RedisForTests(url=url, embedded=server is not None)
    test_redis.flush()
    return test_redis, server


# Module level on purpose: before any fixture, test module or Django cache is touched.
_TEST_REDIS, _EMBEDDED_REDIS = _start_session_redis()


def pytest_report_header(config):
    kind = "embedded redis-server" if _TEST_REDIS.embedded else f"REDIS_URL, db {TEST_REDIS_DB}"
    return [f"redis: {_TEST_REDIS.url} ({kind})"]


def pytest_unconfigure(config):
    if _EMBEDDED_REDIS is not None:
        _EMBEDDED_REDIS.stop()
        shutil.rmtree(_EMBEDDED_REDIS.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def test_redis() -> RedisForTests:
    return _TEST_REDIS


@pytest.fixture
def test_database_url(transactional_db) -> str:
    """DATABASE_URL of the test database pytest-django created, for subprocesses of this test."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return "sqlite:///" + str(Path(db["NAME"]).resolve())  # sqlite:////abs/path: absolute
    credentials = quote(db["USER"], safe="") + (
        f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    )
    query = urlencode(db.get("OPTIONS") or {})
    return f"postgres://{credentials}@{db['HOST']}:{db['PORT'] or 5432}/{quote(db['NAME'])}" + (
        f"?{query}" if query else ""
    )


class CeleryProcess:
    """A real `celery worker` or `celery beat` in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path, ready: str):
        self.name, self.argv, self.env, self.log_path, self.ready = name, argv, env, log_path, ready
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 30.0) -> "CeleryProcess":
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=BASE_DIR, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        try:
            self.wait_for(self.ready, timeout, since=offset)
        except Exception:
            self.kill()
            raise
        return self

    def wait_for(self, text: str, timeout: float = 10.0, since: int = 0) -> None:
        """Wait until `text` appears in the log (after byte offset `since`)."""
        deadline = time.monotonic() + timeout
        while text not in self.log(since):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"celery {self.name} exited ({self.process.returncode}):\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{text!r} not in celery {self.name} log after {timeout} s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)

    def log(self, since: int = 0) -> str:
        with self.log_path.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL, like a crash: in-flight tasks are neither finished nor acknowledged."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            self.kill()  # reaps it and anything left in its group
            return
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        self.kill()

    def restart(self, env: dict | None = None) -> "CeleryProcess":
        """Stop (if running) and start again, optionally with extra environment variables."""
        self.stop()
        self.env = self.env | (env or {})
        with self.log_path.open("a") as log:
            log.write(f"\n----- restart of celery {self.name} -----\n")
        return self.start()


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "dashboard", *args]


@pytest.fixture
def celery_worker(test_database_url, test_redis, tmp_path):
    """A real Celery worker (threads pool) on this test's database and Redis.

    Helpers: .kill() (SIGKILL), .restart(env={...}), .log(), .wait_for(text), .pid.
    """
    env = os.environ | {
        "DATABASE_URL": test_database_url,
        "REDIS_URL": test_redis.url,
        "RUN_DIR": str(tmp_path / "run"),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "PYTHONUNBUFFERED": "1",
    }
    argv = _celery(
        "worker", "-P", "threads", "-c", "4", "--without-heartbeat", "--without-gossip",
        "--without-mingle", "-l", "info", "-n", f"test{os.getpid()}@%h",
    )  # fmt: skip
    test_redis.flush()
    worker = CeleryProcess("worker", argv, env, tmp_path / "celery-worker.log", ready=" ready.").start()
    yield worker
    worker.stop()
    test_redis.flush()


@pytest.fixture
def celery_beat(celery_worker, tmp_path):
    """Celery beat next to `celery_worker`, with the worker's environment (e.g. SWEEP_INTERVAL_S)."""
    argv = _celery("beat", "-s", str(tmp_path / "celerybeat-schedule"), "-l", "info")
    beat = CeleryProcess(
        "beat", argv, celery_worker.env, tmp_path / "celery-beat.log", ready="beat: Starting"
    )
    beat.start()
    yield beat
    beat.stop()


@pytest.fixture
def agent_server(test_database_url, test_redis, tmp_path):
    """`manage.py serve_agent_api` as a real process on this test's database and Redis: the port.

    What agents talk to in a deployment: reports, target polls and action results answered in its
    event loop from Redis, everything else by Django in its thread pool."""
    port = free_port()
    env = os.environ | {
        "DATABASE_URL": test_database_url,
        "REDIS_URL": test_redis.url,
        "RUN_DIR": str(tmp_path / "run"),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "agent-server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve_agent_api", "--port", str(port), "--threads", "2"],
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while "listening" not in log_path.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    yield port
    process.terminate()
    assert process.wait(10) == 0, log_path.read_text()


@pytest.fixture(autouse=True)
def _isolated_redis_and_fast_passwords(settings, test_redis):
    """Every test starts with an empty Redis (cache entries are keyed by ids the database reuses),
    and hashes passwords cheaply."""
    test_redis.flush()
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1, message: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def agent_flusher():
    """Writes buffered agent reports and results to the database, as a worker's flusher does.

    In this process, so it stops (at teardown) before the test database is emptied."""
    import threading

    from devices.ingest import run_flusher

    stop = threading.Event()
    thread = threading.Thread(target=run_flusher, args=(stop, 0.2), name="test-agent-flusher", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)


@pytest.fixture
def simulator(request, live_server, agent_flusher):
    """The device simulator in a background thread, talking to this test's live server.

    Fast clocks: reports and polls every second, a reboot is dark for 2 s, SIGKILL after 0.5 s.
    A test changes them with `@pytest.mark.simulator(poll_interval=120.0)`: a slow poll shows
    whether something reaches the device by a nudge or only at its scheduled poll.
    """
    from devices.simulator import SimulatorThread

    options = dict(
        report_interval=1.0, poll_interval=1.0, reboot_seconds=2.0, sigkill_after=0.5, os_update_seconds=2.0,
        start_spread=0.0, seed=1,
    )  # fmt: skip
    marker = request.node.get_closest_marker("simulator")
    sim = SimulatorThread(live_server.url, **(options | (marker.kwargs if marker else {})))
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def provision(simulator):
    """provision(fleet, **device fields) -> the Device once the simulated device has registered."""
    from devices.models import Device
    from fleets.services import provisioning_key_create

    keys = {}

    def provision(fleet, **fields):
        if fleet.pk not in keys:
            keys[fleet.pk] = provisioning_key_create(fleet=fleet, description="test")
        fields.setdefault("device_type", fleet.default_device_type.slug)
        fields.setdefault("os_version", "2.58.3")
        fields.setdefault("agent_version", "1.4.0")
        virtual = simulator.add_device(provisioning_key=keys[fleet.pk], **fields)
        return wait_until(  # registered, and its first state report is in
            lambda: Device.objects.filter(uuid=virtual.uuid, booted_at__isnull=False).first(),
            message=f"device {virtual.uuid[:7]} to register and report",
        )

    return provision


@pytest.fixture
def celery_beat_factory(celery_worker, tmp_path):
    """start(env={...}) -> a Celery beat started now, with the worker's environment plus `env`."""
    started = []

    def start(env: dict | None = None) -> CeleryProcess:
        argv = _celery("beat", "-s", str(tmp_path / f"celerybeat-schedule-{len(started)}"), "-l", "info")
        beat = CeleryProcess(
            "beat", argv, celery_worker.env | (env or {}), tmp_path / f"celery-beat-{len(started)}.log",
            ready="beat: Starting",
        )
        started.append(beat.start())
        return beat

    yield start
    for beat in started:
        beat.stop()
