"""taskyard's driver layer: backends behind abstract base classes, and the tools they use.

A driver knows one backend (files, LVM, local processes, a fake in memory)
and nothing of records, messages or Celery. It is the only code that runs
commands (through :class:`Executor`) or talks to a backend. This package
imports nothing from ``managers`` or ``workers``.
"""

from __future__ import annotations

from drivers.exceptions import (
    ConfigError,
    DriverError,
    NoValidHost,
    ProcessExecutionError,
    TaskyardError,
)
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
