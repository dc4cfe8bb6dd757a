"""Chance: any live, enabled host, at random (capacity is left to the claim)."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.scheduler.base import DEFAULT_FILTERS, FilterScheduler
from drivers.scheduler.hosts import HostState, PlacementRequest


class ChanceScheduler(FilterScheduler):
    """A random order of the hosts that are up, enabled and fit the hints.

    Capacity is not filtered on: the claim the manager makes on the chosen
    host refuses one without room, and the next host in the order is tried.
    """

    filters = tuple(f for f in DEFAULT_FILTERS if f != "CapacityFilter")
    weighers: dict[str, float] = {}

    def order(self, request: PlacementRequest,
              hosts: Sequence[HostState]) -> tuple[list[str], dict[str, float]]:
        names = [h.host for h in hosts]
        self.random.shuffle(names)
        return names, dict.fromkeys(names, 0.0)
