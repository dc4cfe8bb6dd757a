"""kombu's Redis transport, guarded against envelopes that would stop a node, with a ledger.

It also reuses one Redis client per channel where kombu makes a new one
for every command, and keeps an in-flight ledger (:class:`QoS`): which node
holds each message it has taken and not acknowledged, so that a node
restarting, or a live node when one dies, puts that node's messages back at
once instead of waiting for the visibility sweep.

One malformed entry pushed into a queue's Redis list (not JSON, truncated
JSON, JSON that is not an envelope) makes kombu's Redis channel raise out of
the consumer, and a plain Celery worker exits, the entry already popped and
lost. So do oversized messages cost memory before anything can refuse them.

This transport runs kombu's own ``_brpop_read`` and ``_get`` (their code,
unchanged) with a ``loads`` that checks the raw entry first: an entry that
is too large or is not an envelope goes to the dead-letter list of its
queue's service, and the read reports "nothing here" (``Empty``) so the
consumer simply goes on with the next message. The limit, the services and
the host come from the app's transport options (``taskyard_*``, set by
:func:`workers.core.application.celery_settings`).

Private internals of kombu 5.7 this relies on, each checked by
``tests/unit/test_canaries.py``: ``Channel._brpop_read`` and ``Channel._get``
read entries with the module-global ``loads``; ``Channel._queue_cycle`` has
``update``/``consume``/``rotate``; ``Channel._create_client`` makes the client
of one command; ``QoS.append`` writes ``unacked_index`` and ``unacked`` in one
pipeline, ``QoS._remove_from_indices`` returns the pipeline it removes them
with, ``Channel._do_restore_message`` puts a message back on its queue, and
``prepare_message``, ``_inplace_augment_message`` and ``_get_publish_topics``
build the envelopes and topics that ``send_requests`` and ``publish_event``
send.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from queue import Empty
from typing import Any, NamedTuple

import redis
import redis.sentinel
from kombu.entity import maybe_delivery_mode
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from workers.core.connections import FollowingConnection, FollowingSSLConnection
from workers.core.deadletters import DeadLetters, service_of
from workers.core.delays import Delayed, DelayedRequests, Marker
from workers.core.keys import (
    INFLIGHT_HOSTS_KEY,
    INFLIGHT_OWNERS_KEY,
    INFLIGHT_TASKS_KEY,
    attempts_key,
    bell_key,
    inflight_key,
    revoked_key,
)
from workers.core.revocations import Holder
from workers.exceptions import Unavailable
from workers.extensions.take import BELL_TOKEN, TAKE, ring

log = logging.getLogger("taskyard.transport")

_ENVELOPE_KEYS = frozenset({"body", "headers", "properties"})


class _RecordingCycle:
    """The channel's queue cycle, remembering the queue the last message came from."""

    def __init__(self, inner: Any, channel: Channel) -> None:
        self._inner = inner
        self._channel = channel

    def update(self, queues: Any) -> Any:
        return self._inner.update(queues)

    def consume(self, n: int) -> Any:
        return self._inner.consume(n)

    def rotate(self, last_used: str) -> Any:
        self._channel.last_queue = last_used
        return self._inner.rotate(last_used)


#: Removes a message from the ledger: its owner's entry, the owner's own list, its task.
_FORGET = """
local host = redis.call('HGET', KEYS[1], ARGV[1])
if host then
  local task = redis.call('HGET', ARGV[2] .. host, ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', ARGV[2] .. host, ARGV[1])
  if task then redis.call('HDEL', KEYS[2], task) end
end
return host
"""


_UNREAD = object()
#: The SHA1 a Redis knows the take script by (``EVALSHA``; loaded again after a restart).
TAKE_SHA = hashlib.sha1(TAKE.encode()).hexdigest()


class Checks(NamedTuple):
    """What the transaction that took a message read about its request."""

    #: ``revoke`` or ``terminate`` when the request was cancelled, else None.
    revoked: str | None
    #: Whether the message was delivered again (after a crash, a restart, a lost ack).
    redelivered: bool
    #: The run the request's last retry asked for (None: never retried).
    attempt: int | None
    #: The request's stored result as JSON text (None: none; ``_UNREAD``: not read here).
    result: Any

    @classmethod
    def read(cls, replies: list[Any], redelivered: bool, with_result: bool) -> Checks:
        tail = 1 + (1 + with_result if redelivered else 0)
        values = replies[-tail:]
        revoked = bytes_to_str(values[0]) if values[0] is not None else None
        attempt = None
        result: Any = _UNREAD
        if redelivered:
            raw = values[1]
            attempt = int(raw) if raw is not None else None
            if with_result:
                result = bytes_to_str(values[2]) if values[2] is not None else None
        return cls(revoked, redelivered, attempt, result)

    @property
    def result_read(self) -> bool:
        return self.result is not _UNREAD


