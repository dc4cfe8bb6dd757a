"""BuildFailureWeigher: a host whose builds failed lately weighs less."""

from __future__ import annotations

from drivers.scheduler.hosts import HostState, PlacementRequest
from drivers.scheduler.weighers.base import HostWeigher


class BuildFailureWeigher(HostWeigher):
    """Weighs a host by minus the builds that failed on it since its last successful build.

    A host whose backend fails every build sinks below the healthy ones
    (with the default multiplier, below any difference of capacity), and
    rises again with its first successful build.
    """

    def weigh(self, host: HostState, request: PlacementRequest) -> float:
        return -float(host.failures)
