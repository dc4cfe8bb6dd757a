"""taskyard's service layer: the Celery app, routing, the client and the CLI.

``celery -A workers worker`` finds the Celery ``app`` here. It is built on
first access, so importing ``workers.exceptions`` or ``workers.rpc`` costs no
settings read until something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from celery import Celery

    app: Celery


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from workers.app import get_app

        return get_app()
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
