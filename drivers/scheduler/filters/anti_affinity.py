"""AntiAffinityFilter: with an ``anti_affinity`` hint, never the host of the resources it names."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.hosts import ANTI_AFFINITY_HINT, HostState, PlacementRequest


class AntiAffinityFilter(HostFilter):
    """Removes hosts that hold any resource named by the hint ``anti_affinity`` (ids)."""

    hints = (ANTI_AFFINITY_HINT,)

    def filter_all(self, hosts: Sequence[HostState], request: PlacementRequest
                   ) -> tuple[list[HostState], dict[str, str]]:
        if not request.hints.get(ANTI_AFFINITY_HINT):
            return list(hosts), {}  # no hint: every host passes
        return super().filter_all(hosts, request)

    def host_passes(self, host: HostState, request: PlacementRequest) -> str | None:
        for resource_id in request.hint_ids(ANTI_AFFINITY_HINT):
            if request.resource_hosts.get(resource_id) == host.host:
                return f"anti-affinity: holds {resource_id}"
        return None
