"""The contract every volume driver fulfils.

A driver knows one backend (files, LVM, a fake in memory) and nothing of
records, messages or Celery: the manager hands it what it needs to know
about a volume and saves what the driver returns. Every operation must be
safe to repeat, because a message can be delivered twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.exceptions import VolumeDriverError
from drivers.ids import safe_id

__all__ = [
    "GIB", "ProgressCallback", "SnapshotRef", "VolumeDriver", "VolumeDriverError", "VolumeRef",
    "safe_id",
]

GIB = 1024**3

#: Called by long operations with (done, total, message); see Manager.report_progress.
ProgressCallback = Callable[[int, int, str], None]

@dataclass(frozen=True)
class VolumeRef:
    """What a driver is told about a volume."""

    id: str
    size_gb: int
    name: str | None = None
    #: The driver's own pointer, as returned in ``location`` by ``create_volume``.
    location: str | None = None


@dataclass(frozen=True)
class SnapshotRef:
    """What a driver is told about a snapshot."""

    id: str
    volume_id: str
    size_gb: int
    name: str | None = None
    location: str | None = None


class VolumeDriver(ABC):
    """Block storage on one node. Sizes are whole GiB."""

    @abstractmethod
    def do_setup(self) -> None:
        """Prepare the backend (directories, connections). Idempotent; runs at node start."""

    @abstractmethod
    def check_for_setup_error(self) -> None:
        """Raise :class:`VolumeDriverError` saying what to fix when the backend is unusable."""

    def recover(self) -> None:  # noqa: B027 - optional hook: most drivers leave nothing behind
        """Clean up after a crash: runs once at node start, before any request runs.

        Drivers whose operations leave something behind when cut short (a
        temporary file, say) remove it here. The default does nothing.
        """

    @abstractmethod
    def create_volume(
        self, volume: VolumeRef, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """Create ``volume`` and return updates for its record (``location`` at least).

        Creating a volume that already exists with this id succeeds.
        """

    @abstractmethod
    def delete_volume(self, volume: VolumeRef) -> None:
        """Delete ``volume``; a volume that is already gone is not an error."""

    @abstractmethod
    def extend_volume(self, volume: VolumeRef, new_size_gb: int) -> dict[str, Any]:
        """Grow ``volume`` to ``new_size_gb`` (never shrinks) and return record updates."""

    @abstractmethod
    def create_snapshot(
        self,
        snapshot: SnapshotRef,
        volume: VolumeRef,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Copy ``volume`` into ``snapshot`` and return updates for the snapshot's record.

        Repeating it for the same snapshot id succeeds.
        """

    @abstractmethod
    def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        """Delete ``snapshot``; one that is already gone is not an error."""

    @abstractmethod
    def get_volume_stats(self) -> dict[str, Any]:
        """Capacity in GiB: ``total_gb``, ``free_gb`` and ``provisioned_gb`` at least."""
