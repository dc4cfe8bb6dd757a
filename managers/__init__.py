"""taskyard's manager layer: the business logic of each service.

A manager is reached only through its endpoints (methods marked
:func:`endpoint`); its driver is handed in, chosen by settings; its records
live in Redis behind :class:`RecordStore`. This package imports from
``drivers`` only: never Celery, never ``workers``.
"""

from __future__ import annotations

from managers.base import (
    Fleet,
    Forward,
    Manager,
    PeriodicSpec,
    RequestContext,
    endpoint,
    periodic_task,
)
from managers.claims import ClaimStore, Inventory
from managers.exceptions import Conflict, InvalidRequest, MaxRetriesExceeded, NotFound
from managers.placement import Placement
from managers.records import Parent, RecordStore, now

__all__ = [
    "ClaimStore",
    "Conflict",
    "Fleet",
    "Forward",
    "InvalidRequest",
    "Inventory",
    "Manager",
    "MaxRetriesExceeded",
    "NotFound",
    "Parent",
    "PeriodicSpec",
    "Placement",
    "RecordStore",
    "RequestContext",
    "endpoint",
    "now",
    "periodic_task",
]
