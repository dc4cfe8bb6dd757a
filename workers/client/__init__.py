"""What a caller imports to send work: :class:`Client` and :class:`Handle`.

Nothing here loads the node runtime (``workers.node``) or a service's driver.
Both are imported on first use (:mod:`workers` says why).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.client.handle import Cancellation
    from workers.client.rpc import Client, Handle

__all__ = ["Cancellation", "Client", "Handle"]


def __getattr__(name: str) -> Any:
    if name == "Cancellation":
        return getattr(importlib.import_module("workers.client.handle"), name)
    if name in __all__:
        return getattr(importlib.import_module("workers.client.rpc"), name)
    raise AttributeError(f"module 'workers.client' has no attribute {name!r}")
