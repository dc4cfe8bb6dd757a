"""Cancellations kept in Redis, so every node honours them — also one that starts later.

Celery keeps revoked task ids in each worker's memory (lost at a restart,
unknown to a worker that starts afterwards). taskyard keeps them in the
broker's Redis, for as long as results are kept (``result_expires``):

- ``taskyard:revoked:<task id>`` holds ``revoke`` (the request must never
  run) or ``terminate`` (and stop it where it runs now).

A node reads it in the very transaction in which it takes a message
(:class:`workers.extensions.transport.QoS`), so a request cancelled before
a node took it never runs, with no extra round trip. :meth:`Revocations.revoke`
records the cancellation, takes the request out of the delayed requests if
it waits there, and reads who holds it now (the in-flight ledger), all in one
script: either the node that takes it sees the cancellation, or the
cancellation sees the node that took it. A running request is stopped by
its node on ``terminate`` (announced on ``taskyard:cancel``, see
:mod:`workers.node.cancellation`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kombu.utils.encoding import bytes_to_str

from workers.core.keys import (
    CANCEL_CHANNEL,
    DELAYED_ENTRIES_KEY,
    DELAYED_KEY,
    INFLIGHT_TASKS_KEY,
    revoked_key,
)

#: What a cancellation asks: that the request never runs, or also that it stops running.
REVOKE, TERMINATE = "revoke", "terminate"

#: KEYS: revoked key, delayed set, delayed entries, in-flight tasks. ARGV: task id, mode,
#: seconds to keep, whether to announce to the running node, the channel. Returns
#: {the list it waited for (or false), holder (or false)}.
_REVOKE = """
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
local waited = false
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  local entry = redis.call('HGET', KEYS[3], ARGV[1])
  waited = entry and string.sub(entry, 1, (string.find(entry, '\\n', 1, true) or 1) - 1) or ''
end
redis.call('HDEL', KEYS[3], ARGV[1])
local holder = redis.call('HGET', KEYS[4], ARGV[1])
if holder and ARGV[4] == '1' then
  redis.call('PUBLISH', ARGV[5], ARGV[1])
end
return {waited, holder}
"""


#: Rewrites a ledger entry only while it exists (the message is still held).
_MOVE_HOLDER = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
"""


@dataclass(frozen=True)
class Holder:
    """Who holds a request now: the node (host), the process running it, since when."""

    host: str
    pid: int | None = None
    #: Epoch seconds the node took it.
    since: float | None = None

    @classmethod
    def parse(cls, raw: Any) -> Holder | None:
        """Read an in-flight ledger entry (JSON ``{host, pid, at}``, or a bare host name)."""
        if raw is None or raw is False:
            return None
        text = bytes_to_str(raw)
        try:
            value = json.loads(text)
        except ValueError:
            return cls(text) if text else None
        if not isinstance(value, dict) or not value.get("host"):
            return cls(text)
        pid, at = value.get("pid"), value.get("at")
        return cls(str(value["host"]), int(pid) if isinstance(pid, int) else None,
                   float(at) if isinstance(at, (int, float)) else None)

    def encode(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "at": self.since},
                          separators=(",", ":"))


@dataclass(frozen=True)
class Revoked:
    """What recording a cancellation found: the queue it waited for (delayed), who runs it."""

    #: The Redis list of the queue it was waiting for, when it was a delayed request.
    waited_for: str | None
    holder: Holder | None

    @property
    def waited(self) -> bool:
        return self.waited_for is not None


class Revocations:
    """The cancellations of a fleet, in its broker's Redis (``redis``)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def revoke(self, task_id: str, *, terminate: bool, keep_s: int) -> Revoked:
        """Cancel ``task_id`` for ``keep_s`` seconds; with ``terminate``, stop it if it runs."""
        waited, holder = self.redis.eval(
            _REVOKE, 4, revoked_key(task_id), DELAYED_KEY, DELAYED_ENTRIES_KEY,
            INFLIGHT_TASKS_KEY, task_id, TERMINATE if terminate else REVOKE, max(1, keep_s),
            "1" if terminate else "0", CANCEL_CHANNEL)
        return Revoked(bytes_to_str(waited) if waited else None, Holder.parse(holder))

    def mode(self, task_id: str) -> str | None:
        """``revoke`` or ``terminate`` while ``task_id`` is cancelled, else None."""
        value = self.redis.get(revoked_key(task_id))
        return None if value is None else bytes_to_str(value)

    def terminating(self, task_ids: Iterable[str]) -> set[str]:
        """Which of ``task_ids`` are cancelled with ``terminate``."""
        ids = list(task_ids)
        if not ids:
            return set()
        values = self.redis.mget([revoked_key(task_id) for task_id in ids])
        return {task_id for task_id, value in zip(ids, values, strict=True)
                if value is not None and bytes_to_str(value) == TERMINATE}

    def holder(self, task_id: str) -> Holder | None:
        """The node holding ``task_id`` now (the in-flight ledger), or None."""
        return Holder.parse(self.redis.hget(INFLIGHT_TASKS_KEY, task_id))

    def move_holder(self, task_id: str, holder: Holder) -> None:
        """Say which process of its node runs ``task_id`` (a prefork child), while it is held."""
        self.redis.eval(_MOVE_HOLDER, 1, INFLIGHT_TASKS_KEY, task_id, holder.encode())
