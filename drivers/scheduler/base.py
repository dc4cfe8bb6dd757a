"""The contract of a scheduler driver, and the filters they share.

A scheduler driver picks one host for a placement request from the hosts
the registry knows, or raises ``NoValidHost`` saying, per filter, why each
host was removed. It sees plain data (no Redis, no Celery): the scheduler
manager reads the registry and hands the hosts in.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.exceptions import NoValidHost


@dataclass(frozen=True)
class HostState:
    """One host of a service as the registry last saw it."""

    host: str
    #: ``up``, ``down`` or ``disabled``.
    state: str
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    disabled_reason: str | None = None
    #: Seconds since its last heartbeat (None: never reported).
    age: float | None = None

    @classmethod
    def from_registry(cls, entry: Mapping[str, Any]) -> HostState:
        """Build from a registry entry (``ServiceRecord.as_dict()``)."""
        return cls(
            host=str(entry["host"]), state=str(entry["state"]),
            capabilities=dict(entry.get("capabilities") or {}),
            disabled_reason=entry.get("disabled_reason"), age=entry.get("age"),
        )


@dataclass(frozen=True)
class PlacementRequest:
    """What the new work needs: capability name -> least amount, and what to prefer."""

    service: str
    needs: Mapping[str, float] = field(default_factory=dict)
    #: Capability to prefer more of (the free capacity), or None.
    weigh_by: str | None = None

    def describe(self) -> str:
        needs = ", ".join(f"{k} >= {v:g}" for k, v in self.needs.items())
        return f"{self.service}" + (f" (needs {needs})" if needs else "")


#: A filter returns None when the host passes, or the reason it does not.
Filter = Callable[[HostState, PlacementRequest], "str | None"]


def up_filter(host: HostState, request: PlacementRequest) -> str | None:
    if host.state == "down":
        seen = "never seen" if host.age is None else f"last seen {host.age:.0f}s ago"
        return f"down, {seen}"
    return None


def enabled_filter(host: HostState, request: PlacementRequest) -> str | None:
    if host.state == "disabled":
        return f"disabled: {host.disabled_reason or 'no reason given'}"
    return None


def capacity_filter(host: HostState, request: PlacementRequest) -> str | None:
    for name, least in request.needs.items():
        have = host.capabilities.get(name)
        if not isinstance(have, (int, float)) or isinstance(have, bool):
            return f"reports no {name}"
        if have < least:
            return f"{name} {have:g} < {least:g}"
    return None


FILTERS: dict[str, Filter] = {
    "UpFilter": up_filter,
    "EnabledFilter": enabled_filter,
    "CapacityFilter": capacity_filter,
}


class SchedulerDriver(ABC):
    """Chooses a host for new work."""

    @abstractmethod
    def select_host(self, request: PlacementRequest, hosts: Sequence[HostState]) -> str:
        """One host for ``request``; ``NoValidHost`` with the reason per filter when none fits."""


class FilterScheduler(SchedulerDriver):
    """Filters the hosts, then lets the subclass pick among those that pass.

    Subclasses name their ``filters`` and implement :meth:`choose`; ties are
    broken with ``self.random`` (seedable for tests).
    """

    filters: tuple[str, ...] = ("UpFilter", "EnabledFilter")

    def __init__(self, seed: int | None = None) -> None:
        self.random = random.Random(seed)

    def filter_hosts(
        self, request: PlacementRequest, hosts: Sequence[HostState]
    ) -> tuple[list[HostState], dict[str, dict[str, str]]]:
        """The hosts that pass every filter, and per filter the hosts it removed and why."""
        passed = list(hosts)
        removed: dict[str, dict[str, str]] = {}
        for name in self.filters:
            check = FILTERS[name]
            kept = []
            for host in passed:
                reason = check(host, request)
                if reason is None:
                    kept.append(host)
                else:
                    removed.setdefault(name, {})[host.host] = reason
            passed = kept
        return passed, removed

    def select_host(self, request: PlacementRequest, hosts: Sequence[HostState]) -> str:
        passed, removed = self.filter_hosts(request, hosts)
        if not passed:
            raise no_valid_host(request, hosts, removed)
        return self.choose(request, passed)

    @abstractmethod
    def choose(self, request: PlacementRequest, hosts: Sequence[HostState]) -> str:
        """Pick one of ``hosts`` (all passed the filters; never empty)."""


def no_valid_host(
    request: PlacementRequest, hosts: Sequence[HostState], removed: Mapping[str, Mapping[str, str]]
) -> NoValidHost:
    """The error that says why no host fits, filter by filter."""
    if not hosts:
        return NoValidHost(
            f"no valid host for {request.describe()}: no {request.service} host has reported",
            {"reasons": {}},
        )
    parts = [
        f"{name} removed " + ", ".join(f"{h} ({why})" for h, why in sorted(hosts_removed.items()))
        for name, hosts_removed in removed.items()
    ]
    return NoValidHost(
        f"no valid host for {request.describe()}: " + "; ".join(parts),
        {"reasons": {name: dict(r) for name, r in removed.items()}},
    )
