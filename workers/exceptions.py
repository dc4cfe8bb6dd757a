"""Every error taskyard raises, in one place for callers.

Each class is defined in the lowest layer that raises it and re-exported
here, so a caller needs only ``from workers.exceptions import ...`` (or
``from workers import ...``). The tree::

    TaskyardError                    drivers.exceptions: the root
    ├── ConfigError                  drivers.exceptions: bad or unloadable settings
    ├── DriverError                  drivers.exceptions: a backend refused or is unusable
    │   ├── ProcessExecutionError    drivers.exceptions: a command failed (the executor)
    │   ├── VolumeDriverError        drivers.exceptions: a volume backend (drivers.volume)
    │   └── ComputeDriverError       drivers.exceptions: a compute backend (drivers.compute)
    ├── NoValidHost *                drivers.exceptions: the scheduler found no host
    │   └── MaxRetriesExceeded *     managers.exceptions: a build failed on every host tried
    ├── InvalidRequest *             managers.exceptions: bad arguments, values or names
    │   ├── UnknownEndpoint *        workers.exceptions: not an endpoint of the service
    │   ├── UnknownService           workers.exceptions: not a configured service (caller)
    │   └── UnsupportedVersion *     workers.exceptions: an API version the node does not serve
    ├── NotFound *                   managers.exceptions: the resource does not exist
    ├── Conflict *                   managers.exceptions: the resource's state forbids it
    ├── RemoteError *                workers.exceptions: anything else that failed on a node
    ├── Cancelled *                  drivers.exceptions: the request was cancelled (stopped)
    │   └── Expired *                workers.exceptions: its deadline passed before it ran
    ├── Timeout                      workers.exceptions: no answer in time (it may still run)
    └── Unavailable                  workers.exceptions: the broker cannot be reached (not sent)

Classes marked ``*`` cross the wire: a node raises them and the caller gets
the same class, with ``host`` naming that node. A service adds its own with
:func:`wire_error`; anything else a node raises reaches the caller as
:class:`RemoteError`.
"""

from __future__ import annotations

import traceback as _traceback

from drivers.exceptions import (
    Cancelled,
    ComputeDriverError,
    ConfigError,
    DriverError,
    NoValidHost,
    ProcessExecutionError,
    TaskyardError,
    VolumeDriverError,
    lookup_wire_error,
    wire_error,
    wire_name,
)
from managers.exceptions import Conflict, InvalidRequest, MaxRetriesExceeded, NotFound

__all__ = [
    "Cancelled",
    "ComputeDriverError",
    "ConfigError",
    "Conflict",
    "DriverError",
    "Expired",
    "InvalidRequest",
    "MaxRetriesExceeded",
    "NoValidHost",
    "NotFound",
    "ProcessExecutionError",
    "RemoteError",
    "TaskyardError",
    "Timeout",
    "Unavailable",
    "UnknownEndpoint",
    "UnknownService",
    "UnsupportedVersion",
    "VolumeDriverError",
    "lookup_wire_error",
    "wire_error",
    "wire_name",
]


@wire_error
class UnknownEndpoint(InvalidRequest):
    """Raised when a request names a method that is not an endpoint of the service."""


class UnknownService(InvalidRequest):
    """Raised in the caller when a service name is not configured."""


@wire_error
class UnsupportedVersion(InvalidRequest):
    """Raised when a request needs an API version the node does not serve.

    The node serves ``major.minor``; it takes requests of the same major
    and a minor no newer than its own. Pin ``version_cap`` on newer clients
    while older nodes remain in the fleet.
    """


class Timeout(TaskyardError):
    """Raised in the caller when no answer came in time.

    The message says where the request is (``details["stage"]``): ``queued``
    (not started; it may still run until its deadline), ``expired`` (not
    started, and its deadline passed: it never will), ``waiting`` (delayed) or
    ``running`` (on the node in ``details["host"]``: it may still finish),
    with the task id to look it up later.
    """


@wire_error
class Expired(Cancelled):
    """Raised in a caller waiting for a request whose deadline (``expires``) passed before it ran.

    It never ran and never will: the node that took it settled it as
    ``REVOKED`` (Celery's state), its result saying when it expired.
    """


class Unavailable(TaskyardError):
    """Raised in the caller when the broker cannot be reached to send a request."""


@wire_error
class RemoteError(TaskyardError):
    """Raised in the caller for an unexpected error on a node.

    ``remote_type``, ``remote_message``, ``traceback`` and ``host`` say what
    went wrong where; the original class is never rebuilt.
    """

    @classmethod
    def from_exception(cls, exc: BaseException, host: str | None = None) -> RemoteError:
        """Describe ``exc`` (raised on this node) in a form safe to send to the caller."""
        remote_type = type(exc).__qualname__
        remote_message = str(exc)
        details = {
            "type": remote_type,
            "module": type(exc).__module__,
            "remote_message": remote_message,
            "traceback": "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__)),
        }
        if host:
            details["host"] = host
        return cls(f"{remote_type}: {remote_message}", details)

    @property
    def remote_type(self) -> str:
        return str(self.details.get("type", "Exception"))

    @property
    def remote_message(self) -> str:
        return str(self.details.get("remote_message", self.message))

    @property
    def traceback(self) -> str:
        return str(self.details.get("traceback", ""))
