"""The simulator's own CPU per 1,000 reports, against a minimal server in another process.

    .venv/bin/python -m devices.simulator.measure_cpu --devices 2000 --interval 2 --seconds 20

Registered devices report (and poll) as under `simulate_devices`, on uvloop, to a server that
answers 204 to every report and 304 to every poll, so nearly all the CPU counted is the
simulator's. Counted is the process's CPU time (user and system) over the window, not wall time:
the figure does not depend on what else the machine runs, at least not much. It does some (caches,
contention): to compare two versions of the code, run both at the same time, from two checkouts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys

import uvloop

from .core import Simulator

SERVER = r"""
import asyncio, httptools, uvloop

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.parser = transport, httptools.HttpRequestParser(self)

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_message_complete(self):
        if self.parser.get_method() == b"GET":
            self.transport.write(b'HTTP/1.1 304 Not Modified\r\nETag: "t"\r\n\r\n')
        else:
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")

async def main():
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

uvloop.run(main())
"""


async def measure(port: int, args: argparse.Namespace) -> str:
    sim = Simulator(
        f"http://127.0.0.1:{port}",
        report_interval=args.interval,
        poll_interval=args.poll_interval,
        seed=11,
        poll_at_start=False,
    )
    sim.add_random_devices(args.devices, {"raspberrypi3": "unused"})
    for index, device in enumerate(sim.devices.values()):  # registered already
        device.api_key, device.push_secret, device.fleet_id = f"key-{index:08d}", "secret", 1
    await sim.start()
    if args.gc == "frozen":  # as simulate_devices does
        sim.freeze_for_gc()
    elif args.gc == "start":  # what simulate_devices did before (2026-12-02)
        gc.collect()
        gc.freeze()
    try:
        # Every device started (start spread: one interval), reported once and settled.
        await asyncio.sleep(2 * args.interval + args.warmup)
        totals = sim.metrics.totals
        reports, polls, cpu = totals["reports"], totals["polls"], os.times()
        await asyncio.sleep(args.seconds)
        reports, polls = totals["reports"] - reports, totals["polls"] - polls
        user, system = os.times().user - cpu.user, os.times().system - cpu.system
        stats = sim.stats()
    finally:
        await sim.stop()
    failed = totals.get("reports_failed", 0)
    late, rtt = stats["lateness"], stats["report_rtt"]
    return (
        f"{args.devices} devices every {args.interval:g} s: {reports} reports, {polls} polls, {failed} failed "
        f"in {args.seconds:g} s; CPU {user + system:.2f} s (user {user:.2f}, system {system:.2f}) = "
        f"{(user + system) / max(reports, 1) * 1000:.3f} s per 1,000 reports; lateness p50 {late['p50_ms']} ms, "
        f"round trip p50 {rtt['p50_ms']} ms; garbage collector {args.gc}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=2.0, help="report interval, s")
    parser.add_argument("--poll-interval", type=float, default=15.0, help="s")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=3.0, help="s after every device started")
    parser.add_argument(
        "--gc",
        choices=["frozen", "start", "default"],
        default="frozen",
        help="frozen: as simulate_devices (dashboard.longlived); start: frozen once after start, "
        "the thresholds left alone; default: CPython's own settings",
    )
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        print(uvloop.run(measure(port, args)))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
