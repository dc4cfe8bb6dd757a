"""Volumes as image files under a directory, made with real commands.

A volume is ``<root>/volume-<id>.img``, created and grown with
``truncate`` (sparse: only written blocks take space) or, with
``preallocate``, written out with ``dd`` in chunks so that progress can be
reported. A snapshot is ``<root>/snapshot-<id>.img``, copied with
``cp --sparse=always`` (or, for written-out images, with ``dd`` chunk by
chunk, reporting each). Capacity comes from the filesystem, optionally
capped by ``capacity_gb`` (what this node offers to the fleet).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from drivers.executor import Executor
from drivers.volume.base import (
    GIB,
    ProgressCallback,
    SnapshotRef,
    VolumeDriver,
    VolumeDriverError,
    VolumeRef,
    safe_id,
)

MIB = 1024**2


class FileVolumeDriver(VolumeDriver):
    """Sparse image files under ``root``."""

    def __init__(
        self,
        root: str,
        capacity_gb: float | None = None,
        preallocate: bool = False,
        chunk_mb: int = 64,
        executor: Executor | None = None,
    ) -> None:
        if not root:
            raise ValueError("the file volume driver needs driver_options.root")
        self.root = Path(root).expanduser().resolve()
        self.capacity_gb = float(capacity_gb) if capacity_gb is not None else None
        self.preallocate = bool(preallocate)
        self.chunk_mb = max(1, int(chunk_mb))
        self.execute = executor or Executor()

    def volume_path(self, volume_id: str) -> Path:
        return self.root / f"volume-{safe_id(volume_id)}.img"

    def snapshot_path(self, snapshot_id: str) -> Path:
        return self.root / f"snapshot-{safe_id(snapshot_id)}.img"

    def do_setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def check_for_setup_error(self) -> None:
        if not self.root.is_dir():
            raise VolumeDriverError(f"volume root {self.root} is not a directory")
        if not os.access(self.root, os.W_OK):
            raise VolumeDriverError(f"volume root {self.root} is not writable")
        for tool in ("truncate", "cp", "mv", "rm", "dd"):
            if shutil.which(tool) is None:
                raise VolumeDriverError(f"the file volume driver needs {tool!r} on PATH")

    def create_volume(
        self, volume: VolumeRef, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        path = self.volume_path(volume.id)
        if path.exists():  # made by an earlier delivery of this request
            return {"location": str(path)}
        # Made under a temporary name and renamed when whole: a crash half way
        # leaves a .partial file (removed by recover()), never a short image.
        partial = path.with_suffix(".partial")
        if self.preallocate:
            self._write_out(partial, volume.size_gb, progress)
        else:
            self.execute("truncate", "-s", f"{volume.size_gb}G", str(partial))
            if progress:
                progress(1, 1, "allocated")
        self.execute("mv", "-f", str(partial), str(path))
        return {"location": str(path)}

    def recover(self) -> None:
        """Remove the ``.partial`` files of operations cut short by a crash of this node."""
        for leftover in sorted(self.root.glob("*.partial")):
            self.execute("rm", "-f", str(leftover))

    def _dd_in_chunks(self, source: str, target: Path, size_gb: int, verb: str,
                      progress: ProgressCallback | None, *extra: str) -> None:
        """``dd`` ``size_gb`` from ``source`` to ``target`` a chunk at a time, reporting each.

        ``/dev/zero`` as ``source`` writes an image out; an image as ``source``
        (with ``skip`` added) copies it. ``extra`` are more ``dd`` operands.
        """
        total_mb = size_gb * 1024
        chunks = -(-total_mb // self.chunk_mb)
        for index in range(chunks):
            offset = index * self.chunk_mb
            count = min(self.chunk_mb, total_mb - offset)
            skip = () if source == "/dev/zero" else (f"skip={offset}",)
            self.execute(
                "dd", f"if={source}", f"of={target}", "bs=1M", f"count={count}", *skip,
                f"seek={offset}", *extra, "status=none",
            )
            if progress:
                progress(index + 1, chunks, f"{verb} {offset + count} MiB")

    def _write_out(self, path: Path, size_gb: int, progress: ProgressCallback | None) -> None:
        """Write zeros chunk by chunk, reporting each chunk."""
        self._dd_in_chunks("/dev/zero", path, size_gb, "wrote", progress, "conv=notrunc")

    def _copy_in_chunks(self, source: Path, target: Path, size_gb: int,
                        progress: ProgressCallback | None) -> None:
        """Copy a written-out image chunk by chunk, keeping holes, reporting each chunk."""
        self._dd_in_chunks(str(source), target, size_gb, "copied", progress,
                           "conv=notrunc,sparse")

    def delete_volume(self, volume: VolumeRef) -> None:
        self.execute("rm", "-f", str(self.volume_path(volume.id)))

    def extend_volume(self, volume: VolumeRef, new_size_gb: int) -> dict[str, Any]:
        path = self.volume_path(volume.id)
        if path.exists() and path.stat().st_size > new_size_gb * GIB:
            raise VolumeDriverError(f"{path} is larger than {new_size_gb} GiB; refusing to shrink")
        self.execute("truncate", "-s", f"{new_size_gb}G", str(path))
        return {}

    def create_snapshot(
        self,
        snapshot: SnapshotRef,
        volume: VolumeRef,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        source = self.volume_path(volume.id)
        if not source.exists():
            raise VolumeDriverError(f"volume image {source} does not exist")
        target = self.snapshot_path(snapshot.id)
        # Copy to a temporary name first: a crash mid-copy must not leave a
        # truncated file that a repeated request would take for a finished one.
        partial = target.with_suffix(".partial")
        if self.preallocate:
            self._copy_in_chunks(source, partial, volume.size_gb, progress)
        else:
            if progress:
                progress(0, 1, "copying")
            self.execute("cp", "--sparse=always", str(source), str(partial))
            if progress:
                progress(1, 1, "copied")
        self.execute("mv", "-f", str(partial), str(target))
        return {"location": str(target)}

    def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        self.execute("rm", "-f", str(self.snapshot_path(snapshot.id)))

    def _provisioned_bytes(self) -> int:
        total = 0
        for entry in os.scandir(self.root):
            if entry.name.endswith(".img"):
                total += entry.stat().st_size
        return total

    def get_volume_stats(self) -> dict[str, Any]:
        fs = os.statvfs(self.root)
        fs_total = fs.f_blocks * fs.f_frsize / GIB
        fs_free = fs.f_bavail * fs.f_frsize / GIB
        provisioned = self._provisioned_bytes() / GIB
        total = self.capacity_gb if self.capacity_gb is not None else fs_total
        free = max(0.0, min(fs_free, total - provisioned))
        return {
            "backend": "file",
            "root": str(self.root),
            "total_gb": round(total, 2),
            "free_gb": round(free, 2),
            "provisioned_gb": round(provisioned, 2),
        }
