"""Redis clients for records, the registry and the broker's own lists.

:func:`connect` makes a client with taskyard's timeouts; for a Sentinel list
it is a client of the master the sentinels name, which asks them again
when its connection breaks and so follows a failover. An app keeps its
clients in a :class:`RedisClients`, one per URL per process: a client made in
a parent before a fork is never used by the child, which makes its own.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection

from workers.core.addresses import is_sentinel, parse_sentinels
from workers.core.config import Config

#: Seconds a Redis command may take before it fails (a half-open connection must not hang us).
SOCKET_TIMEOUT_S = 10.0
#: Seconds to wait for a TCP connection to Redis.
CONNECT_TIMEOUT_S = 5.0
#: Seconds of idleness after which a pooled connection is checked before use.
HEALTH_CHECK_INTERVAL_S = 25


#: Timeouts and health checks of every client taskyard makes itself.
_CLIENT_KWARGS: dict[str, Any] = {
    "socket_timeout": SOCKET_TIMEOUT_S,
    "socket_connect_timeout": CONNECT_TIMEOUT_S,
    "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    "retry_on_timeout": True,
}


def connect(config: Config, url: str) -> redis.Redis:
    """A new client for ``url`` (redis, rediss, unix or a Sentinel list), with ``config``'s TLS."""
    if is_sentinel(url):
        return sentinel_master(config, url)[0]
    extra = config.tls.redis_kwargs() if url.startswith("rediss://") else {}
    return redis.Redis.from_url(url, **_CLIENT_KWARGS, **extra)


#: How a server that is now a replica refuses what only a master does (see
#: :class:`FollowingConnection`): a write, a script that writes, a wait cut short, a WAIT.
_DEMOTED = re.compile(r"READONLY|^UNBLOCKED |^WAIT cannot be used with replica")


def demoted(reply: str) -> bool:
    """Whether an error reply says the server is no longer the master."""
    return _DEMOTED.search(reply) is not None


class FollowingConnection(SentinelManagedConnection):
    """redis-py's connection to the master the sentinels name, also leaving a demoted one
    when a Lua script is refused or a blocked command is cut short.

    redis-py drops a connection to a master demoted to a replica when a command
    is refused with ``READONLY``, and asks the sentinels again. Two other
    replies say the same and it lets them through, and Celery takes them for
    unrecoverable errors, which stop the node:

    - a script's refusal, ``Error running script ... -READONLY`` (a node's
      consumer binding its remote-control queue stopped the node, after the
      killed master came back as a replica on its old port);
    - ``UNBLOCKED force unblock from blocking operation, instance state changed
      (master -> replica?)``, which Redis sends a client blocked in ``BLPOP``
      when its server becomes a replica (a node waiting on its bells on a
      killed master that came back, and answered, before the sentinels made it
      a replica).

    - ``WAIT cannot be used with replica instances``, to a node confirming a
      take with its replicas (``publish_wait_replicas``) on such a master.

    Here each is the connection error it is: the connection is dropped and the
    next one goes to the promoted master.
    """

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            text = str(exc)
            if not self.connection_pool.is_master or not demoted(text):
                raise
            self.disconnect()
            raise redis.ConnectionError(
                f"the previous master is now a replica ({text.split(',')[0]})") from exc


class FollowingSSLConnection(FollowingConnection, SentinelManagedSSLConnection):
    """:class:`FollowingConnection` over TLS."""


def sentinel_master(config: Config, url: str) -> tuple[redis.Redis, Sentinel]:
    """A client of the master the sentinels of ``url`` name, and the sentinels' client.

    Each new connection asks the sentinels where the master is; a broken one
    (the master died, or was demoted: READONLY) is dropped, and the client's
    retries reach the promoted replica once the sentinels name it.
    """
    address = parse_sentinels(url)
    sentinel = Sentinel(list(address.sentinels),
                        sentinel_kwargs=config.sentinel.sentinel_kwargs(),
                        db=address.db, username=address.username, password=address.password,
                        **_CLIENT_KWARGS)
    return sentinel.master_for(config.sentinel.master_name,
                               connection_class=FollowingConnection), sentinel


class RedisClients:
    """One client per URL per process, for one configuration.

    ``given`` holds clients handed in (fakeredis in unit tests), used in
    every process as they are.
    """

    def __init__(self, config: Config, given: dict[str, Any] | None = None) -> None:
        self.config = config
        self.given = dict(given or {})
        self._clients: dict[str, Any] = {}
        self._sentinels: list[Sentinel] = []
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
                    self._sentinels = []
                    self._pid = os.getpid()
        client = self._clients.get(url)
        if client is None:
            with self._lock:
                client = self._clients.get(url)
                if client is None:
                    if is_sentinel(url):
                        client, sentinel = sentinel_master(self.config, url)
                        self._sentinels.append(sentinel)
                    else:
                        client = connect(self.config, url)
                    self._clients[url] = client
        return client

    def close(self) -> None:
        """Close the pools this process made."""
        if self._pid == os.getpid():
            for client in self._clients.values():
                client.close()
            for sentinel in self._sentinels:
                for one in sentinel.sentinels:
                    one.close()
        self._clients = {}
        self._sentinels = []
