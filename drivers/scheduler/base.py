"""The contract of a scheduler driver, and the filter scheduler the built-in drivers share.

A scheduler driver ranks the candidate hosts of a placement request: it
removes those that cannot take it (saying why, per filter) and orders the
rest, best first. It sees plain data (no Redis, no Celery): the scheduler
manager reads a capped set of candidates (free capacity from claims, state
from the registry), hands them in, then claims the resources on the first
host it can and keeps the next ones as alternates.

:class:`FilterScheduler` does it as Nova's filter scheduler does: the
enabled filters (``driver_options.filters``) run in turn, then the enabled
weighers (``driver_options.weighers``: name -> multiplier) weigh the hosts
that passed; each weigher's weights are normalized to 0..1, multiplied and
added up (:mod:`drivers.scheduler.weighers.base`). ``least_loaded``,
``chance`` and ``fake`` are filter schedulers with other defaults.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from drivers.exceptions import NoValidHost
from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.hosts import HostState, PlacementRequest, Selection
from drivers.scheduler.plugins import load_filter, load_weigher
from drivers.scheduler.weighers.base import HostWeigher, normalize

__all__ = [
    "DEFAULT_FILTERS", "DEFAULT_MAX_ATTEMPTS", "DEFAULT_MAX_CANDIDATES", "DEFAULT_WEIGHERS",
    "FilterScheduler", "HostState", "PlacementRequest", "SchedulerDriver", "Selection",
    "no_valid_host",
]

#: The filters a filter scheduler runs unless ``driver_options.filters`` says otherwise.
DEFAULT_FILTERS: tuple[str, ...] = (
    "UpFilter", "EnabledFilter", "AvailabilityZoneFilter", "AffinityFilter",
    "AntiAffinityFilter", "CapacityFilter",
)
#: Weigher -> multiplier unless ``driver_options.weighers`` says otherwise: the most free
#: capacity wins, and a host whose builds failed lately goes behind every host whose did not.
DEFAULT_WEIGHERS: Mapping[str, float] = {"CapacityWeigher": 1.0, "BuildFailureWeigher": 10.0}
#: Hosts a request may be built on: the first choice and its alternates (Nova's default).
DEFAULT_MAX_ATTEMPTS = 3
#: Candidates a placement reads from the index of free capacity (the freest hosts): each
#: costs a placement about 10 µs of the scheduler's CPU and a little of Redis's.
DEFAULT_MAX_CANDIDATES = 50


class SchedulerDriver(ABC):
    """Ranks the candidate hosts of a placement request.

    ``max_attempts`` (the choice and its alternates) and ``max_candidates``
    (how many hosts a placement reads) are the driver's; ``known_hints`` the
    request hints its filters and weighers read (None: any).
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    known_hints: frozenset[str] | None = None

    @abstractmethod
    def select_host(self, request: PlacementRequest, hosts: Sequence[HostState]) -> str:
        """One host for ``request``; ``NoValidHost`` with the reason per filter when none fits."""

    def select_destinations(self, request: PlacementRequest,
                            hosts: Sequence[HostState]) -> Selection:
        """Every host that can take ``request``, best first (a driver that ranks only one
        host gives that one: no alternates)."""
        return Selection([self.select_host(request, hosts)], considered=len(hosts))


def _whole(value: Any, least: int, key: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"driver_options.{key} = {value!r}: expected a whole number of "
                         f"{what}, at least {least}")
    return value


