"""Faults for integration tests, loaded by worker nodes through their settings.

Nodes import this module by dotted path (``tests.integration.faults:...``);
they run with the repository root on ``sys.path`` (see :func:`node_env`).
Nothing here is imported by the product.

Crashes are controlled by environment variables that do not start with
``TASKYARD_`` (so the settings never see them):

``CRASH_AT``
    ``before``: in the driver, before it does anything;
    ``during``: in the driver, once the image file is half made;
    ``after``: in the manager, once the driver acted and the record says
    ``available``, before the message is acknowledged.
``CRASH_MARKER``
    A file created (exclusively) just before the crash, holding a JSON
    account of it. While it exists nobody crashes again, so the message
    delivered again runs to its end, wherever it lands. Several nodes may
    share one marker: exactly one of them crashes.

A crash is ``SIGKILL`` to the node's whole process group (the main process
and its pool children), as a power cut would do.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from drivers.exceptions import DriverError
from drivers.volume.base import ProgressCallback, VolumeRef
from drivers.volume.fake import FakeVolumeDriver
from drivers.volume.file import FileVolumeDriver
from managers.base import Manager, endpoint, now
from managers.exceptions import InvalidRequest
from managers.volume import VolumeManager

#: Where a crash happens: environment variable and its values.
CRASH_AT_ENV = "CRASH_AT"
CRASH_MARKER_ENV = "CRASH_MARKER"
CRASH_POINTS = ("before", "during", "after")

#: The repository root: nodes need it on ``sys.path`` to import this module.
REPO_ROOT = Path(__file__).resolve().parents[2]

MANAGER_PATH = "tests.integration.faults:CrashingVolumeManager"
DRIVER_PATH = "tests.integration.faults:CrashingFileDriver"


def node_env(**extra: str) -> dict[str, str]:
    """Environment additions that let a node import this module from any cwd."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, **extra}


def crash_once(point: str, **details: Any) -> None:
    """SIGKILL this node's process group if ``CRASH_AT`` is ``point`` and nobody crashed yet."""
    if os.environ.get(CRASH_AT_ENV) != point:
        return
    marker = os.environ.get(CRASH_MARKER_ENV)
    if not marker:
        raise RuntimeError(f"{CRASH_AT_ENV}={point} needs {CRASH_MARKER_ENV}=<path>")
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return  # the delivery before this one crashed: this one runs to its end
    account = {"point": point, "pid": os.getpid(), "pgid": os.getpgrp(),
               "time": time.time(), **details}
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(account))
        out.flush()
        os.fsync(out.fileno())
    os.killpg(os.getpgrp(), signal.SIGKILL)


def read_marker(path: Path) -> dict[str, Any] | None:
    """The account :func:`crash_once` left at ``path``, or None before any crash."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


class CrashingFileDriver(FileVolumeDriver):
    """The file driver, crashing its node before or half way through ``create_volume``."""

    def create_volume(
        self, volume: VolumeRef, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        path = self.volume_path(volume.id)
        crash_once("before", volume_id=volume.id, image=str(path))
        if os.environ.get(CRASH_AT_ENV) == "during":
            # Half an image where the driver makes it, as a crash mid-write would leave.
            partial = path.with_suffix(".partial")
            half_mb = volume.size_gb * 1024 // 2
            self.execute("truncate", "-s", f"{half_mb}M", str(partial))
            crash_once("during", volume_id=volume.id, image=str(partial),
                       partial_bytes=partial.stat().st_size)
        return super().create_volume(volume, progress)


class CrashingVolumeManager(VolumeManager):
    """The volume manager, crashing its node after ``create_volume`` did everything but return."""

    @endpoint
    def create_volume(
        self, size_gb: int, name: str | None = None, volume_id: str | None = None
    ) -> dict[str, Any]:
        record = super().create_volume(size_gb=size_gb, name=name, volume_id=volume_id)
        stored = self.volumes.get(record["id"]) or {}
        crash_once("after", volume_id=record["id"], status=stored.get("status"),
                   image=record.get("location"))
        return record


class SlowFakeVolumeDriver(FakeVolumeDriver):
    """The fake driver, taking ``delay_s`` seconds per volume operation (work in flight)."""

    def __init__(self, delay_s: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        self.delay_s = float(delay_s)

    def create_volume(
        self, volume: VolumeRef, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        time.sleep(self.delay_s)
        return super().create_volume(volume, progress)


# -- a slow service, for shutdown tests ------------------------------------------

SLOW_SERVICE = "slow"
#: Seconds one step of :meth:`SlowManager.work` sleeps before looking again.
STEP_S = 0.05
#: Longest a held request waits for its release, in seconds.
MAX_HOLD_S = 300.0


def slow_key(*parts: str) -> str:
    """Redis keys of the slow service's bookkeeping (read by the tests)."""
    return ":".join(("faults", SLOW_SERVICE, *parts))


