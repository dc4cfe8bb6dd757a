"""``python -m bench scale``: what a fleet of N hosts costs, at N = 1,000, 10,000 and 100,000.

The hosts are simulated through public APIs, as an operator's tool would
write them: ``Registry.report_many(service, {host: info})`` with a volume
node's capabilities, ``ClaimStore.report_inventory`` with its inventory (what
a node's heartbeat reports), and the volume service's API published as nodes
publish it; one real scheduler node (``taskyard worker scheduler``) places
work among them. Per N it measures, each the median of its repetitions:

- ``fanout``: ``Client("volume").fanout("ping")`` without waiting (registry
  lookup and one message per host queue), then the queues are emptied;
- ``placement p50`` and ``p99``: ``schedule_create_volume`` called through the
  real scheduler node (the request, the candidates read from the index of
  free capacity, filters and weighers, the claim, the hand-on), 300 times;
- ``listing``: ``Registry.list("volume")``;
- ``services``: the ``taskyard services`` command, a process of its own;
- ``status``: the ``taskyard status`` command (of which up to 1 s is its wait
  for nodes to say what they run);
- Redis memory per host: the growth of the registry's and placement's keys
  (``MEMORY USAGE`` of each, every element counted) over the N new entries. Redis's own
  ``used_memory`` moves with client buffers and allocator state, and at small
  N that noise is larger than the entries.

It prints one table and the slope of each figure (its growth per 1,000 hosts
between the smallest and the largest N), and writes the figures as JSON.
Simulated hosts are reported once, with ``service_down_time`` an hour (a
setting of the run's own nodes), so they stay up while it measures.
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

from bench.harness import (
    PROJECT_ROOT,
    Worker,
    child_environment,
    node_command,
    percentile,
    settings_of,
    wait_for,
)
from bench.report import emit, progress
from managers.claims import PLACEMENT_PREFIX, ClaimStore, Inventory
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.keys import registry_key
from workers.core.registry import Registry

SIZES = (1_000, 10_000, 100_000)
#: Figure -> (the fleet size its target is for, the bound in seconds); memory has none.
TARGETS = {"fanout_s": (10_000, 1.0), "placement_p50_s": (100_000, 0.010),
           "placement_p99_s": (100_000, 0.050), "listing_s": (10_000, 0.100),
           "services_s": (10_000, 1.0), "status_s": (10_000, 2.5)}
#: Placements timed per fleet size (p99 needs a hundred at least).
PLACEMENTS = 300
#: Hosts reported per pipelined round trip.
BATCH = 1000
HERE = Path(__file__).resolve().parent


def median_of(reps: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(reps))


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def simulate(registry: Registry, claims: ClaimStore, hosts: Sequence[str]) -> None:
    """Report every host of ``hosts`` as a live volume node with free space: its heartbeat
    and its inventory, as a node reports them, ``BATCH`` hosts per round trip."""
    for start in range(0, len(hosts), BATCH):
        batch = hosts[start:start + BATCH]
        totals = {host: random.choice((500, 1000, 2000)) for host in batch}
        registry.report_many("volume", {host: {
            "service": "volume", "host": host, "pid": 1, "version": "0.1.0",
            "rpc_api_version": "1.0", "started_at": time.time(), "report_count": 1,
            "capabilities": {"total_gb": total, "free_gb": total, "provisioned_gb": 0,
                             "backend": "file"},
        } for host, total in totals.items()})
        pipe = claims.redis.pipeline(transaction=False)
        for host, total in totals.items():
            claims.report_inventory(host, {"DISK_GB": Inventory(total)}, client=pipe)
        pipe.execute()


def registry_bytes(records: redis.Redis) -> int:
    """Bytes the registry's and placement's keys take in Redis, every element counted."""
    return sum(int(records.memory_usage(name, samples=0) or 0)
               for pattern in (registry_key("*"), f"{PLACEMENT_PREFIX}:*")
               for name in records.scan_iter(match=pattern, count=1000))


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
        env = child_environment(server.url, base / "state", TASKYARD_SERVICE_DOWN_TIME="3600")
        config = settings_of(env)
        app = Taskyard(config)
        records = redis.Redis.from_url(config.records_url)
        registry = Registry(records, service_down_time=config.service_down_time)
        claims = ClaimStore(records, "volume")
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
            hosts = [f"sim-{i:06d}" for i in range(simulated, size)]
            simulate(registry, claims, hosts)
            simulated = size
            memory_per_host = (registry_bytes(records) - memory_before) / max(1, len(hosts))
            log(f"scale: {size} hosts reported; measuring")

            queues = [f"volume.sim-{i:06d}" for i in range(size)]

            def fanout(queues: list[str] = queues) -> float:
                elapsed = timed(lambda: volume.fanout("ping"))
                for start in range(0, len(queues), 1000):
                    records.delete(*queues[start:start + 1000])
                return elapsed

            placements = sorted(timed(lambda: placer.call("schedule_create_volume", size_gb=1))
                                for _ in range(PLACEMENTS))
            rows.append({
                "hosts": size,
                "fanout_s": median_of(reps, fanout),
                "placement_p50_s": percentile(placements, 0.50),
                "placement_p99_s": percentile(placements, 0.99),
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


def target_of(rows: list[dict[str, Any]], key: str) -> tuple[int, float, bool | None] | None:
    """The target of ``key``: its fleet size, its bound, and whether it was met (None: the
    run did not measure that size)."""
    if key not in TARGETS:
        return None
    size, bound = TARGETS[key]
    row = next((r for r in rows if r["hosts"] == size), None)
    return size, bound, None if row is None else row[key] <= bound


def table(rows: list[dict[str, Any]]) -> str:
    columns = [("fanout (no wait)", "fanout_s", 1000, "ms"),
               ("placement p50", "placement_p50_s", 1000, "ms"),
               ("placement p99", "placement_p99_s", 1000, "ms"),
               ("registry listing", "listing_s", 1000, "ms"),
               ("taskyard services", "services_s", 1000, "ms"),
               ("taskyard status", "status_s", 1000, "ms"),
               ("Redis memory per host", "memory_per_host_bytes", 1, "B")]
    head = ["figure"] + [f"{r['hosts']:,} hosts" for r in rows] + ["per 1,000 hosts", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, scale, unit in columns:
        cells = [f"{r[key] * scale:,.{1 if r[key] * scale < 10 else 0}f} {unit}" for r in rows]
        target = target_of(rows, key)
        shown = ""
        if target is not None:
            size, bound, met = target
            shown = f"≤ {bound * scale:,.0f} {unit} at {size:,} " + (
                "(not measured)" if met is None else "✓" if met else "✗")
        lines.append("| " + " | ".join([label, *cells,
                                        f"{slope(rows, key) * scale:+,.2f} {unit}", shown])
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__)
    parser.add_argument("--sizes", type=lambda text: [int(n) for n in text.split(",")],
                        default=list(SIZES), help="fleet sizes (default 1000,10000,100000)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per figure")
    parser.add_argument("--json", type=Path, default=HERE / "results-scale.json")
    args = parser.parse_args(argv)
    rows = run(args.sizes, args.reps, progress)
    emit(table(rows), {"rows": rows, "targets": TARGETS}, args.json)
    missed = [k for k in TARGETS if (target_of(rows, k) or (0, 0, None))[2] is False]
    if missed:
        print(f"targets not met: {', '.join(missed)}")
    return 0
