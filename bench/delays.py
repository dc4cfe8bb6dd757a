"""``python -m bench delays``: delayed requests, beside plain Celery's ETA tasks.

A private ``redis-server``, one solo taskyard node and one solo plain Celery
worker (the same settings; see :mod:`bench.plain`). Per side, in one run:

- **cost per delayed send**: a caller's rate for ``cast`` with a ``countdown``
  against ``cast`` without (taskyard), and ``apply_async(countdown=...)``
  against ``apply_async()`` (plain Celery); and ``cast_many`` with and without;
- **lateness**: ``--waiting`` requests due an hour from now wait first (what
  a busy fleet holds); then ``--probes`` requests due over the next few
  seconds, each noting when it started (``bench.stamp``); the lateness is
  start minus due, its p50 and p99;
- **worker memory**: the node's (or worker's) RSS before and after the
  waiting requests were sent: taskyard keeps them in Redis, plain Celery in
  the worker (each ETA task is held in memory, unacknowledged, until due).

Plain Celery's worker takes every waiting ETA message as it arrives; with
``--waiting 100000`` that is two minutes of sending and as long again for it
to take them, which is part of what is measured.
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

from bench.harness import (
    Worker,
    child_environment,
    node_command,
    percentile,
    plain_command,
    settings_of,
    wait_for,
)
from bench.noop import SERVICE, stamps_key
from bench.plain import NOOP_SERVICE, create_plain_app
from bench.report import emit, progress
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.keys import DELAYED_ENTRIES_KEY, DELAYED_KEY

HERE = Path(__file__).resolve().parent
#: Seconds over which the probes fall due (one every ``SPREAD_S / probes`` seconds).
SPREAD_S = 5.0
#: Seconds from now the first probe is due.
FIRST_DUE_S = 2.0


def run(waiting: int, probes: int, sends: int, log: Callable[[str], None]) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="taskyard-delays-"))
    server = RedisServer(base / "redis").start()
    workers: list[Worker] = []
    apps: list[Any] = []
    try:
        env = child_environment(server.url, base / "state")
        config = settings_of(env)
        app = Taskyard(config)
        plain = create_plain_app(config)
        apps += [app, plain]
        store = redis.Redis.from_url(config.broker_url)
        node = Worker("node", node_command([SERVICE], "delays", "solo", 1, "WARNING"), env,
                      base / "node.log").start()
        worker = Worker("plain", plain_command([NOOP_SERVICE], "delays", "solo", 1, "WARNING"),
                        env, base / "plain.log").start()
        workers += [node, worker]
        client = Client(SERVICE, app=app)
        wait_for(lambda: client.call("noop") is None, 90, "the node")
        plain.tasks[f"{NOOP_SERVICE}.noop"].apply_async(queue=NOOP_SERVICE).get(timeout=90)
        figures: dict[str, Any] = {"taskyard": {}, "plain": {}}

        log(f"delays: cost of a delayed send ({sends} sends per side and kind)")
        later = client.prepare(countdown=3600)
        noop = plain.tasks[f"{NOOP_SERVICE}.noop"]

        def rate(send: Callable[[], object], count: int) -> float:
            started = time.perf_counter()
            for _ in range(count):
                send()
            return count / (time.perf_counter() - started)

        # Nobody takes these: sent to a queue no worker consumes, then dropped.
        aside = "bench.nobody"
        figures["taskyard"]["cast_per_s"] = rate(
            lambda: client.prepare(host="nobody").cast("noop"), sends)
        figures["taskyard"]["delayed_cast_per_s"] = rate(lambda: later.cast("noop"), sends)
        figures["plain"]["cast_per_s"] = rate(lambda: noop.apply_async(queue=aside), sends)
        figures["plain"]["delayed_cast_per_s"] = rate(
            lambda: noop.apply_async(queue=aside, countdown=3600), sends)
        batch = [{}] * 500
        figures["taskyard"]["cast_many_per_s"] = rate(
            lambda: client.prepare(host="nobody").cast_many("noop", batch), sends // 500) * 500
        figures["taskyard"]["delayed_cast_many_per_s"] = rate(
            lambda: later.cast_many("noop", batch), sends // 500) * 500
        store.delete(f"{SERVICE}.nobody", aside)
        store.delete(DELAYED_KEY, DELAYED_ENTRIES_KEY)

        for side in ("taskyard", "plain"):
            holder = node if side == "taskyard" else worker
            log(f"delays: {side}: {waiting} requests due in an hour, then {probes} probes")
            time.sleep(1)
            rss_before = holder.rss_bytes()
            started = time.perf_counter()
            if side == "taskyard":
                for start in range(0, waiting, 500):
                    later.cast_many("noop", [{}] * min(500, waiting - start))
            else:
                for _ in range(waiting):
                    noop.apply_async(queue=NOOP_SERVICE, countdown=3600)
            figures[side]["fill_s"] = time.perf_counter() - started
            if side == "plain":
                # Plain Celery's worker takes each ETA message into its memory.
                wait_for(lambda: store.llen(NOOP_SERVICE) == 0, 600,
                         "the plain worker to take the waiting messages")
            figures[side]["fill_and_take_s"] = time.perf_counter() - started
            time.sleep(1)
            figures[side]["rss_growth_mb"] = (holder.rss_bytes() - rss_before) / 1e6
            batch_name = f"{side}-probes"
            first = time.time() + FIRST_DUE_S
            dues = [first + SPREAD_S * i / probes for i in range(probes)]
            for index, due in enumerate(dues):
                if side == "taskyard":
                    client.prepare(countdown=max(0.0, due - time.time())).cast(
                        "stamp", batch=batch_name, index=index)
                else:
                    plain.tasks[f"{NOOP_SERVICE}.stamp"].apply_async(
                        (batch_name, index), queue=NOOP_SERVICE,
                        countdown=max(0.0, due - time.time()))
            stamped = stamps_key(batch_name)
            wait_for(lambda key=stamped: store.hlen(key) >= probes,  # type: ignore[misc]
                     120 + SPREAD_S, f"the {side} probes to run")
            ran = store.hgetall(stamps_key(batch_name))
            late = [float(ran[str(i).encode()]) - due for i, due in enumerate(dues)]
            figures[side]["late_p50_ms"] = statistics.median(late) * 1000
            figures[side]["late_p99_ms"] = percentile(late, 0.99) * 1000
            figures[side]["late_max_ms"] = max(late) * 1000
            figures[side]["waiting"] = waiting
            if side == "taskyard":
                store.delete(DELAYED_KEY, DELAYED_ENTRIES_KEY)
        return figures
    finally:
        for one in workers:
            one.stop()
        for each in apps:
            each.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def table(figures: dict[str, Any]) -> str:
    ours, plain = figures["taskyard"], figures["plain"]
    rows = [
        ("send, not delayed (/s)", "cast_per_s", "{:,.0f}"),
        ("send, delayed (/s)", "delayed_cast_per_s", "{:,.0f}"),
        ("cast_many, not delayed (/s)", "cast_many_per_s", "{:,.0f}"),
        ("cast_many, delayed (/s)", "delayed_cast_many_per_s", "{:,.0f}"),
        (f"{ours['waiting']:,} waiting: sent (s)", "fill_s", "{:.1f}"),
        (f"{ours['waiting']:,} waiting: sent and taken by the worker (s)",
         "fill_and_take_s", "{:.1f}"),
        ("worker memory grown by them (MB)", "rss_growth_mb", "{:.1f}"),
        ("lateness p50 (ms)", "late_p50_ms", "{:.1f}"),
        ("lateness p99 (ms)", "late_p99_ms", "{:.1f}"),
        ("lateness max (ms)", "late_max_ms", "{:.1f}"),
    ]
    lines = ["| figure | taskyard | plain Celery |", "|---|---|---|"]
    for label, key, fmt in rows:
        mine, theirs = ours.get(key), plain.get(key)
        lines.append("| " + " | ".join([
            label, fmt.format(mine) if mine is not None else "—",
            fmt.format(theirs) if theirs is not None else "—"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench delays", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiting", type=int, default=100_000,
                        help="requests due in an hour, waiting while the probes run")
    parser.add_argument("--probes", type=int, default=500, help="delayed requests timed")
    parser.add_argument("--sends", type=int, default=2000, help="sends per side and kind")
    parser.add_argument("--json", type=Path, default=HERE / "results-delays.json")
    args = parser.parse_args(argv)
    figures = run(args.waiting, args.probes, args.sends, progress)
    emit(table(figures), figures, args.json)
    return 0
