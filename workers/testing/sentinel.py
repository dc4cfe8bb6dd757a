"""A private Redis under Sentinel: a master, its replicas and three sentinels, to fail over.

For failover tests and benchmarks, as :class:`~workers.cli.embedded.RedisServer`
is for one server: every process is a ``redis-server`` on a free local port
(sentinels are ``redis-server <file> --sentinel``), started and stopped by
us, with its data and log in a directory of its own. :attr:`SentinelRedis.url`
is the Sentinel list to give as ``redis_url``, with ``sentinel.master_name``
= :attr:`SentinelRedis.master_name`.

The sentinels call the master down after ``down_after_ms`` of silence (Redis
Sentinel's ``down-after-milliseconds``; production fleets use seconds, a test
a second) and need a quorum of two to fail over.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from kombu.utils.encoding import bytes_to_str

from workers.cli.embedded import START_TIMEOUT_S, RedisServer
from workers.testing.kit import wait_for

#: How many sentinels watch the master, and how many must agree it is down.
SENTINELS = 3
QUORUM = 2


class _Sentinel(RedisServer):
    """``redis-server <conf> --sentinel``: Sentinel rewrites its file, so it has one of its own."""

    def __init__(self, data_dir: Path, master_name: str, master_port: int,
                 down_after_ms: int) -> None:
        super().__init__(data_dir, appendonly=False)
        self.master_name = master_name
        self.master_port = master_port
        self.down_after_ms = down_after_ms

    @property
    def conf(self) -> Path:
        return self.data_dir / "sentinel.conf"

    def start(self, timeout: float = START_TIMEOUT_S) -> _Sentinel:
        """Write the sentinel's file (it rewrites it as it learns), then start it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        name = self.master_name
        self.conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.data_dir}",
            f"logfile {self.log_path}",
            f"sentinel monitor {name} 127.0.0.1 {self.master_port} {QUORUM}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {max(3000, 3 * self.down_after_ms)}",
            f"sentinel parallel-syncs {name} 1", "",
        ]))
        super().start(timeout)
        return self

    def command(self) -> list[str]:
        return [self.binary, str(self.conf), "--sentinel"]


class SentinelRedis:
    """A master with ``replicas`` replicas, watched by three sentinels; see the module doc."""

    def __init__(self, data_dir: Path, *, master_name: str = "taskyard", replicas: int = 1,
                 down_after_ms: int = 1000) -> None:
        self.data_dir = Path(data_dir)
        self.master_name = master_name
        self.servers = [RedisServer(self.data_dir / "redis-0")]
        master_port = self.servers[0].port
        self.servers += [
            RedisServer(self.data_dir / f"redis-{i}",
                        extra_args=("--replicaof", "127.0.0.1", str(master_port)))
            for i in range(1, replicas + 1)
        ]
        self.sentinels = [_Sentinel(self.data_dir / f"sentinel-{i}", master_name, master_port,
                                    down_after_ms) for i in range(SENTINELS)]

    @property
    def url(self) -> str:
        """The Sentinel list, for ``redis_url``."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def start(self, timeout: float = START_TIMEOUT_S) -> SentinelRedis:
        """Start the servers and the sentinels; return once every replica is in sync."""
        for server in self.servers:
            server.start(timeout)
        for sentinel in self.sentinels:
            sentinel.start(timeout)
        wait_for(lambda: all(self._in_sync(s) for s in self.servers[1:]), timeout,
                 "the replicas to sync")
        wait_for(lambda: all(self._knows_replicas(s) for s in self.sentinels), timeout,
                 "the sentinels to see the replicas")
        return self

    def master(self) -> RedisServer:
        """The server the sentinels name master now."""
        port = self.master_address()[1]
        return next(s for s in self.servers if s.port == port)

    def master_address(self) -> tuple[str, int]:
        """``(host, port)`` of the master, as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            if sentinel.process is None or sentinel.process.poll() is not None:
                continue
            named = _ask(sentinel.port,
                         lambda client: client.sentinel_get_master_addr_by_name(self.master_name))
            if named:
                return str(bytes_to_str(named[0])), int(named[1])
        raise redis.ConnectionError("no sentinel answers")

    def kill_master(self) -> RedisServer:
        """SIGKILL the master (no append-only flush, no goodbye); the killed server."""
        master = self.master()
        master.kill()
        return master

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> tuple[str, int]:
        """Wait until the sentinels name a master other than ``old_port`` that takes writes."""

        def promoted() -> tuple[str, int] | None:
            try:
                host, port = self.master_address()
            except redis.ConnectionError:
                return None
            if port == old_port:
                return None
            role = _ask(port, lambda client: client.role())
            return (host, port) if role and role[0] == b"master" else None

        address: tuple[str, int] = wait_for(promoted, timeout, "a replica to be promoted")
        return address

    def wait_replicas_online(self, count: int = 1, timeout: float = 60.0) -> None:
        """Wait until the master has ``count`` replicas in sync (after a failover, the
        others resynchronise with the promoted one: until then ``WAIT`` counts fewer)."""

        def online() -> bool:
            info = _ask(self.master_address()[1], lambda client: client.info("replication"))
            if not info:
                return False
            states = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return sum(1 for s in states if s.get("state") == "online") >= count

        wait_for(online, timeout, f"{count} replica(s) in sync with the master")

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.stop()

    def __enter__(self) -> SentinelRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _in_sync(self, replica: RedisServer) -> bool:
        info = _ask(replica.port, lambda client: client.info("replication"))
        return bool(info and info.get("master_link_status") == "up")

    def _knows_replicas(self, sentinel: RedisServer) -> bool:
        known = _ask(sentinel.port, lambda client: client.sentinel_slaves(self.master_name))
        return known is not None and len(known) >= len(self.servers) - 1


def _ask(port: int, question: Callable[[redis.Redis], Any]) -> Any:
    """``question`` put to the server on ``port``; None when it does not answer."""
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return question(client)
    except (redis.RedisError, TypeError):
        return None
    finally:
        client.close()
