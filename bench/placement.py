"""``python -m bench placement``: placement at fleet size, one at a time and in a burst.

Per fleet size N (1,000, 10,000 and 100,000 simulated volume hosts by
default, reported as nodes report them: a heartbeat and an inventory), with
two real scheduler nodes (``taskyard worker scheduler``) on a private
redis-server:

- **latency**: ``schedule_create_volume(size_gb=1)`` called one at a time
  through the scheduler (request, candidates from the index of free capacity,
  filters and weighers, the claim, the hand-on), ``--placements`` times; p50
  and p99. Every host has room.
- **burst**: the fleet is reported again with exactly ``--burst`` GiB free in
  all (``--burst`` hosts with 1 GiB each, the others full, by their
  ``reserved``), then ``--burst`` placements of 1 GiB are sent at once
  (``cast_many`` on the scheduler's shared queue, which both scheduler nodes
  take from) and waited for. It reports how many were placed, how many hosts
  ended over their capacity (claims counted from Redis), the rate (the burst
  divided by the time from the first send to the last answer), and the CPU
  the scheduler nodes, redis-server and the caller spent per placement.
- **for comparison**, in the same run: a ``ping`` through the scheduler (p50,
  taken in turn with the placements) and a burst of as many pings: what any
  request costs on this machine at this moment, placement or not.

The hand-ons go to simulated hosts' queues, which nobody consumes: they are
emptied after each phase, and the placement keys cleared. The targets: p50 ≤
10 ms and p99 ≤ 50 ms at 100,000 hosts; all of a 1,000 burst placed, none
over capacity, at ≥ 300 placements per second.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.harness import Worker, child_environment, node_command, percentile, settings_of, wait_for
from bench.report import emit, progress
from bench.scale import BATCH, slope
from managers.claims import PLACEMENT_PREFIX, ClaimStore, Inventory
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.registry import Registry
from workers.exceptions import NoValidHost

SIZES = (1_000, 10_000, 100_000)
HERE = Path(__file__).resolve().parent
#: Figure -> (the fleet size its target is for, the bound, "<=" or ">=").
TARGETS: dict[str, tuple[int, float, str]] = {
    "p50_s": (100_000, 0.010, "<="), "p99_s": (100_000, 0.050, "<="),
    "burst_per_s": (0, 300.0, ">="), "burst_over_capacity": (0, 0.0, "<="),
}


def report_hosts(registry: Registry, claims: ClaimStore, capacities: dict[str, int]) -> None:
    """Heartbeat and inventory for each host: ``capacities`` is what claims may take of it
    (its total is 1,000 GiB, the rest is ``reserved``)."""
    hosts = list(capacities)
    for start in range(0, len(hosts), BATCH):
        batch = hosts[start:start + BATCH]
        registry.report_many("volume", {host: {
            "service": "volume", "host": host, "pid": 1, "version": "0.1.0",
            "rpc_api_version": "1.0", "started_at": time.time(), "report_count": 1,
            "capabilities": {"total_gb": 1000, "free_gb": capacities[host], "backend": "fake"},
        } for host in batch})
        pipe = claims.redis.pipeline(transaction=False)
        for host in batch:
            claims.report_inventory(host, {"DISK_GB": Inventory(1000, 1000 - capacities[host])},
                                    client=pipe)
        pipe.execute()


def clear(records: redis.Redis) -> None:
    """Forget every claim, inventory and placement record, and empty the hosts' queues."""
    for pattern in (f"{PLACEMENT_PREFIX}:*", "volume.*"):
        names = list(records.scan_iter(match=pattern, count=5000))
        for start in range(0, len(names), 1000):
            records.delete(*names[start:start + 1000])


def over_capacity(claims: ClaimStore) -> tuple[int, int]:
    """Hosts whose claims hold more than their capacity, and the units claimed in all."""
    capacity = claims.redis.hgetall(claims.key("capacity", "DISK_GB"))
    usage = claims.redis.hgetall(claims.key("usage", "DISK_GB"))
    over = sum(1 for host, used in usage.items() if int(used) > int(capacity.get(host, 0)))
    return over, sum(int(used) for used in usage.values())


