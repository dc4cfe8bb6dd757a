"""Least loaded: the live, enabled host with the most free capacity that fits."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.scheduler.base import FilterScheduler, HostState, PlacementRequest


class LeastLoadedScheduler(FilterScheduler):
    """Filters on up, enabled and enough capacity; weighs by free capacity; ties at random."""

    filters = ("UpFilter", "EnabledFilter", "CapacityFilter")

    def choose(self, request: PlacementRequest, hosts: Sequence[HostState]) -> str:
        if request.weigh_by is None:
            return self.random.choice(list(hosts)).host
        weights = {h.host: float(h.capabilities.get(request.weigh_by, 0)) for h in hosts}
        best = max(weights.values())
        return self.random.choice(sorted(h for h, w in weights.items() if w == best))
