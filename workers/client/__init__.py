"""What a caller imports to send work: :class:`Client` and :class:`Handle`.

Nothing here loads the node runtime (``workers.node``) or a service's driver.
"""

from __future__ import annotations

from workers.client.rpc import Client, Handle

__all__ = ["Client", "Handle"]
