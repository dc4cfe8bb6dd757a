"""A profiler of taskyard's per-message overhead, beside plain Celery.

Run as ``python -m bench.profiling [--messages N] [--top K] [--keep DIR]``.
Each path is profiled for taskyard and for plain Celery on the same private
redis-server, in alternating chunks of messages so that other load on the
machine weighs on both alike:

- the **enqueue path**: ``Client.cast`` vs ``apply_async``, cProfile in
  this process, into a queue nobody consumes; and ``Client.cast_many``,
  which has no plain counterpart;
- the **node dispatch path**: a solo-pool taskyard node and a solo-pool
  plain worker, each run under ``python -m cProfile``, drain the same no-op
  messages and write their profile on warm shutdown;
- the **volume endpoints** (``create_volume`` + ``delete_volume`` on the
  fake driver) called on a manager directly, to show what records and
  state transitions cost apart from messaging.

It prints, per message: the total, a few costs named on both sides,
taskyard's own functions (``workers/``, ``managers/``) with file:line, and
the functions with the most self time overall (what Celery, kombu and
redis-py cost on that path). cProfile measures wall-clock time and slows
every call, so absolute figures are inflated; compare sides and shares.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import PROJECT_ROOT, Worker, node_command, plain_command
from bench.lab import Lab
from bench.noop import SERVICE
from bench.plain import NOOP_SERVICE
from workers.core.keys import host_queue
from workers.node.managers import build_manager

#: Directories of taskyard's own code.
OWN_CODE = ("workers/", "managers/", "drivers/")
#: Functions that only wait (their time is idleness, not cost).
WAITS = ("poll", "select", "epoll")
#: Messages sent to one side before switching to the other.
CHUNK = 100
#: Costs worth naming on both sides: label, file name ending, function name.
NAMED = (
    ("new redis.Redis per kombu operation", "kombu/transport/redis.py", "_create_client"),
    ("log records", "logging/__init__.py", "_log"),
    ("result subscription at send", "celery/backends/redis.py", "on_task_call"),
    ("JSON encoding (kombu)", "kombu/utils/json.py", "dumps"),
)


@dataclass(frozen=True)
class Row:
    where: str
    calls: float
    own_us: float
    cum_us: float


def _where(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    for prefix in (str(PROJECT_ROOT) + "/", *(p for p in sys.path if p.endswith("packages"))):
        if filename.startswith(prefix):
            filename = filename[len(prefix):].lstrip("/")
            break
    return f"{filename}:{line} {name}" if line else name


def rows(stats: pstats.Stats, messages: int) -> list[Row]:
    """Every function called at least once per two messages, per message."""
    out = []
    for key, (_, calls, own, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if calls * 2 >= messages:
            out.append(Row(_where(key), calls / messages, own / messages * 1e6,
                           cum / messages * 1e6))
    return out


def named(stats: pstats.Stats, messages: int) -> str:
    """The :data:`NAMED` costs: calls and cumulative microseconds per message."""
    parts = []
    for label, suffix, name in NAMED:
        hits = [v for (f, _, fn), v in stats.stats.items()  # type: ignore[attr-defined]
                if f.endswith(suffix) and fn == name]
        calls = sum(v[1] for v in hits) / messages
        parts.append(f"{label} {calls:.1f}/msg {sum(v[3] for v in hits) / messages * 1e6:,.0f} us")
    return "; ".join(parts)


def loop_work_us(stats: pstats.Stats, messages: int) -> float:
    """Per message, the worker's event loop minus the time it spent waiting in poll."""
    table = stats.stats  # type: ignore[attr-defined]
    loop = sum(v[3] for k, v in table.items() if k[2] == "create_loop")
    waits = sum(v[2] for k, v in table.items() if any(w in k[2] for w in WAITS))
    return (loop - waits) / messages * 1e6


def report(title: str, total: dict[str, str], stats: dict[str, pstats.Stats], messages: int,
           top: int) -> str:
    found = {side: rows(s, messages) for side, s in stats.items()}
    lines = [f"== {title}", "   per message: " + ", ".join(
        f"{side} {value}" for side, value in total.items())]
    lines += [f"   {side}: {named(s, messages)}" for side, s in stats.items()]
    own = sorted((r for r in found["taskyard"] if r.where.startswith(OWN_CODE)),
                 key=lambda r: -r.cum_us)
    lines.append("   taskyard's own functions (cumulative us, self us, calls per message):")
    lines += [f"     {r.cum_us:8.1f} {r.own_us:7.1f} {r.calls:5.1f}  {r.where}" for r in own[:top]]
    for side, side_rows in found.items():
        lines.append(f"   {side}: most self time (self us, cumulative us, calls per message):")
        ranked = sorted((r for r in side_rows if not any(w in r.where for w in WAITS)),
                        key=lambda r: -r.own_us)
        lines += [f"     {r.own_us:8.1f} {r.cum_us:8.1f} {r.calls:5.1f}  {r.where}"
                  for r in ranked[:top]]
    return "\n".join(lines)


