"""A request that was sent: its state, where it runs, its outcome, and cancelling it.

:class:`Handle` is what ``cast`` returns (and ``Client(service).handle(task_id)``
makes for a request sent elsewhere). It reads Celery's result backend for
the state and outcome, and Redis for what the backend does not know: which
node holds the request now (the in-flight ledger), whether it waits
(delayed), how many runs it had (retries). :func:`cancel` stops a request
from running, wherever it is in its life.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import redis
from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.exceptions import OperationalError
from kombu.utils.encoding import bytes_to_str

from workers.core.addresses import is_redis_address
from workers.core.delays import DelayedRequests
from workers.core.keys import FINAL_STATES, LIFECYCLE_COUNTS_KEY, PROGRESS, attempts_key
from workers.core.revocations import Holder, Revocations
from workers.exceptions import RemoteError, TaskyardError, Timeout, Unavailable

if TYPE_CHECKING:
    from celery.result import AsyncResult

    from workers.client.timing import Times
    from workers.core.application import Taskyard


def _as_error(exc: BaseException, result: AsyncResult | None = None) -> TaskyardError:
    if isinstance(exc, TaskyardError):
        if isinstance(exc, RemoteError) and not exc.traceback and result is not None:
            exc.with_details(traceback=result.traceback or "")
        return exc
    return RemoteError.from_exception(exc)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds")


def _broker(app: Any) -> Any:
    """The broker's Redis client of ``app``, or None when the broker is not Redis."""
    config = getattr(app, "config", None)
    if config is None or not is_redis_address(config.broker_url):
        return None
    return app.redis(config.broker_url)


class Handle:
    """A request that was sent: its task id, and a way to follow, wait for or cancel it."""

    def __init__(self, result: AsyncResult, service: str, method: str,
                 host: str | None, timeout: float, times: Times | None = None) -> None:
        self.result = result
        self.service = service
        self.method = method
        self.host = host
        self.timeout = timeout
        #: When it was due to run and to expire, as sent (None: not known here).
        self.times = times

    @property
    def id(self) -> str:
        return str(self.result.id)

    @property
    def state(self) -> str:
        """Celery's state: PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE, REVOKED.

        STARTED (with Celery's ``info``: ``hostname`` and ``pid``) comes from the
        in-flight ledger, not from a write of the node's: see
        :class:`workers.extensions.backend.LedgerStartedMixin`.
        """
        return str(self.result.state)

    def holder(self) -> Holder | None:
        """The node holding the request now (host, process, since when), or None."""
        client = _broker(self.result.app)
        return None if client is None else Revocations(client).holder(self.id)

    @property
    def node(self) -> str | None:
        """The host of the node running the request now, or None when none does."""
        holder = self.holder()
        return holder.host if holder is not None else None

    @property
    def due(self) -> float | None:
        """When the request is due to run (epoch seconds) while it waits delayed, else None."""
        client = _broker(self.result.app)
        return None if client is None else DelayedRequests(client).due(self.id)

    def _runs(self) -> dict[str, str]:
        client = _broker(self.result.app)
        if client is None:
            return {}
        raw = client.hgetall(attempts_key(self.id))
        return {bytes_to_str(k): bytes_to_str(v) for k, v in raw.items()}

    @property
    def attempts(self) -> int:
        """Runs the request had or has under way: 1, or more once retried (0: not started)."""
        runs = self._runs()
        if runs.get("attempt"):
            sent = int(runs["attempt"])
            # The run a retry sent counts once it started or ended.
            started = self.state not in (states.PENDING, states.RETRY)
            return sent if started else sent - 1
        return 0 if self.state == states.PENDING else 1

    @property
    def last_error(self) -> str | None:
        """The error of the request's last failed run, when it was retried (else None)."""
        return self._runs().get("error") or None

    def ready(self) -> bool:
        return bool(self.result.ready())

    def progress(self) -> dict[str, Any] | None:
        """``{done, total, message}`` while the endpoint reports progress, else None."""
        if self.result.state == PROGRESS and isinstance(self.result.info, dict):
            return dict(self.result.info)
        return None

    def wait(self, timeout: float | None = None) -> Any:
        """The endpoint's return value; its error raised as a taskyard error.

        :class:`Timeout` when no answer came within ``timeout`` seconds (the
        client's timeout by default), saying whether the request had not
        started (and whether it still may), waits (delayed), or runs on a node
        (and may still finish). :class:`~workers.exceptions.Cancelled` when it
        was cancelled, :class:`~workers.exceptions.Expired` when its deadline
        passed before it ran.
        """
        timeout = self.timeout if timeout is None else timeout
        try:
            # ``interval`` only matters for backends that are polled (not Redis).
            return self.result.get(timeout=timeout, propagate=True, interval=0.02)
        except CeleryTimeoutError:
            self._stop_listening()
            raise self._timed_out(timeout) from None
        except (OperationalError, redis.RedisError) as exc:
            raise Unavailable(
                f"lost the result backend while waiting for {self.service}.{self.method} "
                f"(task id {self.id}): {exc}; the request may still run", {"task_id": self.id},
            ) from exc
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _as_error(exc, self.result) from None

    def _timed_out(self, timeout: float) -> Timeout:
        """The :class:`Timeout` of a wait of ``timeout`` seconds, saying where the request is."""
        what = f"{self.service}.{self.method}"
        details: dict[str, Any] = {"task_id": self.id, "service": self.service,
                                   "method": self.method}
        if _broker(self.result.app) is None:
            # No in-flight ledger to ask (not the Redis broker): where it is is not known.
            details.update(stage="unknown")
            return Timeout(f"no answer from {what} within {timeout:g} s; it may still run "
                           f"(task id {self.id})", details)
        try:
            holder, due = self.holder(), self.due
        except redis.RedisError:
            holder = due = None
        now = time.time()
        expires = self.times.expires if self.times is not None else None
        if holder is not None:
            since = f" {now - holder.since:.0f} s ago" if holder.since else ""
            pid = f" (pid {holder.pid})" if holder.pid else ""
            message = (f"{what} started on node {holder.host}{pid}{since} and did not answer "
                       f"within {timeout:g} s; it may still finish")
            details.update(stage="running", host=holder.host)
        elif due is not None:
            message = (f"{what} waits until {_iso(due)} (delayed) and has not run; it runs then "
                       "unless cancelled")
            details.update(stage="waiting", due=due)
        elif expires is not None and expires <= now:
            message = (f"{what} did not start within {timeout:g} s and its deadline "
                       f"({_iso(expires)}) has passed: it will never run")
            details.update(stage="expired", expires=expires)
        else:
            until = f" until its deadline ({_iso(expires)})" if expires is not None else ""
            message = (f"{what} did not start within {timeout:g} s; it is still queued and may "
                       f"still run{until}")
            details.update(stage="queued")
        return Timeout(f"no answer: {message} (task id {self.id})", details)

    def _stop_listening(self) -> None:
        """Drop the backend's subscription for this result until the next wait.

        A caller that gave up waiting should not keep a subscription (and its
        reconnection attempts) alive; waiting again subscribes again.
        """
        # A backend without subscriptions has nothing to drop.
        with contextlib.suppress(Exception):
            self.result.backend.remove_pending_result(self.result)

    def cancel(self, terminate: bool = False) -> Cancellation:
        """Cancel the request: see :func:`cancel`."""
        return cancel(self.result.app, self.id, terminate=terminate)

    def __repr__(self) -> str:
        return f"<Handle {self.service}.{self.method} {self.id}>"


