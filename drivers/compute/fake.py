"""A compute driver that keeps its instances in memory: for tests and demos.

It really works (capacity, power states, console lines, reboots), so the
manager's logic is exercised as with a real backend, and :meth:`crash` lets
a test make an instance die behind the manager's back to exercise its
reconciliation. With a prefork pool every process has its own copy; that is
harmless for tests, which call the manager directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.compute.base import (
    MISSING,
    RUNNING,
    STOPPED,
    ComputeDriver,
    ComputeDriverError,
    InstanceRef,
    command_for,
    parse_images,
)
from drivers.fakes import FakeDriver
from drivers.ids import safe_id

#: The catalogue used when no ``images`` are configured; real commands, so the
#: same settings work with the process driver.
DEFAULT_IMAGES: dict[str, str] = {
    "sleeper": "sleep 3600",
    "ticker": "sh -c 'while :; do date; sleep 1; done'",
}

#: The first made-up pid; it only has to look like one.
_FIRST_PID = 1000


@dataclass
class FakeInstance:
    """One instance as the fake driver remembers it."""

    image: str
    command: list[str]
    pid: int
    running: bool = True
    console: list[str] = field(default_factory=list)


class FakeComputeDriver(FakeDriver, ComputeDriver):
    """Instances as entries in a dict; ``fail`` names operations that raise (for tests).

    Options meant for the real driver it stands in for (``root``,
    ``stop_timeout``, the injected ``executor``) are accepted and ignored, so
    that switching a service to ``fake`` with one environment variable works
    without touching ``driver_options``.
    """

    interface = ComputeDriver
    error = ComputeDriverError

    def __init__(
        self,
        images: Mapping[str, str | Sequence[str]] | None = None,
        max_instances: int = 10,
        fail: Iterable[str] = (),
        **other_drivers_options: Any,
    ) -> None:
        self.catalogue = parse_images(DEFAULT_IMAGES if images is None else images)
        self.max_instances = int(max_instances)
        self.init_fake(fail, other_drivers_options)
        self.instances: dict[str, FakeInstance] = {}
        self._last_pid = _FIRST_PID

    def check_for_setup_error(self) -> None:
        super().check_for_setup_error()
        if not self.catalogue:
            raise ComputeDriverError("no images: set driver_options.images (name -> command)")

    def images(self) -> list[str]:
        self._maybe_fail("images")
        return sorted(self.catalogue)

    def _running(self) -> int:
        return sum(1 for known in self.instances.values() if known.running)

    def _start(self, instance_id: str, image: str,
               command: list[str] | None = None) -> dict[str, Any]:
        """Start (or start again) ``instance_id``; the caller checked it is not running."""
        command = command or command_for(self.catalogue, image)
        if self._running() >= self.max_instances:
            raise ComputeDriverError(
                f"cannot start instance {instance_id!r}: {self._running()} instances run "
                f"and max_instances is {self.max_instances}"
            )
        self._last_pid += 1
        before = self.instances.get(instance_id)
        console = before.console if before else []
        known = FakeInstance(image, command, self._last_pid, console=console)
        known.console.append(f"[{instance_id}] started from {image}")
        self.instances[instance_id] = known
        return self._details(instance_id)

    def _details(self, instance_id: str) -> dict[str, Any]:
        known = self.instances[instance_id]
        return {
            "pid": known.pid,
            "console": f"fake://{instance_id}/console",
            "command": list(known.command),
        }


    def spawn(self, instance: InstanceRef) -> dict[str, Any]:
        self._maybe_fail("spawn")
        safe_id(instance.id)
        known = self.instances.get(instance.id)
        if known is not None and known.running:
            return self._details(instance.id)
        return self._start(instance.id, instance.image)

    def destroy(self, instance: InstanceRef) -> None:
        self._maybe_fail("destroy")
        self.instances.pop(safe_id(instance.id), None)

    def reboot(self, instance: InstanceRef) -> dict[str, Any]:
        self._maybe_fail("reboot")
        known = self.instances.get(safe_id(instance.id))
        if known is None:
            return self._start(instance.id, instance.image)
        if known.running:
            known.running = False
            known.console.append(f"[{instance.id}] stopped for a reboot")
        return self._start(instance.id, known.image, known.command)

    def power_state(self, instance_id: str) -> str:
        self._maybe_fail("power_state")
        known = self.instances.get(safe_id(instance_id))
        if known is None:
            return MISSING
        return RUNNING if known.running else STOPPED

    def list_instances(self) -> dict[str, str]:
        self._maybe_fail("list_instances")
        return {
            instance_id: RUNNING if known.running else STOPPED
            for instance_id, known in self.instances.items()
        }

    def get_console_output(self, instance: InstanceRef, lines: int = 50) -> str:
        self._maybe_fail("get_console_output")
        known = self.instances.get(safe_id(instance.id))
        if known is None or lines <= 0 or not known.console:
            return ""
        return "".join(f"{line}\n" for line in known.console[-lines:])

    def get_host_stats(self) -> dict[str, Any]:
        self._maybe_fail("get_host_stats")
        running = self._running()
        return {
            "backend": "fake",
            "max_instances": self.max_instances,
            "instances": running,
            "free_slots": max(0, self.max_instances - running),
            "images": self.images(),
        }

    def crash(self, instance_id: str, exit_code: int = 1) -> None:
        """Make a running instance end on its own, as a program that dies would (for tests)."""
        known = self.instances[instance_id]
        if known.running:
            known.running = False
            known.console.append(f"[{instance_id}] exited with {exit_code}")