class Acknowledgements:
    """This process's acknowledgements that Redis may not have kept, made again until it has.

    Process state by nature: acknowledgements are made by the process that
    took the messages, whatever channel it took them on. Two kinds:

    - **refused**: a request that finishes after its node lost the broker
      acknowledges through the channel of the lost connection, which can no
      longer reach Redis. Its message stays held (kombu's unacked indices and
      the ledger), and the node's heartbeat makes the acknowledgement once
      Redis answers again (:meth:`settle`, from :class:`workers.node.recovery.Recovery`);
    - **unsure**: an acknowledgement Redis took in the last :data:`RECENT_ACKS_S`
      seconds before the connection was lost may be lost with a master that
      died before its replicas had it. When the connection is lost
      (:meth:`connection_lost`) those are kept, however long the failover
      takes, and made again at the reconnection (:meth:`remake`), before the
      node puts back what it no longer holds: a request that ran to its end
      is not put back and run again.

    A third kind has no acknowledgement coming at all: **handed**, a request
    the prefork pool had started writing to a pool process when the connection
    was lost, before the process said it took it. Celery's consumer forgets it
    (its pool discards what was not accepted, for the broker to deliver again),
    but the pool process runs it anyway, and nothing acknowledges it. Its
    message stays held, so it is not put back to run a second time elsewhere,
    and the heartbeat settles it once its result is stored (:meth:`settle_handed`).

    kombu's unacked keys are the same for every channel of a process: they
    are noted once (:meth:`made`, :meth:`refused`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refused: set[str] = set()
        self._unsure: set[str] = set()
        #: The latest acknowledgements: delivery tag -> when (monotonic seconds).
        self._recent: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: Requests a pool process runs that Celery forgot: delivery tag -> task id.
        self._handed: dict[str, str] = {}
        #: kombu's unacked hash and index keys.
        self._keys = ("unacked", "unacked_index")

    def refused(self, tag: str, unacked_key: str, index_key: str) -> None:
        with self._lock:
            self._keys = (unacked_key, index_key)
            self._refused.add(tag)

    def made(self, tag: str, unacked_key: str, index_key: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._keys = (unacked_key, index_key)
            self._recent[tag] = now
            while self._recent and now - next(iter(self._recent.values())) > RECENT_ACKS_S:
                self._recent.popitem(last=False)

    def connection_lost(self) -> None:
        """Keep the latest acknowledgements to make again at the reconnection."""
        with self._lock:
            self._unsure.update(self._recent)
            self._recent.clear()

    def __len__(self) -> int:
        return len(self._refused)

    def handed(self, tag: str, task_id: str) -> None:
        """``tag``'s request runs in a pool process although Celery forgot it (see above)."""
        with self._lock:
            self._handed[tag] = task_id

    def holds(self, tag: str) -> bool:
        """Whether ``tag``'s request ran to its end here (its acknowledgement is kept), or
        still runs here although Celery forgot it."""
        return (tag in self._refused or tag in self._unsure or tag in self._recent
                or tag in self._handed)

    @property
    def handed_count(self) -> int:
        return len(self._handed)

    def settle_handed(self, client: Any, ended: Callable[[str], bool]) -> int:
        """Acknowledge the handed requests whose run ``ended`` (by task id); how many."""
        with self._lock:
            handed = dict(self._handed)
        done = {tag for tag, task_id in handed.items() if ended(task_id)}
        self._apply(client, done)
        with self._lock:
            for tag in done:
                self._handed.pop(tag, None)
        return len(done)

    def settle(self, client: Any) -> int:
        """Make the refused acknowledgements (``client``: the broker's Redis); how many."""
        with self._lock:
            refused = set(self._refused)
        self._apply(client, refused)
        with self._lock:
            self._refused -= refused
        return len(refused)

    def remake(self, client: Any) -> int:
        """Make the unsure and refused acknowledgements again (at a reconnection)."""
        with self._lock:
            again = self._unsure | self._refused
        self._apply(client, again)
        with self._lock:
            self._refused -= again
            self._unsure -= again
        return len(again)

    def _apply(self, client: Any, tags: set[str]) -> None:
        if not tags:
            return
        unacked_key, index_key = self._keys
        with client.pipeline() as pipe:
            for tag in tags:
                pipe.zrem(index_key, tag)
                pipe.hdel(unacked_key, tag)
                pipe.eval(_FORGET, 2, INFLIGHT_OWNERS_KEY, INFLIGHT_TASKS_KEY, tag,
                          inflight_key(""))
            pipe.execute()


