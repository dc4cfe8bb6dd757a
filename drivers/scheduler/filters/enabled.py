"""EnabledFilter: an operator keeps new work away from a disabled host."""

from __future__ import annotations

from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.hosts import HostState, PlacementRequest


class EnabledFilter(HostFilter):
    """Removes hosts disabled with ``taskyard services disable``, with the operator's reason."""

    def host_passes(self, host: HostState, request: PlacementRequest) -> str | None:
        if host.state == "disabled":
            return f"disabled: {host.disabled_reason or 'no reason given'}"
        return None
