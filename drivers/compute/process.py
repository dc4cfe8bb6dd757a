"""Instances as supervised local processes, started from a catalogue of command lines.

An instance lives in ``<root>/<instance_id>/``: ``console.log`` collects what
its program prints and ``instance.json`` records its pid, argv, image and the
process's start time (field 22 of ``/proc/<pid>/stat``). The start time is
what makes a pid file trustworthy: a pid the kernel has since given to
another process has another start time, so a recycled pid is never taken for
the instance. Everything is read back from disk on each call, so instances
survive a worker restart and every process of a prefork pool sees the same
ones.

Each program runs in its own session (see :meth:`Executor.spawn`), so its
process group id is its pid and stopping it stops whatever it started too.
Linux only: it reads ``/proc``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from drivers.compute.base import (
    MISSING,
    RUNNING,
    STOPPED,
    ComputeDriver,
    ComputeDriverError,
    InstanceRef,
    command_for,
    parse_images,
)
from drivers.executor import Executor, ProcessExecutionError
from drivers.ids import safe_id

log = logging.getLogger(__name__)

CONSOLE = "console.log"
RECORD = "instance.json"
#: Serialises spawn, destroy and reboot across the processes of a pool.
LOCK = ".lock"

#: Seconds between two looks at a process that was asked to stop.
POLL_INTERVAL_S = 0.02
#: Seconds to wait for a process group to vanish after SIGKILL.
KILL_WAIT_S = 5.0
#: Bytes read at a time from the end of a console log.
TAIL_BLOCK = 8192

#: Process states of /proc/<pid>/stat that mean "exited" (zombie, dead).
_EXITED_STATES = frozenset("ZXx")


@dataclass(frozen=True)
class _ProcStat:
    """The fields of ``/proc/<pid>/stat`` the driver needs."""

    state: str
    pgrp: int
    #: Clock ticks after boot; unique to a process together with its pid.
    start_time: int


def _proc_stat(pid: int) -> _ProcStat | None:
    """What the kernel says of ``pid`` now, or None when no such process exists."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or
    # parentheses itself: the fields after it start past the last ")".
    fields = raw[raw.rindex(b")") + 2 :].split()
    return _ProcStat(state=fields[0].decode(), pgrp=int(fields[2]), start_time=int(fields[19]))


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is our child, so no zombie is left."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@dataclass(frozen=True)
class _Record:
    """The contents of ``instance.json``."""

    id: str
    image: str
    argv: list[str]
    pid: int
    #: None when the program was gone before its start time could be read.
    start_time: int | None
    started_at: str


