"""Placement as a service declares it, and the record the scheduler keeps of each placement.

A manager whose resources take capacity of its nodes declares it::

    class VolumeManager(Manager):
        placement = Placement(creates="create_volume", id_argument="volume_id",
                              needs={"DISK_GB": "size_gb"}, kind="volume")

``creates`` is the endpoint that builds one resource on the node it is sent
to; ``id_argument`` its argument naming the resource (the key of the
resource's claim); ``needs`` what one resource takes, per resource class:
the name of an argument of ``creates`` (its value, a whole number) or a
fixed number. Nodes publish the declaration with their API, so a scheduler
places the service's resources without its code.

For every placement the scheduler writes a :class:`PlacementRecord`: the
host chosen, the alternates left, every attempt (host, error), the request
(to send it again under the same task id), and why the host was chosen (what
the filters removed, the weights). The node that builds the resource and the
scheduler's watch on builds move it on; ``taskyard placement`` shows it.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from managers.claims import RESOURCE_CLASS_RE, ClaimStore, placement_key
from managers.exceptions import InvalidRequest

#: States of a placement: its build is under way, finished, or failed on every host tried.
BUILDING, DONE, FAILED = "building", "done", "failed"

#: Seconds a placement record is kept once its resource is gone or its build failed.
RETIRED_PLACEMENT_TTL_S = 86400


@dataclass(frozen=True)
class Placement:
    """What a service's resources take of its nodes (see the module doc)."""

    creates: str
    id_argument: str
    needs: Mapping[str, str | int]
    #: What one resource is called (new ids, messages).
    kind: str = "resource"

    def __post_init__(self) -> None:
        if not self.needs:
            raise TypeError("Placement needs at least one resource class in needs")
        for rc, source in self.needs.items():
            if not RESOURCE_CLASS_RE.match(rc):
                raise TypeError(f"Placement needs: {rc!r} is not a resource class name "
                                "(upper-case letters, digits and '_', e.g. DISK_GB)")
            whole = isinstance(source, int) and not isinstance(source, bool) and source >= 0
            if not (whole or (isinstance(source, str) and source.isidentifier())):
                raise TypeError(f"Placement needs[{rc!r}] = {source!r}: expected the name of "
                                f"an argument of {self.creates} or a whole number >= 0")

    def amounts(self, arguments: Mapping[str, Any]) -> dict[str, int]:
        """What a request with ``arguments`` needs; :class:`InvalidRequest` naming a bad one."""
        found = {}
        for rc, source in self.needs.items():
            if isinstance(source, str):
                value = arguments.get(source)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise InvalidRequest(
                        f"{self.creates}: argument {source!r} = {value!r}: expected a whole "
                        f"number >= 0 (it is how much {rc} a {self.kind} takes)",
                        {"argument": source})
                found[rc] = value
            else:
                found[rc] = source
        return found

    def check(self, manager_cls: type) -> None:
        """TypeError unless ``creates`` is an endpoint of ``manager_cls`` taking the arguments
        the declaration names."""
        endpoints = manager_cls.endpoints()  # type: ignore[attr-defined]
        if self.creates not in endpoints:
            raise TypeError(f"placement.creates = {self.creates!r} is not an endpoint of "
                            f"{manager_cls.__qualname__}")
        parameters = inspect.signature(endpoints[self.creates]).parameters
        for name in [self.id_argument, *(s for s in self.needs.values() if isinstance(s, str))]:
            if name not in parameters:
                raise TypeError(f"placement names argument {name!r}, which "
                                f"{manager_cls.__qualname__}.{self.creates} does not take")

    def to_doc(self) -> dict[str, Any]:
        return {"creates": self.creates, "id_argument": self.id_argument,
                "needs": dict(self.needs), "kind": self.kind}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Placement:
        """Read a published declaration; ValueError when it is not one."""
        try:
            return cls(str(doc["creates"]), str(doc["id_argument"]), dict(doc["needs"]),
                       str(doc.get("kind") or "resource"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a placement declaration: {exc}") from None


@dataclass
class PlacementRecord:
    """The last placement of one resource."""

    id: str
    #: The host the resource is claimed on and sent to now.
    host: str
    state: str
    #: Hosts to try next, in order.
    alternates: list[str] = field(default_factory=list)
    #: Every build that failed: ``{host, error, at}``.
    attempts: list[dict[str, Any]] = field(default_factory=list)
    amounts: dict[str, int] = field(default_factory=dict)
    #: ``{service, method, kwargs, headers, task_id}``: to send it again under its task id.
    request: dict[str, Any] = field(default_factory=dict)
    #: Why the host was chosen: candidates considered, filters' removals, weights.
    decision: dict[str, Any] = field(default_factory=dict)
    max_attempts: int = 1
    at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "state": self.state,
                "alternates": self.alternates, "attempts": self.attempts,
                "amounts": self.amounts, "request": self.request, "decision": self.decision,
                "max_attempts": self.max_attempts, "at": self.at}


_JSON_FIELDS = ("alternates", "attempts", "amounts", "request", "decision")


def attempt(host: str, error: str) -> dict[str, Any]:
    """One failed build, as placement records and resources keep it."""
    return {"host": host, "error": error, "at": round(time.time(), 3)}


def _loads(raw: str | None, default: Any) -> Any:
    """A JSON field of a record; ``default`` when missing, unreadable or of another type."""
    try:
        value = json.loads(raw) if raw else default
    except ValueError:
        return default
    return value if isinstance(value, type(default)) else default


def describe_attempts(attempts: list[dict[str, Any]]) -> str:
    return "; ".join(f"{a.get('host')}: {a.get('error')}" for a in attempts)


class Placements:
    """The placement records of one service (keys beside its claims)."""

    def __init__(self, redis: Any, service: str) -> None:
        self.redis = redis
        self.service = service
        self.building_key = placement_key(service, "building")

    def key(self, resource_id: str) -> str:
        return placement_key(self.service, "placement", resource_id)

    def recording(self, record: PlacementRecord) -> tuple[str, dict[str, Any], str]:
        """What :meth:`ClaimStore.claim` writes with the claim to start ``record`` (its key,
        its fields, the set of builds under way)."""
        fields: dict[str, Any] = {"host": record.host, "state": record.state,
                                  "max_attempts": record.max_attempts, "at": record.at}
        fields.update({name: json.dumps(getattr(record, name), separators=(",", ":"))
                       for name in _JSON_FIELDS})
        return self.key(record.id), fields, self.building_key

    def get(self, resource_id: str) -> PlacementRecord | None:
        return self._read(resource_id, self.redis.hgetall(self.key(resource_id)))

    def get_many(self, resource_ids: list[str]) -> list[PlacementRecord]:
        """The placement records of ``resource_ids`` that exist, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for resource_id in resource_ids:
            pipe.hgetall(self.key(resource_id))
        found = (self._read(rid, flat) for rid, flat in zip(resource_ids, pipe.execute(),
                                                             strict=True))
        return [record for record in found if record is not None]

    def _read(self, resource_id: str, flat: Mapping[Any, Any]) -> PlacementRecord | None:
        if not flat:
            return None
        raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                              else v) for k, v in flat.items()}
        request = _loads(raw.get("request"), {})
        if raw.get("task_id"):
            request["task_id"] = raw["task_id"]
        return PlacementRecord(
            resource_id, raw.get("host", ""), raw.get("state", ""),
            _loads(raw.get("alternates"), []), _loads(raw.get("attempts"), []),
            _loads(raw.get("amounts"), {}), request,
            _loads(raw.get("decision"), {}),
            int(raw.get("max_attempts") or 1), float(raw.get("at") or 0))

    def set_task(self, resource_id: str, task_id: str) -> None:
        """The task id the build was sent under (the caller waits on it)."""
        self.redis.hset(self.key(resource_id), "task_id", task_id)

    def moved(self, resource_id: str, host: str, alternates: list[str],
              attempts: list[dict[str, Any]]) -> None:
        """The build goes on at ``host`` (its claim taken there), after ``attempts``."""
        self.redis.hset(self.key(resource_id), mapping={
            "host": host, "state": BUILDING,
            "alternates": json.dumps(alternates), "attempts": json.dumps(attempts)})

    def finished(self, resource_id: str, state: str,
                 attempts: list[dict[str, Any]] | None = None) -> None:
        """The build is ``done`` or ``failed`` (then the record is kept a day)."""
        fields: dict[str, Any] = {"state": state}
        if attempts is not None:
            fields["attempts"] = json.dumps(attempts)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key(resource_id), mapping=fields)
        pipe.zrem(self.building_key, resource_id)
        if state == FAILED:
            pipe.expire(self.key(resource_id), RETIRED_PLACEMENT_TTL_S)
        pipe.execute()

    def retire(self, resource_id: str) -> None:
        """The resource is gone: keep its placement record a day more, for operators."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.building_key, resource_id)
        pipe.expire(self.key(resource_id), RETIRED_PLACEMENT_TTL_S)
        pipe.execute()

    def forget(self, resource_id: str) -> None:
        """Remove a placement that never started (its hand-on could not be sent)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key(resource_id))
        pipe.zrem(self.building_key, resource_id)
        pipe.execute()

    def building(self) -> list[str]:
        """The resources whose build is under way, oldest placement first."""
        return [i.decode() if isinstance(i, bytes) else i
                for i in self.redis.zrange(self.building_key, 0, -1)]

    def reschedule(self, claims: ClaimStore, record: PlacementRecord, failed_host: str,
                   attempts: list[dict[str, Any]],
                   is_up: Callable[[str], bool] | None = None,
                   ) -> tuple[str | None, list[str], bool]:
        """Move a build that failed on ``failed_host`` to its next alternate.

        Releases the claim on ``failed_host`` and claims the alternates in
        turn (those ``is_up`` says are up) until one fits; records where the
        build goes on, or that it failed for good. Returns the new host (None:
        no alternate left), the alternates passed over with why, and whether
        this call moved it: when the claim was no longer on ``failed_host``
        (someone else moved it first), the record is left as it is and the
        host holding the claim now returned.
        """
        if claims.release(record.id, failed_host) is None:
            holder = claims.holder(record.id)
            if holder != failed_host:
                return holder, [], False
        passed_over = []
        alternates = list(record.alternates)
        while alternates:
            host = alternates.pop(0)
            if is_up is not None and not is_up(host):
                passed_over.append(f"{host} (down or disabled)")
                continue
            claimed = claims.claim(record.id, host, record.amounts)
            if claimed.ok:
                self.moved(record.id, host, alternates, attempts)
                return host, passed_over, True
            passed_over.append(f"{host} ({claimed.reason(record.amounts)})")
        self.finished(record.id, FAILED, attempts)
        return None, passed_over, True
