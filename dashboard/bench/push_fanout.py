"""The push fan-out on its own: what one worker process and one simulator process spend per push.

    .venv/bin/python dashboard/bench/push_fanout.py [--devices 5000] [--rounds 3] [--batch 500]

N devices registered in bulk (dashboard.bench.provision) in a SQLite database of its own under
RUN_DIR/push-fanout (never the configured database; no Redis), served by one simulator process on
one port, as `simulate_devices` runs it (uvloop), and a restart pushed to every one that has an
agent API by the engine's own code: `_push_all` per batch of --batch devices, run as
deliver_batch runs it, the batches one after the other as one worker process takes them. Each
round pushes with a new action id, so every push is a new one to the agents (202, or 409 where a
service holds the update lock).

Printed per round: pushes per second (wall time), and CPU seconds per 1,000 pushes of this
process (time.process_time: every thread) and of the simulator process (/proc/<pid>/stat), which
stay meaningful on a machine that runs other work. The simulator counts an accepted action but
does not carry it out (no reports or results to a server: this times the pushes, not restarts).

BENCH_TREE=<checkout> runs this same bench against the code of another checkout (before/after).
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
TREE = Path(os.environ.get("BENCH_TREE") or HERE)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def setup_django(run_dir: Path, devices: int) -> None:
    here = Path(__file__).resolve().parent  # run as a script: its directory is not a place to import from
    sys.path[:] = [str(TREE), *(p for p in sys.path if p and Path(p).resolve() != here)]
    os.chdir(TREE)  # Celery's Django fixup puts the working directory first on sys.path
    os.environ.pop("REDIS_URL", None)
    os.environ["DATABASE_URL"] = f"sqlite:///{run_dir}/bench-{devices}.sqlite3"
    os.environ["RUN_DIR"] = str(run_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
    import django

    django.setup()


def simulator(state: str, port: int) -> None:
    """The simulator process: the devices of the state file, reports and polls out of the way."""
    import uvloop

    from devices.simulator import Simulator
    from devices.simulator.agent import Agent

    async def counted_only(self, kind, key):
        self.device.actions_executed[kind] += 1

    Agent._run_action = counted_only

    async def run():
        sim = Simulator(
            "http://127.0.0.1:9", port=port, state_path=state, report_interval=3600, poll_interval=3600,
            start_spread=10**6, poll_at_start=False, save_every=10**6,
        )  # fmt: skip
        sim.load_state()
        sim.state_path = None  # never written back
        await sim.start()
        print(f"ready {sim.url} {len(sim.devices)}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the bench closes it
        print(f"simulator: {dict(sim.metrics.totals)}", flush=True)
        await sim.stop()

    uvloop.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=500, help="devices per deliver_batch (ACTION_BATCH_SIZE)"
    )
    parser.add_argument("--port", type=int, default=48700)
    parser.add_argument("--simulator", metavar="STATE_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulator:  # the bench's simulator process: its state file is in the bench's directory
        run_dir = Path(args.simulator).parent
    else:
        run_dir = Path(os.environ.get("RUN_DIR") or HERE / ".run") / "push-fanout"
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_django(run_dir, args.devices)
    if args.simulator:
        simulator(args.simulator, args.port)
        return

    from django.conf import settings
    from django.core.management import call_command
    from django.db.models import Value
    from django.db.models.functions import Concat

    from dashboard.bench.provision import provision
    from devices.models import Device
    from devices.services import engine
    from devices.versions import AGENT_API_MIN

    call_command("migrate", verbosity=0)
    fleet = provision(
        args.devices, processes=1, state_dir=run_dir, server_url="http://127.0.0.1:9", first_port=args.port
    )
    _, state, _ = fleet.shards[0]
    address = Concat(Value(f"http://127.0.0.1:{args.port}/d/"), "uuid")
    Device.objects.filter(fleet=fleet.fleet).update(api_address=address)
    pushed = Device.objects.filter(fleet=fleet.fleet, agent_version_key__gte=AGENT_API_MIN)
    targets = list(pushed.order_by("pk").values("pk", "uuid", "api_address"))
    run = engine.pushes.run if hasattr(engine, "pushes") else asyncio.run  # what _deliver runs it with
    commit = subprocess.run(
        ["git", "-C", str(TREE), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    print(f"code: {Path(engine.__file__).parents[2]} ({commit[:72] or 'not a git checkout'})")
    print(
        f"{len(targets):,} of {args.devices:,} devices have an agent API; batches of {args.batch}, "
        f"AGENT_PUSH_CONCURRENCY {settings.AGENT_PUSH_CONCURRENCY}, run with {run.__module__}.{run.__name__}"
    )
    sim = subprocess.Popen(
        [sys.executable, __file__, "--devices", str(args.devices), "--port", str(args.port), "--simulator", str(state)],
        cwd=TREE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    rows = []
    try:
        ready = sim.stdout.readline()
        if not ready.startswith("ready"):
            raise SystemExit(f"the simulator did not start: {ready!r}")
        for round_ in range(args.rounds):
            action_id = int(time.time() * 1000) % 10**9 + round_
            results = []
            sim_cpu, cpu, wall = cpu_seconds(sim.pid), time.process_time(), time.perf_counter()
            for start in range(0, len(targets), args.batch):
                results += run(
                    engine._push_all("restart", {}, action_id, targets[start : start + args.batch])
                )
            wall = time.perf_counter() - wall
            cpu, sim_cpu = time.process_time() - cpu, cpu_seconds(sim.pid) - sim_cpu
            outcomes = Counter(str(result.state) for result in results)
            n = len(results)
            rows.append((n / wall, cpu * 1000 / n, sim_cpu * 1000 / n))
            print(
                f"round {round_ + 1}: {n:,} pushes in {wall:.2f} s, {n / wall:,.0f}/s; CPU s per 1,000 pushes: "
                f"pusher {cpu * 1000 / n:.3f}, simulator {sim_cpu * 1000 / n:.3f}; "
                + ", ".join(f"{state} {count:,}" for state, count in outcomes.most_common())
            )
    finally:
        sim.stdin.close()
        print(sim.stdout.read().strip())
        sim.wait(20)
    rate, pusher, simulated = (statistics.median(column) for column in zip(*rows, strict=True))
    print(
        f"median of {len(rows)}: {rate:,.0f} pushes/s; CPU s per 1,000 pushes: pusher {pusher:.3f}, "
        f"simulator {simulated:.3f}, both {pusher + simulated:.3f}"
    )


if __name__ == "__main__":
    main()
