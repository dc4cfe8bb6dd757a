"""CapacityFilter: a host must have what the request needs free, counted from claims."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.hosts import HostState, PlacementRequest


class CapacityFilter(HostFilter):
    """Removes hosts without enough free of each resource the request needs.

    Free is the host's capacity (its inventory: total less reserved, times the
    allocation ratio) less every claim on it, as the candidates were read;
    the claim that follows checks again, atomically.
    """

    def filter_all(self, hosts: Sequence[HostState], request: PlacementRequest
                   ) -> tuple[list[HostState], dict[str, str]]:
        if len(request.needs) != 1:
            return super().filter_all(hosts, request)
        # One need (the usual case): read what is free straight from the claims' counts.
        ((name, least),) = request.needs.items()
        kept: list[HostState] = []
        removed: dict[str, str] = {}
        for host in hosts:
            have = host.free.get(name)
            if have is not None and have >= least:
                kept.append(host)
            else:
                reason = self.host_passes(host, request)
                if reason is None:
                    kept.append(host)
                else:
                    removed[host.host] = reason
        return kept, removed

    def host_passes(self, host: HostState, request: PlacementRequest) -> str | None:
        for name, least in request.needs.items():
            have = host.amount_free(name)
            if have is None:
                return f"reports no {name}"
            if have < least:
                return f"{name} {have:g} < {least:g}"
        return None
