"""The contract of a placement weigher, and how weights are mixed (as Nova mixes them).

A weigher gives each host that passed the filters a raw number (more is
better). The scheduler normalizes each weigher's numbers over the hosts to
0..1 (the lowest 0, the highest 1; all 0 when they are equal), multiplies
them by the weigher's multiplier from the settings, and adds them up: the
host with the highest total is chosen, the next ones are its alternates. A
negative multiplier turns a weigher around. Built-in weighers live one per
module beside this one; a package adds its own with an entry point in the
group ``taskyard.scheduler.weighers``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from drivers.scheduler.hosts import HostState, PlacementRequest


class HostWeigher(ABC):
    """Ranks hosts: more is better."""

    #: Request hints this weigher reads.
    hints: ClassVar[tuple[str, ...]] = ()

    @property
    def name(self) -> str:
        """The name settings give its multiplier under."""
        return type(self).__name__

    @abstractmethod
    def weigh(self, host: HostState, request: PlacementRequest) -> float:
        """The raw weight of ``host`` for ``request`` (any scale: it is normalized)."""

    def weigh_all(self, hosts: Sequence[HostState], request: PlacementRequest) -> list[float]:
        """The raw weight of every host, in order."""
        weigh = self.weigh
        return [weigh(host, request) for host in hosts]


def normalize(weights: Sequence[float]) -> list[float]:
    """``weights`` scaled to 0..1 (lowest 0, highest 1); all 0 when they are all equal."""
    if not weights:
        return []
    low, high = min(weights), max(weights)
    if high == low:
        return [0.0] * len(weights)
    span = high - low
    return [(w - low) / span for w in weights]
