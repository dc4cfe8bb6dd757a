"""taskyard's service layer: the app, the client, and every error, for callers.

::

    from workers import Client
    Client("volume").call("create_volume", size_gb=1)

``workers.app`` is the process's Celery app (:func:`default_app`), built from
the process's settings on first access, so importing ``workers`` reads no
settings; ``celery -A workers worker`` and ``from workers import app`` find
it. Build apps of your own with ``Taskyard(load_config(...))`` to talk to
several fleets from one process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workers.core.config import Config, load_config
from workers.core.keys import VERSION
from workers.exceptions import (
    Cancelled,
    ComputeDriverError,
    ConfigError,
    Conflict,
    DriverError,
    Expired,
    InvalidRequest,
    MaxRetriesExceeded,
    NotFound,
    NoValidHost,
    ProcessExecutionError,
    RemoteError,
    TaskyardError,
    Timeout,
    Unavailable,
    UnknownEndpoint,
    UnknownService,
    UnsupportedVersion,
    VolumeDriverError,
    wire_error,
)

__version__ = VERSION

__all__ = [
    "Cancellation",
    "Cancelled",
    "Client",
    "ComputeDriverError",
    "Config",
    "ConfigError",
    "Conflict",
    "DriverError",
    "Expired",
    "Handle",
    "InvalidRequest",
    "MaxRetriesExceeded",
    "NoValidHost",
    "NotFound",
    "ProcessExecutionError",
    "RemoteError",
    "Taskyard",
    "TaskyardError",
    "Timeout",
    "Unavailable",
    "UnknownEndpoint",
    "UnknownService",
    "UnsupportedVersion",
    "VolumeDriverError",
    "app",
    "default_app",
    "load_config",
    "set_default_app",
    "wire_error",
]

if TYPE_CHECKING:
    from workers.client.handle import Cancellation
    from workers.client.rpc import Client, Handle
    from workers.core.application import Taskyard, default_app, set_default_app

    app: Taskyard

#: What is imported on first use: Celery and kombu take a third of a second to import,
#: which a command that only reads the registry (``taskyard services``) need not pay.
_LAZY = {"Client": "workers.client.rpc", "Handle": "workers.client.rpc",
         "Cancellation": "workers.client.handle",
         "Taskyard": "workers.core.application", "default_app": "workers.core.application",
         "set_default_app": "workers.core.application"}


def __getattr__(name: str) -> Any:
    # ``app`` (and ``celery``, which ``celery -A`` also looks for) is the process's default
    # app, built on first access: importing workers reads no settings.
    if name in ("app", "celery"):
        return importlib.import_module("workers.core.application").default_app()
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
