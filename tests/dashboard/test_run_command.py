"""The developer infrastructure itself: `manage.py run_dashboard` (behind `make run`) and the
`celery_worker` fixture that the integration tests rely on."""

import contextlib
import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dashboard.embedded_redis import free_port
from tests.factories import ensure_catalog

BASE_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) from /proc, or None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every process below `pid`, whatever session or group it is in."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            parents[int(entry.name)] = stat
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _state, started) in parents.items():
            if ppid == parent and child not in found:
                found[child] = started
                todo.append(child)
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] == started and stat[1] != "Z"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def _log_in(base: str, username: str, password: str) -> urllib.request.OpenerDirector:
    """A browser-like session: the login form's CSRF token and cookie, then the POST."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = opener.open(f"{base}/accounts/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password})
    opener.open(
        urllib.request.Request(f"{base}/accounts/login/", data=data.encode(), headers={"Referer": base}),
        timeout=10,
    )
    return opener


def test_run_dashboard_serves_the_login_page_and_stops_cleanly(
    transactional_db, test_database_url, test_redis, tmp_path
):
    ensure_catalog()  # on PostgreSQL seed_demo runs on the test database: an earlier flush emptied it
    port = free_port()
    env = os.environ | {
        "RUN_DIR": str(tmp_path / "run"),
        "PYTHONUNBUFFERED": "1",
        "DEMO_PASSWORD": "s3cret-demo",
    }
    # SQLite: a fresh database in the temporary RUN_DIR (a real first run: migrate, seed).
    # PostgreSQL: the test database, which transactional_db empties afterwards.
    env.pop("DATABASE_URL", None)
    if test_database_url.startswith("postgres"):
        env["DATABASE_URL"] = test_database_url
    # The session's own embedded Redis is private: let the command start its own.
    if test_redis.embedded:
        env.pop("REDIS_URL", None)
    else:
        env["REDIS_URL"] = test_redis.url
    output = tmp_path / "run_dashboard.log"
    argv = [sys.executable, "manage.py", "run_dashboard", "--port", str(port), "--devices", "3"]
    with output.open("w") as log:
        process = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    children: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 90
        status, page = None, ""
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, page = _get(f"http://127.0.0.1:{port}/accounts/login/")
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, f"login page answered {status}; output:\n{output.read_text()[-5000:]}"
        assert "<form" in page and 'name="username"' in page and 'name="password"' in page
        while "Ctrl-C stops everything." not in output.read_text():  # the banner: all started
            assert time.monotonic() < deadline and process.poll() is None, output.read_text()[-5000:]
            time.sleep(0.2)

        children = _descendants(process.pid)
        names = " | ".join(
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
            for pid in children
        )
        for part in ["celery", "runserver", "simulate_devices"] + (
            ["redis-server"] if test_redis.embedded else []
        ):
            assert part in names, f"no {part} process among {names}"

        # The demo accounts use DEMO_PASSWORD, and the simulated devices report: some show online.
        base = f"http://127.0.0.1:{port}"
        operator = _log_in(base, "operator", "s3cret-demo")
        deadline_online = time.monotonic() + 60
        while True:
            fleets = operator.open(f"{base}/fleets/", timeout=10).read().decode()
            assert "Fleets" in fleets and "Sign in" not in fleets, "the operator could not log in"
            first_fleet = re.search(r'href="(/fleets/\d+/)"', fleets).group(1)
            if "status-online" in operator.open(base + first_fleet, timeout=10).read().decode():
                break
            assert time.monotonic() < deadline_online, "no simulated device came online"
            time.sleep(1)

        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=15)
        deadline = time.monotonic() + 2  # reparented grandchildren are reaped by init
        while time.monotonic() < deadline and any(_alive(pid, t) for pid, t in children.items()):
            time.sleep(0.1)
        leftovers = [pid for pid, started in children.items() if _alive(pid, started)]
        assert exit_code == 0, output.read_text()[-5000:]
        assert not leftovers, f"still running after SIGTERM: {leftovers}"
        assert "All processes stopped." in output.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid, started in children.items():
            if not _alive(pid, started):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_celery_worker_fixture_runs_tasks_and_survives_a_crash(celery_worker):
    from dashboard.celery import app

    app.send_task("devices.tasks.sweep_actions")
    celery_worker.wait_for("sweep_actions", timeout=10)
    celery_worker.wait_for("succeeded", timeout=10)

    celery_worker.kill()
    assert celery_worker.process.poll() is not None
    celery_worker.restart(env={"LOG_LEVEL": "INFO"})
    before = len(celery_worker.log().encode())
    app.send_task("devices.tasks.sweep_actions")
    celery_worker.wait_for("succeeded", timeout=10, since=before)
