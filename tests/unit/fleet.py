"""A fleet for managers under test: hosts with a state, and every request sent, recorded.

What :class:`managers.base.Fleet` gives a manager on a node, in memory: the
scheduler reads host states from it and hands work on through it; builds ask
it whether an alternate is up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drivers.scheduler.hosts import HostState
from managers.base import Manager
from managers.claims import ClaimStore
from managers.placement import Placement


class FakeFleet:
    """Hosts by service with their state (``up`` unless set), and the requests sent."""

    def __init__(self, records: Any = None, hosts: Mapping[str, Any] | None = None,
                 placements: Mapping[str, type[Manager]] | None = None) -> None:
        #: Where the services' claims are (what candidates are read from).
        self.records = records
        #: service -> host -> {state, age, disabled_reason} (or a list of registry entries).
        self._states: dict[str, dict[str, dict[str, Any]]] = {}
        self._entries: dict[str, list[dict[str, Any]]] = {}
        for service, value in (hosts or {}).items():
            if isinstance(value, list):
                self._entries[service] = value
                for entry in value:
                    self.set_state(service, entry["host"], entry.get("state", "up"))
        self._placements = {name: cls.placement for name, cls in (placements or {}).items()}
        self.casts: list[tuple[str, str, str | None, dict[str, Any]]] = []
        self.resent: list[dict[str, Any]] = []

    def set_state(self, service: str, host: str, state: str, age: float = 0.5,
                  reason: str | None = None) -> None:
        self._states.setdefault(service, {})[host] = {
            "state": state, "age": age if state != "down" else 99.0, "alive": state != "down",
            "disabled_reason": reason if state == "disabled" else None}

    def hosts(self, service: str) -> list[dict[str, Any]]:
        return self._entries.get(service, [])

    def states(self, service: str, hosts: list[str]) -> dict[str, dict[str, Any]]:
        known = self._states.get(service, {})
        return {h: known.get(h, {"state": "up", "age": 0.5, "alive": True,
                                 "disabled_reason": None}) for h in hosts}

    def candidates(self, service: str, needs: Mapping[str, float], limit: int, *,
                   zone: str | None = None, include: Sequence[str] = ()) -> list[HostState]:
        store = ClaimStore(self.records, service)
        found, _ = store.candidates(needs, limit, zone)
        extra = [h for h in include if h not in {c.host for c in found}]
        found += store.hosts(extra, list(needs)) if extra else []
        states = self.states(service, [c.host for c in found])
        return [HostState(c.host, states[c.host]["state"], {}, states[c.host]["disabled_reason"],
                          states[c.host]["age"], c.zone, c.free, c.failures) for c in found]

    def placement(self, service: str) -> Placement | None:
        return self._placements.get(service)

    def cast(self, service: str, method: str, /, host: str | None = None,
             **kwargs: Any) -> str:
        self.casts.append((service, method, host, kwargs))
        return f"task-{len(self.casts)}"

    def resend(self, service: str, method: str, /, *, host: str | None, task_id: str,
               kwargs: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        self.resent.append({"service": service, "method": method, "host": host,
                            "task_id": task_id, "kwargs": dict(kwargs),
                            "headers": dict(headers)})
