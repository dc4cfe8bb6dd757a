"""Delayed requests wait in Redis, not in a node's memory, and are moved to their queue when due.

Celery keeps a request with an ``eta`` in the memory of the worker that took
it, unacknowledged; on Redis, once the wait passes ``visibility_timeout``
the message is delivered again and runs twice, and a worker holding many
of them holds them all in memory. taskyard keeps a delayed request — a
``countdown`` or ``eta`` of a caller, a plain Celery caller's ETA message, a
retry — in two Redis keys instead:

- ``taskyard:delayed``: a sorted set, task id -> when it is due (epoch seconds);
- ``taskyard:delayed:entries``: a hash, task id -> ``<list>\\n<envelope>``,
  the Redis list of its queue and the kombu envelope to push there.

One Lua script (:data:`_MOVE`) moves what is due, oldest first, to the head
of its list, as a publish would (``LPUSH``): a request is moved once, by
whichever node runs the script, and is in the set or in its queue, never in
both and never in neither. The nodes of a fleet take turns at it under a
lease (:class:`workers.node.mover.Mover`); the time is Redis's own (``TIME``
in the script), so the nodes' clocks do not matter. Nothing here is held
unacknowledged, so ``visibility_timeout`` never applies, and a node crash
or a Redis restart (with the append-only file) loses nothing.

A request is cancelled while it waits by removing it from both keys
(:meth:`DelayedRequests.cancel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kombu.utils.encoding import bytes_to_str

from workers.core.keys import DELAYED_ENTRIES_KEY, DELAYED_KEY, bell_key

#: The bell of a list is this prefix and the list's name (see workers.extensions.take).
BELL_PREFIX = bell_key("")

#: Requests one run of the move script hands on at most (another run follows at once).
MOVE_BATCH = 500

#: Adds delayed requests: ARGV = n, then n times (task id, due, entry); with KEYS[3], also
#: HSET KEYS[3] attempt ARGV[3n+2] error ARGV[3n+3] retry_at ARGV[3n+4], EXPIRE ARGV[3n+5].
_SCHEDULE = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local id = ARGV[2 + 3 * i]
  redis.call('ZADD', KEYS[1], ARGV[3 + 3 * i], id)
  redis.call('HSET', KEYS[2], id, ARGV[4 + 3 * i])
end
if KEYS[3] then
  local at = 2 + 3 * n
  redis.call('HSET', KEYS[3], 'attempt', ARGV[at], 'error', ARGV[at + 1],
             'retry_at', ARGV[at + 2])
  redis.call('EXPIRE', KEYS[3], ARGV[at + 3])
end
return n
"""

#: Moves up to ARGV[1] due requests to their lists, ringing each list's bell (ARGV[2] ..
#: list, one token per request); returns {moved, seconds until the next is due (-1: none
#: waits)} by Redis's clock.
_MOVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  local entry = redis.call('HGET', KEYS[2], id)
  if entry then
    local cut = string.find(entry, '\\n', 1, true)
    local list = string.sub(entry, 1, cut - 1)
    redis.call('LPUSH', list, string.sub(entry, cut + 1))
    redis.call('LPUSH', ARGV[2] .. list, '1')
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if first[2] then wait = math.max(0, tonumber(first[2]) - now) end
return {#due, tostring(wait)}
"""

#: Removes a waiting request; 1 when it was waiting.
_CANCEL = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return removed
"""


@dataclass(frozen=True)
class Delayed:
    """One request to keep until it is due: its task id, list, envelope and due time."""

    task_id: str
    #: The Redis list its queue's messages go to (kombu's, with its priority).
    list_key: str
    #: The kombu envelope, as JSON text.
    envelope: str
    #: When it is due (epoch seconds).
    due: float

    def __post_init__(self) -> None:
        if "\n" in self.list_key:
            raise ValueError(f"a queue name cannot hold a newline: {self.list_key!r}")


@dataclass(frozen=True)
class Marker:
    """What a retry records of the request's runs (see :func:`workers.core.keys.attempts_key`)."""

    key: str
    attempt: int
    error: str
    retry_at: float
    ttl_s: int


@dataclass(frozen=True)
class Moved:
    """What one run of the mover did: how many it moved, and when the next is due."""

    moved: int
    #: Seconds until the next waiting request is due (None: nothing waits).
    next_in: float | None


@dataclass(frozen=True)
class Waiting:
    """The delayed requests as a whole: how many wait, and when the next is due."""

    count: int
    #: Epoch seconds of the next due one (None: nothing waits).
    next_due: float | None


class DelayedRequests:
    """The delayed requests of a fleet, in its broker's Redis (``redis``)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    @staticmethod
    def schedule(pipe: Any, requests: Sequence[Delayed], marker: Marker | None = None) -> None:
        """Add commands to ``pipe`` that keep ``requests`` until due, in one atomic step.

        With ``marker`` (a retry), the request's run record is written in the
        same step: a crash leaves both or neither.
        """
        args: list[Any] = [len(requests)]
        for request in requests:
            args += [request.task_id, repr(float(request.due)),
                     f"{request.list_key}\n{request.envelope}"]
        keys = [DELAYED_KEY, DELAYED_ENTRIES_KEY]
        if marker is not None:
            keys.append(marker.key)
            args += [marker.attempt, marker.error, repr(float(marker.retry_at)), marker.ttl_s]
        pipe.eval(_SCHEDULE, len(keys), *keys, *args)

    def move_due(self, limit: int = MOVE_BATCH) -> Moved:
        """Move up to ``limit`` due requests to their queues (Redis's clock)."""
        moved, wait = self.redis.eval(_MOVE, 2, DELAYED_KEY, DELAYED_ENTRIES_KEY, limit,
                                      BELL_PREFIX)
        seconds = float(bytes_to_str(wait))
        return Moved(int(moved), None if seconds < 0 else seconds)

    def cancel(self, task_id: str) -> bool:
        """Remove ``task_id`` if it waits; whether it did."""
        return bool(self.redis.eval(_CANCEL, 2, DELAYED_KEY, DELAYED_ENTRIES_KEY, task_id))

    def due(self, task_id: str) -> float | None:
        """When ``task_id`` is due (epoch seconds), or None when it does not wait."""
        score = self.redis.zscore(DELAYED_KEY, task_id)
        return None if score is None else float(score)

    def waiting(self) -> Waiting:
        """How many requests wait, and when the next is due."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(DELAYED_KEY)
            pipe.zrange(DELAYED_KEY, 0, 0, withscores=True)
            count, first = pipe.execute()
        return Waiting(int(count), float(first[0][1]) if first else None)