class ProcessComputeDriver(ComputeDriver):
    """Local processes under ``root``, at most ``max_instances`` running at once.

    ``stop_timeout`` is the number of seconds a program gets to end after
    SIGTERM before its process group is sent SIGKILL.
    """

    def __init__(
        self,
        root: str,
        images: Mapping[str, str | Sequence[str]] | None = None,
        max_instances: int = 10,
        stop_timeout: float = 10.0,
        executor: Executor | None = None,
    ) -> None:
        if not root:
            raise ValueError("the process compute driver needs driver_options.root")
        if not images:
            raise ValueError(
                "the process compute driver needs driver_options.images "
                "(image name -> command line), e.g. {sleeper = \"sleep 3600\"}"
            )
        self.root = Path(root).expanduser().resolve()
        self.catalogue = parse_images(images)
        self.max_instances = int(max_instances)
        self.stop_timeout = float(stop_timeout)
        if self.max_instances < 0 or self.stop_timeout < 0:
            raise ValueError(
                f"max_instances ({max_instances}) and stop_timeout ({stop_timeout}) "
                "cannot be negative"
            )
        self.execute = executor or Executor()

    # -- paths and records -------------------------------------------------

    def instance_dir(self, instance_id: str) -> Path:
        return self.root / safe_id(instance_id)

    def _read(self, instance_id: str) -> _Record | None:
        """The instance's record; None when it has none or it cannot be read."""
        try:
            data = json.loads((self.instance_dir(instance_id) / RECORD).read_text())
            return _Record(**data)
        except (OSError, ValueError, TypeError):
            return None

    def _write(self, record: _Record) -> None:
        # Written whole then renamed, so a reader never sees half a record.
        path = self.instance_dir(record.id) / RECORD
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(record)))
        os.replace(partial, path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the node-wide lock: capacity checks and starts must not interleave."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- processes ---------------------------------------------------------

    def _running_pid(self, record: _Record) -> int | None:
        """The instance's pid while its program runs; None once it exited or the pid moved on."""
        stat = _proc_stat(record.pid)
        if stat is None or record.start_time is None or stat.start_time != record.start_time:
            return None
        if stat.state in _EXITED_STATES:
            _reap(record.pid)
            return None
        return record.pid

    def _group(self, record: _Record) -> list[int]:
        """Live processes of the instance's process group (its program and what it started).

        The group id is the program's pid. A process holding that pid with
        another start time means the number was given out again, so the
        group is someone else's. The kernel does not give the number out
        while any member of the group lives, so members found while no
        process holds it are the instance's, even after its program exited
        (members started before the instance cannot be its own).
        """
        if record.start_time is None:
            return []
        leader = _proc_stat(record.pid)
        if leader is not None and leader.start_time != record.start_time:
            return []
        self._running_pid(record)  # reaps the program if it is our zombie
        members = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = _proc_stat(int(entry))
            if (
                stat is not None
                and stat.pgrp == record.pid
                and stat.state not in _EXITED_STATES
                and stat.start_time >= record.start_time
            ):
                members.append(int(entry))
        return members

    def _wait_for_group(self, record: _Record, timeout: float) -> bool:
        """Whether the instance's process group was gone within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self._group(record):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)
        return True

    def _stop(self, record: _Record) -> None:
        """End the instance's process group: SIGTERM, then SIGKILL after ``stop_timeout``."""
        if not self._group(record):
            return
        for sig, timeout in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, KILL_WAIT_S)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, sig)
            if self._wait_for_group(record, timeout):
                return
            log.warning("instance %s (pid %d) outlived %s", record.id, record.pid, sig.name)
        raise ComputeDriverError(
            f"instance {record.id!r}: process group {record.pid} survived SIGKILL for "
            f"{KILL_WAIT_S} s (uninterruptible I/O?)"
        )

    def _start(self, instance_id: str, image: str,
               argv: list[str] | None = None) -> dict[str, Any]:
        """Start ``argv`` for ``instance_id`` and record it; the caller holds the lock."""
        argv = argv or command_for(self.catalogue, image)
        running = sum(1 for state in self.list_instances().values() if state == RUNNING)
        if running >= self.max_instances:
            raise ComputeDriverError(
                f"cannot start instance {instance_id!r}: {running} instances run "
                f"and max_instances is {self.max_instances}"
            )
        directory = self.instance_dir(instance_id)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            pid = self.execute.spawn(
                *argv, log_path=str(directory / CONSOLE), cwd=str(directory)
            )
        except ProcessExecutionError as exc:
            raise ComputeDriverError(f"instance {instance_id!r}: {exc}") from exc
        stat = _proc_stat(pid)
        record = _Record(
            id=instance_id, image=image, argv=list(argv), pid=pid,
            start_time=stat.start_time if stat else None,
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self._write(record)
        log.info("instance %s started from %s as pid %d", instance_id, image, pid)
        return self._details(record)

    def _details(self, record: _Record) -> dict[str, Any]:
        return {
            "pid": record.pid,
            "console": str(self.instance_dir(record.id) / CONSOLE),
            "command": list(record.argv),
        }


    # -- the contract ------------------------------------------------------

    def do_setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        found = self.list_instances()
        if found:
            running = sum(1 for state in found.values() if state == RUNNING)
            log.info("found %d instances under %s, %d running", len(found), self.root, running)

    def check_for_setup_error(self) -> None:
        problems = []
        if not Path("/proc/self/stat").exists():
            problems.append("the process compute driver needs /proc (Linux)")
        if not self.root.is_dir():
            problems.append(f"instance root {self.root} is not a directory")
        elif not os.access(self.root, os.W_OK | os.X_OK):
            problems.append(f"instance root {self.root} is not writable")
        for image, argv in sorted(self.catalogue.items()):
            program = argv[0]
            if os.sep in program and not os.path.isabs(program):
                # It would be looked for from the instance's directory, its cwd.
                problems.append(
                    f"image {image!r}: {program} is a relative path; "
                    "give an absolute path or a program name on PATH"
                )
            elif os.sep in program:
                if not (os.path.isfile(program) and os.access(program, os.X_OK)):
                    problems.append(f"image {image!r}: {program} is not an executable file")
            elif shutil.which(program) is None:
                problems.append(f"image {image!r}: program {program!r} is not on PATH")
        if problems:
            raise ComputeDriverError("; ".join(problems))

    def images(self) -> list[str]:
        return sorted(self.catalogue)

    def spawn(self, instance: InstanceRef) -> dict[str, Any]:
        with self._locked():
            record = self._read(instance.id)
            if record is not None and self._running_pid(record) is not None:
                return self._details(record)
            return self._start(instance.id, instance.image)

    def destroy(self, instance: InstanceRef) -> None:
        directory = self.instance_dir(instance.id)
        with self._locked():
            record = self._read(instance.id)
            if record is not None:
                self._stop(record)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(directory)

    def reboot(self, instance: InstanceRef) -> dict[str, Any]:
        with self._locked():
            record = self._read(instance.id)
            if record is None:
                return self._start(instance.id, instance.image)
            self._stop(record)
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            with open(self.instance_dir(instance.id) / CONSOLE, "a") as console:
                console.write(f"--- rebooted at {stamp} ---\n")
            return self._start(instance.id, record.image, record.argv)

    def power_state(self, instance_id: str) -> str:
        if not self.instance_dir(instance_id).is_dir():
            return MISSING
        record = self._read(instance_id)
        if record is None or self._running_pid(record) is None:
            return STOPPED
        return RUNNING

    def list_instances(self) -> dict[str, str]:
        try:
            entries = sorted(os.scandir(self.root), key=lambda entry: entry.name)
        except FileNotFoundError:
            return {}
        found = {}
        for entry in entries:
            # Dot-files (the lock) and strays are not instances: ids never start with a dot.
            with contextlib.suppress(ValueError):
                if entry.is_dir() and safe_id(entry.name):
                    found[entry.name] = self.power_state(entry.name)
        return found

    def get_console_output(self, instance: InstanceRef, lines: int = 50) -> str:
        if lines <= 0:
            return ""
        try:
            return _tail(self.instance_dir(instance.id) / CONSOLE, lines)
        except FileNotFoundError:
            return ""

    def get_host_stats(self) -> dict[str, Any]:
        running = sum(1 for state in self.list_instances().values() if state == RUNNING)
        return {
            "backend": "process",
            "root": str(self.root),
            "max_instances": self.max_instances,
            "instances": running,
            "free_slots": max(0, self.max_instances - running),
            "images": self.images(),
        }


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of ``path``, reading only as much of its end as they need."""
    with open(path, "rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        data = b""
        # One newline more than lines wanted proves the first line kept is whole.
        while position > 0 and data.count(b"\n") <= lines:
            step = min(TAIL_BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    return b"".join(data.splitlines(keepends=True)[-lines:]).decode(errors="replace")
