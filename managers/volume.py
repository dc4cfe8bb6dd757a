"""The volume service: block volumes and their snapshots on the nodes' backends.

A volume lives on the node that created it (its ``host``); requests about an
existing volume that reach another node are forwarded to its owner. Records
move through ``creating -> available <-> extending``, then
``deleting -> deleted``, or ``error``; every step is one atomic transition,
so a request delivered twice finds the state the first one left and either
finishes the work or returns what is there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from drivers.volume.base import SnapshotRef, VolumeDriver, VolumeRef
from managers.base import Manager, endpoint, now
from managers.exceptions import Conflict, InvalidRequest
from managers.placement import Placement
from managers.records import Parent, RecordStore

CREATING, AVAILABLE, EXTENDING = "creating", "available", "extending"
DELETING, DELETED, ERROR = "deleting", "deleted", "error"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

#: Largest volume one request may ask for, in GiB.
MAX_SIZE_GB = 64 * 1024

#: The resource class of a volume node's space, in GiB.
DISK_GB = "DISK_GB"


def _check_id(kind: str, value: str) -> str:
    if not _ID_RE.match(value):
        raise InvalidRequest(
            f"{kind} {value!r} is not a valid id: use 1-64 letters, digits, '_' or '-'",
            {"argument": kind},
        )
    return value


def _check_size(argument: str, size_gb: int) -> int:
    if not 1 <= size_gb <= MAX_SIZE_GB:
        raise InvalidRequest(
            f"{argument} = {size_gb}: expected a whole number of GiB from 1 to {MAX_SIZE_GB}",
            {"argument": argument},
        )
    return size_gb


class VolumeManager(Manager):
    """Creates, grows, snapshots and deletes volumes through the configured driver."""

    driver_interface = VolumeDriver
    rpc_api_version = "1.0"
    driver: VolumeDriver
    #: A volume takes its size of its node's DISK_GB; the scheduler claims it before the
    #: node creates it.
    placement = Placement(creates="create_volume", id_argument="volume_id",
                          needs={DISK_GB: "size_gb"}, kind="volume")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.volumes = RecordStore(self.redis, self.service, "volume")
        self.snapshots = RecordStore(self.redis, self.service, "snapshot")

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _volume_ref(record: dict[str, Any]) -> VolumeRef:
        return VolumeRef(
            id=record["id"], size_gb=record["size_gb"], name=record.get("name"),
            location=record.get("location"),
        )

    @staticmethod
    def _snapshot_ref(record: dict[str, Any]) -> SnapshotRef:
        return SnapshotRef(
            id=record["id"], volume_id=record["volume_id"], size_gb=record["size_gb"],
            name=record.get("name"), location=record.get("location"),
        )

    def _own(self, record: dict[str, Any]) -> None:
        """Forward the request unless this node holds the resource."""
        if record.get("host") != self.host:
            self.forward_to(record["host"])

    # -- volumes -------------------------------------------------------------

    @endpoint
    def create_volume(
        self, size_gb: int, name: str | None = None, volume_id: str | None = None
    ) -> dict[str, Any]:
        """Create a volume on this node; with a known ``volume_id``, return that volume."""
        _check_size("size_gb", size_gb)
        volume_id = _check_id("volume_id", volume_id) if volume_id else self.new_id("volume")
        with self.building(volume_id, self.volumes, CREATING, size_gb=size_gb) as build:
            stamp = now()
            record, created = self.volumes.create(volume_id, {
                "id": volume_id, "name": name, "size_gb": size_gb, "host": self.host,
                "status": CREATING, "created_at": stamp, "updated_at": stamp,
                **build.record_fields(),
            })
            if not created:
                if record["size_gb"] != size_gb and record["status"] != DELETED:
                    raise Conflict(
                        f"volume {volume_id} exists with size {record['size_gb']} GiB, "
                        f"not {size_gb} GiB", {"id": volume_id, "status": record["status"]},
                    )
                if record["status"] in (DELETING, DELETED):
                    raise Conflict(
                        f"volume {volume_id} was deleted; create it under a new id",
                        {"id": volume_id, "status": record["status"]},
                    )
                if record["status"] != CREATING:
                    if record["status"] == ERROR and record.get("host") == self.host:
                        build.release()  # a build that failed holds nothing
                    return record
                # A delivery before us stopped half way (its node died): take the
                # creation over; the driver's create is safe to repeat.
                if record["host"] != self.host:
                    record = self.volumes.transition(
                        volume_id, (CREATING,),
                        {"host": self.host, **build.record_fields(), "updated_at": now()},
                        action="taking over the creation",
                    )
                    build.take_over()
            ref = self._volume_ref(record)
            return self.volumes.run_step(
                volume_id, lambda: self.driver.create_volume(ref, self.report_progress),
                allowed=(CREATING,), updates={"status": AVAILABLE, "error": None},
                action="finishing create_volume", done_status=AVAILABLE,
            )

    @endpoint
    def delete_volume(self, volume_id: str) -> dict[str, Any]:
        """Delete a volume without snapshots; deleting a deleted volume succeeds."""
        record = self.volumes.require(volume_id)
        if record["status"] == DELETED:
            return record
        self._own(record)
        record = self.volumes.transition(
            volume_id, (AVAILABLE, ERROR, DELETING), {"status": DELETING, "updated_at": now()},
            action="delete_volume", no_children="snapshot",
        )
        ref = self._volume_ref(record)
        deleted = self.volumes.run_step(
            volume_id, lambda: self.driver.delete_volume(ref), allowed=(DELETING, DELETED),
            updates={"status": DELETED}, action="finishing delete_volume", retire=True,
        )
        self.release_claim(volume_id)
        return deleted

    @endpoint
    def extend_volume(self, volume_id: str, new_size_gb: int) -> dict[str, Any]:
        """Grow a volume to ``new_size_gb``; asking for its current size changes nothing."""
        _check_size("new_size_gb", new_size_gb)
        record = self.volumes.require(volume_id)
        if new_size_gb < record["size_gb"]:
            raise InvalidRequest(
                f"volume {volume_id} is {record['size_gb']} GiB; shrinking to {new_size_gb} GiB "
                "is not supported", {"argument": "new_size_gb"},
            )
        if new_size_gb == record["size_gb"] and record["status"] == AVAILABLE:
            return record
        self._own(record)
        self.resize_claim(volume_id, size_gb=new_size_gb)
        record = self.volumes.transition(
            volume_id, (AVAILABLE, EXTENDING),
            {"status": EXTENDING, "target_size_gb": new_size_gb, "updated_at": now()},
            action="extend_volume",
        )
        ref = self._volume_ref(record)
        return self.volumes.run_step(
            volume_id, lambda: self.driver.extend_volume(ref, new_size_gb),
            allowed=(EXTENDING,),
            updates={"status": AVAILABLE, "size_gb": new_size_gb, "target_size_gb": None},
            action="finishing extend_volume",
        )

    @endpoint
    def get_volume(self, volume_id: str) -> dict[str, Any]:
        """A volume's record, with the ids of its live snapshots."""
        record = self.volumes.require(volume_id)
        snapshots = self.redis.smembers(self.volumes.children_key(volume_id, "snapshot"))
        record["snapshots"] = sorted(s.decode() if isinstance(s, bytes) else s for s in snapshots)
        return record

    @endpoint
    def list_volumes(self, host: str | None = None) -> list[dict[str, Any]]:
        """Every volume not deleted, oldest first; with ``host``, only that node's."""
        volumes = self.volumes.list()
        if host is not None:
            volumes = [v for v in volumes if v.get("host") == host]
        return volumes

    # -- snapshots -----------------------------------------------------------

    @endpoint
    def create_snapshot(
        self, volume_id: str, name: str | None = None, snapshot_id: str | None = None
    ) -> dict[str, Any]:
        """Copy an available volume; with a known ``snapshot_id``, return that snapshot."""
        snapshot_id = (_check_id("snapshot_id", snapshot_id) if snapshot_id
                       else self.new_id("snapshot"))
        volume = self.volumes.require(volume_id)
        self._own(volume)
        stamp = now()
        record, created = self.snapshots.create(
            snapshot_id,
            {"id": snapshot_id, "volume_id": volume_id, "name": name,
             "size_gb": volume["size_gb"], "host": volume["host"], "status": CREATING,
             "created_at": stamp, "updated_at": stamp},
            parent=Parent(self.volumes, volume_id, (AVAILABLE,)),
        )
        if not created:
            if record["volume_id"] != volume_id:
                raise Conflict(
                    f"snapshot {snapshot_id} belongs to volume {record['volume_id']}",
                    {"id": snapshot_id, "status": record["status"]},
                )
            if record["status"] != CREATING:
                return record
        snap, vol = self._snapshot_ref(record), self._volume_ref(volume)
        return self.snapshots.run_step(
            snapshot_id, lambda: self.driver.create_snapshot(snap, vol, self.report_progress),
            allowed=(CREATING,), updates={"status": AVAILABLE},
            action="finishing create_snapshot", done_status=AVAILABLE,
        )

    @endpoint
    def delete_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        """Delete a snapshot; deleting a deleted snapshot succeeds."""
        record = self.snapshots.require(snapshot_id)
        if record["status"] == DELETED:
            return record
        self._own(record)
        record = self.snapshots.transition(
            snapshot_id, (AVAILABLE, ERROR, DELETING), {"status": DELETING, "updated_at": now()},
            action="delete_snapshot",
        )
        snap = self._snapshot_ref(record)
        return self.snapshots.run_step(
            snapshot_id, lambda: self.driver.delete_snapshot(snap), allowed=(DELETING, DELETED),
            updates={"status": DELETED}, action="finishing delete_snapshot", retire=True,
            parent=Parent(self.volumes, record["volume_id"], ()),
        )

    @endpoint
    def get_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        """A snapshot's record."""
        return self.snapshots.require(snapshot_id)

    @endpoint
    def list_snapshots(self, volume_id: str | None = None) -> list[dict[str, Any]]:
        """Every snapshot not deleted; with ``volume_id``, only that volume's."""
        snapshots = self.snapshots.list()
        if volume_id is not None:
            snapshots = [s for s in snapshots if s["volume_id"] == volume_id]
        return snapshots

    # -- node ----------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        return dict(self.driver.get_volume_stats())

    def inventory(self) -> Mapping[str, int]:
        """The backend's space, whole GiB (``total_gb``); claims count what volumes take."""
        return {DISK_GB: int(self.driver.get_volume_stats()["total_gb"])}

    def allocations(self) -> dict[str, dict[str, int]]:
        """Every volume on this node that exists on its backend (a failed create holds none)."""
        return {
            v["id"]: {DISK_GB: max(int(v["size_gb"]), int(v.get("target_size_gb") or 0))}
            for v in self.volumes.list()
            if v.get("host") == self.host and (v["status"] != ERROR or v.get("location"))
        }
