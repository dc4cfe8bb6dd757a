"""The benchmark suite in --quick mode produces every figure (how fast is never asserted)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Seconds the quick run may take here; it takes about a minute on 2 cores.
QUICK_RUN_TIMEOUT_S = 400

#: Every figure, and whether it is measured against plain Celery (has a ratio).
COMPARED = {
    "throughput_solo", "throughput_threads", "throughput_prefork",
    "worker_cpu_solo", "worker_cpu_threads", "worker_cpu_prefork",
    "enqueue_rate", "enqueue_rate_send_task", "client_cpu_cast",
    "cast_many_rate", "bulk_processed_once",
    "call_latency_p50", "call_latency_p90", "call_latency_p99",
    "fanout", "volume_pairs", "rss_idle", "rss_after",
}
ALONE = {"ceiling"}
#: Figures with a target, and the target of the issue.
TARGETS = {
    "throughput_solo": (">=", 0.95), "throughput_threads": (">=", 0.95),
    "throughput_prefork": (">=", 0.95), "call_latency_p50": ("<=", 1.10),
    "enqueue_rate": (">=", 0.95), "cast_many_rate": (">=", 5.0),
}

#: The module's quick run happens in whichever test comes first.
pytestmark = pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 60)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """``python -m bench --quick`` as a user runs it: its printed table and its JSON."""
    path = tmp_path_factory.mktemp("bench") / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKYARD_", "DYNACONF_"))}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(path)], cwd=PROJECT_ROOT,
        env=env, capture_output=True, text=True, timeout=QUICK_RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout, json.loads(path.read_text())


def figures(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {figure["key"]: figure for figure in results["figures"]}


def numbers(stats: dict[str, Any]) -> list[float]:
    return [stats["median"], stats["min"], stats["max"], *stats["samples"]]


def test_the_quick_run_writes_every_figure_to_json(
        quick_run: tuple[str, dict[str, Any]]) -> None:
    _, results = quick_run
    assert set(figures(results)) == COMPARED | ALONE
    assert results["meta"]["mode"] == "quick"
    assert results["meta"]["duration_s"] > 0


def test_every_number_is_finite_and_positive(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, results = quick_run
    for key, figure in figures(results).items():
        sides = [figure["taskyard"]] + ([figure["plain"]] if key in COMPARED else [])
        for stats in sides:
            values = numbers(stats)
            assert all(math.isfinite(v) and v > 0 for v in values), (key, stats)
            assert stats["min"] <= stats["median"] <= stats["max"], (key, stats)
            assert len(stats["samples"]) >= 3, key


def test_every_comparison_has_a_ratio_and_a_plain_side(
        quick_run: tuple[str, dict[str, Any]]) -> None:
    _, results = quick_run
    for key, figure in figures(results).items():
        if key in COMPARED:
            assert figure["plain"] is not None, key
            assert math.isfinite(figure["ratio"]) and figure["ratio"] > 0, key
        else:
            assert figure["plain"] is None and figure["ratio"] is None, key


def test_each_target_is_stated_and_judged(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, results = quick_run
    found = figures(results)
    for key, (op, value) in TARGETS.items():
        assert found[key]["target"] == {"op": op, "value": value}, key
        assert isinstance(found[key]["met"], bool), key


def test_every_bulk_message_ran_exactly_once(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, results = quick_run
    bulk = figures(results)["bulk_processed_once"]
    expected = results["meta"]["options"]["bulk_messages"]
    assert bulk["target"] == {"op": "==", "value": expected}
    assert bulk["met"] is True, bulk


def test_the_printed_table_has_a_row_per_figure_and_says_what_plain_celery_has(
        quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, results = quick_run
    for figure in results["figures"]:
        assert figure["title"] in stdout, figure["title"]
    assert "acks_late=True" in stdout and "prefetch=1" in stdout
    assert "track_started=True" in stdout and "task events=True" in stdout


def run_suite(tmp_path: Path, suite: str, *args: str
              ) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``python -m bench SUITE ARGS`` as a user runs it; what it printed, and its JSON."""
    out = tmp_path / f"{suite}.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", suite, *args, "--json", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_the_scale_run_measures_every_figure_at_every_size(tmp_path: Path) -> None:
    done, results = run_suite(tmp_path, "scale", "--sizes", "50,200", "--reps", "1")
    rows = results["rows"]
    assert [row["hosts"] for row in rows] == [50, 200]
    for row in rows:
        for key in ("fanout_s", "placement_p50_s", "placement_p99_s", "listing_s",
                    "services_s", "status_s", "memory_per_host_bytes"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["placement_p50_s"] <= row["placement_p99_s"]
    assert "per 1,000 hosts" in done.stdout and "| fanout (no wait) |" in done.stdout


def test_the_placement_run_places_a_whole_burst_and_none_over_capacity(tmp_path: Path) -> None:
    done, results = run_suite(tmp_path, "placement", "--sizes", "50,200", "--burst", "60",
                              "--placements", "20")
    rows = results["rows"]
    assert [row["hosts"] for row in rows] == [50, 200]
    for row in rows:
        # What the run measures, not how fast: every placement of the burst landed, within
        # the capacity the fleet had, and each figure was taken.
        assert (row["burst_placed"], row["burst_refused"]) == (60, 0), row
        assert row["burst_claimed_gb"] == 60 and row["burst_over_capacity"] == 0, row
        for key in ("p50_s", "p99_s", "ping_p50_s", "burst_per_s", "ping_per_s",
                    "burst_nodes_cpu_ms", "burst_redis_cpu_ms"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert "| burst: placements per second |" in done.stdout


def test_the_monitoring_run_compares_four_workers(tmp_path: Path) -> None:
    _, figures = run_suite(tmp_path, "monitoring", "--messages", "50", "--reps", "1",
                           "--instructions", "0")
    assert set(figures) == {"taskyard", "quiet", "plain", "bare"}
    assert figures["bare"]["throughput_vs_bare"]["median"] == 1.0
    assert figures["bare"]["cpu_vs_bare"]["max"] == 1.0
    for figure in figures.values():
        assert figure["throughput"]["median"] > 0 and figure["cpu_us"]["median"] > 0
        assert "instructions" not in figure


@pytest.mark.skipif(shutil.which("callgrind_control") is None,
                    reason="valgrind is not installed (apt install valgrind; .ci/run does)")
def test_the_monitoring_run_counts_each_workers_instructions_under_callgrind(
        tmp_path: Path) -> None:
    done, figures = run_suite(tmp_path, "monitoring", "--messages", "20", "--reps", "1",
                              "--instructions", "10")
    assert figures["bare"]["instructions_vs_bare"]["median"] == 1.0
    for side, figure in figures.items():
        counts = figure["instructions"]["samples"]
        assert len(counts) == 3 and min(counts) > 100_000, (side, counts)  # a no-op: millions
    # Plain Celery with monitoring does strictly more than without (events, STARTED writes).
    assert figures["plain"]["instructions"]["min"] > figures["bare"]["instructions"]["max"]
    assert "instructions per message (callgrind)" in done.stdout


def test_the_durable_run_prices_publish_wait_replicas_against_plain_celery(
        tmp_path: Path) -> None:
    done, figures = run_suite(tmp_path, "durable", "--casts", "60", "--reps", "1")
    assert set(figures) == {"plain", "taskyard", "durable"}
    for side in figures.values():
        assert side["cast_per_s"] > 0 and side["cast_p50_ms"] > 0
    assert figures["durable"]["cast_many_per_s"] > 0
    assert "wait 1 / wait 0" in done.stdout


def test_the_tracing_run_prices_the_publish_signals_with_and_without_opentelemetry(
        tmp_path: Path) -> None:
    done, figures = run_suite(tmp_path, "tracing", "--casts", "60", "--reps", "1")
    for side in ("cast", "apply_async", "cast_many"):
        for mode in ("off", "otel"):
            assert figures[side][mode]["per_s"] > 0 and figures[side][mode]["cpu_us"] > 0
    assert 0 < figures["check_ns"] < 100_000
    assert "taskyard, OpenTelemetry" in done.stdout and "the check costs" in done.stdout
