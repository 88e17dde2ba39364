"""Run a Simulator in a background thread with its own event loop, for synchronous code and tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .core import Simulator
from .model import VirtualDevice

T = TypeVar("T")


class SimulatorThread:
    """`start()` blocks until the server listens; `call(coro)` runs a coroutine on the simulator's loop.

    The Simulator is only touched from its own loop once started: use `call()` (or `add_device()`
    here) rather than calling its methods from the test's thread.
    """

    def __init__(self, server_url: str | None = None, *, simulator: Simulator | None = None, **kwargs: Any):
        if simulator is None:
            if server_url is None:
                raise TypeError("give server_url or simulator")
            simulator = Simulator(server_url, **kwargs)
        self.simulator = simulator
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.simulator.url

    def start(self, timeout: float = 15.0) -> str:
        self._thread = threading.Thread(target=self._main, name="device-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the simulator did not start in time")
        if self._error is not None:
            raise RuntimeError("the simulator failed to start") from self._error
        return self.url

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.simulator.start())
        except BaseException as exc:  # reported to start() in the caller's thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the simulator thread is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def add_device(self, **kwargs: Any) -> VirtualDevice:
        """Simulator.add_device, on the simulator's loop once it runs (its tasks start there)."""
        if self._loop is None:
            return self.simulator.add_device(**kwargs)

        async def add() -> VirtualDevice:
            return self.simulator.add_device(**kwargs)

        return self.call(add())

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a plain method of the simulator on its loop (its state is not thread-safe)."""

        async def call() -> T:
            return function(*args, **kwargs)

        return self.call(call())

    # Thread-safe shortcuts to the control API, for tests.
    def snapshot(self, uuid: str) -> dict[str, Any]:
        return self.run(self.simulator.snapshot, uuid)

    def power_on(self, uuid: str) -> bool:
        return self.run(self.simulator.power_on, uuid)

    def power_off(self, uuid: str) -> bool:
        return self.run(self.simulator.power_off, uuid)

    def lock(self, uuid: str, service: str | None = None) -> bool:
        return self.run(self.simulator.lock, uuid, service)

    def unlock(self, uuid: str) -> bool:
        return self.run(self.simulator.unlock, uuid)

    def hang(self, uuid: str, hung: bool = True) -> None:
        self.run(self.simulator.hang, uuid, hung)

    def stop(self, timeout: float = 15.0) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None or loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.simulator.stop(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