def burst(app: Taskyard, count: int, method: str = "schedule_create_volume",
          **kwargs: Any) -> tuple[float, int, int]:
    """``count`` requests at once; seconds from the first send to the last answer, how
    many succeeded, how many found no host."""
    scheduler = Client("scheduler", app=app)
    started = time.perf_counter()
    handles = scheduler.cast_many(method, [kwargs] * count)
    placed = refused = 0
    for handle in handles:
        try:
            handle.wait(120)
            placed += 1
        except NoValidHost:
            refused += 1
    return time.perf_counter() - started, placed, refused


def cpu_of(nodes: list[Worker], server: RedisServer) -> tuple[float, float, float]:
    """CPU seconds so far of the scheduler nodes, of redis-server, and of this process."""
    assert server.process is not None
    redis_cpu = psutil.Process(server.process.pid).cpu_times()
    return (sum(node.cpu_seconds() for node in nodes), redis_cpu.user + redis_cpu.system,
            time.process_time())


def measured_burst(app: Taskyard, count: int, nodes: list[Worker], server: RedisServer,
                   method: str = "schedule_create_volume", **kwargs: Any) -> dict[str, float]:
    """A burst, with the CPU each side spent per request (ms)."""
    before = cpu_of(nodes, server)
    seconds, placed, refused = burst(app, count, method, **kwargs)
    after = cpu_of(nodes, server)
    nodes_ms, redis_ms, client_ms = ((b - a) * 1000 / count for a, b in zip(before, after,
                                                                             strict=True))
    return {"s": seconds, "per_s": count / seconds, "placed": placed, "refused": refused,
            "nodes_cpu_ms": nodes_ms, "redis_cpu_ms": redis_ms, "client_cpu_ms": client_ms}


def run(sizes: Sequence[int], count: int, samples: int, schedulers: int, pool: str,
        concurrency: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="taskyard-placement-"))
    server = RedisServer(base / "redis", appendonly=False).start()
    nodes: list[Worker] = []
    try:
        # Simulated hosts report once: an hour before they count as down.
        env = child_environment(server.url, base / "state", TASKYARD_SERVICE_DOWN_TIME="3600")
        config = settings_of(env)
        app = Taskyard(config)
        records = redis.Redis.from_url(config.records_url)
        registry = Registry(records, service_down_time=config.service_down_time)
        claims = ClaimStore(records, "volume")
        registry.publish_api(app.spec("volume").api())
        for n in range(schedulers):
            host = f"placement-scheduler-{n + 1}"
            nodes.append(Worker(host, node_command(["scheduler"], host, pool, concurrency,
                                                   "WARNING"), env, base / f"{host}.log").start())
        for node in nodes:
            wait_for(lambda node=node: registry.is_up("scheduler", node.name), 90,
                     f"{node.name} to report")
        placer = Client("scheduler", app=app)
        rows = []
        for size in sorted(sizes):
            names = [f"sim-{i:06d}" for i in range(size)]
            clear(records)
            report_hosts(registry, claims, dict.fromkeys(names, 1000))
            log(f"placement: {size:,} hosts with room; {samples} placements one at a time")
            for _ in range(10):  # the scheduler's first requests load and connect
                placer.call("schedule_create_volume", size_gb=1)
            latencies, pings = [], []
            for _ in range(samples):  # placements and pings in turn: the same machine load
                started = time.perf_counter()
                placer.call("schedule_create_volume", size_gb=1)
                latencies.append(time.perf_counter() - started)
                started = time.perf_counter()
                placer.call("ping")
                pings.append(time.perf_counter() - started)
            clear(records)
            room = random.sample(names, count) if size >= count else names
            capacities = dict.fromkeys(names, 0)
            for index in range(count):  # count units in all, over the hosts with room
                capacities[room[index % len(room)]] += 1
            report_hosts(registry, claims, capacities)
            log(f"placement: {size:,} hosts with {count:,} GiB free in all; a burst of "
                f"{count:,}")
            placing = measured_burst(app, count, nodes, server, size_gb=1)
            over, claimed = over_capacity(claims)
            clear(records)
            log(f"placement: the same burst of {count:,} pings, for comparison")
            pinging = measured_burst(app, count, nodes, server, "ping")
            rows.append({"hosts": size, "p50_s": percentile(latencies, 0.5),
                         "p99_s": percentile(latencies, 0.99),
                         "ping_p50_s": percentile(pings, 0.5), "burst": count,
                         "burst_placed": placing["placed"], "burst_refused": placing["refused"],
                         "burst_claimed_gb": claimed, "burst_over_capacity": over,
                         "burst_s": placing["s"], "burst_per_s": placing["per_s"],
                         "burst_nodes_cpu_ms": placing["nodes_cpu_ms"],
                         "burst_redis_cpu_ms": placing["redis_cpu_ms"],
                         "burst_client_cpu_ms": placing["client_cpu_ms"],
                         "ping_per_s": pinging["per_s"],
                         "ping_nodes_cpu_ms": pinging["nodes_cpu_ms"],
                         "ping_redis_cpu_ms": pinging["redis_cpu_ms"]})
        app.close()
        return rows
    finally:
        for node in nodes:
            node.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def met(rows: list[dict[str, Any]], key: str) -> tuple[str, bool | None]:
    """The target of ``key`` as text, and whether the run met it (None: size not run)."""
    size, bound, op = TARGETS[key]
    checked = [r for r in rows if size in (0, r["hosts"])]
    scale = 1000 if key in ("p50_s", "p99_s") else 1
    text = f"{op.replace('<=', '≤').replace('>=', '≥')} {bound * scale:,.0f}" + (
        f" at {size:,}" if size else " at every size")
    if not checked:
        return text + " (not measured)", None
    ok = all(r[key] <= bound if op == "<=" else r[key] >= bound for r in checked)
    return f"{text} {'✓' if ok else '✗'}", ok


