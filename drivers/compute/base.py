"""The contract every compute driver fulfils.

An *instance* is something that runs on a node from an *image* (a named
entry of the driver's catalogue) until it is terminated. A driver knows how
to start, stop and look at instances on its node, and nothing of records,
messages or Celery. Every operation must be safe to repeat: a message can
be delivered twice.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drivers.exceptions import ComputeDriverError

#: Power states a driver reports for an instance.
RUNNING = "running"
STOPPED = "stopped"
MISSING = "missing"
POWER_STATES = (RUNNING, STOPPED, MISSING)


@dataclass(frozen=True)
class InstanceRef:
    """What a driver is told about an instance."""

    id: str
    image: str
    name: str | None = None


def parse_images(images: Mapping[str, str | Sequence[str]]) -> dict[str, list[str]]:
    """The argv of every catalogue entry: a string is split as a shell would, a list kept.

    Raises ValueError naming the entry that is empty or not a command line.
    """
    parsed: dict[str, list[str]] = {}
    for name, line in images.items():
        if isinstance(line, str):
            argv = shlex.split(line)
        elif isinstance(line, Sequence):
            argv = [str(part) for part in line]
        else:
            raise ValueError(f"images.{name} = {line!r}: expected a command line or a list")
        if not argv:
            raise ValueError(f"images.{name} is empty; expected a command line")
        parsed[str(name)] = argv
    return parsed


def command_for(catalogue: Mapping[str, list[str]], image: str) -> list[str]:
    """The argv of ``image``; :class:`ComputeDriverError` listing the images otherwise."""
    if image not in catalogue:
        raise ComputeDriverError(
            f"unknown image {image!r}; this node has: {', '.join(sorted(catalogue)) or 'none'}"
        )
    return catalogue[image]


class ComputeDriver(ABC):
    """Instances on one node."""

    @abstractmethod
    def do_setup(self) -> None:
        """Prepare the backend and find the instances it already runs (after a restart).

        Idempotent; runs at node start and in every worker process.
        """

    @abstractmethod
    def check_for_setup_error(self) -> None:
        """Raise :class:`ComputeDriverError` saying what to fix when the backend is unusable."""

    @abstractmethod
    def images(self) -> list[str]:
        """Names of the images instances can be started from, sorted."""

    @abstractmethod
    def spawn(self, instance: InstanceRef) -> dict[str, Any]:
        """Start ``instance`` and return updates for its record.

        An instance with this id that already runs is left running (and its
        details returned). Raises :class:`ComputeDriverError` for an unknown
        image or a backend that refuses.
        """

    @abstractmethod
    def destroy(self, instance: InstanceRef) -> None:
        """Stop ``instance`` and remove what it left; one already gone is not an error."""

    @abstractmethod
    def reboot(self, instance: InstanceRef) -> dict[str, Any]:
        """Stop ``instance`` (if it runs) and start it again; return record updates."""

    @abstractmethod
    def power_state(self, instance_id: str) -> str:
        """``running``, ``stopped`` (known but not running) or ``missing`` (unknown here)."""

    @abstractmethod
    def list_instances(self) -> dict[str, str]:
        """Every instance the backend knows on this node: id -> power state."""

    @abstractmethod
    def get_console_output(self, instance: InstanceRef, lines: int = 50) -> str:
        """The last ``lines`` lines the instance printed ("" when it printed nothing)."""

    @abstractmethod
    def get_host_stats(self) -> dict[str, Any]:
        """Capacity: ``max_instances``, ``instances`` (running) and ``free_slots`` at least."""
