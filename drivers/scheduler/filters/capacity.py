"""CapacityFilter: a host must have what the request needs free, counted from claims."""

from __future__ import annotations

from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.hosts import HostState, PlacementRequest


class CapacityFilter(HostFilter):
    """Removes hosts without enough free of each resource the request needs.

    Free is the host's capacity (its inventory: total less reserved, times the
    allocation ratio) less every claim on it, as the candidates were read;
    the claim that follows checks again, atomically.
    """

    def host_passes(self, host: HostState, request: PlacementRequest) -> str | None:
        for name, least in request.needs.items():
            have = host.amount_free(name)
            if have is None:
                return f"reports no {name}"
            if have < least:
                return f"{name} {have:g} < {least:g}"
        return None
