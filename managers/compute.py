"""The compute service: instances started from images on the nodes' backends.

An instance lives on the node that started it; requests about it that reach
another node are forwarded there. Records move through ``building ->
running <-> rebooting``, ``running -> stopped`` (its process ended, seen by
the reconciliation), ``deleting -> deleted``, or ``error``. A periodic task
on every node compares the records of its instances with what the driver
sees, so an instance whose process died is reported, not imagined running.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from drivers.compute.base import MISSING, RUNNING, STOPPED, ComputeDriver, InstanceRef
from managers.base import Manager, endpoint, now, periodic_task
from managers.exceptions import Conflict, InvalidRequest
from managers.placement import Placement
from managers.records import RecordStore

log = logging.getLogger(__name__)

BUILDING, REBOOTING, ERROR = "building", "rebooting", "error"
DELETING, DELETED = "deleting", "deleted"

#: Seconds between two reconciliations of records with the driver, on each node.
RECONCILE_SPACING_S = 10.0

#: The resource class of a compute node's instance slots (one per instance).
SLOTS = "SLOTS"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class ComputeManager(Manager):
    """Runs, reboots and terminates instances through the configured driver."""

    driver_interface = ComputeDriver
    rpc_api_version = "1.0"
    driver: ComputeDriver
    #: An instance takes one of its node's SLOTS; the scheduler claims it before the node
    #: starts it.
    placement = Placement(creates="run_instance", id_argument="instance_id",
                          needs={SLOTS: 1}, kind="instance")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.instances = RecordStore(self.redis, self.service, "instance")

    @staticmethod
    def _ref(record: dict[str, Any]) -> InstanceRef:
        return InstanceRef(id=record["id"], image=record["image"], name=record.get("name"))

    def _own(self, record: dict[str, Any]) -> None:
        if record.get("host") != self.host:
            self.forward_to(record["host"])

    @endpoint
    def run_instance(
        self, image: str, name: str | None = None, instance_id: str | None = None
    ) -> dict[str, Any]:
        """Start an instance of ``image`` here; with a known ``instance_id``, return it."""
        if instance_id is not None and not _ID_RE.match(instance_id):
            raise InvalidRequest(
                f"instance_id {instance_id!r} is not a valid id: use 1-64 letters, digits, "
                "'_' or '-'", {"argument": "instance_id"},
            )
        instance_id = instance_id or self.new_id("instance")
        with self.building(instance_id, self.instances, BUILDING) as build:
            images = self.driver.images()
            if image not in images:
                raise InvalidRequest(
                    f"no image {image!r} on {self.host}; images: {', '.join(images) or 'none'}",
                    {"argument": "image"},
                )
            stamp = now()
            record, created = self.instances.create(instance_id, {
                "id": instance_id, "name": name, "image": image, "host": self.host,
                "status": BUILDING, "power_state": None, "created_at": stamp,
                "updated_at": stamp, **build.record_fields(),
            })
            if not created:
                if record["image"] != image:
                    raise Conflict(
                        f"instance {instance_id} exists with image {record['image']!r}",
                        {"id": instance_id, "status": record["status"]})
                if record["status"] in (DELETING, DELETED):
                    raise Conflict(f"instance {instance_id} was terminated; use a new id",
                                   {"id": instance_id, "status": record["status"]})
                if record["status"] != BUILDING:
                    if record["status"] == ERROR and record.get("host") == self.host and \
                            record.get("power_state") is None:
                        build.release()  # a build that failed holds nothing
                    return record
                if record["host"] != self.host:  # its first node died while building it
                    record = self.instances.transition(
                        instance_id, (BUILDING,),
                        {"host": self.host, **build.record_fields(), "updated_at": now()},
                        action="taking over the build",
                    )
                    build.take_over()
            ref = self._ref(record)
            return self.instances.run_step(
                instance_id, lambda: self.driver.spawn(ref), allowed=(BUILDING,),
                updates={"status": RUNNING, "power_state": RUNNING, "error": None},
                action="finishing run_instance", done_status=RUNNING,
            )

    @endpoint
    def terminate_instance(self, instance_id: str) -> dict[str, Any]:
        """Stop an instance and remove it; terminating a terminated instance succeeds."""
        record = self.instances.require(instance_id)
        if record["status"] == DELETED:
            return record
        self._own(record)
        record = self.instances.transition(
            instance_id, (BUILDING, RUNNING, REBOOTING, STOPPED, ERROR, DELETING),
            {"status": DELETING, "updated_at": now()}, action="terminate_instance",
        )
        ref = self._ref(record)
        terminated = self.instances.run_step(
            instance_id, lambda: self.driver.destroy(ref), allowed=(DELETING, DELETED),
            updates={"status": DELETED, "power_state": None},
            action="finishing terminate_instance", retire=True,
        )
        self.release_claim(instance_id)
        return terminated

    @endpoint
    def reboot_instance(self, instance_id: str) -> dict[str, Any]:
        """Stop an instance if it runs and start it again."""
        record = self.instances.require(instance_id)
        self._own(record)
        record = self.instances.transition(
            instance_id, (RUNNING, STOPPED, ERROR, REBOOTING),
            {"status": REBOOTING, "updated_at": now()}, action="reboot_instance",
        )
        ref = self._ref(record)
        return self.instances.run_step(
            instance_id, lambda: self.driver.reboot(ref), allowed=(REBOOTING,),
            updates={"status": RUNNING, "power_state": RUNNING, "error": None},
            action="finishing reboot_instance",
        )

    @endpoint
    def get_console_output(self, instance_id: str, lines: int = 50) -> dict[str, Any]:
        """The last ``lines`` lines the instance printed (read on its own node)."""
        if not 1 <= lines <= 10_000:
            raise InvalidRequest(f"lines = {lines}: expected 1 to 10000", {"argument": "lines"})
        record = self.instances.require(instance_id)
        self._own(record)
        return {"id": instance_id, "host": self.host,
                "output": self.driver.get_console_output(self._ref(record), lines)}

    @endpoint
    def get_instance(self, instance_id: str) -> dict[str, Any]:
        """An instance's record."""
        return self.instances.require(instance_id)

    @endpoint
    def list_instances(self, host: str | None = None) -> list[dict[str, Any]]:
        """Every instance not terminated, oldest first; with ``host``, only that node's."""
        instances = self.instances.list()
        if host is not None:
            instances = [i for i in instances if i.get("host") == host]
        return instances

    @periodic_task(spacing=RECONCILE_SPACING_S, run_immediately=True)
    def reconcile_instances(self) -> dict[str, Any]:
        """Make this node's records agree with what the driver sees running."""
        changed: dict[str, list[str]] = {"stopped": [], "error": [], "running": []}
        mine = [r for r in self.instances.list() if r.get("host") == self.host]
        for record in mine:
            if record["status"] not in (RUNNING, STOPPED):
                continue  # an operation is under way; its own code finishes the record
            seen = self.driver.power_state(record["id"])
            if seen == record.get("power_state") and seen in (RUNNING, STOPPED):
                continue
            if seen == RUNNING:
                status, update = RUNNING, {"power_state": RUNNING, "error": None}
            elif seen == STOPPED:
                status, update = STOPPED, {"power_state": STOPPED}
            else:
                status = ERROR
                update = {"power_state": MISSING,
                          "error": "the driver no longer knows this instance"}
            try:
                self.instances.transition(
                    record["id"], (record["status"],),
                    {"status": status, **update, "updated_at": now()},
                    action="reconciling",
                )
            except Conflict:
                continue  # changed under us by a request: the request wins
            log.info("instance %s on %s is now %s (driver sees %s)",
                     record["id"], self.host, status, seen)
            changed[status].append(record["id"])
        return {"checked": len(mine), **changed}

    def capabilities(self) -> dict[str, Any]:
        return dict(self.driver.get_host_stats())

    def inventory(self) -> Mapping[str, int]:
        """Instance slots: ``max_instances`` of the driver."""
        return {SLOTS: int(self.driver.get_host_stats()["max_instances"])}

    def allocations(self) -> dict[str, dict[str, int]]:
        """Every instance of this node but those whose build failed (they never ran)."""
        return {
            i["id"]: {SLOTS: 1} for i in self.instances.list()
            if i.get("host") == self.host
            and (i["status"] != ERROR or i.get("power_state") is not None)
        }