def slow_settings(path: Path) -> str:
    """TASKYARD_SETTINGS: the reference fleet, plus a file (at ``path``) adding the slow service."""
    path.write_text(
        f"[default.services.{SLOW_SERVICE}]\n"
        'manager = "tests.integration.faults:SlowManager"\n'
        'driver = "tests.integration.faults:Sleeper"\n'
    )
    return f"{REPO_ROOT / 'settings.toml'},{path}"


class Sleeper:
    """The slow service's driver: sleeps in small steps while ``keep_going()`` holds."""

    def __init__(self, step_s: float = STEP_S) -> None:
        self.step_s = float(step_s)

    def sleep_while(self, keep_going: Any, limit_s: float) -> bool:
        """Sleep until ``keep_going()`` is false or ``limit_s`` passed; whether it ended in time."""
        deadline = time.monotonic() + limit_s
        while keep_going():
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.step_s)
        return True


class SlowManager(Manager):
    """Requests that take as long as the test wants, recording what happens in Redis.

    Every event is one entry of the list :func:`slow_key` ``("events")``, in the
    order it happened: ``started <tag> <host> <pid>``, ``finished <tag> <host>
    <pid>``, and ``cleanup - <host> <pid>`` for each ``cleanup_host`` run.
    """

    driver: Sleeper

    def _record(self, event: str, tag: str) -> None:
        self.redis.rpush(slow_key("events"), f"{event} {tag} {self.host} {os.getpid()}")

    @endpoint
    def work(self, tag: str, seconds: float = 0.0, hold: bool = False) -> dict[str, Any]:
        """Sleep ``seconds``; with ``hold``, then wait for ``release:<tag>`` (or ``:*``)."""
        self._record("started", tag)
        ends = time.monotonic() + seconds
        self.driver.sleep_while(lambda: time.monotonic() < ends, seconds + 1)
        released = (slow_key("release", tag), slow_key("release", "*"))
        if hold and not self.driver.sleep_while(
            lambda: not self.redis.exists(*released), MAX_HOLD_S
        ):
            raise TimeoutError(f"{tag} was never released")
        self._record("finished", tag)
        return {"tag": tag, "host": self.host, "pid": os.getpid(), "finished_at": now()}

    def cleanup_host(self) -> None:
        self._record("cleanup", "-")


# -- effects outside Redis, for failover tests ------------------------------------------

EFFECTS_MANAGER_PATH = "tests.integration.faults:EffectManager"
EFFECTS_DRIVER_PATH = "tests.integration.faults:EffectDriver"


class EffectDriver:
    """Makes an effect that survives whatever happens to Redis: files under ``root``.

    ``done/<key>`` is the effect (made once, however often it is asked for);
    ``runs.log`` gets a line per run, so a test sees how often each key ran.
    """

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        (self.root / "done").mkdir(parents=True, exist_ok=True)

    def apply(self, key: str, host: str) -> None:
        with open(self.root / "runs.log", "a") as log:
            log.write(f"{key} {host}\n")
        (self.root / "done" / key).touch()


class EffectManager(Manager):
    """The ``effects`` service: ``record(key)`` makes the effect of ``key``."""

    @endpoint
    def record(self, key: str) -> str:
        """Make the effect of ``key``; the host that made it."""
        task = self.context.task_id if self.context is not None else "-"
        self.driver.apply(key, f"{self.host} {task}")
        return self.host


