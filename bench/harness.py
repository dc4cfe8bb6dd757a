"""Processes, repetitions and statistics: what every figure of the suite relies on.

Every process the suite needs (redis-server, taskyard nodes, plain Celery
workers) is started here as a child in its own session and stopped by the
caller's ``finally``; readiness is always polled, never slept for.
Measurements of taskyard and plain Celery are interleaved (A B, B A, ...)
so that a machine getting slower or faster during the run shifts both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

from workers.core.config import Config, load_config
from workers.testing.kit import environment_set

T = TypeVar("T")

#: Directory holding the ``bench`` package; children import it from here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Seconds a worker process may take to start and take its first message.
START_TIMEOUT_S = 90.0
#: Seconds a stopping worker gets before it is killed.
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Stats:
    """The median, min and max of repeated measurements of one quantity."""

    median: float
    min: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            raise ValueError("no samples to summarise")
        values = tuple(float(s) for s in samples)
        return cls(statistics.median(values), min(values), max(values), values)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = list(self.samples)
        return data


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank, no interpolation)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def interleaved(reps: int, *runs: Callable[[], T]) -> list[list[T]]:
    """Run each of ``runs`` ``reps`` times, rotating which goes first; results per run.

    With two runs the order is A B, B A, A B, ...: a drift of the machine's
    speed during the run shifts both sides alike.
    """
    results: list[list[T]] = [[] for _ in runs]
    for rep in range(reps):
        shift = rep % len(runs)
        for index in [*range(shift, len(runs)), *range(shift)]:
            results[index].append(runs[index]())
    return results


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def settings_of(env: dict[str, str]) -> Config:
    """The settings a child with ``env`` reads: its ``TASKYARD_*``, from the project's root."""
    with environment_set({k: v for k, v in env.items() if k.startswith("TASKYARD_")}):
        return load_config(cwd=PROJECT_ROOT)


def child_environment(redis_url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of every child and of the suite's own settings.

    taskyard's testing settings (fake drivers) on the private Redis, plus the
    bench service; nothing inherited from the caller's ``TASKYARD_*``.
    """
    from bench.noop import SETTINGS_FILE

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKYARD_", "DYNACONF_"))}
    path = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update({
        "TASKYARD_ENV": "testing",
        "TASKYARD_REDIS_URL": redis_url,
        "TASKYARD_STATE_DIR": str(state_dir),
        "TASKYARD_SETTINGS": f"{PROJECT_ROOT / 'settings.toml'},{SETTINGS_FILE}",
        "TASKYARD_RPC_TIMEOUT": "120",
        "PYTHONPATH": os.pathsep.join(path),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


class Worker:
    """One worker process tree (a taskyard node or a plain Celery worker), logging to a file."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str],
                 log_path: Path) -> None:
        self.name = name
        self.command = list(command)
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._terminated = False

    def start(self) -> Worker:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=PROJECT_ROOT, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def rss_bytes(self) -> int:
        """Resident memory of the main process and all its children, summed."""
        process = psutil.Process(self.pid)
        total = 0
        for member in (process, *process.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += member.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        """CPU time (user and system) used so far by the main process and its children."""
        process = psutil.Process(self.pid)
        total = 0.0
        for member in (process, *process.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = member.cpu_times()
                total += times.user + times.system
        return total

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM), once."""
        if self.process is not None and self.process.poll() is None and not self._terminated:
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL of the whole session if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def node_command(services: Sequence[str], host: str, pool: str, concurrency: int,
                 loglevel: str) -> list[str]:
    """``taskyard worker`` for ``services`` on ``host``."""
    return [sys.executable, "-m", "workers.cli", "worker", *services, "--host", host,
            "--pool", pool, "--concurrency", str(concurrency), "--loglevel", loglevel]


def plain_command(queues: Sequence[str], host: str, pool: str, concurrency: int,
                  loglevel: str) -> list[str]:
    """``celery -A bench.plain worker`` with the flags ``taskyard worker`` passes to Celery."""
    return [sys.executable, "-m", "celery", "-A", "bench.plain", "worker",
            "--queues", ",".join(queues), "--hostname", f"plain@{host}",
            "--pool", pool, "--concurrency", str(concurrency), "--loglevel", loglevel,
            "--without-mingle", "--without-gossip"]
