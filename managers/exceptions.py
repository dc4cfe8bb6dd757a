"""The errors managers raise: what a request asked for cannot be done as asked.

All are part of every service's API (declared with
:func:`~drivers.exceptions.wire_error`): a caller gets them as themselves,
with ``host`` naming the node that raised them.
"""

from __future__ import annotations

from drivers.exceptions import NoValidHost, TaskyardError, wire_error

__all__ = ["Conflict", "InvalidRequest", "MaxRetriesExceeded", "NotFound"]


@wire_error
class InvalidRequest(TaskyardError):
    """Raised when a request is malformed: bad arguments, bad values, a bad name."""


@wire_error
class NotFound(TaskyardError):
    """Raised when a request names a resource that does not exist."""


@wire_error
class Conflict(TaskyardError):
    """Raised when a resource's state does not allow the request."""


@wire_error
class MaxRetriesExceeded(NoValidHost):
    """Raised when a placed build failed on its host and on every alternate.

    The message gives each attempt's host and error; ``details["attempts"]``
    lists them (``host``, ``error``, ``at``). The resource is left in error
    with the same reasons, and holds no claim.
    """
