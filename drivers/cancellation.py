"""Stopping the request in hand: its cancel scope, seen by the executor and the manager.

A node runs each request inside a :class:`CancelScope`. When the request is
cancelled with ``terminate`` (``Handle.cancel(terminate=True)``), the node's
service layer calls :meth:`CancelScope.cancel` from another thread. From then
on:

- every command a driver runs through the executor for this request is
  stopped: its process group gets SIGTERM, then SIGKILL after
  :data:`KILL_GRACE_S`, and the executor raises :class:`Cancelled` instead of
  a command failure; a command started afterwards is not started at all;
- the manager's next progress report raises :class:`Cancelled`;
- the endpoint may look for itself (``self.context.cancelled``) and return
  early, or call :meth:`CancelScope.check`.

The scope is a context variable, so code that runs for the request (in the
thread running it) finds it without being handed it. A driver never needs
to know: the executor does the work. This module imports the standard
library only, so every layer can use it.
"""

from __future__ import annotations

import contextvars
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from drivers.exceptions import Cancelled

__all__ = ["KILL_GRACE_S", "CancelScope", "check_cancelled", "current_scope"]

log = logging.getLogger(__name__)

#: Seconds a stopped command has between SIGTERM and SIGKILL.
KILL_GRACE_S = 2.0


class CancelScope:
    """Whether one request was asked to stop, and the commands to stop with it.

    Thread-safe: the request's own thread registers its commands and checks;
    another thread (the node's) cancels.
    """

    def __init__(self, task_id: str | None = None) -> None:
        self.task_id = task_id
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        #: Why the request was stopped (set by :meth:`cancel`).
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        """Whether the request was asked to stop."""
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the request to stop, and stop the commands it runs now."""
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            groups = list(self._groups)
        for group in groups:
            _stop_group(group)

    def check(self) -> None:
        """Raise :class:`Cancelled` if the request was asked to stop."""
        if self._event.is_set():
            what = f"request {self.task_id}" if self.task_id else "the request"
            raise Cancelled(f"{what} was stopped: {self.reason}",
                            {"task_id": self.task_id, "reason": self.reason})

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for a cancellation; whether one came."""
        return self._event.wait(timeout)

    @contextmanager
    def running(self, process_group: int) -> Iterator[None]:
        """Stop ``process_group`` if the request is cancelled while the block runs.

        A cancellation that came before the block stops the group at once.
        """
        with self._lock:
            self._groups.add(process_group)
            cancelled = self._event.is_set()
        if cancelled:
            _stop_group(process_group)
        try:
            yield
        finally:
            with self._lock:
                self._groups.discard(process_group)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "live"
        return f"<CancelScope {self.task_id} {state}>"


def _stop_group(group: int) -> None:
    """SIGTERM ``group`` now and SIGKILL it after :data:`KILL_GRACE_S` if it is still there."""
    if not _signal_group(group, signal.SIGTERM):
        return
    timer = threading.Timer(KILL_GRACE_S, _signal_group, (group, signal.SIGKILL))
    timer.daemon = True
    timer.start()


def _signal_group(group: int, signum: int) -> bool:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    except PermissionError as exc:  # a command run as root through the root helper
        log.warning("cannot stop process group %d of a cancelled request: %s", group, exc)
        return False
    return True


#: The scope of the request this thread runs (set by the service layer), or None.
current_scope: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar(
    "taskyard_cancel_scope", default=None
)


def check_cancelled() -> None:
    """Raise :class:`Cancelled` when the request in hand was asked to stop."""
    scope = current_scope.get()
    if scope is not None:
        scope.check()
