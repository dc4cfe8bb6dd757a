"""Redis clients for records, the registry and the broker's own lists.

:func:`connect` makes a client with taskyard's timeouts. An app keeps its
clients in a :class:`RedisClients`, one per URL per process: a client made in
a parent before a fork is never used by the child, which makes its own.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis

from workers.core.config import Config

#: Seconds a Redis command may take before it fails (a half-open connection must not hang us).
SOCKET_TIMEOUT_S = 10.0
#: Seconds to wait for a TCP connection to Redis.
CONNECT_TIMEOUT_S = 5.0
#: Seconds of idleness after which a pooled connection is checked before use.
HEALTH_CHECK_INTERVAL_S = 25


def connect(config: Config, url: str) -> redis.Redis:
    """A new client for ``url`` (redis, rediss or unix), with ``config``'s TLS settings."""
    extra = config.tls.redis_kwargs() if url.startswith("rediss://") else {}
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry_on_timeout=True,
        **extra,
    )


class RedisClients:
    """One client per URL per process, for one configuration.

    ``given`` holds clients handed in (fakeredis in unit tests), used in
    every process as they are.
    """

    def __init__(self, config: Config, given: dict[str, Any] | None = None) -> None:
        self.config = config
        self.given = dict(given or {})
        self._clients: dict[str, Any] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __call__(self, url: str) -> Any:
        """The client for ``url`` in this process."""
        client = self.given.get(url)
        if client is not None:
            return client
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._clients = {}
                    self._pid = os.getpid()
        client = self._clients.get(url)
        if client is None:
            with self._lock:
                client = self._clients.get(url)
                if client is None:
                    client = self._clients[url] = connect(self.config, url)
        return client

    def close(self) -> None:
        """Close the pools this process made."""
        if self._pid == os.getpid():
            for client in self._clients.values():
                client.close()
        self._clients = {}
