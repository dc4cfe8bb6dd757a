"""Resource records in Redis, with state transitions that are atomic.

A record is a Redis hash whose field values are JSON; ``status`` is the
state machine. Every change is one Lua script (one round trip, no race): it
checks the current status against the states the caller allows, applies the
updates, and keeps the indexes right. A message delivered twice therefore
sees the state the first delivery left and can do the right thing.

The manager owns its records; drivers never see this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from managers.exceptions import Conflict, NotFound

#: Prefix of every record key (the service layer keeps its own keys under ``taskyard:``).
RECORDS_PREFIX = "taskyard:records"

#: Seconds a record in state ``deleted`` is kept so repeated deletes succeed.
DELETED_RECORD_TTL_S = 86400


def records_key(service: str, kind: str, *parts: str) -> str:
    """Key of a record or index owned by ``service``'s manager."""
    return ":".join((RECORDS_PREFIX, service, kind, *parts))

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
if KEYS[3] ~= '' then
  local ps = redis.call('HGET', KEYS[3], 'status')
  if not ps then return {2, {}} end
  local ok = false
  for s in string.gmatch(ARGV[2], '[^\\n]+') do if s == ps then ok = true end end
  if not ok then return {3, redis.call('HGETALL', KEYS[3])} end
  redis.call('SADD', KEYS[4], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
return {1, redis.call('HGETALL', KEYS[1])}
"""

_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, {}} end
local ok = ARGV[2] == '*'
for s in string.gmatch(ARGV[2], '[^\\n]+') do if s == cur then ok = true end end
if not ok then return {2, redis.call('HGETALL', KEYS[1])} end
if KEYS[3] ~= '' and redis.call('SCARD', KEYS[3]) > 0 then
  return {3, redis.call('HGETALL', KEYS[1])}
end
if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('SREM', KEYS[2], ARGV[1])
  if KEYS[4] ~= '' then redis.call('SREM', KEYS[4], ARGV[1]) end
end
return {1, redis.call('HGETALL', KEYS[1])}
"""


def now() -> str:
    """The current time as an ISO-8601 UTC string, for records."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _encode(fields: Mapping[str, Any]) -> list[str]:
    flat: list[str] = []
    for key, value in fields.items():
        flat += [key, json.dumps(value, separators=(",", ":"))]
    return flat


def _decode(flat: list[Any]) -> dict[str, Any]:
    return {_text(flat[i]): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _states(states: Iterable[str] | None) -> str:
    """States as the scripts compare them; ``*`` (None) allows any state."""
    if states is None:
        return "*"
    return "\n".join(json.dumps(s) for s in states)


@dataclass(frozen=True)
class Parent:
    """A record that a new record hangs off (a snapshot's volume)."""

    store: RecordStore
    id: str
    allowed: tuple[str, ...]


class RecordStore:
    """Records of one kind (``volume``, ``snapshot``) owned by one service."""

    def __init__(self, redis: Any, service: str, kind: str) -> None:
        self.redis = redis
        self.service = service
        self.kind = kind
        self.index_key = records_key(service, kind, "index")
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)

    def key(self, record_id: str) -> str:
        return records_key(self.service, self.kind, "id", record_id)

    def children_key(self, record_id: str, child_kind: str) -> str:
        """The set of live ``child_kind`` records hanging off this record."""
        return records_key(self.service, self.kind, "children", record_id, child_kind)

    def get(self, record_id: str) -> dict[str, Any] | None:
        flat = self.redis.hgetall(self.key(record_id))
        if not flat:
            return None
        return {_text(k): json.loads(v) for k, v in flat.items()}

    def require(self, record_id: str) -> dict[str, Any]:
        record = self.get(record_id)
        if record is None:
            raise NotFound(f"no {self.kind} with id {record_id!r}", {"id": record_id})
        return record

    def create(
        self, record_id: str, fields: Mapping[str, Any], parent: Parent | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Insert a record unless one with this id exists; return it and whether it is new.

        With ``parent``, the parent must exist in one of ``parent.allowed``
        states, and the new record joins its children in the same step.
        """
        keys = [self.key(record_id), self.index_key, "", ""]
        allowed = ""
        if parent is not None:
            keys[2] = parent.store.key(parent.id)
            keys[3] = parent.store.children_key(parent.id, self.kind)
            allowed = _states(parent.allowed)
        code, flat = self._create(keys=keys, args=[record_id, allowed, *_encode(fields)])
        if code == 2:
            assert parent is not None
            raise NotFound(f"no {parent.store.kind} with id {parent.id!r}", {"id": parent.id})
        if code == 3:
            assert parent is not None
            current = _decode(flat)
            raise Conflict(
                f"{parent.store.kind} {parent.id} is {current.get('status')!r}; a new "
                f"{self.kind} needs it to be {' or '.join(parent.allowed)}",
                {"id": parent.id, "status": current.get("status")},
            )
        return _decode(flat), code == 1

    def transition(
        self,
        record_id: str,
        allowed: Iterable[str] | None,
        updates: Mapping[str, Any],
        *,
        action: str,
        no_children: str | None = None,
        retire: bool = False,
        parent: Parent | None = None,
    ) -> dict[str, Any]:
        """Apply ``updates`` if the record's status is one of ``allowed``; return the record.

        ``no_children`` names a child kind that must have no live records
        (a volume with snapshots cannot be deleted). ``retire`` takes the
        record out of the index (and its parent's children) and lets it
        expire, for the final ``deleted`` state. Raises :class:`NotFound` or
        :class:`Conflict` naming ``action``.
        """
        allowed = tuple(allowed) if allowed is not None else None
        keys = [
            self.key(record_id),
            self.index_key,
            self.children_key(record_id, no_children) if no_children else "",
            parent.store.children_key(parent.id, self.kind) if parent else "",
        ]
        ttl = DELETED_RECORD_TTL_S if retire else 0
        code, flat = self._transition(
            keys=keys, args=[record_id, _states(allowed), ttl, *_encode(updates)]
        )
        if code == 0:
            raise NotFound(f"no {self.kind} with id {record_id!r}", {"id": record_id})
        record = _decode(flat)
        if code == 2:
            raise Conflict(
                f"{self.kind} {record_id} is {record.get('status')!r}; {action} needs it to be "
                f"{' or '.join(allowed or ())}",
                {"id": record_id, "status": record.get("status")},
            )
        if code == 3:
            raise Conflict(
                f"{self.kind} {record_id} still has {no_children} records; delete them first",
                {"id": record_id, "status": record.get("status")},
            )
        return record

    def run_step(
        self,
        record_id: str,
        step: Callable[[], Mapping[str, Any] | None],
        *,
        allowed: Iterable[str],
        updates: Mapping[str, Any],
        action: str,
        retire: bool = False,
        parent: Parent | None = None,
        done_status: str | None = None,
    ) -> dict[str, Any]:
        """Do a backend step for a record, then move the record on.

        ``step`` (a driver call) returns updates for the record. If it raises,
        the record goes to ``error`` with the reason and the exception goes on
        to the caller. Otherwise the record moves from one of ``allowed``
        with the step's and ``updates``'s fields (and a new ``updated_at``). With ``done_status``, a
        record another delivery of the same request already moved there is
        returned as it is (the same message, run twice at once).
        """
        try:
            changes = step() or {}
        except Exception as exc:
            self.mark_error(record_id, exc)
            raise
        try:
            return self.transition(record_id, allowed,
                                   {**changes, **updates, "updated_at": now()},
                                   action=action, retire=retire, parent=parent)
        except Conflict:
            if done_status is not None:
                current = self.require(record_id)
                if current.get("status") == done_status:
                    return current
            raise

    def mark_error(self, record_id: str, exc: BaseException) -> None:
        """Record that a step failed, and why (whatever state the record was in)."""
        self.transition(record_id, None, {
            "status": "error", "error": f"{type(exc).__name__}: {exc}", "updated_at": now(),
        }, action="marking the error")

    def count_children(self, record_id: str, child_kind: str) -> int:
        return int(self.redis.scard(self.children_key(record_id, child_kind)))

    def ids(self) -> list[str]:
        return sorted(_text(i) for i in self.redis.smembers(self.index_key))

    def list(self) -> list[dict[str, Any]]:
        """Every live record (not retired), ordered by creation time then id."""
        ids = self.ids()
        pipe = self.redis.pipeline(transaction=False)
        for record_id in ids:
            pipe.hgetall(self.key(record_id))
        records = [
            {_text(k): json.loads(v) for k, v in flat.items()}
            for flat in pipe.execute()
            if flat
        ]
        records.sort(key=lambda r: (r.get("created_at", ""), r.get("id", "")))
        return records
