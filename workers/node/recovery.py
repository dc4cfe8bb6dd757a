"""Recovery in seconds: one node per host name, and no message left waiting for a sweep.

Built on the in-flight ledger of :mod:`workers.extensions.transport` (which
node holds each message it took and has not acknowledged):

- **One node per host name.** A node claims its host name in Redis before it
  does anything (:class:`HostClaim`); the claim lapses ``service_down_time``
  after the node's last heartbeat. A second node with the name of a live one
  refuses to start, naming the pid and machine that hold it; a node restarted
  on the same machine after its predecessor died takes the name over at once.
- **Restart recovery.** Each time a node's consumer (re)connects, before it
  consumes, the node puts back on their queues the messages its host name
  holds (:class:`RecoverStep`): those its previous life left (SIGKILL, OOM,
  power loss) and those it stopped when the connection dropped.
- **Dead-node recovery.** At each heartbeat every node looks for hosts that
  hold messages and whose claim has lapsed; one of them (under a lock) puts
  those messages back (:meth:`Recovery.tick`).
- **Visibility kept while working.** At each heartbeat a node refreshes the
  time kombu's visibility sweep sees on the messages it holds, so a request
  longer than ``visibility_timeout`` runs once; the sweep remains the backstop
  for what no ledger knows.

All of this needs the Redis broker; on another transport (the memory one of
unit tests) it stands aside.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Any

import redis
from celery import bootsteps, states
from celery.worker.state import reserved_requests
from kombu.utils.encoding import bytes_to_str

from workers.core.addresses import is_redis_address
from workers.core.application import Taskyard
from workers.core.keys import (
    INFLIGHT_HOSTS_KEY,
    claim_key,
    inflight_key,
    recovery_lock_key,
)
from workers.core.masking import mask_url
from workers.exceptions import ConfigError
from workers.extensions.transport import ACKS, QoS

log = logging.getLogger("taskyard.recovery")

#: Seconds one node may spend putting a dead host's messages back before another may.
RECOVERY_LOCK_S = 60
#: Seconds between two attempts to claim the host name while Redis does not answer.
CLAIM_RETRY_S = 2.0

_REFRESH_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) return 1 end
if not held then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 2 end
return 0
"""

#: Replaces the claim only if it still holds ARGV[1] ("" for none).
_TAKE_OVER_CLAIM = """
local held = redis.call('GET', KEYS[1])
if (held or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""

_RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: Hosts holding messages whose claim has lapsed (hosts with nothing left are forgotten).
_DEAD_HOSTS = """
local dead = {}
for _, host in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. host) == 0 then
    if redis.call('HLEN', ARGV[2] .. host) == 0 then
      redis.call('SREM', KEYS[1], host)
    else
      table.insert(dead, host)
    end
  end
end
return dead
"""

#: The visibility sweep sees the messages a node holds as taken now.
_KEEP_VISIBLE = """
local tags = redis.call('HKEYS', KEYS[1])
for _, tag in ipairs(tags) do redis.call('ZADD', KEYS[2], 'XX', ARGV[1], tag) end
return #tags
"""


def machine() -> str:
    """The name of this machine, as claims record it."""
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HostClaim:
    """This node's hold on its host name: one live node per name."""

    def __init__(self, redis: Any, host: str, ttl: float) -> None:
        self.redis = redis
        self.host = host
        self.ttl = max(1, int(ttl))
        self.value = json.dumps({"host": host, "pid": os.getpid(), "machine": machine(),
                                 "started_at": time.time(), "token": uuid.uuid4().hex})

    @property
    def key(self) -> str:
        return claim_key(self.host)

    def acquire(self) -> None:
        """Take the name, or raise :class:`ConfigError` naming the live node that holds it."""
        if self.redis.set(self.key, self.value, nx=True, ex=self.ttl):
            return
        raw = self.redis.get(self.key)
        try:
            holder = json.loads(bytes_to_str(raw)) if raw is not None else {}
        except ValueError:
            holder = {}
        same_machine = holder.get("machine") == machine()
        pid = int(holder.get("pid") or 0)
        if raw is None or (same_machine and pid != os.getpid() and not pid_alive(pid)):
            # The holder died (on this machine) or the claim just lapsed: take it over,
            # unless another node took it in the meantime (then it is that node's).
            if int(self.redis.eval(_TAKE_OVER_CLAIM, 1, self.key, raw if raw is not None
                                   else "", self.value, self.ttl)):
                log.info("host name %s taken over from pid %s, which is gone", self.host, pid)
                return
            return self.acquire()
        since = time.time() - float(holder.get("started_at") or time.time())
        raise ConfigError(
            f"host name {self.host!r} is held by a live node: pid {pid} on machine "
            f"{holder.get('machine')!r}, started {since:.0f} s ago; give this node another "
            "name (--host or TASKYARD_HOST), or stop that one (its claim lapses "
            "service_down_time after its last heartbeat)"
        )

    def refresh(self) -> None:
        """Keep the name for another ``ttl`` seconds (taking it again if it lapsed)."""
        kept = self.redis.eval(_REFRESH_CLAIM, 1, self.key, self.value, self.ttl)
        if int(kept) == 0:
            log.critical("host name %s is held by another node: two nodes share a name",
                         self.host)
        elif int(kept) == 2:
            log.warning("the claim on host name %s had lapsed; taken again", self.host)

    def release(self) -> None:
        self.redis.eval(_RELEASE_CLAIM, 1, self.key, self.value)


