"""AffinityFilter: with an ``affinity`` hint, only the host of the resources it names."""

from __future__ import annotations

from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.hosts import AFFINITY_HINT, HostState, PlacementRequest


class AffinityFilter(HostFilter):
    """Keeps only hosts that hold every resource named by the hint ``affinity`` (ids)."""

    hints = (AFFINITY_HINT,)

    def host_passes(self, host: HostState, request: PlacementRequest) -> str | None:
        for resource_id in request.hint_ids(AFFINITY_HINT):
            holder = request.resource_hosts.get(resource_id)
            if holder != host.host:
                return f"affinity: {resource_id} is on {holder}"
        return None
