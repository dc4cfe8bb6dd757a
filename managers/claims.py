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


# Inventory report. ARGV: prefix, host, zone, JSON document, listed ('1': in the index),
# classes (comma-separated), then class, capacity pairs.
_REPORT = """
local p, host, zone, listed = ARGV[1], ARGV[2], ARGV[3], ARGV[5] == '1'
local oldzone = redis.call('HGET', p..':zone', host) or ''
local old = redis.call('HGET', p..':classes', host) or ''
local new = {}
for i = 7, #ARGV, 2 do new[ARGV[i]] = true end
for rc in string.gmatch(old, '[^,]+') do
  if not new[rc] then
    redis.call('HDEL', p..':capacity:'..rc, host)
    redis.call('ZREM', p..':free:'..rc, host)
    if oldzone ~= '' then redis.call('ZREM', p..':free:'..rc..':zone:'..oldzone, host) end
  end
end
redis.call('HSET', p..':inventory', host, ARGV[4])
redis.call('HSET', p..':zone', host, zone)
redis.call('HSET', p..':classes', host, ARGV[6])
for i = 7, #ARGV, 2 do
  local rc, cap = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HSET', p..':capacity:'..rc, host, cap)
  local free = cap - tonumber(redis.call('HGET', p..':usage:'..rc, host) or '0')
  if oldzone ~= '' and oldzone ~= zone then
    redis.call('ZREM', p..':free:'..rc..':zone:'..oldzone, host)
  end
  if listed then
    redis.call('ZADD', p..':free:'..rc, free, host)
    if zone ~= '' then redis.call('ZADD', p..':free:'..rc..':zone:'..zone, free, host) end
  else
    redis.call('ZREM', p..':free:'..rc, host)
    if zone ~= '' then redis.call('ZREM', p..':free:'..rc..':zone:'..zone, host) end
  end
end
return 1
"""

# Keeps the index right after usage:<rc> of a host changed (members only: XX).
_REINDEX = """
local function reindex(p, rc, host, used, zone)
  local cap = redis.call('HGET', p..':capacity:'..rc, host)
  if cap then
    local free = tonumber(cap) - used
    redis.call('ZADD', p..':free:'..rc, 'XX', free, host)
    if zone and zone ~= '' then
      redis.call('ZADD', p..':free:'..rc..':zone:'..zone, 'XX', free, host)
    end
  end
end
"""

# Claim. KEYS: claim, claims:<host>, and optionally a record to write with it and a sorted
# set to add the id to. ARGV: prefix, id, host, force ('1': no capacity check), now, the
# number n of record arguments, n record field/value arguments, then class, amount pairs.
# Returns {1, host, new} or {0, why, ...}.
_CLAIM = _REINDEX + """
local p, id, host, force = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local first = 7 + tonumber(ARGV[6])
local holder = redis.call('HGET', KEYS[1], 'host')
if holder then
  if holder == host then return {1, host, 0} end
  return {0, 'held', holder}
end
if not force then
  for i = first, #ARGV, 2 do
    local rc, amount = ARGV[i], tonumber(ARGV[i + 1])
    if amount > 0 then
      local cap = redis.call('HGET', p..':capacity:'..rc, host)
      local used = tonumber(redis.call('HGET', p..':usage:'..rc, host) or '0')
      if not cap then return {0, 'noinv', rc, tostring(used), '0'} end
      if used + amount > tonumber(cap) then return {0, 'full', rc, tostring(used), cap} end
    end
  end
end
local zone = redis.call('HGET', p..':zone', host)
redis.call('HSET', KEYS[1], 'host', host, 'at', ARGV[5])
for i = first, #ARGV, 2 do
  local rc, amount = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[1], 'rc:'..rc, amount)
  reindex(p, rc, host, redis.call('HINCRBY', p..':usage:'..rc, host, amount), zone)
end
redis.call('SADD', KEYS[2], id)
if #KEYS == 4 then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], unpack(ARGV, 7, first - 1))
  redis.call('ZADD', KEYS[4], ARGV[5], id)
end
return {1, host, 1}
"""

