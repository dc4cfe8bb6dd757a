"""A node's exit status: 0 when it stopped as asked, 1 when running work was cut short.

Celery's own statuses do not say that. A warm shutdown asked for with Ctrl-C
ends with 1 and one asked for with SIGTERM with 0, though both finish what
runs and leave the rest queued; and a quick second Ctrl-C (a cold shutdown,
which stops running work) can end with 0, because Celery's terminate path
sets no exit code. :class:`StopWatch` records how the worker was asked to
stop, from Celery's ``worker_ready`` and ``worker_shutting_down`` signals
(sent in the main process), and gives the status a user of the node
expects:

- a node stopped once (SIGTERM or one Ctrl-C), after it was ready: 0, also
  when ``shutdown_timeout`` then stopped what still ran (the node's own
  SIGQUIT, part of the stop it was asked for; the messages go back);
- a node forced (a second Ctrl-C or SIGTERM, or a SIGQUIT from outside): 1;
- a node that never got ready (a start failure): Celery's status, untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import signals
from celery.platforms import EX_FAILURE, EX_OK

_COLD = "Cold"
_QUIT = ("SIGQUIT", _COLD)

#: Set when the node stops its own running work at ``shutdown_timeout``.
_cut_off = threading.Event()


def cutting_off() -> None:
    """Say that the SIGQUIT about to arrive is the node's own cut-off, not an operator's."""
    _cut_off.set()


class StopWatch:
    """How one worker run was asked to stop; see the module's doc."""

    def __init__(self) -> None:
        self.ready = False
        #: ``(signal name, "Warm" or "Cold")`` of each stop asked for once ready.
        self.stops: list[tuple[str, str]] = []

    def on_ready(self, **_: Any) -> None:
        self.ready = True

    def on_stopping(self, sig: str = "", how: str = "", **_: Any) -> None:
        if self.ready:
            self.stops.append((sig, how))

    @classmethod
    @contextmanager
    def watching(cls) -> Iterator[StopWatch]:
        """Record the stops of the worker run inside the ``with`` block."""
        watch = cls()
        _cut_off.clear()
        signals.worker_ready.connect(watch.on_ready, weak=False)
        signals.worker_shutting_down.connect(watch.on_stopping, weak=False)
        try:
            yield watch
        finally:
            signals.worker_ready.disconnect(watch.on_ready)
            signals.worker_shutting_down.disconnect(watch.on_stopping)

    def exit_code(self, code: int | None) -> int:
        """The status to exit with, given the one Celery's worker command returned."""
        asked = list(self.stops)
        if _cut_off.is_set() and _QUIT in asked:
            asked.remove(_QUIT)
        if not asked:
            return code or EX_OK
        if any(how == _COLD for _, how in asked):
            return code or EX_FAILURE
        if asked[0][0] == "SIGINT" and code == EX_FAILURE:
            return EX_OK  # Celery's status for a Ctrl-C; after a SIGTERM, 1 is a real failure
        return code or EX_OK
