"""Running commands for drivers: the one place taskyard starts a process.

Never through a shell: every argument reaches the program as it is, so a
volume name cannot become a command. Commands that need root are prefixed
with the configured root helper (``sudo -n``, say). Drivers take an
:class:`Executor` as a constructor argument, so tests can hand them a
recording one and check the exact commands.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.cancellation import current_scope
from drivers.exceptions import Cancelled, ProcessExecutionError

log = logging.getLogger(__name__)

__all__ = ["Executor", "ProcessExecutionError", "RecordingExecutor", "Result"]

#: Seconds between two attempts of a command run with ``attempts > 1``.
RETRY_DELAY_S = 0.5

#: A command runs in a process group of its own. Ctrl-C in a node's terminal signals
#: the terminal's whole foreground group: a command there would die with the first
#: Ctrl-C, which asks the node to finish what runs (a prefork node's children ignore
#: SIGINT and their commands inherit that; a solo or threads node's commands would
#: not). It stays in the node's session, so ``sudo`` still sees the node's terminal.
OWN_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
)


@dataclass(frozen=True)
class Result:
    """What a finished command printed."""

    stdout: str
    stderr: str
    exit_code: int


class Executor:
    """Runs commands, optionally as root through a helper prefix."""

    #: Programs started by :meth:`spawn` in this process, kept so that Python neither
    #: warns about them nor loses track of them; finished ones are dropped at the next spawn.
    _spawned: dict[int, subprocess.Popen[bytes]] = {}

    def __init__(self, root_helper: Sequence[str] = ()) -> None:
        self.root_helper = tuple(root_helper)

    def __call__(
        self,
        *cmd: str,
        run_as_root: bool = False,
        check_exit_code: Iterable[int] | bool = (0,),
        timeout: float | None = None,
        input: str | None = None,
        attempts: int = 1,
    ) -> Result:
        """Run ``cmd`` and return its output.

        ``check_exit_code`` lists the exit codes that count as success
        (``False`` accepts any). A failure, a timeout or a program that cannot
        start raises :class:`ProcessExecutionError` with the command, exit
        code, stdout and stderr; with ``attempts > 1`` it is tried again first.

        Inside a request that gets cancelled (:mod:`drivers.cancellation`), the
        command's process group is stopped and :class:`Cancelled` is raised
        instead, never retried; a command is not started once its request
        was cancelled.
        """
        if not cmd:
            raise ValueError("Executor() needs a command")
        argv = self._argv(cmd, run_as_root)
        ok_codes = None if check_exit_code is False else frozenset(
            (0,) if check_exit_code is True else check_exit_code
        )
        attempts = max(1, int(attempts))
        for attempt in range(1, attempts + 1):
            try:
                return self._run_once(argv, ok_codes, timeout, input)
            except ProcessExecutionError as exc:
                if attempt == attempts:
                    raise
                log.warning("%s (attempt %d of %d, retrying)", exc, attempt, attempts)
                time.sleep(RETRY_DELAY_S)
        raise AssertionError("unreachable")  # pragma: no cover

    def _argv(self, cmd: tuple[str, ...], run_as_root: bool) -> tuple[str, ...]:
        """The program's argument vector, behind the root helper when asked."""
        argv = tuple(str(part) for part in cmd)
        return self.root_helper + argv if run_as_root and self.root_helper else argv

    def spawn(
        self,
        *cmd: str,
        log_path: str,
        cwd: str | None = None,
        run_as_root: bool = False,
    ) -> int:
        """Start a long-running program in its own session and return its pid.

        Its stdout and stderr are appended to ``log_path``; it does not end
        with the worker that started it (a new session, no controlling
        terminal). The caller tracks it by pid.
        """
        argv = self._argv(cmd, run_as_root)
        log.debug("spawning: %s", shlex.join(argv))
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    cwd=cwd, start_new_session=True, close_fds=True,
                )
        except OSError as exc:
            raise ProcessExecutionError(
                f"cannot start {shlex.join(argv)}: {exc.strerror or exc}", cmd=argv,
                stderr=str(exc),
            ) from exc
        for pid, child in list(Executor._spawned.items()):
            if child.poll() is not None:
                del Executor._spawned[pid]
        Executor._spawned[proc.pid] = proc
        return proc.pid

    def _run_once(
        self,
        argv: tuple[str, ...],
        ok_codes: frozenset[int] | None,
        timeout: float | None,
        input: str | None,
    ) -> Result:
        shown = shlex.join(argv)
        scope = current_scope.get()
        if scope is not None:
            scope.check()
        log.debug("running: %s", shown)
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **OWN_GROUP,
            )
        except OSError as exc:  # not found, not executable, ...
            raise ProcessExecutionError(
                f"cannot run {shown}: {exc.strerror or exc}", cmd=argv, exit_code=None,
                stderr=str(exc),
            ) from exc
        # The command leads a process group of its own (OWN_GROUP): its pid names the group.
        with proc, scope.running(proc.pid) if scope is not None else contextlib.nullcontext():
            try:
                stdout, stderr = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                proc.kill()
                out, err = proc.communicate()
                raise ProcessExecutionError(
                    f"{shown} did not finish within {timeout} s", cmd=argv, exit_code=None,
                    stdout=_text(exc.stdout) or out, stderr=_text(exc.stderr) or err,
                ) from exc
            except BaseException:
                proc.kill()
                raise
        if scope is not None and scope.cancelled:
            raise Cancelled(
                f"{shown} was stopped: its request was cancelled ({scope.reason})",
                {"cmd": list(argv), "exit_code": proc.returncode, "task_id": scope.task_id},
            )
        result = Result(stdout, stderr, proc.returncode)
        return _checked(argv, ok_codes, result)


def _checked(argv: tuple[str, ...], ok_codes: frozenset[int] | None, result: Result) -> Result:
    """``result``, or :class:`ProcessExecutionError` when its exit code is not accepted."""
    if ok_codes is not None and result.exit_code not in ok_codes:
        raise ProcessExecutionError(
            f"{shlex.join(argv)} exited with {result.exit_code}: {result.stderr.strip()[:500]}",
            cmd=argv, exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr,
        )
    return result


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


@dataclass
class RecordingExecutor(Executor):
    """An executor for tests: records every command and answers from a script.

    ``responses`` maps the start of a command (as a tuple) to its result;
    unmatched commands succeed with empty output.
    """

    root_helper: tuple[str, ...] = ()
    responses: dict[tuple[str, ...], Result | ProcessExecutionError] = field(default_factory=dict)
    commands: list[tuple[str, ...]] = field(default_factory=list)
    #: Commands given to :meth:`spawn`, which starts nothing and returns a made-up pid.
    spawned: list[tuple[str, ...]] = field(default_factory=list)

    def spawn(self, *cmd: str, log_path: str, cwd: str | None = None,
              run_as_root: bool = False) -> int:
        argv = self._argv(cmd, run_as_root)
        self.spawned.append(argv)
        return 100000 + len(self.spawned)

    def _run_once(
        self,
        argv: tuple[str, ...],
        ok_codes: frozenset[int] | None,
        timeout: float | None,
        input: str | None,
    ) -> Result:
        self.commands.append(argv)
        for prefix, response in sorted(self.responses.items(), key=lambda kv: -len(kv[0])):
            if argv[: len(prefix)] == prefix:
                if isinstance(response, ProcessExecutionError):
                    raise response
                return _checked(argv, ok_codes, response)
        return Result("", "", 0)