# Resize a claim in place. KEYS: claim. ARGV: prefix, id, host, force, then class, amount
# pairs. Returns {1} or {0, why, ...} as _CLAIM does.
_RESIZE = _REINDEX + """
local p, id, host, force = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local holder = redis.call('HGET', KEYS[1], 'host')
if holder ~= host then return {0, 'held', holder or ''} end
if not force then
  for i = 5, #ARGV, 2 do
    local rc, amount = ARGV[i], tonumber(ARGV[i + 1])
    local delta = amount - tonumber(redis.call('HGET', KEYS[1], 'rc:'..rc) or '0')
    if delta > 0 then
      local cap = redis.call('HGET', p..':capacity:'..rc, host)
      local used = tonumber(redis.call('HGET', p..':usage:'..rc, host) or '0')
      if not cap then return {0, 'noinv', rc, tostring(used), '0'} end
      if used + delta > tonumber(cap) then return {0, 'full', rc, tostring(used), cap} end
    end
  end
end
local zone = redis.call('HGET', p..':zone', host)
for i = 5, #ARGV, 2 do
  local rc, amount = ARGV[i], tonumber(ARGV[i + 1])
  local delta = amount - tonumber(redis.call('HGET', KEYS[1], 'rc:'..rc) or '0')
  redis.call('HSET', KEYS[1], 'rc:'..rc, amount)
  reindex(p, rc, host, redis.call('HINCRBY', p..':usage:'..rc, host, delta), zone)
end
return {1}
"""

# Release. KEYS: claim. ARGV: prefix, id, host it must be on ('' : any). Returns the host
# it was on, or false.
_RELEASE = _REINDEX + """
local p, id = ARGV[1], ARGV[2]
local host = redis.call('HGET', KEYS[1], 'host')
if not host or (ARGV[3] ~= '' and ARGV[3] ~= host) then return false end
local zone = redis.call('HGET', p..':zone', host)
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 3) == 'rc:' then
    local rc = string.sub(fields[i], 4)
    local amount = 0 - tonumber(fields[i + 1])  -- never -0, which HINCRBY refuses
    reindex(p, rc, host, redis.call('HINCRBY', p..':usage:'..rc, host, amount), zone)
  end
end
redis.call('SREM', p..':claims:'..host, id)
redis.call('DEL', KEYS[1])
return host
"""

# Usage of a host counted again from its claims. ARGV: prefix, host. Returns
# {class, usage before, usage now, ...} for every class whose usage changed.
_RECOUNT = _REINDEX + """
local p, host = ARGV[1], ARGV[2]
local sums = {}
for _, id in ipairs(redis.call('SMEMBERS', p..':claims:'..host)) do
  local fields = redis.call('HGETALL', p..':claim:'..id)
  if #fields == 0 then redis.call('SREM', p..':claims:'..host, id) end
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 3) == 'rc:' then
      local rc = string.sub(fields[i], 4)
      sums[rc] = (sums[rc] or 0) + tonumber(fields[i + 1])
    end
  end
end
local classes = redis.call('HGET', p..':classes', host) or ''
for rc in string.gmatch(classes, '[^,]+') do sums[rc] = sums[rc] or 0 end
local zone = redis.call('HGET', p..':zone', host)
local changed = {}
for rc, sum in pairs(sums) do
  local before = tonumber(redis.call('HGET', p..':usage:'..rc, host) or '0')
  if before ~= sum then
    redis.call('HSET', p..':usage:'..rc, host, sum)
    reindex(p, rc, host, sum, zone)
    table.insert(changed, rc)
    table.insert(changed, tostring(before))
    table.insert(changed, tostring(sum))
  end
end
return changed
"""

# The freest hosts of an index, with their zone, failures, what is free of the other
# classes, and their fields in other hashes keyed by host. KEYS: the index, then those
# hashes. ARGV: prefix, limit, other classes... Returns {hosts, scores, zones, failures,
# {seconds, microseconds} of the server's clock, a list per hash, a list per class}.
_CANDIDATES = """
local p = ARGV[1]
local found = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
local hosts, scores = {}, {}
for i = 1, #found, 2 do
  table.insert(hosts, found[i])
  table.insert(scores, found[i + 1])
end
local out = {hosts, scores, {}, {}, redis.call('TIME')}
if #hosts == 0 then return out end
out[3] = redis.call('HMGET', p..':zone', unpack(hosts))
out[4] = redis.call('HMGET', p..':failures', unpack(hosts))
for i = 2, #KEYS do table.insert(out, redis.call('HMGET', KEYS[i], unpack(hosts))) end
for i = 3, #ARGV do
  table.insert(out, redis.call('ZMSCORE', p..':free:'..ARGV[i], unpack(hosts)))
end
return out
"""


class ClaimStore:
    """Inventory, claims and the index of free capacity of one service, in one Redis."""

    def __init__(self, redis: Any, service: str) -> None:
        self.redis = redis
        self.service = service
        self.prefix = placement_key(service)
        self._report = redis.register_script(_REPORT)
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._resize = redis.register_script(_RESIZE)
        self._recount = redis.register_script(_RECOUNT)
        self._candidates = redis.register_script(_CANDIDATES)

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
