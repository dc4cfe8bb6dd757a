"""Worker logs: one line per event, each carrying the request id it was written for.

Celery sets up a node's logging; these hooks then add the id of the request
in hand (``-`` outside a request) to every record and to the format, and
replace Celery's two lines per task (received, succeeded) with the one line
:mod:`workers.node.endpoints` writes per request: service, endpoint, host, request
id, duration and outcome.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals

from managers.base import current_context

#: The format of every line a node writes.
LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] [req=%(request_id)s] %(name)s: %(message)s"
)

#: Celery's per-task INFO lines, replaced by the request line of workers.node.endpoints.
QUIETED = ("celery.app.trace", "celery.worker.strategy")


_requests = logging.getLogger("taskyard.requests")


def log_request(name: str, host: str | None, request_id: str, task_id: str | None,
                started: float, outcome: str) -> None:
    """The one line a node writes per request it handled (``started``: perf_counter)."""
    _requests.info("%s host=%s request=%s task=%s duration=%.1fms outcome=%s", name, host,
                   request_id, task_id, (time.perf_counter() - started) * 1000, outcome)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the request in hand, or ``-``) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_context.get()
        record.request_id = context.request_id if context is not None else "-"
        return True


def install(logger: logging.Logger, fmt: str = LOG_FORMAT) -> None:
    """Give every handler of ``logger`` the request id filter and the taskyard format."""
    for handler in logger.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter(fmt))
    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.WARNING)


def install_now() -> None:
    """Install on the loggers Celery has already set up (a node's start, after its logging)."""
    install(logging.getLogger())
    install(logging.getLogger("celery.task"))


def _on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None:
        install(logger)


signals.after_setup_logger.connect(_on_setup_logger, weak=False,
                                   dispatch_uid="taskyard.logs.setup")
signals.after_setup_task_logger.connect(_on_setup_logger, weak=False,
                                        dispatch_uid="taskyard.logs.setup_task")
