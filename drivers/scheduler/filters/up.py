"""UpFilter: a host whose heartbeats stopped cannot take work."""

from __future__ import annotations

from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.hosts import HostState, PlacementRequest


class UpFilter(HostFilter):
    """Removes hosts that have not reported within ``service_down_time``."""

    def host_passes(self, host: HostState, request: PlacementRequest) -> str | None:
        if host.state == "down":
            seen = "never seen" if host.age is None else f"last seen {host.age:.0f}s ago"
            return f"down, {seen}"
        return None
