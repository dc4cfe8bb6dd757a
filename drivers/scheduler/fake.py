"""A predictable scheduler for tests: hosts that pass every filter, taken in turn by name."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.scheduler.base import FilterScheduler, HostState, PlacementRequest


class FakeScheduler(FilterScheduler):
    """Round-robin over the hosts that pass (sorted by name), so tests know the outcome."""

    filters = ("UpFilter", "EnabledFilter", "CapacityFilter")

    def __init__(self, seed: int | None = None, **other_drivers_options: object) -> None:
        super().__init__(seed)
        self.turn = 0

    def choose(self, request: PlacementRequest, hosts: Sequence[HostState]) -> str:
        names = sorted(h.host for h in hosts)
        chosen = names[self.turn % len(names)]
        self.turn += 1
        return chosen
