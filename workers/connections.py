"""Redis clients for records and the registry, one pool per URL per process.

Clients are made lazily and remembered per process id: a client made in a
parent before a fork is never used by the child.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis

#: Seconds a Redis command may take before it fails (a half-open connection must not hang us).
SOCKET_TIMEOUT_S = 10.0
#: Seconds to wait for a TCP connection to Redis.
CONNECT_TIMEOUT_S = 5.0
#: Seconds of idleness after which a pooled connection is checked before use.
HEALTH_CHECK_INTERVAL_S = 25

_clients: dict[tuple[int, str], Any] = {}
_lock = threading.Lock()


def redis_client(url: str, **extra: Any) -> redis.Redis:
    """The process's client for ``url`` (``redis://``, ``rediss://`` or ``unix://``).

    ``extra`` (TLS settings) is passed to redis-py when the client is made.
    """
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = redis.Redis.from_url(
                    url,
                    socket_timeout=SOCKET_TIMEOUT_S,
                    socket_connect_timeout=CONNECT_TIMEOUT_S,
                    health_check_interval=HEALTH_CHECK_INTERVAL_S,
                    retry_on_timeout=True,
                    **extra,
                )
                _clients[key] = client
    return client


def client_for(config: Any, url: str) -> redis.Redis:
    """The process's client for ``url``, with ``config``'s TLS settings for ``rediss://``."""
    extra = config.tls.redis_kwargs() if url.startswith("rediss://") else {}
    return redis_client(url, **extra)


def set_client(url: str, client: Any) -> None:
    """Use ``client`` for ``url`` in this process (tests hand in fakeredis here)."""
    _clients[(os.getpid(), url)] = client


def forget_clients() -> None:
    """Drop every remembered client (the next use makes new ones)."""
    _clients.clear()
