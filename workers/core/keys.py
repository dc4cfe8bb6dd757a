"""Names taskyard gives things in Redis and Celery, and the fixed numbers, in one place.

Every number carries its unit in its name. The defaults a user can change
live in ``defaults.toml``; what is here is fixed.
"""

from __future__ import annotations

#: The version of taskyard (what heartbeats report).
VERSION = "0.1.0"

#: Prefix of every Redis key taskyard itself writes (Celery's own keys keep theirs;
#: records live under ``taskyard:records``, see :mod:`managers.records`).
KEY_PREFIX = "taskyard"

#: Name of the per-node Celery worker (what Flower shows): ``taskyard@<host>``.
NODENAME_PREFIX = "taskyard"

#: How often a request may be forwarded to the host that owns its resource.
MAX_FORWARD_HOPS = 3

#: The task state that carries ``{done, total, message}`` while an endpoint runs.
PROGRESS = "PROGRESS"

#: Celery's states after which a request never runs again.
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def host_queue(service: str, host: str) -> str:
    """Name of the queue only ``host`` consumes for ``service``."""
    return f"{service}.{host}"


def task_name(service: str, method: str) -> str:
    """Name of the Celery task of an endpoint: ``<service>.<method>``."""
    return f"{service}.{method}"


def periodic_task_name(service: str, name: str) -> str:
    """Name of the Celery task of a periodic task: ``<service>.periodic.<name>``."""
    return f"{service}.periodic.{name}"


def nodename(host: str) -> str:
    """The Celery node name of ``host``'s worker."""
    return f"{NODENAME_PREFIX}@{host}"


def key(*parts: str) -> str:
    """A Redis key under taskyard's prefix."""
    return ":".join((KEY_PREFIX, *parts))


def registry_key(*parts: str) -> str:
    """Key under which the service registry keeps its entries."""
    return key("registry", *parts)


def deadletters_key(service: str) -> str:
    """The dead-letter list of ``service``."""
    return key("deadletters", service)


def periodic_pending_key(service: str, host: str, name: str) -> str:
    """Holds the task id of the run of ``name`` that ``host`` has sent and not finished."""
    return key("periodic", service, host, name)


#: The in-flight ledger (see :mod:`workers.extensions.transport`): delivery tag -> host
#: holding the message, and the hosts that hold any.
INFLIGHT_OWNERS_KEY = key("inflight")
INFLIGHT_HOSTS_KEY = key("inflight-hosts")
#: Task id -> host holding its message: what ``Handle.state`` reports as STARTED.
INFLIGHT_TASKS_KEY = key("inflight-tasks")


def inflight_key(host: str) -> str:
    """The messages ``host`` holds: delivery tag -> the task id of the message."""
    return key("inflight", "host", host)


def claim_key(host: str) -> str:
    """Held by the live node named ``host`` (one node per host name)."""
    return key("claim", host)


def recovery_lock_key(host: str) -> str:
    """Held by the one live node putting a dead ``host``'s messages back."""
    return key("recovering", host)


#: Delayed requests (``countdown``, ``eta``, retries): a sorted set of task id -> when it
#: is due (epoch seconds), and a hash of task id -> ``<Redis list>\n<kombu envelope>``.
DELAYED_KEY = key("delayed")
DELAYED_ENTRIES_KEY = key("delayed", "entries")
#: Held by the one node that moves due delayed requests to their queues.
MOVER_LEASE_KEY = key("delayed", "mover")
#: Where cancellations that stop running requests are announced (pub/sub).
CANCEL_CHANNEL = key("cancel")
#: Requests counted by what happened to them (``expired``, ``cancelled``...): field
#: ``<what>:<service>`` -> count.
LIFECYCLE_COUNTS_KEY = key("counts")


def revoked_key(task_id: str) -> str:
    """Present while ``task_id`` is cancelled: ``revoke``, or ``terminate`` to stop it running."""
    return key("revoked", task_id)


def attempts_key(task_id: str) -> str:
    """The runs of ``task_id``: ``attempt`` (the run sent last), ``error``, ``retry_at``."""
    return key("attempts", task_id)


#: Tokens one batch adds to a queue's bell at most: how many idle nodes one burst wakes.
BELL_MAX = 1000


def bell_key(list_key: str) -> str:
    """The bell of the Redis list ``list_key``: one token per message a taskyard app pushed
    there, which wakes one waiting node (see :mod:`workers.extensions.take`)."""
    return key("bell", list_key)
