"""Volumes as logical volumes in one LVM volume group, made with the LVM tools.

A volume is the thick LV ``<vg>/volume-<id>``, seen by the node as
``/dev/<vg>/volume-<id>``. A snapshot is the copy-on-write LV
``<vg>/_snapshot-<id>`` of its volume, with the volume's size as its
copy-on-write space so that it can never overflow and become invalid. The
underscore is not decoration: LVM refuses LV names that start with
``snapshot`` ("Names starting "snapshot" are reserved"), as Cinder found
before us. Ids holding words LVM keeps for its own LVs (``_mlog``,
``_tmeta``...) are refused by ``lvcreate`` in its own words, passed on.

Every command runs as root through the injected :class:`Executor` (its
root helper, ``sudo -n`` say), never through a shell. Idempotency comes
from asking LVM what exists (``lvs``) rather than from remembering: a
message delivered twice, or a create that died after ``lvcreate``, finds
the LV there and succeeds. Sizes are read in bytes (``--units b``), exact
and free of any locale's decimal point; capacity is read in GiB as
``vgs --units g`` prints it (``g`` is binary in LVM, ``G`` would be SI).
"""

from __future__ import annotations

import re
from typing import Any

from drivers.executor import Executor, ProcessExecutionError, Result
from drivers.volume.base import (
    GIB,
    ProgressCallback,
    SnapshotRef,
    VolumeDriver,
    VolumeDriverError,
    VolumeRef,
    safe_id,
)

#: Seconds any single LVM command may take before it counts as failed; a
#: wedged device-mapper or udev would otherwise hold a worker forever.
LVM_COMMAND_TIMEOUT_S = 300.0

#: What LVM accepts as a volume group name; a leading ``-`` would be an option.
_VG_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")

#: LVM's words for "no such logical volume" (``lvs``, ``lvremove`` exit 5 with it).
_LV_MISSING = "Failed to find logical volume"


