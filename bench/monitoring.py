"""``python -m bench monitoring``: what watching the fleet costs a node, against a bare worker.

Four solo workers drain no-op messages, interleaved: a taskyard node with
its defaults (task events, task-sent events and the STARTED state on, what
Flower needs), a taskyard node without them, a plain Celery worker with the
same monitoring, and a bare plain Celery worker (no events, no STARTED, its
caller sending no sent events). Per side: throughput (first send to last result) and the worker's
CPU per message; and the ratios against the bare worker, which show what
monitoring costs each (per repetition, against the bare worker's run of the
same repetition; their median and range).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import Stats, Worker, interleaved, node_command, plain_command, wait_for
from bench.lab import NODE_SERVICES, PLAIN_SERVICES, Lab, elapsed_since
from bench.noop import SERVICE
from bench.plain import NOOP_SERVICE, create_plain_app
from bench.report import emit, progress
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.keys import host_queue

HERE = Path(__file__).resolve().parent
#: Settings that turn monitoring off (documented settings; the bare worker runs them).
BARE = {"TASKYARD_TASK_EVENTS": "false", "TASKYARD_TASK_SENT_EVENTS": "false",
        "TASKYARD_TASK_TRACK_STARTED": "false"}


def run(n: int, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    with Lab(loglevel="WARNING") as lab:
        node = lab.start_node("mon", "solo", 1)
        plain = lab.start_plain("mon", "solo", 1)  # a node and a plain worker share a host name
        bare_env = {**lab.env, **BARE}
        queues = [q for s in PLAIN_SERVICES for q in (s, host_queue(s, "mon-bare"))]
        bare = Worker("bare plain celery worker", plain_command(queues, "mon-bare", "solo", 1,
                                                                 "WARNING"),
                      bare_env, lab.dir / "plain-bare.log")
        lab.workers.append(bare.start())
        lab.wait_ready("mon", node, plain)
        quiet = Worker("taskyard node without monitoring",
                       node_command(NODE_SERVICES, "mon-quiet", "solo", 1, "WARNING"),
                       bare_env, lab.dir / "node-quiet.log")
        lab.workers.append(quiet.start())
        quiet_app = Taskyard(lab.config.with_overrides(
            task_events=False, task_sent_events=False, task_track_started=False))
        quiet_client = Client(SERVICE, app=quiet_app, host="mon-quiet")
        wait_for(lambda: lab.registry.is_up(SERVICE, "mon-quiet"), 90, "the quiet node")
        quiet_client.call("noop")
        bare_app = create_plain_app(lab.config.with_overrides(
            task_events=False, task_sent_events=False, task_track_started=False))
        client = lab.client(host="mon")
        monitored = lab.plain_task("noop")
        unmonitored = bare_app.tasks[f"{NOOP_SERVICE}.noop"]
        for result in [unmonitored.apply_async(queue=f"{NOOP_SERVICE}.mon-bare")
                       for _ in range(4)]:
            result.get(timeout=90)
        cpu: dict[str, list[float]] = {"taskyard": [], "quiet": [], "plain": [], "bare": []}
        workers = {"taskyard": node, "quiet": quiet, "plain": plain, "bare": bare}
        senders: dict[str, Callable[[], Callable[[], object]]] = {
            "taskyard": lambda: client.cast("noop").wait,
            "quiet": lambda: quiet_client.cast("noop").wait,
            "plain": lambda: monitored.apply_async(queue=f"{NOOP_SERVICE}.mon").get,
            "bare": lambda: unmonitored.apply_async(queue=f"{NOOP_SERVICE}.mon-bare").get,
        }

        def drain(side: str, count: int = n) -> float:
            worker = workers[side]
            before = worker.cpu_seconds()
            start = time.perf_counter()
            for wait in [senders[side]() for _ in range(count)]:
                wait()
            rate = count / elapsed_since(start)
            cpu[side].append((worker.cpu_seconds() - before) / count * 1e6)
            return rate

        for side in senders:
            drain(side, max(10, n // 5))
        for samples in cpu.values():
            samples.clear()
        log(f"monitoring: {reps} repetitions of {n} messages per side")
        rates = interleaved(reps, *(lambda s=side: drain(s) for side in senders))
        bare_app.close()
        quiet_app.close()
    figures = {side: {"throughput": Stats.of(rate).as_dict(),
                      "cpu_us": Stats.of(cpu[side]).as_dict()}
               for side, rate in zip(senders, rates, strict=True)}
    # Each repetition's ratio to the bare worker's run of the same repetition, then their
    # median: the machine's speed drifts between repetitions (by a third on a shared
    # machine), and a ratio of medians from different moments would carry that drift.
    bare_rates = rates[list(senders).index("bare")]
    for side, rate in zip(senders, rates, strict=True):
        figures[side]["throughput_vs_bare"] = Stats.of(
            [a / b for a, b in zip(rate, bare_rates, strict=True)]).as_dict()
        figures[side]["cpu_vs_bare"] = Stats.of(
            [a / b for a, b in zip(cpu[side], cpu["bare"], strict=True)]).as_dict()
    return figures


def table(figures: dict[str, Any]) -> str:
    names = {"taskyard": "taskyard node (monitoring on: the defaults)",
             "quiet": "taskyard node, no monitoring",
             "plain": "plain Celery, same monitoring", "bare": "plain Celery, no monitoring"}
    lines = ["| worker (solo) | throughput (msg/s) | vs bare (range) | worker CPU per message "
             "(µs) | vs bare (range) |", "|---|---|---|---|---|"]
    for side, figure in figures.items():
        lines.append(f"| {names[side]} | {figure['throughput']['median']:,.0f} | "
                     f"{_ratio(figure['throughput_vs_bare'])} | "
                     f"{figure['cpu_us']['median']:,.0f} | {_ratio(figure['cpu_vs_bare'])} |")
    return "\n".join(lines)


def _ratio(stats: dict[str, Any]) -> str:
    """A paired ratio: its median, and the range over the repetitions."""
    return f"{stats['median']:.2f} ({stats['min']:.2f} to {stats['max']:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench monitoring", description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json", type=Path, default=HERE / "results-monitoring.json")
    args = parser.parse_args(argv)
    figures = run(args.messages, args.reps, progress)
    emit(table(figures), figures, args.json)
    return 0
