"""``python -m bench tracing``: what Celery's publish signals cost a caller, traced or not.

A private ``redis-server``, no workers (the messages wait in their queue,
emptied between repetitions), this process as the caller. Interleaved, each
side sends ``--casts`` requests one at a time, in two modes:

- **no receiver**: nothing connected to ``before_task_publish`` or
  ``after_task_publish`` (what a process without a tracing tool runs);
- **OpenTelemetry**: the official Celery instrumentation on, with the SDK's
  tracer provider and batch span processor, its exporter dropping the spans
  (what the instrumentation itself costs, not a network's).

Sides: taskyard's ``cast`` and ``cast_many`` (batches of 500), and plain
Celery's ``apply_async`` with the same settings (its sender sends the same
signals). Per side and mode: the send rate and the caller's CPU time per
message. Then the cost of the check alone with no receiver:
:func:`workers.extensions.publishing.announce` on one prepared request,
timed over many calls.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.harness import child_environment, interleaved, settings_of
from bench.noop import SERVICE
from bench.plain import NOOP_SERVICE, create_plain_app
from bench.report import emit, progress
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.extensions.publishing import announce, listened

HERE = Path(__file__).resolve().parent
BATCH = 500
MODES = ("off", "otel")
#: Calls of the bare check timed at once.
CHECKS = 200_000


class _Dropped(SpanExporter):
    """An exporter that takes the spans and sends them nowhere."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Instrumentation:
    """The official Celery instrumentation, switched on and off between measurements."""

    def __init__(self) -> None:
        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(_Dropped()))
        self.instrumentor = CeleryInstrumentor()

    def mode(self, mode: str) -> None:
        on = self.instrumentor.is_instrumented_by_opentelemetry
        if mode == "otel" and not on:
            self.instrumentor.instrument(tracer_provider=self.provider)
        elif mode == "off" and on:
            self.instrumentor.uninstrument()
        assert listened() == (mode == "otel")

    def close(self) -> None:
        self.mode("off")
        self.provider.shutdown()


def run(casts: int, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="taskyard-tracing-"))
    server = RedisServer(base / "redis", appendonly=False).start()
    instrumentation = _Instrumentation()
    apps: list[Any] = []
    try:
        env = child_environment(server.url, base / "state")
        config = settings_of(env)
        app = Taskyard(config)
        plain = create_plain_app(config)
        apps += [app, plain]
        broker = redis.Redis.from_url(config.broker_url)
        client = Client(SERVICE, app=app)
        noop = plain.tasks[f"{NOOP_SERVICE}.noop"]
        senders: dict[str, Callable[[], object]] = {
            "cast": lambda: client.cast("noop"),
            "apply_async": lambda: noop.apply_async(queue=NOOP_SERVICE),
        }
        for mode in MODES:
            instrumentation.mode(mode)
            for send in senders.values():
                send()  # connections made, the API looked up, the instrumentation warm
        broker.delete(SERVICE, NOOP_SERVICE)

        def one_by_one(side: str, mode: str) -> Callable[[], tuple[float, float]]:
            def measure() -> tuple[float, float]:
                instrumentation.mode(mode)
                cpu, started = time.process_time(), time.perf_counter()
                for _ in range(casts):
                    senders[side]()
                rate = casts / (time.perf_counter() - started)
                cpu_us = (time.process_time() - cpu) / casts * 1e6
                broker.delete(SERVICE, NOOP_SERVICE)
                return rate, cpu_us
            return measure

        def batched(mode: str) -> Callable[[], tuple[float, float]]:
            def measure() -> tuple[float, float]:
                instrumentation.mode(mode)
                batches = max(1, casts // BATCH)
                calls: list[dict[str, Any]] = [{}] * BATCH
                cpu, started = time.process_time(), time.perf_counter()
                for _ in range(batches):
                    client.cast_many("noop", calls)
                rate = batches * BATCH / (time.perf_counter() - started)
                cpu_us = (time.process_time() - cpu) / (batches * BATCH) * 1e6
                broker.delete(SERVICE)
                return rate, cpu_us
            return measure

        log(f"tracing: {reps} repetitions of {casts} sends per side and mode")
        runs = [(side, mode, one_by_one(side, mode)) for side in senders for mode in MODES]
        runs += [("cast_many", mode, batched(mode)) for mode in MODES]
        results = interleaved(reps, *(measure for _, _, measure in runs))
        figures: dict[str, Any] = {}
        for (side, mode, _), samples in zip(runs, results, strict=True):
            figures.setdefault(side, {})[mode] = {
                "per_s": statistics.median(r[0] for r in samples),
                "cpu_us": statistics.median(r[1] for r in samples),
                "per_s_samples": [r[0] for r in samples],
                "cpu_us_samples": [r[1] for r in samples]}
        instrumentation.mode("off")
        figures["check_ns"] = _check_cost(client)
        return figures
    finally:
        instrumentation.close()
        for each in apps:
            each.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _check_cost(client: Client) -> float:
    """Nanoseconds :func:`announce` takes on one prepared request with no receiver."""
    request = client._prepare(None, "bench.noop", SERVICE, {})
    app, batch = client.app, [request]
    best = float("inf")
    for _ in range(5):  # the least disturbed of five timings
        started = time.perf_counter()
        for _ in range(CHECKS):
            announce(app, batch)
        best = min(best, (time.perf_counter() - started) / CHECKS * 1e9)
    return best


def table(figures: dict[str, Any]) -> str:
    rows = [("cast / apply_async, one at a time (msg/s)", "per_s", "{:,.0f}"),
            ("caller CPU per message (µs)", "cpu_us", "{:,.0f}")]
    lines = ["| figure | taskyard, no receiver | taskyard, OpenTelemetry | traced / not | "
             "plain Celery, no receiver | plain Celery, OpenTelemetry | traced / not |",
             "|---|---|---|---|---|---|---|"]
    for label, key, fmt in rows:
        cells = [label]
        for side in ("cast", "apply_async"):
            off, on = figures[side]["off"][key], figures[side]["otel"][key]
            cells += [fmt.format(off), fmt.format(on), f"{on / off:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for label, key, fmt in ((f"cast_many, batches of {BATCH} (msg/s)", "per_s", "{:,.0f}"),
                            ("caller CPU per message, cast_many (µs)", "cpu_us", "{:,.1f}")):
        off, on = figures["cast_many"]["off"][key], figures["cast_many"]["otel"][key]
        lines.append(f"| {label} | {fmt.format(off)} | {fmt.format(on)} | {on / off:.2f} "
                     "| | | |")
    cast_ns = figures["cast"]["off"]["cpu_us"] * 1000
    lines.append(f"\nwith no receiver, the check costs {figures['check_ns']:.0f} ns per send "
                 f"({figures['check_ns'] / cast_ns:.2%} of a cast's CPU time)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench tracing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--casts", type=int, default=2000,
                        help="sends per side and mode per repetition")
    parser.add_argument("--reps", type=int, default=7, help="repetitions (interleaved)")
    parser.add_argument("--json", type=Path, default=HERE / "results-tracing.json")
    args = parser.parse_args(argv)
    figures = run(args.casts, args.reps, progress)
    emit(table(figures), figures, args.json)
    return 0
