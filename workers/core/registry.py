"""The service registry: which node runs which service, and whether it is up.

Every node reports each of its services every ``report_interval`` seconds.
The time of a report is Redis's own clock (``TIME`` inside the script that
stores it), so nodes with skewed clocks still agree on who is up. A service
on a host is **up** when it is not disabled and its last report is at most
``service_down_time`` old. Operators disable a host (with a reason) to keep
new work away from it without stopping it.

Nodes also publish each service's API (its version, and per endpoint the
JSON Schema of its arguments and its docstring) so that callers check
requests without the service's code: one document per API version, and the
last time a node of each version reported, so a caller speaks the lowest
version any live node serves (every node of the same major takes it).

Keys (all under ``taskyard:registry:``): ``services`` (set of service
names), ``<service>`` (host -> JSON report), ``<service>:seen`` (host ->
server time of the last report), ``<service>:disabled`` (host -> JSON
``{reason, at}``), ``<service>:api`` (API version -> JSON document),
``<service>:versions`` (API version -> server time of the last report of a
node serving it).
"""

from __future__ import annotations

import builtins
import json
import math
from dataclasses import dataclass, field
from typing import Any

from kombu.utils.encoding import bytes_to_str

from workers.core.api import ServiceAPI, version_key
from workers.core.config import Config
from workers.core.connections import connect
from workers.core.keys import registry_key

UP, DOWN, DISABLED = "up", "down", "disabled"

_REPORT = """
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[2], now)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], ARGV[4], now) end
return now
"""


#: Removes the hosts of one service last seen more than ARGV[1] seconds ago (Redis clock),
#: and those whose time of last report is not a finite number (not written by ``_REPORT``).
_FORGET_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local gone = {}
local seen = redis.call('HGETALL', KEYS[2])
for i = 1, #seen, 2 do
  local at = tonumber(seen[i + 1])
  if at == nil or at ~= at or at == math.huge or at == -math.huge
      or now - at > tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], seen[i])
    redis.call('HDEL', KEYS[2], seen[i])
    redis.call('HDEL', KEYS[3], seen[i])
    table.insert(gone, seen[i])
  end
end
return gone
"""


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One service on one host, as the registry last heard of it."""

    service: str
    host: str
    state: str
    #: Seconds since the last report (Redis clock).
    age: float
    updated_at: float
    info: dict[str, Any] = field(default_factory=dict)
    disabled_reason: str | None = None
    #: Reporting in time, whether or not disabled.
    alive: bool = False

    @property
    def is_up(self) -> bool:
        return self.state == UP

    @property
    def capabilities(self) -> dict[str, Any]:
        return _capabilities(self.info)

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service, "host": self.host, "state": self.state,
            "age": round(self.age, 3) if self.age != float("inf") else None,
            "updated_at": self.updated_at, "alive": self.alive,
            "disabled_reason": self.disabled_reason, **self.info,
        }


_raw_decode = json.JSONDecoder().raw_decode

#: The key of a report's info that says why the report as stored could not be read.
UNREADABLE = "unreadable"


def _document(raw: bytes | str) -> dict[str, Any]:
    """A JSON object as Redis returned it; ``ValueError`` when it is not one.

    A listing of 10,000 hosts parses 10,000 reports: ``raw_decode`` of the
    text takes a third less than ``json.loads`` of the bytes, which looks for
    their encoding and checks for trailing whitespace each time (the registry
    writes compact JSON).
    """
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        document = _raw_decode(text.lstrip())[0]
    except RecursionError as exc:  # nested deeper than Python's stack
        raise ValueError("nested too deeply") from exc
    if not isinstance(document, dict):
        raise ValueError(f"a JSON {type(document).__name__}, not an object")
    return document