#: Seconds before a lost connection whose acknowledgements are made again at the
#: reconnection (a replica is normally far less behind its master than this).
RECENT_ACKS_S = 10.0

#: This process's acknowledgements that Redis may not have kept (see :class:`Acknowledgements`).
ACKS = Acknowledgements()


class QoS(kombu_redis.QoS):
    """kombu's unacked bookkeeping, with an in-flight ledger kept in the same transactions.

    When a node takes a message, kombu records it in ``unacked`` and
    ``unacked_index``; in the same MULTI/EXEC this records its owner
    (``taskyard:inflight``: delivery tag -> host), adds it to the owner's
    list (``taskyard:inflight:host:<host>``: delivery tag -> task id) and
    marks its task as taken (``taskyard:inflight-tasks``: task id -> host,
    which is how a caller sees a request STARTED without the node writing
    that state to the result backend). Every
    way kombu removes a message from its indices (ack, reject, restore,
    the visibility sweep) removes it from the ledger in the same
    transaction, so a message is in both or in neither.
    """

    def append(self, message: Any, delivery_tag: str) -> None:
        channel = self.channel
        taken = channel.taken
        if taken is not None:
            # The take recorded it, in the step that took it (workers.extensions.take).
            channel.taken = None
            message.taskyard_checks = taken
            virtual.QoS.append(self, message, delivery_tag)
            return
        delivery = message.delivery_info
        host = channel.taskyard_host
        headers = message.headers or {}
        task_id = headers.get("id") or ""
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag,
                      dumps([message._raw, delivery["exchange"], delivery["routing_key"]]))
            if host:
                pipe.hset(INFLIGHT_OWNERS_KEY, delivery_tag, host)
                pipe.hset(inflight_key(host), delivery_tag, task_id)
                if task_id:
                    pipe.hset(INFLIGHT_TASKS_KEY, task_id,
                              Holder(host, os.getpid(), round(time.time(), 3)).encode())
                pipe.sadd(INFLIGHT_HOSTS_KEY, host)
            # What the node must know before it runs the request, read in the very
            # transaction that takes it: whether it was cancelled and, when it was
            # delivered again, whether it already finished or was retried since.
            redelivered = bool(delivery.get("redelivered") or headers.get("redelivered"))
            checking = bool(task_id) and channel.taskyard_lifecycle
            if checking:
                pipe.get(revoked_key(task_id))
                if redelivered:
                    pipe.hget(attempts_key(task_id), "attempt")
                    if channel.taskyard_result_prefix:
                        pipe.get(channel.taskyard_result_prefix + task_id)
            replies = pipe.execute()
        if checking:
            message.taskyard_checks = Checks.read(replies, redelivered,
                                                  bool(channel.taskyard_result_prefix))
        virtual.QoS.append(self, message, delivery_tag)

    def defer(self, message: Any, due: float) -> None:
        """Hand ``message`` (taken now) to the delayed requests, due at ``due``, with its ack.

        One transaction keeps it until due and takes it off the node (kombu's
        unacked indices and the in-flight ledger): a crash leaves it either
        held by the node (and delivered again) or waiting, never both, never
        neither. For a plain Celery caller's ``countdown``/``eta``, which
        Celery would keep in the worker's memory until due.
        """
        tag = message.delivery_tag
        delivery = message.delivery_info
        channel = self.channel
        queues = channel._lookup(delivery["exchange"], delivery["routing_key"]) or \
            [delivery["routing_key"]]
        priority = channel._get_message_priority(message._raw, reverse=False)
        entry = Delayed((message.headers or {}).get("id") or tag,
                        channel._q_for_pri(queues[0], priority), dumps(message._raw), due)
        with self.pipe_or_acquire() as pipe:
            DelayedRequests.schedule(pipe, [entry])
            self._remove_from_indices(tag, pipe)
            pipe.execute()
        virtual.QoS.ack(self, tag)
        message._state = "ACK"

    def ack(self, delivery_tag: str) -> None:
        """kombu's acknowledgement, kept a while in :data:`ACKS` (made again after a
        reconnection, or later when a lost connection refuses it)."""
        try:
            super().ack(delivery_tag)
        except redis.ConnectionError:
            ACKS.refused(delivery_tag, self.unacked_key, self.unacked_index_key)
            virtual.QoS.ack(self, delivery_tag)
            log.info("acknowledgement of %s kept until the broker answers again", delivery_tag)
        else:
            ACKS.made(delivery_tag, self.unacked_key, self.unacked_index_key)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        return pipe.eval(_FORGET, 2, INFLIGHT_OWNERS_KEY, INFLIGHT_TASKS_KEY, delivery_tag,
                         inflight_key(""))

    def recover(self, host: str, keep: frozenset[str] = frozenset()) -> int:
        """Put every message ``host`` holds back on its queue; how many went back.

        For a node's own messages when it (re)starts or reconnects, or a dead
        node's. Messages of the tasks in ``keep`` stay held: the node still
        runs them (it reconnected while they ran). Each message moves in one
        transaction, only if ``host`` still owns it (one the sweep already
        restored and another node took is left alone).
        """
        restored = 0
        with self.channel.conn_or_acquire() as client:
            for tag, task_id in client.hgetall(inflight_key(host)).items():
                if bytes_to_str(task_id) in keep or ACKS.holds(bytes_to_str(tag)):
                    continue
                restored += self._recover_one(client, bytes_to_str(tag), host)
        return restored

    def _recover_one(self, client: Any, tag: str, host: str) -> int:
        moved = []

        def restore(pipe: Any) -> None:
            owner = pipe.hget(INFLIGHT_OWNERS_KEY, tag)
            raw = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            if owner is None or bytes_to_str(owner) != host:
                pipe.hdel(inflight_key(host), tag)  # a stale entry: not this host's any more
                return
            self._remove_from_indices(tag, pipe)
            if raw:
                payload, exchange, routing_key = loads(bytes_to_str(raw))
                self.channel._do_restore_message(payload, exchange, routing_key, pipe)
                moved.append(tag)

        client.transaction(restore, INFLIGHT_OWNERS_KEY, self.unacked_key)
        return len(moved)


