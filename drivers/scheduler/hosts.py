"""What a scheduler driver sees: candidate hosts, the request, and the choice it returns.

Plain data, no Redis and no Celery: the scheduler manager reads the
candidates (their free capacity from claims, their state from the
registry) and hands them in; a driver filters and weighs them and returns a
:class:`Selection`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The request hints the built-in filters and weighers read (see each one).
ZONE_HINT = "zone"
AFFINITY_HINT = "affinity"
ANTI_AFFINITY_HINT = "anti_affinity"


# Not frozen: a placement builds one per candidate, and a frozen dataclass takes twice as
# long to build. Filters and weighers read it, never change it.
@dataclass(slots=True)
class HostState:
    """One candidate host of a service, as placement sees it now."""

    host: str
    #: ``up``, ``down`` or ``disabled``.
    state: str
    #: What the host's last heartbeat reported (free_gb, backend...).
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    disabled_reason: str | None = None
    #: Seconds since its last heartbeat (None: never reported).
    age: float | None = None
    #: The host's availability zone (its ``zone`` setting; "" when it has none).
    zone: str = ""
    #: Resource class -> what is left of its capacity once every claim is counted.
    free: Mapping[str, float] = field(default_factory=dict)
    #: Builds that failed on this host since its last successful one.
    failures: int = 0

    @classmethod
    def from_registry(cls, entry: Mapping[str, Any]) -> HostState:
        """Build from a registry entry (``ServiceRecord.as_dict()`` or a placement candidate)."""
        return cls(
            host=str(entry["host"]), state=str(entry["state"]),
            capabilities=dict(entry.get("capabilities") or {}),
            disabled_reason=entry.get("disabled_reason"), age=entry.get("age"),
            zone=str(entry.get("zone") or ""), free=dict(entry.get("free") or {}),
            failures=int(entry.get("failures") or 0),
        )

    def amount_free(self, name: str) -> float | None:
        """What is free of ``name``: from claims, else as the host reported it; None: unknown.

        A resource class (``DISK_GB``) is counted from claims; a capability a
        host reports itself (``free_gb``) is read as reported, for drivers
        and tests that place by reported capacity.
        """
        have = self.free.get(name)
        if have is None:
            have = self.capabilities.get(name)
        if not isinstance(have, (int, float)) or isinstance(have, bool):
            return None
        return have


@dataclass(frozen=True)
class PlacementRequest:
    """What the new work needs: resource class (or capability) -> amount, and what to prefer."""

    service: str
    needs: Mapping[str, float] = field(default_factory=dict)
    #: What to prefer more of (the free capacity weighed), or None.
    weigh_by: str | None = None
    #: The caller's hints (``zone``, ``affinity``, ``anti_affinity``, a third party's own).
    hints: Mapping[str, Any] = field(default_factory=dict)
    #: Resource id -> the host that holds it, for every resource the hints name.
    resource_hosts: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        needs = ", ".join(f"{k} >= {v:g}" for k, v in self.needs.items())
        return f"{self.service}" + (f" (needs {needs})" if needs else "")

    def hint_ids(self, name: str) -> list[str]:
        """A hint naming resources (one id or a list of ids), as a list."""
        value = self.hints.get(name)
        if value is None:
            return []
        return [value] if isinstance(value, str) else [str(v) for v in value]


@dataclass(frozen=True)
class Selection:
    """A driver's answer: every host that passed, best first, and why the others did not."""

    #: Hosts that passed every filter, best first (the first is the choice; the
    #: manager claims in this order and keeps the next ones as alternates).
    hosts: list[str]
    #: Host -> its total weight (the weighers' normalized weights times their multipliers).
    weights: Mapping[str, float] = field(default_factory=dict)
    #: Filter name -> host -> why the filter removed it.
    removed: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: How many candidates the driver was given.
    considered: int = 0