def profile_enqueue(lab: Lab, messages: int, top: int) -> str:
    client = lab.client(host="bench-sink")
    noop = lab.plain_task("noop")
    queue = lab.plain_queue("bench-sink")
    sides: dict[str, Callable[[], object]] = {
        "taskyard": lambda: client.cast("noop"),
        "plain": lambda: noop.apply_async(queue=queue),
    }
    for send in sides.values():
        for _ in range(CHUNK):
            send()
    profilers = {side: cProfile.Profile() for side in sides}
    cpu = dict.fromkeys(sides, 0.0)
    kept: list[object] = []
    for chunk in range(max(1, messages // CHUNK)):
        for side in (list(sides) if chunk % 2 == 0 else list(sides)[::-1]):
            started = time.process_time()
            profilers[side].enable()
            kept += [sides[side]() for _ in range(CHUNK)]
            profilers[side].disable()
            cpu[side] += time.process_time() - started
        kept.clear()
        lab.redis.delete(host_queue(SERVICE, "bench-sink"), queue)
    sent = max(1, messages // CHUNK) * CHUNK
    stats = {side: pstats.Stats(p) for side, p in profilers.items()}
    total = {side: f"{stats[side].total_tt / sent * 1e6:,.0f} us profiled "  # type: ignore[attr-defined]
                   f"({cpu[side] / sent * 1e6:,.0f} us CPU)" for side in sides}
    return report(f"enqueue path: Client.cast vs apply_async, {sent} each, handles kept "
                  "(cProfile, wall clock)", total, stats, sent, top)


def profile_bulk(lab: Lab, messages: int, top: int) -> str:
    """``Client.cast_many`` per message, into a queue nobody consumes."""
    client = lab.client(host="bench-sink")
    calls: list[dict[str, object]] = [{} for _ in range(messages)]
    client.cast_many("noop", calls[:CHUNK])
    profiler = cProfile.Profile()
    started = time.process_time()
    profiler.enable()
    handles = client.cast_many("noop", calls)
    profiler.disable()
    cpu = time.process_time() - started
    del handles
    lab.redis.delete(host_queue(SERVICE, "bench-sink"))
    stats = pstats.Stats(profiler)
    total = {"taskyard": f"{stats.total_tt / messages * 1e6:,.0f} us profiled "  # type: ignore[attr-defined]
                         f"({cpu / messages * 1e6:,.0f} us CPU)"}
    return report(f"bulk path: Client.cast_many, {messages} messages (cProfile, wall clock)",
                  total, {"taskyard": stats}, messages, top)


def profile_volume(lab: Lab, messages: int, top: int) -> str:
    """``create_volume`` + ``delete_volume`` called on a manager directly (fake driver).

    What the volume figure's endpoint costs without any messaging: records,
    state transitions (Lua scripts) and the driver.
    """
    manager: Any = build_manager(lab.app, lab.app.spec("volume"))
    manager.init_process()
    pairs = max(1, messages // 4)
    profiler = cProfile.Profile()
    started = time.process_time()
    profiler.enable()
    for _ in range(pairs):
        volume = manager.create_volume(size_gb=1)
        manager.delete_volume(volume_id=volume["id"])
    profiler.disable()
    cpu = time.process_time() - started
    stats = pstats.Stats(profiler)
    total = {"taskyard": f"{stats.total_tt / pairs * 1e6:,.0f} us profiled "  # type: ignore[attr-defined]
                         f"({cpu / pairs * 1e6:,.0f} us CPU)"}
    return report(f"volume endpoints called directly: {pairs} create_volume + delete_volume "
                  "pairs, fake driver, per pair (cProfile, wall clock)",
                  total, {"taskyard": stats}, pairs, top)


def profile_dispatch(lab: Lab, messages: int, top: int) -> str:
    host = "bench-profile"
    out = {side: lab.dir / f"{side}.prof" for side in ("taskyard", "plain")}
    profiled = [sys.executable, "-m", "cProfile", "-o"]
    node = Worker("profiled taskyard node", [*profiled, str(out["taskyard"]), *node_command(
        [SERVICE], host, "solo", 1, lab.loglevel)[1:]], lab.env, lab.dir / "node-profile.log")
    plain = Worker("profiled plain worker", [*profiled, str(out["plain"]), *plain_command(
        [NOOP_SERVICE, host_queue(NOOP_SERVICE, host)], host, "solo", 1, lab.loglevel)[1:]],
        lab.env, lab.dir / "plain-profile.log")
    started = [node.start(), plain.start()]
    lab.workers += started
    client = lab.client(host=host)
    noop = lab.plain_task("noop")
    queue = host_queue(NOOP_SERVICE, host)
    sides: dict[str, tuple[Worker, Callable[[], Callable[[], object]]]] = {
        "taskyard": (node, lambda: client.cast("noop").wait),
        "plain": (plain, lambda: noop.apply_async(queue=queue).get),
    }
    cpu = dict.fromkeys(sides, 0.0)
    chunks = max(1, messages // CHUNK)
    try:
        warm = lab.wait_ready(host, node, plain, services=(SERVICE,))
        for chunk in range(chunks):
            for side in (list(sides) if chunk % 2 == 0 else list(sides)[::-1]):
                worker, send = sides[side]
                before = worker.cpu_seconds()
                for wait in [send() for _ in range(CHUNK)]:
                    wait()
                cpu[side] += worker.cpu_seconds() - before
    finally:
        lab.stop(started)
    sent = chunks * CHUNK
    handled = sent + warm
    stats = {side: pstats.Stats(str(path)) for side, path in out.items()}
    total = {side: f"{loop_work_us(stats[side], handled):,.0f} us profiled event-loop work "
                   f"({cpu[side] / sent * 1e6:,.0f} us CPU)" for side in sides}
    return report(f"node dispatch path: solo pool, {handled} no-op messages each "
                  "(cProfile in the worker, wall clock; poll waits left out)",
                  total, stats, handled, top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiling",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=3000, help="per side and path")
    parser.add_argument("--top", type=int, default=15, help="rows per list")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep the worker profiles (taskyard.prof, plain.prof) and logs")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with Lab(keep_dir=args.keep) as lab:
        for section in (profile_enqueue, profile_bulk, profile_dispatch, profile_volume):
            print(section(lab, args.messages, args.top), end="\n\n", flush=True)
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