#: What :func:`cancel` found and did, by the stage the request was in.
FINISHED, REMOVED, REVOKED, STOPPING, RUNNING = (
    "finished", "removed", "revoked", "stopping", "running")


@dataclass(frozen=True)
class Cancellation:
    """What cancelling a request did, by the stage it was in (``outcome``)."""

    task_id: str
    #: ``finished`` (nothing changed), ``removed`` (it waited, delayed), ``revoked``
    #: (not started), ``stopping`` (running, asked to stop) or ``running`` (it finishes).
    outcome: str
    #: The state it had already reached (``finished`` only).
    state: str | None = None
    #: The node running it (``stopping``, ``running``).
    host: str | None = None

    @property
    def changed(self) -> bool:
        """Whether the cancellation changed anything (not for a request already finished)."""
        return self.outcome != FINISHED

    def __str__(self) -> str:
        task = self.task_id
        return {
            FINISHED: f"{task} had already finished ({self.state}): nothing changed",
            REMOVED: f"{task} was waiting (delayed): removed, it will never run",
            REVOKED: f"{task} had not started: it will never run",
            STOPPING: f"{task} runs on {self.host}: asked to stop; it ends REVOKED",
            RUNNING: f"{task} runs on {self.host} and will finish (terminate stops it); it "
                     "will not run again",
        }[self.outcome]


def cancel(app: Taskyard, task_id: str, *, terminate: bool = False) -> Cancellation:
    """Cancel ``task_id``: it never runs, or with ``terminate`` it also stops where it runs.

    A request waiting (delayed) is removed; one not started is recorded as
    cancelled for as long as results are kept (``result_expires``), so every
    node refuses it, also one that starts later; either is ``REVOKED`` at
    once. A running one finishes unless ``terminate``: then its node stops
    it (its driver's commands are killed, its next progress report raises
    ``Cancelled``) and it ends ``REVOKED``. One that already finished is left
    as it is, and the result says so.
    """
    backend = app.backend
    state = backend.get_task_meta(task_id).get("status")
    if state in FINAL_STATES:
        return Cancellation(task_id, FINISHED, state=state)
    client = _broker(app)
    if client is None:
        # Not a Redis broker (the in-memory transport of tests): Celery's own revoke.
        app.control.revoke(task_id, terminate=terminate)
        found = backend.revoke_unless_final(task_id, "cancelled")
        return Cancellation(task_id, FINISHED, state=found) if found else \
            Cancellation(task_id, REVOKED)
    revoked = Revocations(client).revoke(task_id, terminate=terminate,
                                         keep_s=int(app.config.result_expires))
    if revoked.holder is not None:
        return Cancellation(task_id, STOPPING if terminate else RUNNING, host=revoked.holder.host)
    reason = "cancelled while it waited (delayed)" if revoked.waited else "cancelled"
    found = backend.revoke_unless_final(task_id, reason)
    if found:
        return Cancellation(task_id, FINISHED, state=found)
    if revoked.waited_for:
        client.hincrby(LIFECYCLE_COUNTS_KEY, f"cancelled:{revoked.waited_for.split('.')[0]}", 1)
    _announce_revoked(app, task_id)
    return Cancellation(task_id, REMOVED if revoked.waited else REVOKED)


def _announce_revoked(app: Taskyard, task_id: str) -> None:
    """A ``task-revoked`` event, so Flower shows REVOKED before any node sees the message."""
    if not app.conf.task_send_sent_event:
        return
    with contextlib.suppress(Exception), app.producer_or_acquire() as producer:
        app.sent_events.publish("task-revoked", {"uuid": task_id, "terminated": False,
                                                 "signum": None, "expired": False}, producer)
