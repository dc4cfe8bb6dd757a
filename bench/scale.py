"""``python -m bench scale``: what a fleet of N hosts costs, at N = 1,000, 5,000 and 10,000.

The hosts are simulated through the registry's public API, as an operator's
tool would write them (``Registry.report(service, host, info)`` with a volume
node's capabilities, and the volume service's API published as nodes publish
it); one real scheduler node (``taskyard worker scheduler``) places work
among them. Per N it measures, each the median of its repetitions:

- ``fanout``: ``Client("volume").fanout("ping")`` without waiting (registry
  lookup and one message per host queue), then the queues are emptied;
- ``placement p50``: ``schedule_create_volume`` called through the real
  scheduler node (the request, the placement among N hosts, the hand-on);
- ``listing``: ``Registry.list("volume")``;
- ``services``: the ``taskyard services`` command, a process of its own;
- ``status``: the ``taskyard status`` command (of which up to 1 s is its wait
  for nodes to say what they run);
- Redis memory per host: the growth of the registry's keys (``MEMORY USAGE``
  of each, every element counted) over the N new entries. Redis's own
  ``used_memory`` moves with client buffers and allocator state, and at small
  N that noise is larger than the entries.

It prints one table and the slope of each figure (its growth per 1,000 hosts
between the smallest and the largest N), and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from bench.harness import PROJECT_ROOT, Worker, child_environment, node_command, wait_for
from bench.report import emit, progress
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.config import load_config
from workers.core.keys import registry_key
from workers.core.registry import Registry
from workers.testing.kit import environment_set

SIZES = (1_000, 5_000, 10_000)
#: Targets at the largest N, in seconds (memory has none).
TARGETS = {"fanout_s": 1.0, "placement_p50_s": 0.050, "listing_s": 0.100,
           "services_s": 1.0, "status_s": 2.5}
HERE = Path(__file__).resolve().parent


def median_of(reps: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(reps))


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def simulate(registry: Registry, hosts: Sequence[str]) -> None:
    """Report every host of ``hosts`` as a live volume node with free space."""
    for host in hosts:
        total = random.choice((500, 1000, 2000))
        registry.report("volume", host, {
            "service": "volume", "host": host, "pid": 1, "version": "0.1.0",
            "rpc_api_version": "1.0", "started_at": time.time(), "report_count": 1,
            "capabilities": {"total_gb": total, "free_gb": total - random.randint(0, 400),
                             "provisioned_gb": 0, "backend": "file"},
        })


def registry_bytes(records: redis.Redis) -> int:
    """Bytes the registry's keys take in Redis, every element counted (``SAMPLES 0``)."""
    return sum(int(records.memory_usage(name, samples=0) or 0)
               for name in records.scan_iter(match=registry_key("*"), count=1000))


def cli_seconds(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "workers.cli", *args], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"taskyard {' '.join(args)} failed: {done.stderr[-2000:]}")
    return elapsed


def run(sizes: Sequence[int], reps: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="taskyard-scale-"))
    server = RedisServer(base / "redis", appendonly=False).start()
    scheduler: Worker | None = None
    try:
        env = child_environment(server.url, base / "state")
        with environment_set({k: v for k, v in env.items() if k.startswith("TASKYARD_")}):
            config = load_config(cwd=PROJECT_ROOT)
        app = Taskyard(config)
        records = redis.Redis.from_url(config.records_url)
        registry = Registry(records, service_down_time=config.service_down_time)
        registry.publish_api(app.spec("volume").api())
        scheduler = Worker("scheduler node", node_command(["scheduler"], "scale-scheduler",
                                                           "solo", 1, "WARNING"),
                           env, base / "scheduler.log")
        scheduler.start()
        wait_for(lambda: registry.is_up("scheduler", "scale-scheduler"), 90,
                 "the scheduler node to report")
        placer = Client("scheduler", app=app)
        volume = Client("volume", app=app)
        rows = []
        simulated = 0
        for size in sorted(sizes):
            memory_before = registry_bytes(records)
            hosts = [f"sim-{i:05d}" for i in range(simulated, size)]
            simulate(registry, hosts)
            simulated = size
            memory_per_host = (registry_bytes(records) - memory_before) / max(1, len(hosts))
            simulate(registry, [f"sim-{i:05d}" for i in range(size)])  # all seen just now
            log(f"scale: {size} hosts reported; measuring")

            queues = [f"volume.sim-{i:05d}" for i in range(size)]

            def fanout(queues: list[str] = queues) -> float:
                elapsed = timed(lambda: volume.fanout("ping"))
                for start in range(0, len(queues), 1000):
                    records.delete(*queues[start:start + 1000])
                return elapsed

            placements = sorted(timed(lambda: placer.call("schedule_create_volume", size_gb=1))
                                for _ in range(max(11, reps * 4)))
            rows.append({
                "hosts": size,
                "fanout_s": median_of(reps, fanout),
                "placement_p50_s": placements[len(placements) // 2],
                "listing_s": median_of(reps, lambda: timed(lambda: registry.list("volume"))),
                "services_s": median_of(reps, lambda: cli_seconds(env, "services")),
                "status_s": median_of(reps, lambda: cli_seconds(env, "status")),
                "memory_per_host_bytes": memory_per_host,
            })
            for start in range(0, len(queues), 1000):
                records.delete(*queues[start:start + 1000])  # the placements' hand-ons
            log(f"scale: {size} hosts done")
        app.close()
        return rows
    finally:
        if scheduler is not None:
            scheduler.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def slope(rows: list[dict[str, Any]], key: str) -> float:
    """Growth of ``key`` per 1,000 hosts between the smallest and the largest fleet."""
    first, last = rows[0], rows[-1]
    return (last[key] - first[key]) / max(1, (last["hosts"] - first["hosts"]) / 1000)


def table(rows: list[dict[str, Any]]) -> str:
    columns = [("fanout (no wait)", "fanout_s", 1000, "ms"),
               ("placement p50", "placement_p50_s", 1000, "ms"),
               ("registry listing", "listing_s", 1000, "ms"),
               ("taskyard services", "services_s", 1000, "ms"),
               ("taskyard status", "status_s", 1000, "ms"),
               ("Redis memory per host", "memory_per_host_bytes", 1, "B")]
    head = ["figure"] + [f"{r['hosts']:,} hosts" for r in rows] + ["per 1,000 hosts",
                                                                   "target at 10,000"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, scale, unit in columns:
        cells = [f"{r[key] * scale:,.0f} {unit}" for r in rows]
        target = TARGETS.get(key)
        met = ""
        if target is not None:
            met = f"≤ {target * scale:,.0f} {unit} " + ("✓" if rows[-1][key] <= target else "✗")
        lines.append("| " + " | ".join([label, *cells, f"{slope(rows, key) * scale:+,.1f} {unit}",
                                        met]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__)
    parser.add_argument("--sizes", type=lambda text: [int(n) for n in text.split(",")],
                        default=list(SIZES), help="fleet sizes (default 1000,5000,10000)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per figure")
    parser.add_argument("--json", type=Path, default=HERE / "results-scale.json")
    args = parser.parse_args(argv)
    rows = run(args.sizes, args.reps, progress)
    emit(table(rows), {"rows": rows, "targets": TARGETS}, args.json)
    missed = [k for k, v in TARGETS.items() if rows[-1][k] > v]
    if missed:
        print(f"targets not met at {rows[-1]['hosts']:,} hosts: {', '.join(missed)}")
    return 0
