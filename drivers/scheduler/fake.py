"""A predictable scheduler for tests: hosts that pass every filter, taken in turn by name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from drivers.scheduler.base import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CANDIDATES, FilterScheduler
from drivers.scheduler.hosts import HostState, PlacementRequest


class FakeScheduler(FilterScheduler):
    """Round-robin over the hosts that pass (sorted by name), so tests know the outcome.

    Options meant for the driver it stands in for are accepted, so one
    environment variable switches a scheduler to it.
    """

    weighers: dict[str, float] = {}

    def __init__(self, seed: int | None = None, *, filters: Iterable[str] | None = None,
                 weighers: Mapping[str, float] | None = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES,
                 **other_drivers_options: object) -> None:
        super().__init__(seed, filters=filters, max_attempts=max_attempts,
                         max_candidates=max_candidates)
        self.turn = 0

    def order(self, request: PlacementRequest,
              hosts: Sequence[HostState]) -> tuple[list[str], dict[str, float]]:
        names = sorted(h.host for h in hosts)
        start = self.turn % len(names)
        self.turn += 1
        names = names[start:] + names[:start]
        return names, dict.fromkeys(names, 0.0)