class FilterScheduler(SchedulerDriver):
    """Filters the candidates, then weighs those that pass (see the module doc).

    Options (``driver_options`` of the scheduler service): ``filters`` (names,
    in the order they run), ``weighers`` (name -> multiplier), ``max_attempts``,
    ``max_candidates``, ``seed`` (ties are broken at random). A subclass
    changes the defaults, or how the hosts that pass are ordered
    (:meth:`order`).
    """

    filters: tuple[str, ...] = DEFAULT_FILTERS
    weighers: Mapping[str, float] = DEFAULT_WEIGHERS

    def __init__(self, seed: int | None = None, *, filters: Iterable[str] | None = None,
                 weighers: Mapping[str, float] | None = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES) -> None:
        self.random = random.Random(seed)
        if filters is not None:
            if isinstance(filters, str) or not isinstance(filters, Iterable):
                raise ValueError(f"driver_options.filters = {filters!r}: expected a list of "
                                 "filter names")
            self.filters = tuple(filters)
        if weighers is not None:
            if not isinstance(weighers, Mapping) or not all(
                    isinstance(m, (int, float)) and not isinstance(m, bool)
                    for m in weighers.values()):
                raise ValueError(f"driver_options.weighers = {weighers!r}: expected a table of "
                                 "weigher name = multiplier (a number)")
            self.weighers = dict(weighers)
        self.max_attempts = _whole(max_attempts, 1, "max_attempts", "hosts to try")
        self.max_candidates = _whole(max_candidates, 1, "max_candidates", "hosts")
        try:
            self.host_filters: list[HostFilter] = [load_filter(n) for n in self.filters]
            self.host_weighers: list[tuple[HostWeigher, float]] = [
                (load_weigher(n), float(m)) for n, m in self.weighers.items() if m]
        except ValueError as exc:
            raise ValueError(f"driver_options: {exc}") from None
        self.known_hints = frozenset(
            [hint for f in self.host_filters for hint in f.hints]
            + [hint for w, _ in self.host_weighers for hint in w.hints])

    def filter_hosts(
        self, request: PlacementRequest, hosts: Sequence[HostState]
    ) -> tuple[list[HostState], dict[str, dict[str, str]]]:
        """The hosts that pass every filter, and per filter the hosts it removed and why."""
        passed = list(hosts)
        removed: dict[str, dict[str, str]] = {}
        for host_filter in self.host_filters:
            if not passed:
                break
            passed, reasons = host_filter.filter_all(passed, request)
            if reasons:
                removed[host_filter.name] = reasons
        return passed, removed

    def weigh(self, request: PlacementRequest, hosts: Sequence[HostState]) -> list[float]:
        """Each host's total weight: normalized weights times multipliers, added up."""
        totals = [0.0] * len(hosts)
        for weigher, multiplier in self.host_weighers:
            for i, weight in enumerate(normalize(weigher.weigh_all(hosts, request))):
                totals[i] += multiplier * weight
        return totals

    def order(self, request: PlacementRequest,
              hosts: Sequence[HostState]) -> tuple[list[str], dict[str, float]]:
        """The hosts that passed, best first (ties at random), and their weights."""
        weights = self.weigh(request, hosts)
        draw = self.random.random
        ranked = sorted(((-w, draw(), h.host) for w, h in zip(weights, hosts, strict=True)))
        return [host for _, _, host in ranked], {
            h.host: w for h, w in zip(hosts, weights, strict=True)}

    def select_destinations(self, request: PlacementRequest,
                            hosts: Sequence[HostState]) -> Selection:
        passed, removed = self.filter_hosts(request, hosts)
        if not passed:
            raise no_valid_host(request, hosts, removed)
        ordered, weights = self.order(request, passed)
        if type(self).choose is not FilterScheduler.choose:
            # A subclass written before weighers, that picks its host itself: its choice
            # first, the others as alternates.
            first = self.choose(request, passed)
            ordered = [first, *(host for host in ordered if host != first)]
        return Selection(ordered, weights, removed, len(hosts))

    def select_host(self, request: PlacementRequest, hosts: Sequence[HostState]) -> str:
        return self.select_destinations(request, hosts).hosts[0]

    def choose(self, request: PlacementRequest, hosts: Sequence[HostState]) -> str:
        """The one host a subclass prefers among ``hosts`` (all passed the filters); by
        default the best weighed. Subclasses rank every host with :meth:`order` instead."""
        return self.order(request, hosts)[0][0]


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
