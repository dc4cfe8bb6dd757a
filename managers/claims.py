"""Inventory and claims in Redis: what each host offers, and what requests took of it.

Nodes report **inventory** per resource class (``DISK_GB``, ``SLOTS``): a
total, a part held back (``reserved``) and an ``allocation_ratio``; the
host's **capacity** of a class is ``(total - reserved) x allocation_ratio``,
in whole units. A **claim** takes amounts of a host's capacity for one
resource (keyed by its id) atomically: one Lua script checks that every
class fits (usage + amount <= capacity) and takes them all, or takes none
and says which class did not fit. **Usage is the sum of claims**, so
releasing a claim (a delete, a failed build) frees capacity at once, and two
schedulers racing for the last units of a host can never both get them.

Every claim, release and inventory report also keeps an **index of free
capacity** per class (a sorted set: host -> capacity - usage, and one per
zone), from which a placement reads the freest hosts instead of every host
of the fleet. A host is in the index while it reports and takes new work;
the scheduler prunes hosts that stopped reporting.

Keys, under ``taskyard:placement:<service>:`` — ``capacity:<RC>``,
``usage:<RC>`` (hashes host -> units), ``free:<RC>`` and
``free:<RC>:zone:<ZONE>`` (sorted sets), ``inventory`` (host -> the JSON
report), ``zone`` and ``classes`` (host -> its zone, the classes it
reported), ``claim:<id>`` (hash: ``host``, ``at``, ``rc:<RC>`` -> units),
``claims:<host>`` (set of ids), ``failures`` (host -> builds failed since its
last successful one), ``reconciled`` (host -> JSON of its last
reconciliation). The scripts build some key names from these prefixes, so
taskyard's placement does not run on Redis Cluster (taskyard does not use
Cluster; see docs/operations.md).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from managers.claim_scripts import CANDIDATES, CLAIM, RECOUNT, RELEASE, REPORT, RESIZE

#: Prefix of every placement key.
PLACEMENT_PREFIX = "taskyard:placement"

#: A resource class name: upper-case letters, digits and '_' (``DISK_GB``, ``CUSTOM_GPU``).
RESOURCE_CLASS_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


def placement_key(service: str, *parts: str) -> str:
    """A placement key of ``service``."""
    return ":".join((PLACEMENT_PREFIX, service, *parts))


def remember_service(redis: Any, service: str) -> None:
    """Note that the scheduler places ``service``'s resources (its builds are watched)."""
    redis.sadd(placement_key("services"), service)


def placed_services(redis: Any) -> list[str]:
    """The services the scheduler has placed resources of."""
    return sorted(_text(s) for s in redis.smembers(placement_key("services")))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Inventory:
    """What a host offers of one resource class, in whole units."""

    total: int
    reserved: int = 0
    allocation_ratio: float = 1.0

    @property
    def capacity(self) -> int:
        """What claims may take: ``(total - reserved) x allocation_ratio``, rounded down."""
        return max(0, int(round((self.total - self.reserved) * self.allocation_ratio, 6)))

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "reserved": self.reserved,
                "allocation_ratio": self.allocation_ratio, "capacity": self.capacity}


@dataclass(frozen=True)
class ClaimResult:
    """What a claim did: ``ok``, or why not: ``held`` (claimed on ``holder``), ``full`` (the
    class ``resource_class`` did not fit) or ``noinv`` (the host reports none of it)."""

    ok: bool
    host: str
    why: str = ""
    holder: str | None = None
    resource_class: str | None = None
    used: int = 0
    capacity: int = 0
    #: False when the claim already existed on this host (claiming again changes nothing).
    new: bool = True

    def reason(self, amounts: Mapping[str, float]) -> str:
        """Why the claim was refused, in a few words."""
        if self.why == "held":
            return f"already claimed on {self.holder}" if self.holder else "not claimed here"
        if self.why == "noinv":
            return f"reports no {self.resource_class} inventory"
        rc = self.resource_class or "?"
        return f"{rc}: {self.used} used + {amounts.get(rc, 0)} > capacity {self.capacity}"


@dataclass(frozen=True)
class Candidate:
    """A host read from the index: what is free of each class asked for, its zone, failures."""

    host: str
    free: dict[str, float]
    zone: str
    failures: int
    #: Its fields in the hashes :meth:`ClaimStore.candidates` was asked to read along.
    also: tuple[Any, ...] = ()