def _report(raw: bytes | str) -> dict[str, Any]:
    """A host's report as stored, or ``{UNREADABLE: why}`` when it cannot be read.

    Something other than :meth:`Registry.report` may have written the entry
    (a hand-made ``HSET``, a tool of another format); one such entry must not
    stop the listing, the status screen and every placement of the fleet. The
    host then has no capabilities (placement's filters pass it over, saying
    so), and its node writes a good report at its next heartbeat.
    """
    try:
        return _document(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return {UNREADABLE: f"not a JSON object ({exc})"}


def _capabilities(info: dict[str, Any]) -> dict[str, Any]:
    """The capabilities of a report (a copy); none when the report has no mapping of them."""
    capabilities = info.get("capabilities")
    return dict(capabilities) if isinstance(capabilities, dict) else {}


def _stamp(raw: bytes | str) -> float:
    """A heartbeat time as stored; 0.0 (never seen) when it is not a finite number."""
    try:
        stamp = float(raw)
    except ValueError:
        return 0.0
    return stamp if math.isfinite(stamp) else 0.0


def _reason(raw: bytes | str) -> str:
    """The reason a host was disabled, from its entry; the entry is unreadable, still disabled."""
    try:
        return str(_document(raw)["reason"])
    except (ValueError, KeyError):
        return f"(unreadable entry: {bytes_to_str(raw)[:60]!r})"


class Registry:
    """Reads and writes the registry in one Redis."""

    def __init__(self, redis: Any, *, service_down_time: float) -> None:
        self.redis = redis
        self.service_down_time = float(service_down_time)
        self._report = redis.register_script(_REPORT)
        self._forget_script = redis.register_script(_FORGET_DOWN)

    @classmethod
    def from_config(cls, config: Config) -> Registry:
        """The registry of ``config``'s fleet, on a client of its own (for operators' tools)."""
        return cls(connect(config, config.records_url),
                   service_down_time=config.service_down_time)

    # -- writing ---------------------------------------------------------------

    def report(self, service: str, host: str, info: dict[str, Any]) -> float:
        """Store a heartbeat of ``service`` on ``host``; return its (Redis) time."""
        stamp = self._report(
            keys=[registry_key("services"), registry_key(service), registry_key(service, "seen"),
                  registry_key(service, "versions")],
            args=[service, host, json.dumps(info, separators=(",", ":"), default=str),
                  str(info.get("rpc_api_version") or "")],
        )
        return float(bytes_to_str(stamp))

    def report_many(self, service: str, infos: dict[str, dict[str, Any]]) -> None:
        """Store a heartbeat of ``service`` for each host of ``infos`` (host -> info), in one
        pipelined round trip: for tools that report for many hosts (a simulator, a proxy)."""
        pipe = self.redis.pipeline(transaction=False)
        keys = [registry_key("services"), registry_key(service), registry_key(service, "seen"),
                registry_key(service, "versions")]
        for host, info in infos.items():
            self._report(keys=keys, args=[service, host,
                                          json.dumps(info, separators=(",", ":"), default=str),
                                          str(info.get("rpc_api_version") or "")], client=pipe)
        pipe.execute()

    def publish_api(self, api: ServiceAPI) -> None:
        """Publish the API of ``api.service`` at ``api.version`` for callers."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(registry_key("services"), api.service)
        pipe.hset(registry_key(api.service, "api"), api.version,
                  json.dumps(api.to_doc(), separators=(",", ":")))
        pipe.execute()

    def remove(self, service: str, host: str) -> None:
        """Forget ``service`` on ``host`` at once (a node leaving on purpose)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(registry_key(service), host)
        pipe.hdel(registry_key(service, "seen"), host)
        pipe.execute()

    def forget(self, service: str, host: str) -> bool:
        """Remove every trace of ``service`` on ``host`` (its report, and whether it was
        disabled); False when the registry did not know it."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(registry_key(service), host)
        pipe.hdel(registry_key(service, "seen"), host)
        pipe.hdel(registry_key(service, "disabled"), host)
        return any(pipe.execute())

    def forget_down(self, older_than: float) -> list[tuple[str, str]]:
        """Forget every host whose last report is more than ``older_than`` seconds old.

        Hosts whose names change (containers, autoscaling) would otherwise stay in
        the registry for ever. Their queues, if not empty, stay visible in
        ``taskyard status``. Returns the ``(service, host)`` pairs forgotten.
        """
        forgotten = []
        for service in self.services():
            for host in self._forget_script(
                keys=[registry_key(service), registry_key(service, "seen"),
                      registry_key(service, "disabled")],
                args=[older_than],
            ):
                forgotten.append((service, bytes_to_str(host)))
        return forgotten

    def disable(self, service: str, host: str, reason: str) -> None:
        """Keep new work away from ``service`` on ``host`` until :meth:`enable`."""
        now = self._now()
        entry = json.dumps({"reason": reason, "at": now})
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(registry_key("services"), service)
        pipe.hset(registry_key(service, "disabled"), host, entry)
        pipe.execute()

    def enable(self, service: str, host: str) -> bool:
        """Let ``service`` on ``host`` take work again; False when it was not disabled."""
        return bool(self.redis.hdel(registry_key(service, "disabled"), host))

    # -- reading ---------------------------------------------------------------

    def _now(self) -> float:
        seconds, micros = self.redis.time()
        return float(seconds) + float(micros) / 1e6

    def services(self) -> list[str]:
        return sorted(bytes_to_str(s) for s in self.redis.smembers(registry_key("services")))

    def list(self, service: str | None = None) -> list[ServiceRecord]:
        """Every known service on every host (or of one service), sorted."""
        names = [service] if service else self.services()
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for name in names:
            pipe.hgetall(registry_key(name))
            pipe.hgetall(registry_key(name, "seen"))
            pipe.hgetall(registry_key(name, "disabled"))
        replies = pipe.execute()
        seconds, micros = replies[0]
        now = float(seconds) + float(micros) / 1e6
        records = []
        for i, name in enumerate(names):
            infos, seen, disabled = replies[1 + 3 * i: 4 + 3 * i]
            # Keys as Redis returned them (bytes, or str with decode_responses): each host's
            # three entries are looked up with the same key, decoded once.
            for key in sorted(set(infos).union(disabled)):
                host = bytes_to_str(key)
                raw_info = infos.get(key)
                info = _report(raw_info) if raw_info else {}
                raw_seen = seen.get(key)
                updated = _stamp(raw_seen) if raw_seen else 0.0
                raw_disabled = disabled.get(key)
                reason = _reason(raw_disabled) if raw_disabled else None
                age = now - updated if updated else float("inf")
                alive = age <= self.service_down_time
                state = DISABLED if raw_disabled else UP if alive else DOWN
                records.append(
                    ServiceRecord(name, host, state, age, updated, info, reason, alive)
                )
        return records

    def get(self, service: str, host: str) -> ServiceRecord | None:
        for record in self.list(service):
            if record.host == host:
                return record
        return None

    def is_up(self, service: str, host: str) -> bool:
        record = self.get(service, host)
        return record is not None and record.is_up

    def hosts(self, service: str, *, only_up: bool = True) -> builtins.list[str]:
        """Hosts of ``service``: by default only those up (reporting and not disabled)."""
        return [r.host for r in self.list(service) if r.is_up or not only_up]

    def apis(self, service: str) -> dict[str, tuple[ServiceAPI, float]]:
        """Every published API version of ``service``: the API and seconds since a node of it
        last reported (``inf`` when none has). Documents that cannot be read are left out."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(registry_key(service, "api"))
        pipe.hgetall(registry_key(service, "versions"))
        (seconds, micros), docs, seen = pipe.execute()
        now = float(seconds) + float(micros) / 1e6
        found: dict[str, tuple[ServiceAPI, float]] = {}
        for version, raw in docs.items():
            try:
                api = ServiceAPI.from_doc(json.loads(raw))
            except ValueError:
                continue
            last = seen.get(version)
            found[bytes_to_str(version)] = (api, now - float(last) if last else float("inf"))
        return found

    def api(self, service: str, version: str | None = None) -> ServiceAPI | None:
        """The API a caller should speak to ``service``; None when no node has published one.

        With ``version``, that version's document when published. Otherwise the
        lowest version a live node serves (so that every node takes the
        request), or when no node is live, the one seen last.
        """
        apis = self.apis(service)
        if not apis:
            return None
        if version is not None and version in apis:
            return apis[version][0]
        live = [v for v, (_, age) in apis.items() if age <= self.service_down_time]
        if live:
            return apis[min(live, key=version_key)][0]
        return min(apis.values(), key=lambda entry: entry[1])[0]

    def is_disabled(self, service: str, host: str) -> bool:
        """Whether an operator keeps new work away from ``service`` on ``host``."""
        return bool(self.redis.hexists(registry_key(service, "disabled"), host))

    @staticmethod
    def state_keys(service: str) -> tuple[str, str]:
        """The hashes (host -> heartbeat time; host -> why disabled) a host's state is read
        from, for tools that read them with other data in one round trip."""
        return registry_key(service, "seen"), registry_key(service, "disabled")

    def state_of(self, raw_seen: Any, raw_disabled: Any, now: float) -> dict[str, Any]:
        """``{state, age, alive, disabled_reason}`` of a host from its two entries as stored
        (None: absent) at ``now`` (Redis clock)."""
        stamp = _stamp(raw_seen) if raw_seen else 0.0
        age = now - stamp if stamp else None
        alive = age is not None and age <= self.service_down_time
        return {"state": DISABLED if raw_disabled else UP if alive else DOWN, "age": age,
                "alive": alive,
                "disabled_reason": _reason(raw_disabled) if raw_disabled else None}

    def states(self, service: str, hosts: builtins.list[str]) -> dict[str, dict[str, Any]]:
        """Host -> ``{state, age, alive, disabled_reason}`` for each of ``hosts``: one round
        trip, whatever the size of the fleet. A host the registry does not know is ``down``,
        age None."""
        if not hosts:
            return {}
        seen_key, disabled_key = self.state_keys(service)
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hmget(seen_key, hosts)
        pipe.hmget(disabled_key, hosts)
        (seconds, micros), seen, disabled = pipe.execute()
        now = float(seconds) + float(micros) / 1e6
        return {host: self.state_of(raw_seen, raw_disabled, now)
                for host, raw_seen, raw_disabled in zip(hosts, seen, disabled, strict=True)}

    def alive_hosts(self, service: str) -> builtins.list[str]:
        """Hosts of ``service`` that report in time, disabled ones included.

        Disabling keeps *new* work away; messages for every node (fanout)
        still reach a disabled node that is alive.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(registry_key(service, "seen"))
        (seconds, micros), seen = pipe.execute()
        oldest = float(seconds) + float(micros) / 1e6 - self.service_down_time
        return sorted(bytes_to_str(host) for host, at in seen.items() if _stamp(at) >= oldest)


class HostsView:
    """One service's hosts as the registry sees them now, read incrementally
    (:meth:`managers.base.Fleet.hosts`).

    Each :meth:`read` fetches the heartbeat times and the disabled hosts (small
    values), and the reports only of hosts that reported since the last read:
    with thousands of hosts, a manager that looks at the whole fleet again and
    again does not read and parse every report, yet sees every report, every
    disable and every departure at once. Entries carry ``host``, ``state``,
    ``age``, ``alive``, ``capabilities``, ``disabled_reason``. (Placement reads
    only its candidates: :meth:`Registry.state_keys`.)
    """

    def __init__(self, service: str) -> None:
        self.service = service
        #: Host key -> (heartbeat time as stored, as a number, host name, capabilities).
        self._reports: dict[Any, tuple[Any, float, str, dict[str, Any]]] = {}

    def read(self, redis: Any, service_down_time: float) -> builtins.list[dict[str, Any]]:
        pipe = redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(registry_key(self.service, "seen"))
        pipe.hgetall(registry_key(self.service, "disabled"))
        (seconds, micros), seen, disabled = pipe.execute()
        oldest = float(seconds) + float(micros) / 1e6 - service_down_time
        reports = self._reports
        changed = [key for key, stamp in seen.items()
                   if key not in reports or reports[key][0] != stamp]
        if changed:
            for key, raw in zip(changed, redis.hmget(registry_key(self.service), changed),
                                strict=True):
                info = _report(raw) if raw else {}
                reports[key] = (seen[key], _stamp(seen[key]), bytes_to_str(key),
                                _capabilities(info))
        if len(reports) > len(seen):
            for key in [key for key in reports if key not in seen]:
                del reports[key]
        now = oldest + service_down_time
        service = self.service
        entries = []
        for _, stamp, host, capabilities in reports.values():
            alive = stamp >= oldest
            entries.append({"service": service, "host": host, "state": UP if alive else DOWN,
                            "age": now - stamp if stamp else None, "alive": alive,
                            "capabilities": capabilities,
                            "disabled_reason": None})
        if disabled:
            by_host = {entry["host"]: entry for entry in entries}
            for key, raw in disabled.items():
                host = bytes_to_str(key)
                entry = by_host.get(host)
                if entry is None:  # disabled, never reported
                    entry = {"service": service, "host": host, "age": None, "alive": False,
                             "capabilities": {}}
                    entries.append(entry)
                entry.update(state=DISABLED, disabled_reason=_reason(raw))
        return entries