class LVMVolumeDriver(VolumeDriver):
    """Thick logical volumes and copy-on-write snapshots in ``volume_group``."""

    def __init__(
        self,
        *,
        volume_group: str | None = None,
        executor: Executor | None = None,
        timeout_s: float = LVM_COMMAND_TIMEOUT_S,
    ) -> None:
        if not volume_group:
            raise ValueError(
                "the lvm volume driver needs driver_options.volume_group: the name of an "
                "existing LVM volume group (vgcreate <name> <device>)"
            )
        if not _VG_NAME.match(volume_group) or volume_group in (".", ".."):
            raise ValueError(
                f"driver_options.volume_group = {volume_group!r} is not an LVM volume group "
                "name (letters, digits, + _ . -, not starting with -)"
            )
        self.volume_group = volume_group
        self.execute = executor or Executor()
        self.timeout_s = float(timeout_s)

    # -- names ---------------------------------------------------------------

    @staticmethod
    def volume_lv(volume_id: str) -> str:
        return f"volume-{safe_id(volume_id)}"

    @staticmethod
    def snapshot_lv(snapshot_id: str) -> str:
        return f"_snapshot-{safe_id(snapshot_id)}"

    def device_path(self, lv: str) -> str:
        """Where udev (or LVM itself) puts the LV's block device."""
        return f"/dev/{self.volume_group}/{lv}"

    # -- setup ---------------------------------------------------------------

    def do_setup(self) -> None:
        """Nothing to prepare: the volume group is the operator's, made once with
        ``vgcreate``. Creating it here would mean choosing disks to wipe, which a
        worker starting up must never do."""

    def check_for_setup_error(self) -> None:
        try:
            self._lvm("vgs", self.volume_group)
        except ProcessExecutionError as exc:
            raise VolumeDriverError(
                f"LVM volume group {self.volume_group!r} (driver_options.volume_group) is not "
                f"usable: {_reason(exc)}. Create it with `pvcreate <device>` and "
                f"`vgcreate {self.volume_group} <device>`, or name an existing group "
                "(`vgs` lists them); the lvm2 tools must be installed and runnable as root"
            ) from exc

    # -- volumes -------------------------------------------------------------

    def create_volume(
        self, volume: VolumeRef, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        lv = self.volume_lv(volume.id)
        if progress:
            progress(0, 1, f"creating {lv}")
        self._create_lv(lv, volume.size_gb,
                        ("-L", f"{volume.size_gb}G", "-n", lv, self.volume_group))
        if progress:
            progress(1, 1, f"created {lv}")
        return {"location": self.device_path(lv)}

    def delete_volume(self, volume: VolumeRef) -> None:
        """Remove the LV. ``-f`` spares the prompt; it would take snapshots with the
        volume, but the manager never deletes a volume that still has any."""
        self._remove_lv(self.volume_lv(volume.id))

    def extend_volume(self, volume: VolumeRef, new_size_gb: int) -> dict[str, Any]:
        """Grow the LV; the LV's real size (not ``volume.size_gb``) decides, so a
        repeat after a crash finds the work done and changes nothing."""
        lv = self.volume_lv(volume.id)
        current = self._lv_bytes(lv)
        if current is None:
            raise VolumeDriverError(f"logical volume {self.volume_group}/{lv} does not exist")
        wanted = new_size_gb * GIB
        if current > wanted:
            raise VolumeDriverError(
                f"logical volume {self.volume_group}/{lv} is {current / GIB:g} GiB; refusing to "
                f"shrink it to {new_size_gb} GiB"
            )
        if current < wanted:
            self._lvm("lvextend", "-L", f"{new_size_gb}G", f"{self.volume_group}/{lv}",
                      action=f"growing {lv} to {new_size_gb} GiB")
        return {}

    # -- snapshots -----------------------------------------------------------

    def create_snapshot(
        self,
        snapshot: SnapshotRef,
        volume: VolumeRef,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        origin = self.volume_lv(volume.id)
        lv = self.snapshot_lv(snapshot.id)
        if progress:
            progress(0, 1, f"snapshotting {origin}")
        self._create_lv(lv, snapshot.size_gb, (
            "-s", "-L", f"{snapshot.size_gb}G", "-n", lv, f"{self.volume_group}/{origin}",
        ))
        if progress:
            progress(1, 1, f"created {lv}")
        return {"location": self.device_path(lv)}

    def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        self._remove_lv(self.snapshot_lv(snapshot.id))

    # -- capacity ------------------------------------------------------------

    def get_volume_stats(self) -> dict[str, Any]:
        """The group's size and free space; ``provisioned_gb`` is size minus free.

        Thick LVs hold all their extents, so size minus free is exactly what is
        allocated: taskyard's volumes, their snapshots' copy-on-write space and
        any LV someone else keeps in the group, which takes space all the same.
        One ``vgs`` answers it, where summing ``lvs`` would miss LVM's own
        hidden metadata LVs.
        """
        result = self._lvm(
            "vgs", "--noheadings", "--units", "g", "--nosuffix", "-o", "vg_size,vg_free",
            self.volume_group, action="reading the group's capacity",
        )
        total, free = _numbers(result.stdout, 2, what="vgs vg_size,vg_free")
        return {
            "backend": "lvm",
            "volume_group": self.volume_group,
            "total_gb": round(total, 2),
            "free_gb": round(free, 2),
            "provisioned_gb": round(max(0.0, total - free), 2),
        }

    # -- primitives ----------------------------------------------------------

    def _lvm(self, *cmd: str, action: str | None = None) -> Result:
        """Run an LVM command as root; with ``action``, a failure is a VolumeDriverError."""
        try:
            return self.execute(*cmd, run_as_root=True, timeout=self.timeout_s)
        except ProcessExecutionError as exc:
            if action is None:
                raise
            raise VolumeDriverError(f"LVM failed {action}: {_reason(exc)}") from exc

    def _lv_bytes(self, lv: str) -> int | None:
        """The LV's size in bytes, or None when the group has no such LV."""
        try:
            result = self._lvm("lvs", "--noheadings", "--units", "b", "--nosuffix",
                               "-o", "lv_size", f"{self.volume_group}/{lv}")
        except ProcessExecutionError as exc:
            if _LV_MISSING in exc.stderr:
                return None
            raise VolumeDriverError(
                f"LVM failed looking up {self.volume_group}/{lv}: {_reason(exc)}"
            ) from exc
        (size,) = _numbers(result.stdout, 1, what=f"lvs lv_size of {lv}")
        return int(size)

    def _create_lv(self, lv: str, size_gb: int, lvcreate_args: tuple[str, ...]) -> None:
        """``lvcreate`` unless the LV exists already with at least ``size_gb``.

        A failed ``lvcreate`` is looked at again: when a concurrent delivery of
        the same request made the LV in between, the LV is there and that is
        success.
        """
        existing = self._lv_bytes(lv)
        if existing is None:
            try:
                self._lvm("lvcreate", *lvcreate_args)
                return
            except ProcessExecutionError as exc:
                existing = self._lv_bytes(lv)
                if existing is None:
                    raise VolumeDriverError(
                        f"LVM failed creating {self.volume_group}/{lv}: {_reason(exc)}"
                    ) from exc
        if existing < size_gb * GIB:
            # Something else wears this name: taking it as ours would hand out
            # a volume smaller than the record says.
            raise VolumeDriverError(
                f"logical volume {self.volume_group}/{lv} exists with {existing / GIB:g} GiB, "
                f"less than the {size_gb} GiB asked for; it is not the one this request made"
            )

    def _remove_lv(self, lv: str) -> None:
        """``lvremove -f``; an LV that is already gone is success."""
        try:
            self._lvm("lvremove", "-f", f"{self.volume_group}/{lv}")
        except ProcessExecutionError as exc:
            if _LV_MISSING in exc.stderr or self._lv_bytes(lv) is None:
                return
            raise VolumeDriverError(
                f"LVM failed removing {self.volume_group}/{lv}: {_reason(exc)}"
            ) from exc


def _reason(exc: ProcessExecutionError) -> str:
    """LVM's own words for a failure (its last stderr line), else the executor's message."""
    lines = [line.strip() for line in exc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else str(exc)


def _numbers(stdout: str, count: int, *, what: str) -> tuple[float, ...]:
    """The first output line holding exactly ``count`` numbers.

    LVM pads with spaces, may print notices on their own lines and follows
    the locale's decimal point (``3,00`` under ``de_DE``); ``<`` or ``>``
    marks rounding in some unit settings.
    """
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) != count:
            continue
        try:
            return tuple(float(f.lstrip("<>").replace(",", ".")) for f in fields)
        except ValueError:
            continue
    raise VolumeDriverError(f"cannot read {count} number(s) from {what} output {stdout!r}")
