"""``python -m bench monitoring``: what watching the fleet costs a node, against a bare worker.

Four solo workers drain no-op messages, interleaved: a taskyard node with
its defaults (task events, task-sent events and the STARTED state on, what
Flower needs), a taskyard node without them, a plain Celery worker with the
same monitoring, and a bare plain Celery worker (no events, no STARTED, its
caller sending no sent events). Per side: throughput (first send to last
result) and the worker's CPU per message; and the ratios against the bare
worker, which show what monitoring costs each (per repetition, against the
bare worker's run of the same repetition; their median and range).

Wall-clock CPU moves by a third between runs on a shared machine, so the
same four workers are then run again under callgrind, which counts the
instructions a worker executes while it drains messages and publishes their
events: the same count whatever else the machine is doing. Under callgrind
a worker runs some forty times slower, so a node's task events gather fewer
requests per message than at full speed, and its timed work (heartbeats,
registry reports, the visibility sweep) falls more often per message: both
make the count overstate what a node spends per message, and the second
weighs on the monitored workers and on taskyard's nodes most.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from kombu.utils.json import loads

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
#: The four workers: taskyard and plain Celery, each with and without monitoring.
SIDES = ("taskyard", "quiet", "plain", "bare")
NAMES = {"taskyard": "taskyard node (monitoring on: the defaults)",
         "quiet": "taskyard node, no monitoring",
         "plain": "plain Celery, same monitoring", "bare": "plain Celery, no monitoring"}
#: The workers that publish task events.
MONITORED = ("taskyard", "plain")
#: Seconds a worker under callgrind may take to start and answer.
CALLGRIND_START_TIMEOUT_S = 600.0
#: Repetitions of the callgrind pass (its counts move by well under 1 % between them).
CALLGRIND_REPS = 3


@dataclass
class Side:
    """One of the four workers, and how to send it a no-op (returning how to wait for it)."""

    worker: Worker
    send: Callable[[], Callable[[], object]]


class Sides:
    """The four workers on hosts ``<prefix>``, ``<prefix>-quiet`` and ``<prefix>-bare``.

    ``wrap`` prefixes each worker's command (callgrind); the apps of the
    unmonitored callers are closed with :meth:`close`.
    """

    def __init__(self, lab: Lab, prefix: str,
                 wrap: Callable[[str, list[str]], list[str]] = lambda _, command: command,
                 timeout: float = 90.0, extra_env: dict[str, str] | None = None) -> None:
        env = {**lab.env, **(extra_env or {})}
        bare_env = {**env, **BARE}
        queues = [q for s in PLAIN_SERVICES for q in (s, host_queue(s, f"{prefix}-bare"))]
        plain_queues = [q for s in PLAIN_SERVICES for q in (s, host_queue(s, prefix))]
        commands = {
            "taskyard": (node_command(NODE_SERVICES, prefix, "solo", 1, "WARNING"), env),
            "quiet": (node_command(NODE_SERVICES, f"{prefix}-quiet", "solo", 1, "WARNING"),
                      bare_env),
            "plain": (plain_command(plain_queues, prefix, "solo", 1, "WARNING"), env),
            "bare": (plain_command(queues, f"{prefix}-bare", "solo", 1, "WARNING"), bare_env),
        }
        workers = {}
        for side, (command, side_env) in commands.items():
            workers[side] = Worker(f"{NAMES[side]} ({prefix})", wrap(side, command), side_env,
                                   lab.dir / f"{prefix}-{side}.log")
            lab.workers.append(workers[side].start())
        off = {"task_events": False, "task_sent_events": False, "task_track_started": False}
        self.quiet_app = Taskyard(lab.config.with_overrides(**off))
        self.bare_app = create_plain_app(lab.config.with_overrides(**off))
        client = lab.client(host=prefix).prepare(timeout=timeout)
        quiet = Client(SERVICE, app=self.quiet_app, host=f"{prefix}-quiet", timeout=timeout)
        monitored = lab.plain_task("noop")
        unmonitored = self.bare_app.tasks[f"{NOOP_SERVICE}.noop"]

        def plain_send(task: Any, queue: str) -> Callable[[], Callable[[], object]]:
            return lambda: (lambda result: lambda: result.get(timeout=timeout))(
                task.apply_async(queue=queue))

        sends: dict[str, Callable[[], Callable[[], object]]] = {
            "taskyard": lambda: client.cast("noop").wait,
            "quiet": lambda: quiet.cast("noop").wait,
            "plain": plain_send(monitored, f"{NOOP_SERVICE}.{prefix}"),
            "bare": plain_send(unmonitored, f"{NOOP_SERVICE}.{prefix}-bare"),
        }
        self.sides = {side: Side(workers[side], sends[side]) for side in SIDES}
        for side, host in (("taskyard", prefix), ("quiet", f"{prefix}-quiet")):
            node = workers[side]
            wait_for(lambda n=node, h=host: n.check_alive() or lab.registry.is_up(SERVICE, h),
                     timeout, f"the node {host} to report up")
        for side in self.sides.values():
            for wait in [side.send() for _ in range(4)]:
                side.worker.check_alive()
                wait()

    def drain(self, side: str, count: int) -> float:
        """Send ``count`` no-ops to ``side`` and wait for every result; the seconds it took."""
        send = self.sides[side].send
        start = time.perf_counter()
        for wait in [send() for _ in range(count)]:
            wait()
        return elapsed_since(start)

    def close(self) -> None:
        self.bare_app.close()
        self.quiet_app.close()


def run(n: int, reps: int, log: Callable[[str], None],
        instructions: int = 0) -> dict[str, Any]:
    with Lab(loglevel="WARNING") as lab:
        sides = Sides(lab, "mon")
        cpu: dict[str, list[float]] = {side: [] for side in SIDES}

        def drain(side: str, count: int = n) -> float:
            worker = sides.sides[side].worker
            before = worker.cpu_seconds()
            rate = count / sides.drain(side, count)
            cpu[side].append((worker.cpu_seconds() - before) / count * 1e6)
            return rate

        for side in SIDES:
            drain(side, max(10, n // 5))
        for samples in cpu.values():
            samples.clear()
        log(f"monitoring: {reps} repetitions of {n} messages per side")
        rates = interleaved(reps, *(lambda s=side: drain(s) for side in SIDES))
        sides.close()
        lab.stop([side.worker for side in sides.sides.values()])
        counts = count_instructions(lab, instructions, log) if instructions else None
    figures: dict[str, Any] = {
        side: {"throughput": Stats.of(rate).as_dict(), "cpu_us": Stats.of(cpu[side]).as_dict()}
        for side, rate in zip(SIDES, rates, strict=True)}
    # Each repetition's ratio to the bare worker's run of the same repetition, then their
    # median: the machine's speed drifts between repetitions (by a third on a shared
    # machine), and a ratio of medians from different moments would carry that drift.
    bare_rates = rates[SIDES.index("bare")]
    for side, rate in zip(SIDES, rates, strict=True):
        figures[side]["throughput_vs_bare"] = _paired(rate, bare_rates)
        figures[side]["cpu_vs_bare"] = _paired(cpu[side], cpu["bare"])
        if counts is not None:
            figures[side]["instructions"] = Stats.of(counts[side]).as_dict()
            figures[side]["instructions_vs_bare"] = _paired(counts[side], counts["bare"])
    return figures


def _paired(values: list[float], bare: list[float]) -> dict[str, Any]:
    return Stats.of([a / b for a, b in zip(values, bare, strict=True)]).as_dict()


def count_instructions(lab: Lab, n: int, log: Callable[[str], None]) -> dict[str, list[float]]:
    """Per side, the instructions its worker executes per message, by callgrind.

    Each worker runs under ``valgrind --tool=callgrind`` with its
    instrumentation off (a few times slower, not forty) until it is warm;
    then, one side at a time, instrumentation is switched on, ``n``
    messages are drained, and the counts are dumped and switched off again
    (``callgrind_control``). Python's string hashing is fixed
    (``PYTHONHASHSEED=0``) so that runs repeat.
    """
    out = lab.dir / "callgrind"
    out.mkdir(exist_ok=True)

    def under_callgrind(side: str, command: list[str]) -> list[str]:
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--vgdb=yes",
                f"--callgrind-out-file={out}/{side}.%p", *command]

    log("monitoring: starting the four workers under callgrind (a minute or two)")
    sides = Sides(lab, "cg", wrap=under_callgrind, timeout=CALLGRIND_START_TIMEOUT_S,
                  extra_env={"PYTHONHASHSEED": "0"})
    counts: dict[str, list[float]] = {side: [] for side in SIDES}
    tap = EventTap(lab.config.broker_url)
    try:
        for rep in range(CALLGRIND_REPS):
            log(f"monitoring: callgrind repetition {rep + 1} of {CALLGRIND_REPS}, "
                f"{n} messages per side")
            for side in SIDES:
                pid = sides.sides[side].worker.pid
                tap.clear()
                _callgrind_control(pid, "--instr=on")
                sides.drain(side, n)
                if side in MONITORED:  # until the worker has published the window's events
                    wait_for(lambda: tap.succeeded() >= n, CALLGRIND_START_TIMEOUT_S,
                             f"the task events of {NAMES[side]}")
                _callgrind_control(pid, "--instr=off")
                _callgrind_control(pid, "--dump")
                counts[side].append(_totals(out, side, pid) / n)
    finally:
        tap.close()
        sides.close()
        lab.stop([side.worker for side in sides.sides.values()])
    return counts


class EventTap:
    """Counts the ``task-succeeded`` events workers publish (as Flower would receive them)."""

    def __init__(self, url: str) -> None:
        self.pubsub = redis.Redis.from_url(url).pubsub()
        self.pubsub.psubscribe("*celeryev*")
        self.count = 0

    def clear(self) -> None:
        self.succeeded()
        self.count = 0

    def succeeded(self) -> int:
        """How many arrived since :meth:`clear`, reading what is waiting."""
        while (message := self.pubsub.get_message(timeout=0.01)) is not None:
            if message["type"] != "pmessage":
                continue
            body = loads(base64.b64decode(loads(message["data"])["body"]))
            self.count += sum(1 for event in (body if isinstance(body, list) else [body])
                              if event.get("type") == "task-succeeded")
        return self.count

    def close(self) -> None:
        self.pubsub.close()


def _callgrind_control(pid: int, option: str) -> None:
    """``callgrind_control OPTION PID``: it returns once the worker has done it."""
    subprocess.run(["callgrind_control", option, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)


def _totals(out: Path, side: str, pid: int) -> int:
    """The instruction total of the newest dump of ``pid`` (``totals:`` line)."""
    dumps = sorted(out.glob(f"{side}.{pid}.*"), key=lambda p: int(p.suffix[1:]))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for {side} (pid {pid}) in {out}")
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[-1]}")


def table(figures: dict[str, Any]) -> str:
    counted = all("instructions" in figure for figure in figures.values())
    head = ("| worker (solo) | throughput (msg/s) | vs bare (range) | worker CPU per message "
            "(µs) | vs bare (range) |")
    rule = "|---|---|---|---|---|"
    if counted:
        head += " instructions per message (callgrind) | vs bare (range) |"
        rule += "---|---|"
    lines = [head, rule]
    for side, figure in figures.items():
        row = (f"| {NAMES[side]} | {figure['throughput']['median']:,.0f} | "
               f"{_ratio(figure['throughput_vs_bare'])} | "
               f"{figure['cpu_us']['median']:,.0f} | {_ratio(figure['cpu_vs_bare'])} |")
        if counted:
            row += (f" {figure['instructions']['median'] / 1e6:,.2f} M | "
                    f"{_ratio(figure['instructions_vs_bare'])} |")
        lines.append(row)
    return "\n".join(lines)


def _ratio(stats: dict[str, Any]) -> str:
    """A paired ratio: its median, and the range over the repetitions."""
    return f"{stats['median']:.2f} ({stats['min']:.2f} to {stats['max']:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench monitoring", description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--instructions", type=int, default=200, metavar="N",
                        help="messages per side and repetition under callgrind (0: skip)")
    parser.add_argument("--json", type=Path, default=HERE / "results-monitoring.json")
    args = parser.parse_args(argv)
    if args.instructions and not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        parser.error("--instructions needs valgrind (apt install valgrind), or give "
                     "--instructions 0 to leave the instruction counts out")
    figures = run(args.messages, args.reps, progress, args.instructions)
    emit(table(figures), figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
