"""Showing a request's progress while waiting for it (``taskyard call``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

from workers.exceptions import Timeout

if TYPE_CHECKING:
    from workers.client.rpc import Handle

#: Seconds between two looks at the request's state.
POLL_INTERVAL_S = 0.1
#: Characters of the bar itself.
BAR_WIDTH = 30
#: Seconds a request runs before its progress is shown: a request done sooner
#: prints its result alone, not a bar that flashes for a few milliseconds.
SHOW_AFTER_S = 0.3


def render(progress: dict[str, Any], width: int = BAR_WIDTH) -> str:
    """``[#########.....]  3/10  copying`` for ``{done, total, message}``."""
    done, total = int(progress.get("done", 0)), int(progress.get("total", 0))
    filled = int(width * done / total) if total > 0 else 0
    bar = "#" * filled + "." * (width - filled)
    return f"[{bar}] {done}/{total} {progress.get('message', '')}".rstrip()


def wait_with_progress(handle: Handle, timeout: float, stream: TextIO) -> Any:
    """Wait for ``handle``, showing its progress on ``stream``.

    On a terminal the bar is redrawn in place; elsewhere (a log file, a
    pipe) each new step is one plain line. Nothing is shown for the first
    ``SHOW_AFTER_S`` seconds, so what a quick request prints does not depend
    on whether a look happened to fall inside its few milliseconds of work.
    """
    tty = stream.isatty()
    started = time.monotonic()
    deadline = started + timeout
    last: dict[str, Any] | None = None
    shown = False
    while not handle.ready():
        now = time.monotonic()
        if now >= deadline:
            break
        progress = handle.progress() if now - started >= SHOW_AFTER_S else None
        if progress and progress != last:
            last = progress
            if tty:
                stream.write("\r" + render(progress).ljust(BAR_WIDTH + 40))
            else:
                stream.write(
                    f"progress {progress.get('done')}/{progress.get('total')} "
                    f"{progress.get('message', '')}".rstrip() + "\n"
                )
            stream.flush()
            shown = True
        time.sleep(POLL_INTERVAL_S)
    if shown and tty:
        stream.write("\n")
        stream.flush()
    remaining = deadline - time.monotonic()
    if remaining <= 0 and not handle.ready():
        raise Timeout(
            f"no answer from {handle.service}.{handle.method} within {timeout:g} s; "
            f"it may still run (task id {handle.id})",
            {"task_id": handle.id},
        )
    return handle.wait(max(remaining, 1.0))
