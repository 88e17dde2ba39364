"""A device simulator: many virtual devices in one asyncio process, speaking PROTOCOL.md for real.

    sim = Simulator("http://127.0.0.1:8000", report_interval=2)
    sim.add_random_devices(100, {"raspberrypi3": ["<provisioning key>"]})
    await sim.start()   # agent APIs at <sim.url>/d/<uuid>, web at /w/<uuid>, control at /sim/
    ...
    await sim.stop()

`python manage.py simulate_devices` runs it against a live server; `python -m
devices.simulator.measure_cpu` measures its CPU per report.
"""

from .core import Simulator
from .model import ACTION_KINDS, Service, VirtualDevice, Volume
from .thread import SimulatorThread

__all__ = ["ACTION_KINDS", "Service", "Simulator", "SimulatorThread", "VirtualDevice", "Volume"]
