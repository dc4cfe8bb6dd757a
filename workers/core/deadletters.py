"""Dead letters: every message a node could not process, kept with the reason.

Nothing a node refuses disappears. A message that cannot be decoded, names
a task the node does not have, fails the signature check, is too large,
asks for an API version the node does not serve, or carries arguments the
endpoint does not take goes to the list ``taskyard:deadletters:<service>``
(newest first, at most :data:`MAX_PER_SERVICE` entries) with the reason,
the node and what could be read of it. ``taskyard deadletters`` lists them
and ``--requeue ID`` sends one again (never one refused for its signature:
requeueing would sign what nobody vouched for).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from workers.core.keys import deadletters_key
from workers.exceptions import NotFound

log = logging.getLogger("taskyard.deadletters")

#: Entries kept per service; older ones are dropped first.
MAX_PER_SERVICE = 10_000
#: Characters kept of a raw message that could not be decoded.
MAX_RAW_CHARS = 65_536
#: Service name under which messages of unknown service are kept.
UNKNOWN_SERVICE = "_unknown"


def service_of(queue_or_task: str | None, known: set[str] | None = None) -> str:
    """The service a queue (``volume``, ``volume.node-a``) or task name belongs to."""
    if not queue_or_task:
        return UNKNOWN_SERVICE
    service = str(queue_or_task).split(".", 1)[0]
    if known is not None and service not in known:
        return UNKNOWN_SERVICE
    return service or UNKNOWN_SERVICE


class DeadLetters:
    """The dead-letter lists in one Redis."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def add(
        self,
        service: str,
        reason: str,
        *,
        host: str | None = None,
        queue: str | None = None,
        task: str | None = None,
        task_id: str | None = None,
        args: Any = None,
        kwargs: Any = None,
        headers: dict[str, Any] | None = None,
        raw: str | bytes | None = None,
        requeueable: bool = True,
    ) -> str:
        """Keep one refused message; return the entry's id. Never raises (logs instead)."""
        letter_id = uuid.uuid4().hex[:12]
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        entry = {
            "id": letter_id, "service": service, "reason": reason, "at": time.time(),
            "host": host, "queue": queue, "task": task, "task_id": task_id,
            "args": args, "kwargs": kwargs,
            "headers": {k: v for k, v in (headers or {}).items() if k.startswith("taskyard_")},
            "raw": raw[:MAX_RAW_CHARS] if raw is not None else None,
            "requeueable": bool(requeueable and task and raw is None),
        }
        log.warning("dead letter %s for %s: %s (task %s %s, queue %s)", letter_id, service,
                    reason, task, task_id, queue)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpush(deadletters_key(service), json.dumps(entry, default=repr))
            pipe.ltrim(deadletters_key(service), 0, MAX_PER_SERVICE - 1)
            pipe.execute()
        except Exception:
            log.exception("could not store dead letter %s (%s)", letter_id, reason)
        return letter_id

    def services(self) -> list[str]:
        prefix = deadletters_key("")
        return sorted(
            (k.decode() if isinstance(k, bytes) else k)[len(prefix):]
            for k in self.redis.scan_iter(match=prefix + "*")
        )

    def list(self, service: str | None = None) -> list[dict[str, Any]]:
        """Entries of one service (or of all), newest first."""
        entries: list[dict[str, Any]] = []
        for name in [service] if service else self.services():
            entries += [json.loads(raw) for raw in self.redis.lrange(deadletters_key(name), 0, -1)]
        entries.sort(key=lambda e: e["at"], reverse=True)
        return entries

    def find(self, letter_id: str) -> tuple[str, dict[str, Any], bytes]:
        for service in self.services():
            for raw in self.redis.lrange(deadletters_key(service), 0, -1):
                entry = json.loads(raw)
                if entry["id"] == letter_id:
                    return service, entry, raw
        raise NotFound(f"no dead letter with id {letter_id!r}", {"id": letter_id})

    def remove(self, service: str, raw: bytes) -> None:
        self.redis.lrem(deadletters_key(service), 1, raw)