# -- a request's life: counting runs, long work, commands, retries ------------------------

LIFE_SERVICE = "life"


def life_settings(path: Path, root: Path) -> str:
    """TASKYARD_SETTINGS: the reference fleet, plus the ``life`` service (its files in ``root``)."""
    path.write_text(
        f"[default.services.{LIFE_SERVICE}]\n"
        'manager = "tests.integration.faults:LifeManager"\n'
        'driver = "tests.integration.faults:LifeDriver"\n'
        f'driver_options = {{ root = "{root}" }}\n'
    )
    return f"{REPO_ROOT / 'settings.toml'},{path}"



class LifeDriver:
    """Files under ``root`` that outlive Redis restarts, and commands through the executor."""

    def __init__(self, root: str, executor: Any = None) -> None:
        from drivers.executor import Executor

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.execute = executor or Executor()

    def note(self, name: str, line: str) -> int:
        """Append ``line`` to ``<root>/<name>``; how many lines it has now."""
        path = self.root / name
        with open(path, "a") as out:
            out.write(line + "\n")
        return len(path.read_text().splitlines())

    def lines(self, name: str) -> list[str]:
        path = self.root / name
        return path.read_text().splitlines() if path.exists() else []

    def sleep(self, seconds: float) -> None:
        """``sleep`` as a command: the executor stops it when the request is cancelled."""
        self.execute("sleep", str(seconds))


class LifeManager(Manager):
    """Endpoints whose every run leaves a trace outside Redis, for lifecycle tests."""

    driver: LifeDriver

    @endpoint
    def count(self, key: str) -> dict[str, Any]:
        """Not idempotent on purpose: every run adds a line to ``runs``."""
        self.driver.note("runs", f"{key} {self.host} {os.getpid()}")
        return {"key": key, "host": self.host}

    @endpoint
    def nap(self, tag: str, seconds: float = 1.0, steps: int = 10) -> dict[str, Any]:
        """Sleep in ``steps`` steps, reporting progress after each."""
        self.driver.note("started", tag)
        for step in range(steps):
            time.sleep(seconds / steps)
            self.report_progress(step + 1, steps, f"{tag} step {step + 1}")
        self.driver.note("finished", tag)
        return {"tag": tag, "host": self.host}

    @endpoint
    def command(self, tag: str, seconds: float = 60.0) -> dict[str, Any]:
        """Run ``sleep seconds`` as a driver command."""
        self.driver.note("started", tag)
        self.driver.sleep(seconds)
        self.driver.note("finished", tag)
        return {"tag": tag}

    @endpoint
    def spin(self, tag: str, seconds: float = 60.0) -> dict[str, Any]:
        """Work in a loop of its own that looks at ``self.context.cancelled``."""
        self.driver.note("started", tag)
        ends = time.monotonic() + seconds
        context = self.context
        while time.monotonic() < ends:
            if context is not None and context.cancelled:
                self.driver.note("noticed", tag)
                return {"tag": tag, "stopped": True}
            time.sleep(0.01)
        self.driver.note("finished", tag)
        return {"tag": tag, "stopped": False}

    @endpoint(autoretry_for=(DriverError,), max_retries=3, retry_backoff=0.2,
              retry_jitter=False)
    def flaky(self, key: str, failures: int = 1) -> dict[str, Any]:
        """Fail with a driver error on the first ``failures`` runs, then succeed."""
        context = self.context
        attempt = context.attempt if context is not None else 1
        self.driver.note("attempts", f"{key} {attempt}")
        if attempt <= failures:
            raise DriverError(f"backend busy (run {attempt})")
        return {"key": key, "attempt": attempt}

    @endpoint(autoretry_for=(DriverError,), max_retries=2, retry_backoff=0.1,
              retry_jitter=False)
    def picky(self, key: str) -> dict[str, Any]:
        """Raise a request's own error (never retried), whatever ``autoretry_for`` says."""
        self.driver.note("attempts", f"{key} {self.context.attempt if self.context else 1}")
        raise InvalidRequest(f"{key} is not acceptable")