class Event(NamedTuple):
    """An event (or a list of them) to publish: where, what, and kombu's message fields."""

    exchange: str
    routing_key: str
    body: Any
    headers: dict[str, Any]
    delivery_mode: int


class _WaitingPipeline:
    """A publish pipeline that ends with ``WAIT``: it returns once replicas have its writes.

    ``WAIT`` blocks the connection that sent the writes until that many
    replicas acknowledged them (or the timeout passed), so it must travel on
    the same connection: a pipeline is one. Fewer replicas than asked is
    :class:`Unavailable` — the messages are on the master, and would be lost
    if it failed before replicating them.
    """

    def __init__(self, pipeline: Any, replicas: int, timeout_s: float) -> None:
        self._pipeline = pipeline
        self.replicas = replicas
        self.timeout_s = timeout_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def execute(self, *args: Any, **kwargs: Any) -> list[Any]:
        self._pipeline.execute_command("WAIT", self.replicas, max(1, int(self.timeout_s * 1000)))
        results: list[Any] = self._pipeline.execute(*args, **kwargs)
        reached = int(results[-1])
        if reached < self.replicas:
            raise Unavailable(
                f"the request reached the Redis master but only {reached} of the "
                f"{self.replicas} replicas publish_wait_replicas asks for within "
                f"publish_wait_timeout ({self.timeout_s:g} s): it may still run, or be lost "
                "if the master fails before replicating it; send it again only if running "
                "it twice is harmless"
            )
        return results[:-1]


class _DurableBatch(kombu_redis.PublishBatch):
    """kombu's publish batch, each flush waiting for the replicas (:class:`_WaitingPipeline`)."""

    def __init__(self, channel: Channel, max_size: int) -> None:
        super().__init__(channel, max_size)
        self.pipeline = _WaitingPipeline(self.pipeline, channel.wait_replicas,
                                         channel.wait_timeout_s)


