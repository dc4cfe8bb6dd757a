"""The root of taskyard's errors, the wire registry, and the errors drivers raise.

Every error taskyard raises is a :class:`TaskyardError`. Each class is
defined in the lowest layer that raises it — this module (drivers), then
:mod:`managers.exceptions`, then :mod:`workers.exceptions`, which
re-exports the whole tree for callers. This module imports only the
standard library, so every layer can raise from it.

An exception crosses the wire (raised on a node, raised again as the same
class in the caller) only when its class is registered with
:func:`wire_error`. Everything else a node raises reaches the caller as
``RemoteError`` (remote type name, message, traceback text, host), and
nothing else is ever rebuilt from a message. Wire classes accept
``(message, details)`` positionally: the form in which Celery stores an
exception's ``args`` in the result backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "Cancelled", "ComputeDriverError", "ConfigError", "DriverError", "NoValidHost",
    "ProcessExecutionError", "TaskyardError", "VolumeDriverError", "lookup_wire_error",
    "wire_error", "wire_name",
]

_E = TypeVar("_E", bound=type["TaskyardError"])

#: ``"module.QualName"`` -> class, for every exception allowed across the wire.
_WIRE: dict[str, type[TaskyardError]] = {}


def wire_error(cls: _E) -> _E:
    """Declare ``cls`` part of a service API: it is raised again as itself in callers."""
    if not (isinstance(cls, type) and issubclass(cls, TaskyardError)):
        raise TypeError(f"wire_error needs a TaskyardError subclass, got {cls!r}")
    _WIRE[wire_name(cls)] = cls
    return cls


def wire_name(cls: type[BaseException]) -> str:
    """The name under which the result backend records an exception class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def lookup_wire_error(module: str | None, qualname: str) -> type[TaskyardError] | None:
    """The registered class recorded as ``module``/``qualname``, or None."""
    if not module:
        return None
    return _WIRE.get(f"{module}.{qualname}")


class TaskyardError(Exception):
    """Root of every error taskyard raises.

    ``details`` is a JSON-safe dict of extra facts (``host`` is filled in by
    the node that raised it), kept in ``args`` so it survives the result
    backend.
    """

    def __init__(self, message: str = "", details: Mapping[str, Any] | None = None) -> None:
        self.message = str(message)
        self.details: dict[str, Any] = dict(details or {})
        if self.details:
            super().__init__(self.message, self.details)
        else:
            super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    @property
    def host(self) -> str | None:
        """The node that raised the error, when it came over the wire."""
        return self.details.get("host")

    def with_details(self, **details: Any) -> TaskyardError:
        """Add facts (JSON values) to the error, keeping its class and message."""
        self.details.update(details)
        self.args = (self.message, self.details)
        return self


class ConfigError(TaskyardError):
    """Raised when settings are invalid or name something that cannot be loaded.

    The message names the settings key, the bad value and what was expected.
    """


class DriverError(TaskyardError):
    """Raised by a driver when its backend refuses an operation or cannot be used.

    Each driver family has its own subclass (``VolumeDriverError``,
    ``ComputeDriverError``); a caller receives it as ``RemoteError`` naming
    the class, since a backend's failure is not part of a service's API.
    """


class VolumeDriverError(DriverError):
    """Raised by a volume driver when its backend refuses an operation or cannot be used."""


class ComputeDriverError(DriverError):
    """Raised by a compute driver when its backend refuses an operation or cannot be used."""


class ProcessExecutionError(DriverError):
    """Raised by the executor when a command fails, times out or cannot start.

    ``cmd``, ``exit_code``, ``stdout`` and ``stderr`` say what ran and what it printed.
    """

    def __init__(
        self,
        message: str = "",
        details: Mapping[str, Any] | None = None,
        *,
        cmd: tuple[str, ...] = (),
        exit_code: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        details = dict(details or {})
        details.setdefault("cmd", list(cmd))
        details.setdefault("exit_code", exit_code)
        details.setdefault("stdout", stdout)
        details.setdefault("stderr", stderr)
        super().__init__(message, details)

    @property
    def cmd(self) -> tuple[str, ...]:
        return tuple(self.details["cmd"])

    @property
    def exit_code(self) -> int | None:
        return self.details["exit_code"]

    @property
    def stdout(self) -> str:
        return str(self.details["stdout"])

    @property
    def stderr(self) -> str:
        return str(self.details["stderr"])


@wire_error
class NoValidHost(TaskyardError):
    """Raised when no host can take new work; the message gives each filter's reasons."""


@wire_error
class Cancelled(TaskyardError):
    """Raised when the request in hand was cancelled, and in a caller waiting for one.

    On a node it comes from the request's :class:`~drivers.cancellation.CancelScope`:
    a driver's command stopped because of the cancellation, a progress report
    made after it, or an endpoint checking for itself. The request ends
    ``REVOKED`` (Celery's state), never ``FAILURE``. In a caller, waiting for a
    request that was cancelled (or, as :class:`~workers.exceptions.Expired`,
    that expired before it ran) raises it.
    """
