"""taskyard's driver layer: backends behind abstract base classes, and the tools they use.

A driver knows one backend (files, LVM, local processes, a fake in memory)
and nothing of records, messages or Celery. It is the only code that runs
commands (through :class:`Executor`) or talks to a backend. This package
imports nothing from ``managers`` or ``workers``.

The errors are what every layer (and a caller) imports; the executor is
imported on first use, so a caller that only needs the errors loads none of
what runs commands.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from drivers.exceptions import (
    ConfigError,
    DriverError,
    NoValidHost,
    ProcessExecutionError,
    TaskyardError,
)

if TYPE_CHECKING:
    from drivers.executor import Executor, RecordingExecutor, Result

__all__ = [
    "ConfigError",
    "DriverError",
    "Executor",
    "NoValidHost",
    "ProcessExecutionError",
    "RecordingExecutor",
    "Result",
    "TaskyardError",
]


def __getattr__(name: str) -> Any:
    if name in ("Executor", "RecordingExecutor", "Result"):
        value = getattr(importlib.import_module("drivers.executor"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'drivers' has no attribute {name!r}")
