"""The run: which figures, with how much work, in which order, on which workers.

Phases, each with only the processes it needs (so idle workers of one
phase never compete with the next):

1. ceiling, enqueue rates and bulk enqueue: no workers at all (the bulk
   batches wait in the solo pair's queues);
2. solo pair: drains and counts the bulk batches, then no-op throughput;
3. threads pair: no-op throughput;
4. prefork pair (taskyard's default pool): idle memory, throughput, call
   latency, volume pairs, then topped up to the memory figure's message
   count and measured again;
5. K solo nodes and K solo plain workers: fanout.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import celery
import kombu
import redis

from bench import figures as fig
from bench.ceiling import ceiling
from bench.harness import Stats
from bench.lab import Lab
from bench.plain import describe, plain_settings
from bench.report import Figure

#: Worker processes (or threads) of the threads and prefork pools: this machine's cores.
CONCURRENCY = 2
#: Pools of the no-op throughput figure, in the order they run (prefork last: it also
#: serves latency, volume pairs and memory).
POOLS = ("solo", "threads", "prefork")


@dataclass(frozen=True)
class Options:
    """How much work each figure does; ``quick()`` and ``full()`` are the two presets."""

    reps: int
    ceiling_messages: int
    enqueue_messages: int
    bulk_messages: int
    throughput_messages: int
    latency_calls: int
    volume_pairs: int
    fanout_nodes: int
    fanouts: int
    memory_messages: int
    loglevel: str = "INFO"

    @classmethod
    def quick(cls) -> Options:
        return cls(reps=7, ceiling_messages=1000, enqueue_messages=200, bulk_messages=200,
                   throughput_messages=100, latency_calls=40, volume_pairs=20, fanout_nodes=2,
                   fanouts=8, memory_messages=2000)

    @classmethod
    def full(cls) -> Options:
        return cls(reps=11, ceiling_messages=10000, enqueue_messages=1000, bulk_messages=600,
                   throughput_messages=400, latency_calls=150, volume_pairs=100,
                   fanout_nodes=3, fanouts=25, memory_messages=10000)

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)


def run(options: Options, log: Callable[[str], None] = print
        ) -> tuple[list[Figure], dict[str, Any]]:
    """Run every phase; the figures in table order and what describes the run."""
    started = time.monotonic()
    figures: dict[str, list[Figure]] = {}

    def phase(name: str) -> None:
        log(f"[bench {time.monotonic() - started:6.1f}s] {name}")

    with Lab(options.loglevel) as lab:
        try:
            _run_phases(lab, options, figures, phase)
        except BaseException:
            log(lab.log_tails())
            raise
        meta = _meta(lab, options)
    order = ["throughput", "enqueue", "bulk", "latency", "fanout", "volume", "memory",
             "ceiling"]
    _compare_with_ceiling(figures)
    # Within the throughput group: the rates first, then the CPU time per message.
    figures["throughput"] = sorted(figures.get("throughput", []),
                                   key=lambda f: f.key.startswith("worker_cpu"))
    ordered = [f for key in order for f in figures.get(key, [])]
    meta["duration_s"] = round(time.monotonic() - started, 1)
    return ordered, meta


def _run_phases(lab: Lab, options: Options, figures: dict[str, list[Figure]],
                phase: Callable[[str], None]) -> None:
    reps = options.reps
    phase("ceiling (raw redis-py)")
    figures["ceiling"] = [ceiling(lab, options.ceiling_messages, reps)]
    phase("enqueue rates (no consumer)")
    figures["enqueue"] = fig.enqueue_rate(lab, options.enqueue_messages, reps)
    phase("bulk enqueue into the solo pair's queues")
    solo_host = "bench-solo"
    bulk, ty_batches, pl_batches = fig.bulk_enqueue(lab, solo_host, options.bulk_messages, reps)
    figures["bulk"] = [bulk]
    figures["throughput"] = []
    for pool in POOLS:
        host = f"bench-{pool}"
        concurrency = 1 if pool == "solo" else CONCURRENCY
        phase(f"{pool} pair: start")
        with lab.pair(host, pool, concurrency, ready_timeout=fig.RESULT_TIMEOUT_S) as pair:
            if host == solo_host:
                phase("solo pair: count the bulk batches")
                figures["bulk"].append(fig.bulk_delivery(lab, pair, options.bulk_messages,
                                                         ty_batches, pl_batches))
            if pool == "prefork":
                idle = fig.rss_samples(pair, reps)
            phase(f"{pool} pair: no-op throughput")
            figures["throughput"] += fig.throughput(lab, pair, options.throughput_messages,
                                                    reps)
            if pool == "prefork":
                phase("prefork pair: call latency")
                figures["latency"] = fig.latency(lab, pair, options.latency_calls, reps)
                phase("prefork pair: volume pairs")
                figures["volume"] = [fig.volume_pairs(lab, pair, options.volume_pairs, reps)]
                phase(f"prefork pair: top up to {options.memory_messages} messages")
                after_ty, after_pl, count = fig.memory_after(lab, pair, options.memory_messages,
                                                             reps)
                figures["memory"] = _memory_figures(idle, (after_ty, after_pl), count, pair.pool)
    phase(f"fanout: {options.fanout_nodes} solo nodes and plain workers")
    hosts = [f"bench-fan-{i}" for i in range(options.fanout_nodes)]
    with lab.fleet(hosts):
        fig.forget_other_hosts(lab, hosts)
        figures["fanout"] = [fig.fanout(lab, hosts, options.fanouts, reps)]


def _compare_with_ceiling(figures: dict[str, list[Figure]]) -> None:
    """Say in the ceiling's note how close the best no-op throughput came to it."""
    rates = [f for f in figures.get("throughput", []) if f.key.startswith("throughput_")]
    if not rates or not figures.get("ceiling"):
        return
    best = max(rates, key=lambda f: f.taskyard.median)
    top = figures["ceiling"][0]
    share = best.taskyard.median / top.taskyard.median
    figures["ceiling"] = [dataclasses.replace(top, note=(
        f"{top.note}; taskyard's best no-op throughput ({best.title.split(', ')[-1]}) "
        f"is {share:.0%} of it"))]


def _memory_figures(idle: tuple[Stats, Stats], after: tuple[Stats, Stats], count: int,
                    pool: str) -> list[Figure]:
    return [
        Figure("rss_idle", "memory: RSS of an idle worker", "MB", *idle, None,
               f"{pool} pool x{CONCURRENCY}: main process and children summed; "
               "samples after start-up and warm-up"),
        Figure("rss_after", f"memory: RSS after {count:,} messages", "MB", *after, None,
               f"the same workers after {count:,} messages each (throughput, latency, volume "
               "and no-op top-up)"),
    ]


def _meta(lab: Lab, options: Options) -> dict[str, Any]:
    info = lab.redis.info("server")
    settings = plain_settings(lab.config)
    return {
        "options": dataclasses.asdict(options),
        "machine": {"cpus": _cpus(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "versions": {"celery": celery.__version__, "kombu": kombu.__version__,
                     "redis-py": redis.__version__, "redis-server": info.get("redis_version")},
        "plain_app": describe(settings),
        "loglevel": options.loglevel,
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
