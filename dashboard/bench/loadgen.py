"""Load generators of `bench_scale`: agents replaying state reports, and logged-in dashboard users.

Agents: `wrk` with a Lua script when it is installed (C, so the generator takes little of the two
cores the server needs), else this module as a process of its own:

    python -m dashboard.bench.loadgen --url http://127.0.0.1:8100 --keys keys.txt --body body.json \
        --duration 30 --connections 64

replays a report body for many devices (one api key per request, in turn) as fast as the server
answers and prints one JSON line: requests, per second, latency percentiles, errors.

Users: `dashboard_users` runs N sessions (a session cookie each) that request a page, wait a think
time and request another, and returns the latencies and errors per page kind.
"""

import argparse
import asyncio
import json
import math
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# --- Agents ------------------------------------------------------------------------------------

WRK_SCRIPT = """
local keys = {}
for line in io.lines("%(keys)s") do keys[#keys + 1] = line end
local f = io.open("%(body)s"); local body = f:read("*a"); f:close()
local i = math.random(#keys)
request = function()
  i = i %% #keys + 1
  return wrk.format("PATCH", "/api/v1/device/state",
    {["Authorization"] = "Bearer " .. keys[i], ["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("JSON {\\"requests\\": %%d, \\"errors\\": %%d, \\"p50_ms\\": %%.2f, \\"p99_ms\\": %%.2f}\\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def agent_reports_command(url: str, keys: Path, body: Path, duration: float, connections: int, python: str):
    """The command line of the report generator: wrk when installed, else this module."""
    if wrk_available():
        script = keys.with_name("reports.lua")
        script.write_text(WRK_SCRIPT % {"keys": keys, "body": body})
        return [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(duration)}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ]
    return [python, "-m", "dashboard.bench.loadgen", "--url", url, "--keys", str(keys), "--body", str(body),
            "--duration", str(duration), "--connections", str(connections)]  # fmt: skip


def parse_agent_reports(output: str, duration: float) -> dict:
    """The generator's JSON line (both generators print one), with the rate."""
    line = next(line for line in output.splitlines() if line.startswith("JSON "))
    figures = json.loads(line[5:])
    if wrk_available():
        match = re.search(r"Requests/sec:\s*([0-9.]+)", output)
        figures["per_s"] = float(match[1]) if match else figures["requests"] / duration
    return figures


async def _agents(url: str, keys: list[str], body: bytes, duration: float, connections: int) -> dict:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + duration
    counter = iter(range(10**12))
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def agent():
            nonlocal errors
            while time.monotonic() < stop:
                key = keys[next(counter) % len(keys)]
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                started = time.monotonic()
                try:
                    async with session.patch(
                        f"{url}/api/v1/device/state", data=body, headers=headers
                    ) as response:
                        await response.read()
                        if response.status != 204:
                            errors += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                latencies.append(time.monotonic() - started)

        started = time.monotonic()
        await asyncio.gather(*(agent() for _ in range(connections)))
        elapsed = time.monotonic() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def run_agent_reports(argv: list[str], timeout: float) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    return done.stdout + done.stderr


# --- Dashboard users ---------------------------------------------------------------------------


async def dashboard_users(
    base_url: str, cookies: list[str], pages, duration: float, think: tuple[float, float] = (0.5, 1.5)
) -> dict:
    """`len(cookies)` users for `duration` s; `pages()` returns (kind, path, headers) to request next."""
    samples: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    stop = time.monotonic() + duration
    rng = random.Random(7)

    async def user(cookie: str):
        jar = {"sessionid": cookie}
        connector = aiohttp.TCPConnector(limit=1)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(cookies=jar, connector=connector, timeout=timeout) as session:
            await asyncio.sleep(rng.uniform(*think))  # users do not all start at once
            while time.monotonic() < stop:
                kind, path, headers = pages()
                started = time.monotonic()
                try:
                    async with session.get(
                        base_url + path, headers=headers, allow_redirects=False
                    ) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                samples.setdefault(kind, []).append(time.monotonic() - started)
                if not ok:
                    errors[kind] = errors.get(kind, 0) + 1
                await asyncio.sleep(rng.uniform(*think))

    await asyncio.gather(*(user(cookie) for cookie in cookies))
    every = [s for values in samples.values() for s in values]
    return {
        "requests": len(every),
        "errors": sum(errors.values()),
        "p50_ms": round(percentile(every, 0.5) * 1000, 1),
        "p95_ms": round(percentile(every, 0.95) * 1000, 1),
        "by_page": {
            kind: {
                "requests": len(values),
                "errors": errors.get(kind, 0),
                "p50_ms": round(percentile(values, 0.5) * 1000, 1),
                "p95_ms": round(percentile(values, 0.95) * 1000, 1),
            }
            for kind, values in sorted(samples.items())
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Replay agent state reports against the server.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--keys", required=True, help="a file of api keys, one a line")
    parser.add_argument("--body", required=True, help="a file holding the report's JSON body")
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    keys = Path(args.keys).read_text().split()
    body = Path(args.body).read_bytes()
    figures = asyncio.run(_agents(args.url, keys, body, args.duration, args.connections))
    print("JSON " + json.dumps(figures))


if __name__ == "__main__":
    main()
