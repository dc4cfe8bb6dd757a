"""CapacityWeigher: the more of the request's main resource is free, the better (spreading)."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.scheduler.hosts import HostState, PlacementRequest
from drivers.scheduler.weighers.base import HostWeigher


class CapacityWeigher(HostWeigher):
    """Weighs a host by what it has free of the request's ``weigh_by`` (its first need).

    A positive multiplier spreads work over the emptiest hosts; a negative
    one packs it onto the fullest.
    """

    def weigh_all(self, hosts: Sequence[HostState], request: PlacementRequest) -> list[float]:
        name = request.weigh_by or next(iter(request.needs), None)
        if name is None:
            return [0.0] * len(hosts)
        found = []
        for host in hosts:
            have = host.free.get(name)
            found.append(float(have) if have is not None else self.weigh(host, request))
        return found

    def weigh(self, host: HostState, request: PlacementRequest) -> float:
        name = request.weigh_by or next(iter(request.needs), None)
        if name is None:
            return 0.0
        have = host.amount_free(name)
        return float(have) if have is not None else 0.0
