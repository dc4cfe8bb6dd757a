"""Chance: any live, enabled host, at random (capacity is not looked at)."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.scheduler.base import FilterScheduler, HostState, PlacementRequest


class ChanceScheduler(FilterScheduler):
    """A random host among those up and enabled."""

    filters = ("UpFilter", "EnabledFilter")

    def choose(self, request: PlacementRequest, hosts: Sequence[HostState]) -> str:
        return self.random.choice(list(hosts)).host
