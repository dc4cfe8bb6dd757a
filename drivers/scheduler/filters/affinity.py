"""AffinityFilter: with an ``affinity`` hint, only the host of the resources it names."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.hosts import AFFINITY_HINT, HostState, PlacementRequest


class AffinityFilter(HostFilter):
    """Keeps only hosts that hold every resource named by the hint ``affinity`` (ids)."""

    hints = (AFFINITY_HINT,)

    def filter_all(self, hosts: Sequence[HostState], request: PlacementRequest
                   ) -> tuple[list[HostState], dict[str, str]]:
        if not request.hints.get(AFFINITY_HINT):
            return list(hosts), {}  # no hint: every host passes
        return super().filter_all(hosts, request)

    def host_passes(self, host: HostState, request: PlacementRequest) -> str | None:
        for resource_id in request.hint_ids(AFFINITY_HINT):
            holder = request.resource_hosts.get(resource_id)
            if holder != host.host:
                return f"affinity: {resource_id} is on {holder}"
        return None