class Recovery:
    """A node's part in recovery: its claim, its messages' visibility, dead hosts' messages."""

    def __init__(self, app: Taskyard) -> None:
        self.app = app
        config = app.config
        self.host = config.host
        #: Recovery works on the Redis broker only (the ledger is kombu's Redis bookkeeping).
        self.enabled = is_redis_address(config.broker_url)
        self.redis = app.redis(config.broker_url) if self.enabled else None
        self.claim = HostClaim(self.redis, self.host, config.service_down_time) \
            if self.enabled else None
        self.unacked_index = str(app.conf.broker_transport_options.get(
            "unacked_index_key", "unacked_index"))

    def start(self) -> None:
        """Claim the host name before the node does anything else, waiting for Redis.

        Like the consumer, a node started before Redis waits for it, saying so
        at each attempt (each bounded by ``broker_connection_timeout``).
        """
        if self.claim is None:
            return
        while True:
            try:
                self.claim.acquire()
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("cannot reach Redis at %s to claim host name %s (%s); trying again "
                            "in %g s", mask_url(self.app.config.broker_url), self.host, exc,
                            CLAIM_RETRY_S)
                time.sleep(CLAIM_RETRY_S)

    def tick(self) -> None:
        """At each heartbeat: keep the claim, keep held messages visible, rescue dead hosts."""
        if self.redis is None or self.claim is None:
            return
        self.claim.refresh()
        if len(ACKS):
            settled = ACKS.settle(self.redis)
            log.warning("settled %d acknowledgement(s) the lost broker connection refused",
                        settled)
        if ACKS.handed_count:
            settled = ACKS.settle_handed(self.redis, self.ended)
            if settled:
                log.warning("settled %d request(s) handed to the pool as the broker "
                            "connection was lost, their results stored", settled)
        self.redis.eval(_KEEP_VISIBLE, 2, inflight_key(self.host), self.unacked_index,
                        time.time())
        dead = self.redis.eval(_DEAD_HOSTS, 1, INFLIGHT_HOSTS_KEY, claim_key(""),
                               inflight_key(""))
        for host in (bytes_to_str(h) for h in dead):
            if host != self.host:
                self.recover_dead(host)

    def ended(self, task_id: str) -> bool:
        """Whether ``task_id``'s run ended: its result is stored, or a retry is waiting."""
        state = self.app.backend.get_task_meta(task_id).get("status")
        return state in states.READY_STATES or state == states.RETRY

    def recover_dead(self, host: str) -> int:
        """Put a dead host's messages back, unless another live node is doing it."""
        assert self.redis is not None
        lock = recovery_lock_key(host)
        if not self.redis.set(lock, self.host, nx=True, ex=RECOVERY_LOCK_S):
            return 0
        try:
            restored = recover(self.app, host)
        finally:
            self.redis.delete(lock)
        if restored:
            log.warning("node %s is down (no heartbeat for service_down_time): put its %d "
                        "in-flight message(s) back on their queues", host, restored)
        return restored

    def stop(self) -> None:
        if self.claim is not None:
            try:
                self.claim.release()
            except Exception as exc:
                log.warning("could not release the host name %s: %s", self.host, exc)


def recover(app: Taskyard, host: str, connection: Any = None,
            keep: frozenset[str] = frozenset()) -> int:
    """Put the messages ``host`` holds back on their queues (through a kombu channel), but
    those of the tasks in ``keep``."""
    if connection is not None:
        return _recover_on(connection, host, keep)
    with app.connection_for_write() as fresh:
        return _recover_on(fresh, host, keep)


def _recover_on(connection: Any, host: str, keep: frozenset[str]) -> int:
    qos = connection.default_channel.qos
    return qos.recover(host, keep) if isinstance(qos, QoS) else 0


class RecoverStep(bootsteps.StartStopStep):
    """Consumer bootstep: at each (re)connection, before consuming, take this host's messages
    back that it no longer has: what a previous life left. What the node still runs or holds
    for its pool (it reconnected while they ran) stays held: it finishes here."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Any) -> None:
        host = c.app.config.host
        qos = c.connection.default_channel.qos
        if isinstance(qos, QoS):
            # A master that failed over may have lost the latest acknowledgements.
            with qos.channel.conn_or_acquire() as client:
                ACKS.remake(client)
        held = frozenset(request.id for request in tuple(reserved_requests))
        restored = recover(c.app, host, connection=c.connection, keep=held)
        if restored:
            log.warning("%s: put %d message(s) it held back on their queues before consuming",
                        host, restored)