class ClaimStore:
    """Inventory, claims and the index of free capacity of one service, in one Redis."""

    def __init__(self, redis: Any, service: str) -> None:
        self.redis = redis
        self.service = service
        self.prefix = placement_key(service)
        self._report = redis.register_script(REPORT)
        self._claim = redis.register_script(CLAIM)
        self._release = redis.register_script(RELEASE)
        self._resize = redis.register_script(RESIZE)
        self._recount = redis.register_script(RECOUNT)
        self._candidates = redis.register_script(CANDIDATES)

    def key(self, *parts: str) -> str:
        return placement_key(self.service, *parts)

    def index_key(self, resource_class: str, zone: str | None = None) -> str:
        """The sorted set of free ``resource_class`` per host (of ``zone`` only, when given)."""
        return self.key("free", resource_class, "zone", zone) if zone else \
            self.key("free", resource_class)

    # -- inventory ---------------------------------------------------------------

    def report_inventory(self, host: str, inventories: Mapping[str, Inventory], *,
                         zone: str = "", listed: bool = True, client: Any = None) -> None:
        """Store what ``host`` offers; ``listed``: whether it takes new work (in the index).

        ``client``: a pipeline to queue the report on (a tool reporting many hosts).
        """
        doc = json.dumps({"zone": zone, "at": time.time(), "classes": {
            rc: inv.as_dict() for rc, inv in sorted(inventories.items())}},
            separators=(",", ":"))
        args: list[Any] = [self.prefix, host, zone, doc, "1" if listed else "0",
                           ",".join(sorted(inventories))]
        for rc, inv in sorted(inventories.items()):
            args += [rc, inv.capacity]
        self._report(keys=[], args=args, client=client)

    def inventories(self) -> dict[str, dict[str, Any]]:
        """Host -> its last inventory report (``zone``, ``at``, ``classes``)."""
        found = {}
        for host, raw in self.redis.hgetall(self.key("inventory")).items():
            try:
                found[_text(host)] = json.loads(raw)
            except ValueError:
                continue
        return found

    def usage(self, host: str) -> dict[str, int]:
        """Resource class -> what claims hold on ``host`` (classes it reported, and any claimed)."""
        classes = set(self._classes(host))
        for amounts in self.host_claims(host).values():
            classes.update(amounts)
        pipe = self.redis.pipeline(transaction=False)
        ordered = sorted(classes)
        for rc in ordered:
            pipe.hget(self.key("usage", rc), host)
        return {rc: int(v or 0) for rc, v in zip(ordered, pipe.execute(), strict=True)}

    def _classes(self, host: str) -> list[str]:
        raw = self.redis.hget(self.key("classes"), host)
        return [rc for rc in _text(raw).split(",") if rc] if raw else []

    def unlist(self, host: str) -> None:
        """Take ``host`` out of the index (it stopped reporting); its next report puts it back."""
        classes = self._classes(host)
        zone = self.redis.hget(self.key("zone"), host)
        pipe = self.redis.pipeline(transaction=False)
        for rc in classes:
            pipe.zrem(self.index_key(rc), host)
            if zone:
                pipe.zrem(self.index_key(rc, _text(zone)), host)
        pipe.execute()

    # -- claims ------------------------------------------------------------------

    def claim(self, resource_id: str, host: str, amounts: Mapping[str, float], *,
              force: bool = False,
              record: tuple[str, Mapping[str, Any], str] | None = None) -> ClaimResult:
        """Take ``amounts`` of ``host``'s capacity for ``resource_id``, all or nothing.

        Claiming again on the same host changes nothing (and succeeds); a
        resource claimed on another host is refused (``holder``). ``force``
        skips the capacity check: for what a host already holds (a resource
        created on it directly, found by the reconciliation). ``record``
        (``key, fields, sorted set``): a hash written, and the id added to the
        sorted set, in the same step when the claim is new (a placement's record).
        """
        now = f"{time.time():.3f}"
        keys = [self.key("claim", resource_id), self.key("claims", host)]
        fields: list[Any] = []
        if record is not None:
            keys += [record[0], record[2]]
            for name, value in record[1].items():
                fields += [name, value]
        args: list[Any] = [self.prefix, resource_id, host, "1" if force else "0", now,
                           len(fields), *fields]
        for rc, amount in amounts.items():
            args += [rc, int(amount)]
        reply = self._claim(keys=keys, args=args)
        if int(reply[0]) == 1:
            return ClaimResult(True, host, new=bool(int(reply[2])))
        why = _text(reply[1])
        if why == "held":
            return ClaimResult(False, host, why, holder=_text(reply[2]))
        return ClaimResult(False, host, why, resource_class=_text(reply[2]),
                           used=int(float(reply[3])), capacity=int(float(reply[4])))

    def resize(self, resource_id: str, host: str, amounts: Mapping[str, float], *,
               force: bool = False) -> ClaimResult:
        """Change what ``resource_id``'s claim on ``host`` takes, atomically: growing is
        checked against the host's capacity (unless ``force``); refused (``held``, with
        ``holder`` None) when the resource holds no claim on ``host``."""
        args: list[Any] = [self.prefix, resource_id, host, "1" if force else "0"]
        for rc, amount in amounts.items():
            args += [rc, int(amount)]
        reply = self._resize(keys=[self.key("claim", resource_id)], args=args)
        if int(reply[0]) == 1:
            return ClaimResult(True, host, new=False)
        why = _text(reply[1])
        if why == "held":
            return ClaimResult(False, host, why, holder=_text(reply[2]) or None)
        return ClaimResult(False, host, why, resource_class=_text(reply[2]),
                           used=int(float(reply[3])), capacity=int(float(reply[4])))

    def release(self, resource_id: str, host: str | None = None) -> str | None:
        """Free what ``resource_id`` holds (only if it is on ``host``, when given); the host
        it was on, or None when there was no such claim."""
        held = self._release(keys=[self.key("claim", resource_id)],
                             args=[self.prefix, resource_id, host or ""])
        return _text(held) if held else None

    def holder(self, resource_id: str) -> str | None:
        """The host ``resource_id`` is claimed on, or None."""
        host = self.redis.hget(self.key("claim", resource_id), "host")
        return _text(host) if host else None

    def holders(self, resource_ids: Iterable[str]) -> dict[str, str]:
        """Resource id -> host, for those of ``resource_ids`` that hold a claim."""
        ids = list(resource_ids)
        pipe = self.redis.pipeline(transaction=False)
        for resource_id in ids:
            pipe.hget(self.key("claim", resource_id), "host")
        return {rid: _text(h) for rid, h in zip(ids, pipe.execute(), strict=True) if h}

    def claim_of(self, resource_id: str) -> dict[str, Any] | None:
        """``{host, at, amounts}`` of ``resource_id``'s claim, or None."""
        return _claim_fields(self.redis.hgetall(self.key("claim", resource_id)))

    def host_claims(self, host: str) -> dict[str, dict[str, int]]:
        """Resource id -> amounts, for every claim on ``host``."""
        return {rid: claim["amounts"] for rid, claim in self.host_claim_details(host).items()}

    def host_claim_details(self, host: str) -> dict[str, dict[str, Any]]:
        """Resource id -> ``{host, at, amounts}``, for every claim on ``host``."""
        ids = sorted(_text(i) for i in self.redis.smembers(self.key("claims", host)))
        pipe = self.redis.pipeline(transaction=False)
        for resource_id in ids:
            pipe.hgetall(self.key("claim", resource_id))
        found = {}
        for resource_id, fields in zip(ids, pipe.execute(), strict=True):
            claim = _claim_fields(fields)
            if claim is not None and claim["host"] == host:
                found[resource_id] = claim
        return found

    def recount(self, host: str) -> dict[str, tuple[int, int]]:
        """Count ``host``'s usage again from its claims; class -> (before, now) where it changed."""
        flat = [_text(v) for v in self._recount(keys=[], args=[self.prefix, host])]
        return {flat[i]: (int(float(flat[i + 1])), int(float(flat[i + 2])))
                for i in range(0, len(flat), 3)}

    # -- reading candidates ---------------------------------------------------------

    def candidates(self, needs: Mapping[str, float], limit: int, zone: str | None = None,
                   also: Sequence[str] = ()) -> tuple[list[Candidate], float]:
        """Up to ``limit`` hosts with the most free of the first class of ``needs`` (in
        ``zone`` only, when given), freest first, with what they have free of every class,
        and the server's clock (seconds). ``also``: hashes keyed by host whose field of each
        candidate comes along, in one round trip (``Candidate.also``)."""
        classes = list(needs)
        if not classes:
            return [], time.time()
        first, others = classes[0], classes[1:]
        reply = self._candidates(keys=[self.index_key(first, zone), *also],
                                 args=[self.prefix, limit, *others])
        hosts, scores, zones, failures, (seconds, micros) = reply[:5]
        along = reply[5:5 + len(also)]
        extra = reply[5 + len(also):]
        found = []
        for i, raw in enumerate(hosts):
            free = {first: float(scores[i])}
            for rc, values in zip(others, extra, strict=True):
                value = values[i]
                if value is not None:
                    free[rc] = float(value)
            found.append(Candidate(_text(raw), free, _text(zones[i]) if zones[i] else "",
                                   int(failures[i]) if failures[i] else 0,
                                   tuple(values[i] for values in along)))
        return found, float(seconds) + float(micros) / 1e6

    def hosts(self, names: list[str], classes: list[str]) -> list[Candidate]:
        """``names`` as candidates, counted from their capacity and usage (whether or not they
        are in the index): what placement reads for the hosts affinity names."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.key("zone"), names)
        pipe.hmget(self.key("failures"), names)
        for rc in classes:
            pipe.hmget(self.key("capacity", rc), names)
            pipe.hmget(self.key("usage", rc), names)
        zones, failures, *per_class = pipe.execute()
        found = []
        for i, host in enumerate(names):
            free = {}
            for j, rc in enumerate(classes):
                capacity, used = per_class[2 * j][i], per_class[2 * j + 1][i]
                if capacity is not None:
                    free[rc] = float(capacity) - float(used or 0)
            found.append(Candidate(host, free, _text(zones[i]) if zones[i] else "",
                                   int(failures[i]) if failures[i] else 0))
        return found

    def index(self, resource_class: str, count: int) -> list[str]:
        """The ``count`` freest hosts of ``resource_class``'s index (for pruning)."""
        return [_text(h) for h in self.redis.zrevrange(self.index_key(resource_class), 0,
                                                       count - 1)]

    def resource_classes(self) -> list[str]:
        """Every class a host of the service reports."""
        found: set[str] = set()
        for raw in self.redis.hvals(self.key("classes")):
            found.update(rc for rc in _text(raw).split(",") if rc)
        return sorted(found)

    # -- build failures (the build-failure weigher) ----------------------------------

    def build_failed(self, host: str) -> int:
        """Count a failed build on ``host``; the count since its last successful build."""
        return int(self.redis.hincrby(self.key("failures"), host, 1))

    def build_succeeded(self, host: str) -> None:
        self.redis.hdel(self.key("failures"), host)

    def failures(self) -> dict[str, int]:
        return {_text(h): int(n) for h, n in self.redis.hgetall(self.key("failures")).items()}

    # -- reconciliation -------------------------------------------------------------

    def note_reconciliation(self, host: str, report: Mapping[str, Any]) -> None:
        """Keep what the last reconciliation of ``host`` found (``taskyard status`` shows it)."""
        self.redis.hset(self.key("reconciled"), host,
                        json.dumps(dict(report), separators=(",", ":"), default=str))

    def reconciliations(self) -> dict[str, dict[str, Any]]:
        found = {}
        for host, raw in self.redis.hgetall(self.key("reconciled")).items():
            try:
                found[_text(host)] = json.loads(raw)
            except ValueError:
                continue
        return found

    def usages(self) -> dict[str, dict[str, int]]:
        """Host -> class -> usage, for every host any class has usage on."""
        found: dict[str, dict[str, int]] = {}
        for rc in self.resource_classes():
            for host, used in self.redis.hgetall(self.key("usage", rc)).items():
                found.setdefault(_text(host), {})[rc] = int(used)
        return found


def _claim_fields(fields: Mapping[Any, Any]) -> dict[str, Any] | None:
    if not fields:
        return None
    flat = {_text(k): _text(v) for k, v in fields.items()}
    return {"host": flat.get("host"), "at": float(flat.get("at") or 0),
            "amounts": {k[3:]: int(v) for k, v in flat.items() if k.startswith("rc:")}}
