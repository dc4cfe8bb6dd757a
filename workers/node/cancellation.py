"""Stopping a running request where it runs, on every pool.

Celery's ``revoke(terminate=True)`` kills the pool process running the
request, which only prefork (and eventlet, gevent) can do; on the threads
and solo pools it does nothing. taskyard stops a request from inside
instead, the same way on every pool: each process that runs requests
keeps a :class:`Terminations` watcher, a thread subscribed to the
fleet's cancellation channel (``taskyard:cancel``). When a cancellation
with ``terminate`` names a request this process runs, the watcher cancels
the request's :class:`~drivers.cancellation.CancelScope`: its driver's
running command is killed (its process group), its next progress report
or command raises ``Cancelled``, and ``self.context.cancelled`` turns true.
The request then ends ``REVOKED`` (:mod:`workers.node.endpoints`) and the
node goes on serving.

Nothing is lost to the channel's best effort: an announcement for a request
that is not running here yet is kept for :data:`RECENT_S` seconds (the
request may be just starting), and each time the watcher (re)subscribes it
reads, for every request it runs, whether a ``terminate`` was recorded in
the meantime (:mod:`workers.core.revocations`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.utils.encoding import bytes_to_str

from drivers.cancellation import CancelScope
from workers.core.keys import CANCEL_CHANNEL
from workers.core.revocations import Revocations

log = logging.getLogger("taskyard.cancel")

#: Seconds an announcement for a request not running here is kept, in case it starts now.
RECENT_S = 60.0
#: Seconds between two attempts to subscribe again after the connection broke.
RESUBSCRIBE_S = 1.0
#: Seconds Redis has to confirm a subscription.
CONFIRM_S = 10.0
#: Why a request stopped this way is revoked (what its result says).
TERMINATED = "terminated: cancelled with terminate while it ran"


class Terminations:
    """The requests one process runs, stopped when a cancellation with terminate names them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.revocations = Revocations(client)
        self._running: dict[str, CancelScope] = {}
        self._recent: dict[str, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        #: Set once the watcher listens (tests wait for it).
        self.listening = threading.Event()

    @contextmanager
    def watch(self, task_id: str, scope: CancelScope) -> Iterator[CancelScope]:
        """Let a cancellation with terminate of ``task_id`` reach ``scope`` while the block runs."""
        self._start()
        with self._lock:
            self._running[task_id] = scope
            announced = self._recent.pop(task_id, None) is not None
        if announced:
            scope.cancel(TERMINATED)
        try:
            yield scope
        finally:
            with self._lock:
                if self._running.get(task_id) is scope:
                    del self._running[task_id]

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="taskyard-cancel",
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        failing = False
        while not self._stopped.is_set():
            try:
                self._listen()
            except (redis.RedisError, OSError) as exc:
                self.listening.clear()
                if not failing:
                    log.warning("cancellation channel lost (%s); subscribing again", exc)
                    failing = True
                self._stopped.wait(RESUBSCRIBE_S)
            else:
                failing = False

    def _listen(self) -> None:
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(CANCEL_CHANNEL)
            deadline = time.monotonic() + CONFIRM_S
            while True:  # Redis confirms the subscription: from here nothing is missed
                message = pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "subscribe":
                    break
                if time.monotonic() > deadline:
                    raise redis.TimeoutError("no confirmation of the subscription to "
                                             f"{CANCEL_CHANNEL} within {CONFIRM_S:g} s")
            # Announcements made before the subscription: read what was recorded.
            with self._lock:
                running = list(self._running)
            for task_id in self.revocations.terminating(running):
                self.terminate(task_id)
            self.listening.set()
            while not self._stopped.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "message":
                    self.terminate(bytes_to_str(message["data"]))
        finally:
            pubsub.close()

    def terminate(self, task_id: str) -> bool:
        """Stop ``task_id`` if it runs here (else remember it a while); whether it ran here."""
        now = time.monotonic()
        with self._lock:
            scope = self._running.get(task_id)
            if scope is None:
                self._recent[task_id] = now
                for old, at in list(self._recent.items()):
                    if now - at > RECENT_S:
                        del self._recent[old]
                return False
        log.warning("stopping %s: cancelled with terminate", task_id)
        scope.cancel(TERMINATED)
        return True
