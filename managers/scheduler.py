"""The scheduler service: places new volumes and instances on the best live node.

It reads the registry (through the fleet the service layer gives it), asks
its driver for a host, and hands the request to that host's own queue. It
never waits for the handed-on task: it returns at once with the chosen host,
the new resource's id and the task id, which the caller can wait on with
``Client(service).handle(task_id).wait()``.
"""

from __future__ import annotations

from typing import Any

from drivers.scheduler.base import HostState, PlacementRequest, SchedulerDriver
from managers.base import Manager, endpoint


class SchedulerManager(Manager):
    """Chooses hosts through the configured scheduler driver."""

    driver_interface = SchedulerDriver
    rpc_api_version = "1.0"
    driver: SchedulerDriver

    #: The services this scheduler places work for.
    volume_service = "volume"
    compute_service = "compute"

    def _place(self, request: PlacementRequest) -> str:
        hosts = [HostState.from_registry(e) for e in self.fleet.hosts(request.service)]
        return self.driver.select_host(request, hosts)

    def _hand_on(self, service: str, host: str, method: str, resource_id: str,
                 **kwargs: Any) -> dict[str, Any]:
        task_id = self.fleet.cast(service, method, host=host, **kwargs)
        return {"host": host, "id": resource_id, "task_id": task_id,
                "service": service, "method": method}

    @endpoint
    def schedule_create_volume(self, size_gb: int, **volume_args: Any) -> dict[str, Any]:
        """Create a volume on the host with the most free space that fits it.

        ``volume_args`` are the other arguments of ``volume.create_volume``
        (``name``, ``volume_id``); a ``volume_id`` is made when none is given.
        """
        request = PlacementRequest(self.volume_service, {"free_gb": size_gb}, "free_gb")
        host = self._place(request)
        volume_id = volume_args.pop("volume_id", None) or self.new_id("volume")
        return self._hand_on(self.volume_service, host, "create_volume", volume_id,
                             size_gb=size_gb, volume_id=volume_id, **volume_args)

    @endpoint
    def schedule_run_instance(self, **instance_args: Any) -> dict[str, Any]:
        """Start an instance on the host with the most free slots.

        ``instance_args`` are the arguments of ``compute.run_instance``
        (``image``, ``name``, ``instance_id``); an ``instance_id`` is made
        when none is given.
        """
        request = PlacementRequest(self.compute_service, {"free_slots": 1}, "free_slots")
        host = self._place(request)
        instance_id = instance_args.pop("instance_id", None) or self.new_id("instance")
        return self._hand_on(self.compute_service, host, "run_instance", instance_id,
                             instance_id=instance_id, **instance_args)

    def capabilities(self) -> dict[str, Any]:
        return {"driver": type(self.driver).__name__}
