"""Result backends that rebuild only the exceptions a service declared.

Celery, reading a failed task's result, rebuilds whatever exception class
the record names when the caller has its module imported. taskyard's
backends rebuild only classes registered with
:func:`~workers.exceptions.wire_error`; everything else becomes a
:class:`~workers.exceptions.RemoteError` carrying the remote type name and
message, and an unknown task name becomes
:class:`~workers.exceptions.UnknownEndpoint`.
"""

from __future__ import annotations

from typing import Any

from celery.backends.cache import CacheBackend as _CacheBackend
from celery.backends.redis import RedisBackend as _RedisBackend
from celery.backends.redis import SentinelBackend as _SentinelBackend

from workers.exceptions import (
    RemoteError,
    TaskyardError,
    UnknownEndpoint,
    lookup_wire_error,
)

#: Result backend URL schemes served by the classes below.
OVERRIDES = {
    "redis": "workers.backend:RedisBackend",
    "rediss": "workers.backend:RedisBackend",
    "sentinel": "workers.backend:SentinelBackend",
    "cache": "workers.backend:CacheBackend",
}


def rebuild_exception(exc: Any) -> BaseException | None:
    """The exception a stored failure stands for, rebuilt only when it is declared."""
    if not exc:
        return None
    if isinstance(exc, TaskyardError):
        return exc
    if isinstance(exc, BaseException):
        return RemoteError.from_exception(exc)
    if not isinstance(exc, dict):
        return RemoteError(f"unreadable error record: {exc!r:.200}", {"type": "unknown"})
    module = exc.get("exc_module")
    qualname = str(exc.get("exc_type") or "Exception")
    args = exc.get("exc_message")
    if not isinstance(args, (list, tuple)):
        args = [args] if args is not None else []
    cls = lookup_wire_error(module, qualname)
    if cls is not None:
        try:
            return cls(*args)
        except Exception:  # a record not made by taskyard: report it, never trust it
            pass
    message = str(args[0]) if args else ""
    if module == "celery.exceptions" and qualname == "NotRegistered":
        name = message.strip("'\"")
        return UnknownEndpoint(
            f"no endpoint {name!r}: the node does not serve that task", {"task": name}
        )
    return RemoteError(
        f"{qualname}: {message}",
        {"type": qualname, "module": module, "remote_message": message},
    )


class SafeExceptionsMixin:
    """Replaces Celery's exception rebuilding with :func:`rebuild_exception`."""

    def exception_to_python(self, exc: Any) -> BaseException | None:
        return rebuild_exception(exc)



class RedisBackend(SafeExceptionsMixin, _RedisBackend):
    """Celery's Redis result backend, rebuilding only declared exceptions."""


class SentinelBackend(SafeExceptionsMixin, _SentinelBackend):
    """Celery's Redis Sentinel result backend, rebuilding only declared exceptions."""


class CacheBackend(SafeExceptionsMixin, _CacheBackend):
    """Celery's cache (and in-memory) result backend, rebuilding only declared exceptions."""
