"""``python -m bench durable``: what ``publish_wait_replicas`` costs a caller.

A private master and one replica in sync (both ``redis-server`` on this
machine, so the replication round trip is a loopback's: across a network it
is that network's). No workers: the messages wait in their queue, which is
emptied between repetitions. Interleaved, per side:

- ``cast``: one request at a time, the caller's rate and the p50 of one send;
- ``cast_many``: batches of 500, the caller's rate.

Sides: plain Celery's ``apply_async`` (the bare baseline; no ``cast_many``),
taskyard with its defaults (``publish_wait_replicas = 0``), and taskyard with
``publish_wait_replicas = 1`` (each send returns once the replica has it:
``WAIT`` on the publishing connection). Both apps send task-sent events, as
taskyard's defaults do.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench.harness import child_environment, interleaved, settings_of, wait_for
from bench.noop import SERVICE
from bench.plain import NOOP_SERVICE, create_plain_app
from bench.report import emit, progress
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard

HERE = Path(__file__).resolve().parent
BATCH = 500


def run(casts: int, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="taskyard-durable-"))
    master = RedisServer(base / "master", appendonly=False).start()
    replica = RedisServer(base / "replica", appendonly=False,
                          extra_args=("--replicaof", "127.0.0.1", str(master.port))).start()
    apps: list[Any] = []
    try:
        wait_for(lambda: redis.Redis(port=replica.port).info("replication")
                 ["master_link_status"] == "up", 30, "the replica to sync")
        env = child_environment(master.url, base / "state")
        config = settings_of(env)
        quick = Taskyard(config)
        durable = Taskyard(config.with_overrides(publish_wait_replicas=1))
        plain = create_plain_app(config)
        apps += [quick, durable, plain]
        broker = redis.Redis.from_url(config.broker_url)
        noop = plain.tasks[f"{NOOP_SERVICE}.noop"]
        clients = {"taskyard": Client(SERVICE, app=quick), "durable": Client(SERVICE, app=durable)}
        senders: dict[str, Callable[[], object]] = {
            "plain": lambda: noop.apply_async(queue=NOOP_SERVICE),
            "taskyard": lambda: clients["taskyard"].cast("noop"),
            "durable": lambda: clients["durable"].cast("noop"),
        }
        for send in senders.values():
            send()  # connections made, APIs looked up

        def one_by_one(side: str) -> Callable[[], tuple[float, float]]:
            def measure() -> tuple[float, float]:
                times = []
                started = time.perf_counter()
                for _ in range(casts):
                    t0 = time.perf_counter()
                    senders[side]()
                    times.append(time.perf_counter() - t0)
                rate = casts / (time.perf_counter() - started)
                broker.delete(SERVICE, NOOP_SERVICE)
                return rate, statistics.median(times)
            return measure

        def batched(side: str) -> Callable[[], float]:
            def measure() -> float:
                calls: list[dict[str, Any]] = [{}] * BATCH
                started = time.perf_counter()
                for _ in range(max(1, casts // BATCH)):
                    clients[side].cast_many("noop", calls)
                rate = max(1, casts // BATCH) * BATCH / (time.perf_counter() - started)
                broker.delete(SERVICE)
                return rate
            return measure

        log(f"durable: {reps} repetitions of {casts} casts per side")
        singles = interleaved(reps, *(one_by_one(side) for side in senders))
        bulks = interleaved(reps, *(batched(side) for side in clients))
        figures: dict[str, Any] = {}
        for side, results in zip(senders, singles, strict=True):
            figures[side] = {"cast_per_s": statistics.median(r[0] for r in results),
                             "cast_p50_ms": statistics.median(r[1] for r in results) * 1000}
        for side, rates in zip(clients, bulks, strict=True):
            figures[side]["cast_many_per_s"] = statistics.median(rates)
        return figures
    finally:
        for app in apps:
            app.close()
        replica.stop()
        master.stop()
        shutil.rmtree(base, ignore_errors=True)


def table(figures: dict[str, Any]) -> str:
    plain, quick, durable = figures["plain"], figures["taskyard"], figures["durable"]
    rows = [
        ("cast, one at a time (/s)", "cast_per_s", "{:,.0f}"),
        ("cast p50 (ms)", "cast_p50_ms", "{:.3f}"),
        (f"cast_many, batches of {BATCH} (/s)", "cast_many_per_s", "{:,.0f}"),
    ]
    lines = ["| figure | plain Celery | taskyard (wait 0) | taskyard (wait 1) | "
             "wait 1 / wait 0 | wait 1 / plain |", "|---|---|---|---|---|---|"]
    for label, key, fmt in rows:
        base = plain.get(key)
        lines.append("| " + " | ".join([
            label, fmt.format(base) if base is not None else "—", fmt.format(quick[key]),
            fmt.format(durable[key]), f"{durable[key] / quick[key]:.2f}x",
            f"{durable[key] / base:.2f}x" if base is not None else "—"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench durable", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--casts", type=int, default=2000, help="sends per side per repetition")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (interleaved)")
    parser.add_argument("--json", type=Path, default=HERE / "results-durable.json")
    args = parser.parse_args(argv)
    figures = run(args.casts, args.reps, progress)
    emit(table(figures), figures, args.json)
    return 0
