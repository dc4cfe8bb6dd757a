"""Defaults, units and Redis key names, in one place.

Every number here carries its unit in its name or comment. The defaults a
user can change live in ``settings.toml``; what is here is fixed, or a
fallback for a key a settings file leaves out.
"""

from __future__ import annotations

#: Prefix of every Redis key taskyard itself writes (Celery's own keys keep theirs).
KEY_PREFIX = "taskyard"

#: Seconds a record in state ``deleted`` is kept so repeated deletes succeed.
DELETED_RECORD_TTL_S = 86400

#: Seconds between two heartbeats of a node's service.
DEFAULT_REPORT_INTERVAL_S = 10.0

#: Seconds without a heartbeat after which a service counts as down.
DEFAULT_SERVICE_DOWN_TIME_S = 60.0

#: ``service_down_time`` must be at least this many report intervals.
MIN_DOWN_TIME_INTERVALS = 2.5

#: How often a request may be forwarded to the host that owns its resource.
MAX_FORWARD_HOPS = 3

#: Name of the per-node Celery worker (what Flower shows): ``taskyard@<host>``.
NODENAME_PREFIX = "taskyard"


def host_queue(service: str, host: str) -> str:
    """Name of the queue only ``host`` consumes for ``service``."""
    return f"{service}.{host}"


def records_key(service: str, kind: str, *parts: str) -> str:
    """Key of a record or index owned by ``service``'s manager."""
    return ":".join((KEY_PREFIX, "records", service, kind, *parts))


def registry_key(*parts: str) -> str:
    """Key under which the service registry keeps its entries."""
    return ":".join((KEY_PREFIX, "registry", *parts))
