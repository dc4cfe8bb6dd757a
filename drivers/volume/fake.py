"""A volume driver that keeps its volumes in memory: for tests and demos.

It really works (sizes, snapshots, capacity), so the manager's logic is
exercised as with a real backend. With a prefork pool every process has its
own copy; that is harmless because records live in Redis, not here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from drivers.fakes import FakeDriver
from drivers.volume.base import (
    ProgressCallback,
    SnapshotRef,
    VolumeDriver,
    VolumeDriverError,
    VolumeRef,
)


class FakeVolumeDriver(FakeDriver, VolumeDriver):
    """Volumes as entries in a dict; ``fail`` names operations that raise (for tests), and
    ``create_seconds`` makes a create take that long.

    Options meant for the real driver it stands in for (``root``, say) are
    accepted and ignored, so that switching a service to ``fake`` with one
    environment variable works without touching ``driver_options``.
    """

    interface = VolumeDriver
    error = VolumeDriverError

    def __init__(
        self, total_gb: int = 1000, fail: Iterable[str] = (), create_seconds: float = 0.0,
        **other_drivers_options: Any
    ) -> None:
        self.total_gb = int(total_gb)
        #: How long a create takes, reporting progress every tenth (a slow backend, for tests).
        self.create_seconds = float(create_seconds)
        self.init_fake(fail, other_drivers_options)
        self.volumes: dict[str, int] = {}
        self.snapshots: dict[str, tuple[str, int]] = {}

    def _provisioned(self) -> int:
        return sum(self.volumes.values()) + sum(size for _, size in self.snapshots.values())

    def create_volume(
        self, volume: VolumeRef, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        self._maybe_fail("create_volume")
        if volume.id not in self.volumes:
            if self._provisioned() + volume.size_gb > self.total_gb:
                raise VolumeDriverError(
                    f"not enough space for {volume.size_gb} GiB "
                    f"({self.total_gb - self._provisioned()} GiB free)"
                )
            self.volumes[volume.id] = volume.size_gb
        for step in range(10 if self.create_seconds > 0 else 0):
            time.sleep(self.create_seconds / 10)
            if progress:
                progress(step + 1, 10, "allocating")
        if progress:
            progress(volume.size_gb, volume.size_gb, "allocated")
        return {"location": f"fake://{volume.id}"}

    def delete_volume(self, volume: VolumeRef) -> None:
        self._maybe_fail("delete_volume")
        self.volumes.pop(volume.id, None)

    def extend_volume(self, volume: VolumeRef, new_size_gb: int) -> dict[str, Any]:
        self._maybe_fail("extend_volume")
        self.volumes[volume.id] = max(self.volumes.get(volume.id, 0), new_size_gb)
        return {}

    def create_snapshot(
        self,
        snapshot: SnapshotRef,
        volume: VolumeRef,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        self._maybe_fail("create_snapshot")
        self.snapshots[snapshot.id] = (volume.id, volume.size_gb)
        if progress:
            progress(1, 1, "copied")
        return {"location": f"fake://{snapshot.id}"}

    def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        self._maybe_fail("delete_snapshot")
        self.snapshots.pop(snapshot.id, None)

    def get_volume_stats(self) -> dict[str, Any]:
        provisioned = self._provisioned()
        return {
            "backend": "fake",
            "total_gb": self.total_gb,
            "free_gb": max(0, self.total_gb - provisioned),
            "provisioned_gb": provisioned,
            "volumes": len(self.volumes),
        }
