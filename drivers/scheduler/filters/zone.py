"""AvailabilityZoneFilter: with a ``zone`` hint, only hosts of that zone."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.hosts import ZONE_HINT, HostState, PlacementRequest


class AvailabilityZoneFilter(HostFilter):
    """Removes hosts outside the zone the request asks for (its hint ``zone``).

    A host's zone is its node's ``zone`` setting. Without the hint every host passes.
    """

    hints = (ZONE_HINT,)

    def filter_all(self, hosts: Sequence[HostState], request: PlacementRequest
                   ) -> tuple[list[HostState], dict[str, str]]:
        if not request.hints.get(ZONE_HINT):
            return list(hosts), {}  # no hint: every host passes
        return super().filter_all(hosts, request)

    def host_passes(self, host: HostState, request: PlacementRequest) -> str | None:
        wanted = request.hints.get(ZONE_HINT)
        if not wanted or host.zone == wanted:
            return None
        return f"in zone {host.zone!r}, not {wanted!r}" if host.zone else \
            f"in no zone, not {wanted!r}"
