"""Every error taskyard raises, under one root, and the wire registry.

An exception crosses the wire (raised on a node, raised again as the same
class in the caller) only when its class is registered with
:func:`wire_error`. Everything else a manager raises reaches the caller as
:class:`RemoteError`, carrying the remote type name, message, traceback text
and host. Nothing else is ever rebuilt from a message.

Wire classes must accept ``(message, details)`` positionally: that is the
form in which Celery stores an exception's ``args`` in the result backend.
"""

from __future__ import annotations

import traceback as _traceback
from collections.abc import Mapping
from typing import Any, TypeVar

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


@wire_error
class InvalidRequest(TaskyardError):
    """Raised when a request is malformed: bad arguments, bad values, a bad name."""


@wire_error
class UnknownEndpoint(InvalidRequest):
    """Raised when a request names a method that is not an endpoint of the service."""


class UnknownService(InvalidRequest):
    """Raised in the caller when a service name is not configured."""


@wire_error
class NotFound(TaskyardError):
    """Raised when a request names a resource that does not exist."""


@wire_error
class Conflict(TaskyardError):
    """Raised when a resource's state does not allow the request."""


@wire_error
class UnsupportedVersion(InvalidRequest):
    """Raised when a request needs an API version the node does not serve.

    The node serves ``major.minor``; it takes requests of the same major
    and a minor no newer than its own. Pin ``version_cap`` on newer clients
    while older nodes remain in the fleet.
    """


@wire_error
class NoValidHost(TaskyardError):
    """Raised when no host can take new work; the message gives each filter's reasons."""


class Timeout(TaskyardError):
    """Raised in the caller when no answer came in time.

    The request was sent and may still run: the message says so, with the
    task id to look it up later.
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


class ProcessExecutionError(TaskyardError):
    """Raised by the executor when a command fails, times out or cannot start."""

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