def table(rows: list[dict[str, Any]]) -> str:
    columns = [("placement p50 (ms)", "p50_s", 1000, 1), ("placement p99 (ms)", "p99_s", 1000, 1),
               ("a ping through the scheduler, p50 (ms)", "ping_p50_s", 1000, 1),
               ("burst: placements per second", "burst_per_s", 1, 0),
               ("burst: placed", "burst_placed", 1, 0),
               ("burst: found no host", "burst_refused", 1, 0),
               ("burst: hosts over capacity", "burst_over_capacity", 1, 0),
               ("burst: scheduler nodes' CPU per placement (ms)", "burst_nodes_cpu_ms", 1, 2),
               ("burst: redis-server's CPU per placement (ms)", "burst_redis_cpu_ms", 1, 2),
               ("burst: the caller's CPU per placement (ms)", "burst_client_cpu_ms", 1, 2),
               ("the same burst of pings per second", "ping_per_s", 1, 0),
               ("pings: scheduler nodes' CPU per ping (ms)", "ping_nodes_cpu_ms", 1, 2),
               ("pings: redis-server's CPU per ping (ms)", "ping_redis_cpu_ms", 1, 2)]
    head = ["figure"] + [f"{r['hosts']:,} hosts" for r in rows] + ["per 1,000 hosts", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, scale, digits in columns:
        cells = [f"{r[key] * scale:,.{digits}f}" for r in rows]
        target = met(rows, key)[0] if key in TARGETS else ""
        lines.append("| " + " | ".join([label, *cells, f"{slope(rows, key) * scale:+,.2f}",
                                        target]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench placement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda text: [int(n) for n in text.split(",")],
                        default=list(SIZES), help="fleet sizes (default 1000,10000,100000)")
    parser.add_argument("--burst", type=int, default=1000, help="placements in the burst")
    parser.add_argument("--placements", type=int, default=300,
                        help="placements timed one at a time, per size")
    parser.add_argument("--schedulers", type=int, default=2, help="scheduler nodes")
    # One process per node: on two cores, two solo schedulers place faster than threads
    # (the GIL) or prefork children (more processes than cores).
    parser.add_argument("--pool", default="solo", help="their pool (default solo)")
    parser.add_argument("--concurrency", type=int, default=1, help="their concurrency")
    parser.add_argument("--json", type=Path, default=HERE / "results-placement.json")
    args = parser.parse_args(argv)
    rows = run(args.sizes, args.burst, args.placements, args.schedulers, args.pool,
               args.concurrency, progress)
    emit(table(rows), {"rows": rows, "targets": TARGETS,
                       "schedulers": args.schedulers, "pool": args.pool,
                       "concurrency": args.concurrency}, args.json)
    missed = [k for k in TARGETS if met(rows, k)[1] is False]
    if missed:
        print(f"targets not met: {', '.join(missed)}")
    return 0
