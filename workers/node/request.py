"""Celery's worker request, telling what happened to a request that did not run.

Celery settles a request that expired or was revoked before it ran (state
``REVOKED``, a ``task-revoked`` event, the ``task_revoked`` signal, the
message acknowledged). Its result then says only ``expired`` or
``revoked``; here it says when the deadline was and when the node took the
request, and each one is counted in Redis (``taskyard:counts``, field
``expired:<service>`` or ``cancelled:<service>``) for ``taskyard status``.
It is never dead-lettered: a request that expired was not refused, it came
too late.

Every endpoint and periodic task names this class as its ``Request``
(:mod:`workers.node.endpoints`); Celery builds its optimized subclass of it.
Private internal of Celery 5.7 (``tests/unit/test_canaries.py``):
``Request._announce_revoked(reason, terminated, signum, expired)``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from celery.worker.request import Request as CeleryRequest

from workers.core.addresses import is_redis_address
from workers.core.keys import LIFECYCLE_COUNTS_KEY
from workers.extensions.backend import EXPIRED_REASON

log = logging.getLogger("taskyard.lifecycle")

#: What a request settled without running is counted as, by Celery's reason.
_COUNTED = {"expired": "expired", "revoked": "cancelled"}


class Request(CeleryRequest):  # type: ignore[misc]
    """Celery's request; a request settled without running says why, and is counted."""

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any,
                          expired: bool) -> None:
        app = self._app
        host = getattr(getattr(app, "config", None), "host", None) or self.hostname
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        counted = _COUNTED.get(reason)
        if expired and self.expires is not None:
            deadline = self.expires.isoformat()
            reason = (f"{EXPIRED_REASON} at {deadline} before it ran (node {host} took it "
                      f"at {now})")
            log.info("%s[%s] not run: its deadline %s passed before node %s took it",
                     self.name, self.id, deadline, host)
        elif reason == "revoked":
            reason = f"cancelled before it ran (node {host} took it at {now})"
        super()._announce_revoked(reason, terminated, signum, expired)
        if counted:
            count(app, counted, self.name)


def count(app: Any, what: str, task: str | None) -> None:
    """Add one to ``what`` (``expired``, ``cancelled``) of ``task``'s service."""
    config = getattr(app, "config", None)
    if config is None or not is_redis_address(config.broker_url):
        return
    service = str(task or "?").split(".", 1)[0]
    try:
        app.redis(config.broker_url).hincrby(LIFECYCLE_COUNTS_KEY, f"{what}:{service}", 1)
    except Exception as exc:  # a count is worth a log line, never a lost request
        log.warning("could not count %s %s: %s", what, task, exc)