class Channel(kombu_redis.Channel):
    """A Redis channel that dead-letters entries it cannot hand on, and keeps the ledger.

    With ``taskyard_wait_replicas`` (``publish_wait_replicas``) each message
    it sends to a queue returns only once that many replicas have it.
    """

    QoS = QoS

    last_queue: str | None = None
    #: Set from the transport options of the app (``taskyard_*``).
    taskyard_max_message_bytes: int = 1024 * 1024
    taskyard_services: tuple[str, ...] = ()
    taskyard_host: str | None = None
    taskyard_wait_replicas: int = 0
    taskyard_wait_timeout: float = 1.0
    #: Whether taking a message reads its cancellation and, delivered again, its runs.
    taskyard_lifecycle: bool = False
    #: The result backend's key prefix when results live in this Redis ("" otherwise):
    #: a message delivered again has its result read in the transaction that takes it.
    taskyard_result_prefix: str = ""
    #: Whether to take messages in one step with their record (a node's channels; set by
    #: the node, see workers.extensions.take).
    taskyard_take: bool = False

    #: The transport options of taskyard's channels (set by the app's settings).
    TASKYARD_OPTIONS = ("taskyard_max_message_bytes", "taskyard_services", "taskyard_host",
                        "taskyard_wait_replicas", "taskyard_wait_timeout",
                        "taskyard_lifecycle", "taskyard_result_prefix", "taskyard_take")
    from_transport_options = (  # type: ignore[assignment]  # a longer tuple than kombu's
        *kombu_redis.Channel.from_transport_options, *TASKYARD_OPTIONS,
    )

    #: What the take that is delivering a message read with it (for :meth:`QoS.append`).
    taken: Checks | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_message_bytes = int(self.taskyard_max_message_bytes)
        self.known_services = set(self.taskyard_services)
        self.host = self.taskyard_host
        self.wait_replicas = int(self.taskyard_wait_replicas)
        self.wait_timeout_s = float(self.taskyard_wait_timeout)
        self._queue_cycle = _RecordingCycle(self._queue_cycle, self)
        self._get = self._guard(kombu_redis.Channel._get, takes_queue=True)  # type: ignore[method-assign]
        #: kombu's read of a BRPOP, guarded: for what the one-step take does not serve.
        self._kombu_read = self._guard(kombu_redis.Channel._brpop_read)
        #: Whether the next command on the consuming connection takes (or waits for a bell).
        self._taking = True
        #: What the consuming connection was sent last: ``take``, ``wait`` or ``brpop``.
        self._sent: str | None = None
        #: Queues consumed without acknowledgements (remote-control replies, say).
        self._no_ack_queues: set[str] = set()
        self._brpop_read = self._take_read  # type: ignore[method-assign]
        self.handlers["BRPOP"] = self._brpop_read

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _takes(self) -> bool:
        """Whether this channel takes in one step: a node's, every queue acknowledged, and
        no key prefix (the script names keys itself)."""
        return (self.taskyard_take and not self.global_keyprefix
                and not self._no_ack_queues.intersection(self.active_queues))

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Take a message in one step with its record (:mod:`workers.extensions.take`), or,
        after a take found nothing, wait for a bell of the node's queues to ring."""
        if not self._takes():
            self._sent = "brpop"
            return super()._brpop_start(timeout)
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return None
        lists = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        if self._taking:
            command: list[Any] = [
                "EVALSHA", TAKE_SHA, 5, self.unacked_key, self.unacked_index_key,
                INFLIGHT_OWNERS_KEY, INFLIGHT_TASKS_KEY, INFLIGHT_HOSTS_KEY,
                self.host or "", os.getpid(), inflight_key(""), bell_key(""), revoked_key(""),
                attempts_key(""), self.taskyard_result_prefix if self.taskyard_lifecycle else "",
                self.max_message_bytes, len(lists), *lists]
            self._sent = "take"
        else:
            wait = self.brpop_timeout if timeout is None else timeout
            command = ["BLPOP", *(bell_key(name) for name in lists), wait or 0]
            self._sent = "wait"
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command(*command)
        return None

    def _take_read(self, **options: Any) -> bool:
        """Read what :meth:`_brpop_start` sent: deliver a message taken, or ``Empty``."""
        sent, self._sent = self._sent, None
        if sent == "brpop":
            return bool(self._kombu_read(**options))
        try:
            try:
                reply = self.client.parse_response(
                    self.client.connection, "EVALSHA" if sent == "take" else "BLPOP", **options)
            except redis.exceptions.NoScriptError:
                self._in_poll = None  # type: ignore[assignment]  # kombu's: a bool default
                self.client.script_load(TAKE)  # a new Redis, or one that restarted
                raise Empty() from None
            except self.connection_errors:
                # A broken connection: the next turn reconnects.
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()
        if sent != "take":
            self._taking = True  # a bell rang, or the wait ended: take again
            raise Empty()
        if not reply:
            self._taking = False
            raise Empty()
        list_key, entry, recorded, revoked, redelivered, attempt, result = reply
        dest = bytes_to_str(list_key).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        text = bytes_to_str(entry)
        if int(recorded) and self.wait_replicas and not self._take_replicated(text):
            raise Empty()
        if not int(recorded):
            # Not kombu's envelope, or too large: refused here as before (dead-lettered).
            envelope = self.check_entry(text)
        else:
            envelope = loads(text)
            self.taken = Checks(
                bytes_to_str(revoked) if revoked is not None else None, bool(int(redelivered)),
                int(attempt) if attempt is not None else None,
                (bytes_to_str(result) if result is not None else None)
                if self.taskyard_lifecycle and self.taskyard_result_prefix else _UNREAD)
        try:
            self.connection._deliver(envelope, dest)
        finally:
            self.taken = None
        return True

    def _take_replicated(self, text: str) -> bool:
        """With ``publish_wait_replicas``: whether the replicas have the take (``WAIT`` on
        the connection that took it); if not, give the message back and do not run it.

        A master that dies before its replicas have a take would leave the message
        queued on the promoted one, for another node to run too. Given back, it is
        taken again later; if the master is gone, the promoted one has it queued (the
        take was lost) or held by this node (recovery puts it back at the reconnection):
        it runs once either way.
        """
        reached = int(self.client.execute_command(
            "WAIT", self.wait_replicas, max(1, int(self.wait_timeout_s * 1000))))
        if reached >= self.wait_replicas:
            return True
        tag = loads(text)["properties"]["delivery_tag"]
        log.warning("the replicas did not confirm the take of %s (%d of %d within %g s): "
                    "given back to its queue", tag, reached, self.wait_replicas,
                    self.wait_timeout_s)
        self.qos.restore_by_tag(tag, leftmost=True)
        return False

    def _connparams(self, asynchronous: bool = False) -> Any:
        """kombu's connection parameters; a connection error once the connection is closed.

        When the broker fails, Celery closes the connection (kombu drops the
        channel's pools and forgets the transport's client) while a request
        finishing in the pool still acknowledges through the old channel.
        kombu would rebuild a pool from the forgotten client and raise
        ``AttributeError``, which stops the node; a connection error is what
        Celery expects there: it logs it and goes on, and the message, still
        in the in-flight ledger, runs again once the node reconnects.
        """
        if self.connection.client is None:
            raise redis.ConnectionError("this channel's broker connection is closed "
                                        "(the broker failed or the node is stopping)")
        return super()._connparams(asynchronous)

    def _create_client(self, asynchronous: bool = False) -> Any:
        """One Redis client per channel (and pool) instead of a new one per command.

        kombu builds a ``redis.Redis`` for every publish, ack and unacked-hash
        write; the object is not free (about a fifth of a node's time per
        no-op message). The pool underneath is the same, so one client does.
        """
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        cached = self.__dict__.get("_taskyard_client")
        if cached is None or cached[0] is not pool:
            cached = (pool, super()._create_client())
            self.__dict__["_taskyard_client"] = cached
        return cached[1]

    def create_publish_batch(self, max_size: int) -> Any:
        if self.wait_replicas:
            return _DurableBatch(self, max_size)
        return super().create_publish_batch(max_size)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """Push ``message`` onto ``queue`` and ring its bell; with replicas to wait for, in one
        ``WAIT`` pipeline."""
        batch = kwargs.pop("_publish_batch", None)
        if batch is not None:
            super()._put(queue, message, _publish_batch=batch, **kwargs)
            batch.add("lpush", bell_key(self._q_for_pri(queue, self._get_message_priority(
                message, reverse=False))), BELL_TOKEN)
            return None
        with self._sending() as pipe:
            self._push(pipe, queue, message)
        return None

    def _do_restore_message(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                            leftmost: bool = False) -> None:
        """kombu's restore of a message to its queue, ringing the queue's bell."""
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        priority = self._get_message_priority(payload, reverse=False)
        for queue in self._lookup(exchange, routing_key):
            ring(pipe, self._q_for_pri(queue, priority))

    @contextlib.contextmanager
    def _sending(self) -> Iterator[Any]:
        """A pipeline whose commands go out in one round trip when the block ends; with
        replicas to wait for, it ends with ``WAIT`` (:class:`_WaitingPipeline`)."""
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            target = (_WaitingPipeline(pipe, self.wait_replicas, self.wait_timeout_s)
                      if self.wait_replicas else pipe)
            yield target
            target.execute()

    def _push(self, pipe: Any, queue: str, message: dict[str, Any]) -> None:
        """Add kombu's commands that put ``message`` on ``queue`` to ``pipe``, and ring."""
        priority = self._get_message_priority(message, reverse=False)
        pipe.lpush(self._q_for_pri(queue, priority), dumps(message))
        ring(pipe, self._q_for_pri(queue, priority))
        self._expire(pipe, queue)

    def _expire(self, pipe: Any, queue: str) -> None:
        """kombu's expiry of ``queue``'s lists, for a queue declared with one."""
        if self._expires and queue in self._expires:
            for step in self.priority_steps:
                pipe.pexpire(self._q_for_pri(queue, step), self._expires[queue])

    def publish_event(self, event: Event) -> None:
        """Publish an event (or a list of them) on its exchange's fanout topic, in one step.

        The envelope is what ``Producer.publish`` and ``basic_publish`` build
        for a JSON body (checked against them by the tests), without their
        layers: see :mod:`workers.extensions.events`.
        """
        topics, payload = self._event_envelope(event)
        with self.conn_or_acquire() as client:
            for topic in topics:
                client.publish(topic, payload)

    def send_requests(self, messages: Sequence[tuple[str, bytes, dict[str, Any], dict[str, Any]]],
                      event: Event | None = None, *, due: float | None = None,
                      marker: Marker | None = None) -> None:
        """Push task messages ``(queue, body, headers, properties)`` and publish ``event``, in
        one round trip.

        What ``Producer.publish`` of each JSON body on the default exchange,
        then the task-sent events' own publishes, would do in many round
        trips and layers (``maybe_declare``, ``ensure`` and a ``Message``
        each); each queue entry is byte for byte kombu's (checked by the
        tests). With ``due`` (epoch seconds) the messages wait in the delayed
        requests until then instead (:mod:`workers.core.delays`), in one
        atomic step with ``marker`` (a retry's record of its runs). With
        ``publish_wait_replicas`` the pipeline ends with ``WAIT``
        (:class:`_WaitingPipeline`). Like kombu's publish batch, a pipeline
        that fails leaves unknown which of its messages arrived.
        """
        with self._sending() as pipe:
            if due is None:
                # One LPUSH per list (the same entries, in the same order, as one push
                # each) and one ring of its bell for them all.
                lists: dict[str, list[str]] = {}
                queues: set[str] = set()
                for queue, body, headers, properties in messages:
                    message = self._task_message(queue, body, headers, properties)
                    priority = self._get_message_priority(message, reverse=False)
                    lists.setdefault(self._q_for_pri(queue, priority), []).append(
                        dumps(message))
                    queues.add(queue)
                for list_key, entries in lists.items():
                    pipe.lpush(list_key, *entries)
                    ring(pipe, list_key, len(entries))
                for queue in queues:  # after the pushes: an expiry needs the list to exist
                    self._expire(pipe, queue)
            else:
                waiting = []
                for queue, body, headers, properties in messages:
                    message = self._task_message(queue, body, headers, properties)
                    priority = self._get_message_priority(message, reverse=False)
                    waiting.append(Delayed(headers["id"], self._q_for_pri(queue, priority),
                                           dumps(message), due))
                DelayedRequests.schedule(pipe, waiting, marker)
            if event is not None:
                topics, payload = self._event_envelope(event)
                for topic in topics:
                    pipe.publish(topic, payload)

    def _task_message(self, queue: str, body: bytes, headers: dict[str, Any],
                      properties: dict[str, Any]) -> dict[str, Any]:
        """The envelope ``Producer.publish`` builds for a JSON body sent to ``queue``."""
        properties = dict(properties)
        priority = properties.pop("priority", 0)  # Producer.publish takes it as an argument
        properties["delivery_mode"] = maybe_delivery_mode(None)  # the default exchange's
        return self._envelope("", queue, body, priority, headers, properties)

    def _event_envelope(self, event: Event) -> tuple[list[str], str]:
        """The pub/sub topics of ``event`` and the envelope kombu would publish there."""
        message = self._envelope(event.exchange, event.routing_key, dumps(event.body), 0,
                                 event.headers, {"delivery_mode": event.delivery_mode})
        return self._get_publish_topics(event.exchange, event.routing_key), dumps(message)

    def _envelope(self, exchange: str, routing_key: str, body: bytes | str, priority: int,
                  headers: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
        """kombu's envelope of a JSON body: its ``prepare_message``, then what
        ``basic_publish`` adds (encoded body, delivery tag and info)."""
        message: dict[str, Any] = self.prepare_message(body, priority, "application/json",
                                                       "utf-8", headers, properties)
        self._inplace_augment_message(message, exchange, routing_key)
        return message

    def _guard(self, method: Callable[..., Any], takes_queue: bool = False) -> Any:
        """``method`` of kombu's channel, run with a ``loads`` that checks the entry."""
        channel = self

        def call(this: Any, *args: Any, **kwargs: Any) -> Any:
            if takes_queue and args:
                channel.last_queue = args[0]
            return guarded(this, *args, **kwargs)

        def checked_loads(text: str) -> Any:
            return channel.check_entry(text)

        namespace = dict(method.__globals__)
        namespace["loads"] = checked_loads
        guarded = types.FunctionType(method.__code__, namespace, method.__name__,
                                     method.__defaults__, method.__closure__)
        guarded.__kwdefaults__ = method.__kwdefaults__
        return types.MethodType(call, self)

    def check_entry(self, text: str) -> Any:
        """The envelope in ``text``; or dead-letter it and report ``Empty``."""
        if len(text) > self.max_message_bytes:
            self.refuse(text, f"message of {len(text)} bytes is larger than "
                              f"max_message_bytes ({self.max_message_bytes})")
        try:
            envelope = loads(text)
        except ValueError as exc:
            self.refuse(text, f"not a message: the entry is not valid JSON ({exc})")
        if not isinstance(envelope, dict) or not envelope.keys() >= _ENVELOPE_KEYS:
            self.refuse(text, "not a message: the entry is JSON but not a kombu envelope "
                              "(needs body, headers and properties)")
        return envelope

    def refuse(self, text: str, reason: str) -> None:
        queue = self.last_queue
        with self.conn_or_acquire() as client:
            DeadLetters(client).add(service_of(queue, self.known_services), reason,
                                    host=self.host, queue=queue, raw=text)
        raise Empty()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """:class:`Channel` on a master found through Redis Sentinel (kombu's sentinel channel).

    kombu reads the sentinels from the broker URL's ``;``-separated parts,
    which also makes them failover alternates: on a connection error kombu
    switches to the next part and re-resolves the transport from its scheme
    (``sentinel``), so after the first failover the node would run kombu's
    own channel, without the ledger and the guards. The app therefore gives
    kombu one part as the broker URL and every sentinel in the
    ``taskyard_sentinels`` transport option, which this channel asks.
    """

    taskyard_sentinels: tuple[tuple[str, int], ...] = ()
    #: Connections that also leave a demoted master when a script is refused (READONLY).
    connection_class = FollowingConnection
    connection_class_ssl = FollowingSSLConnection  # type: ignore[assignment]  # kombu's own class

    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.SentinelChannel.from_transport_options, *Channel.TASKYARD_OPTIONS,
        "taskyard_sentinels",
    )

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        """The pool of the master the sentinels name (kombu's, with every sentinel asked)."""
        params = self._connparams(asynchronous)
        sentinels = [(str(host), int(port)) for host, port in self.taskyard_sentinels] or \
            [(params["host"], params["port"])]
        kwargs = {k: v for k, v in params.items() if k not in ("host", "port")}
        manager = redis.sentinel.Sentinel(
            sentinels, min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None), **kwargs)
        # kombu's _disconnect_pools closes the sentinels' connections through these.
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        master_name = getattr(self, "master_name", None)
        if not master_name:
            raise ValueError("the 'master_name' transport option must be set "
                             "(sentinel.master_name)")
        credentials = {k: kwargs[k] for k in ("username", "password") if k in kwargs}
        return manager.master_for(master_name, redis.Redis, **credentials).connection_pool


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel
