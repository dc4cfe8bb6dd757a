"""Result backends that rebuild only declared exceptions, and know what the ledger knows.

Celery, reading a failed task's result, rebuilds whatever exception class
the record names when the caller has its module imported. taskyard's
backends rebuild only classes registered with
:func:`~workers.exceptions.wire_error`; everything else becomes a
:class:`~workers.exceptions.RemoteError` carrying the remote type name and
message, an unknown task name becomes
:class:`~workers.exceptions.UnknownEndpoint`, and a revoked request
(Celery's ``TaskRevokedError``) becomes :class:`~workers.exceptions.Cancelled`,
or :class:`~workers.exceptions.Expired` when its deadline passed.

A request a node holds has no result yet: nodes do not write STARTED (a
write and a publish per request). These backends read it from the in-flight
ledger instead, as Celery's own STARTED reads, ``info`` included
(``hostname`` and ``pid``), so ``AsyncResult(task_id).state`` and code written
against Celery see it (:class:`LedgerStartedMixin`).

Private internals of Celery 5.7 used here (``tests/unit/test_canaries.py``):
``_get_result_meta`` and ``get_key_for_task`` build the record a cancellation
stores, as ``mark_as_revoked`` would.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import states
from celery.backends.cache import CacheBackend as _CacheBackend
from celery.backends.redis import RedisBackend as _RedisBackend
from celery.backends.redis import SentinelBackend as _SentinelBackend
from celery.exceptions import TaskRevokedError
from kombu.utils.encoding import bytes_to_str

from workers.core.addresses import is_redis_address
from workers.core.application import NODE_RESULT_RETRY_POLICY
from workers.core.keys import FINAL_STATES, nodename
from workers.core.revocations import Revocations
from workers.exceptions import (
    Cancelled,
    Expired,
    RemoteError,
    TaskyardError,
    UnknownEndpoint,
    lookup_wire_error,
)

#: The reason a node gives a request whose deadline passed before it ran (see
#: :mod:`workers.node.request`); Celery's own is just ``expired``.
EXPIRED_REASON = "expired"

#: Stores ARGV[1] at KEYS[1] (and publishes it, as Celery's Redis backend does) unless the
#: record there is final already; returns that record's state, or false.
_REVOKE_UNLESS_FINAL = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and (meta['status'] == 'SUCCESS'
      or meta['status'] == 'FAILURE' or meta['status'] == 'REVOKED') then
    return meta['status']
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return false
"""

def rebuild_exception(exc: Any) -> BaseException | None:
    """The exception a stored failure stands for, rebuilt only when it is declared."""
    if not exc:
        return None
    if isinstance(exc, TaskyardError):
        return exc
    if isinstance(exc, BaseException):
        return RemoteError.from_exception(exc)
    if not isinstance(exc, dict):
        return RemoteError(f"unreadable error record: {exc!r:.200}", {"type": "unknown"})
    module = exc.get("exc_module")
    qualname = str(exc.get("exc_type") or "Exception")
    args = exc.get("exc_message")
    if not isinstance(args, (list, tuple)):
        args = [args] if args is not None else []
    cls = lookup_wire_error(module, qualname)
    if cls is not None:
        try:
            return cls(*args)
        except Exception:  # a record not made by taskyard: report it, never trust it
            pass
    message = str(args[0]) if args else ""
    if module == "celery.exceptions" and qualname == "TaskRevokedError":
        if message.startswith(EXPIRED_REASON):
            return Expired(f"the request {message}", {"reason": message})
        return Cancelled(f"the request was {message}" if message.startswith(
            ("cancelled", "terminated", "revoked")) else f"the request was cancelled ({message})",
            {"reason": message})
    if module == "celery.exceptions" and qualname == "NotRegistered":
        name = message.strip("'\"")
        return UnknownEndpoint(
            f"no endpoint {name!r}: the node does not serve that task", {"task": name}
        )
    return RemoteError(
        f"{qualname}: {message}",
        {"type": qualname, "module": module, "remote_message": message},
    )


class SafeExceptionsMixin:
    """Replaces Celery's exception rebuilding with :func:`rebuild_exception`."""

    def exception_to_python(self, exc: Any) -> BaseException | None:
        return rebuild_exception(exc)


class LedgerStartedMixin:
    """PENDING reads as STARTED, with Celery's ``{hostname, pid}``, while a node holds it.

    Nodes do not store STARTED (``task_track_started`` would cost a write and
    a publish per request); the in-flight ledger knows it already.
    """

    app: Any

    def get_task_meta(self, task_id: str, cache: bool = True) -> dict[str, Any]:
        meta: dict[str, Any] = super().get_task_meta(task_id, cache)  # type: ignore[misc]
        if meta.get("status") != states.PENDING:
            return meta
        config = getattr(self.app, "config", None)
        if config is None or not config.task_track_started or \
                not is_redis_address(config.broker_url):
            return meta
        holder = Revocations(self.app.redis(config.broker_url)).holder(task_id)
        if holder is None:
            return meta
        return {"status": states.STARTED, "task_id": task_id, "traceback": None,
                "children": [], "date_done": None,
                "result": {"hostname": nodename(holder.host), "pid": holder.pid}}


class NodeRetryMixin:
    """A node keeps trying to store a result for longer than a caller waits to read one.

    A request that finished while Redis restarted must have its result once
    Redis is back, or a later delivery would run it again: a node's backend
    retries every operation (Celery's ``result_backend_always_retry``) for
    about :data:`~workers.core.application.NODE_RESULT_RETRY_POLICY`'s two
    minutes; a caller's gives up after a few seconds.
    """

    app: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.app, "serving", False):
            self.for_node()

    def for_node(self) -> None:
        """Retry as a node does (the app became a node's after this backend was made)."""
        self.always_retry = True
        self.max_retries = NODE_RESULT_RETRY_POLICY["max_retries"]
        self.base_sleep_between_retries_ms = 100
        self.max_sleep_between_retries_ms = int(NODE_RESULT_RETRY_POLICY["interval_max"] * 1000)

    @property
    def retry_policy(self) -> dict[str, Any]:
        policy: dict[str, Any] = dict(super().retry_policy)  # type: ignore[misc]
        if getattr(self.app, "serving", False):
            policy.update(NODE_RESULT_RETRY_POLICY)
        return policy


class ReplicatedResultsMixin:
    """With ``publish_wait_replicas``, a node's result is stored once replicas have it.

    A result the master acknowledged and lost in a failover would leave the
    caller waiting for ever (the request ran, its acknowledgement is made
    again after the failover, so it does not run again). The write, its
    publication and ``WAIT`` go in one pipeline (``WAIT`` counts the writes of
    its own connection); fewer replicas than asked is a connection error, which
    the node's backend retries (:class:`NodeRetryMixin`), on the promoted master
    after a failover.
    """

    app: Any

    def _set(self, key: str, value: Any, expires: Any = None) -> None:
        config = getattr(self.app, "config", None)
        if config is None or not config.publish_wait_replicas or \
                not getattr(self.app, "serving", False):
            super()._set(key, value, expires)  # type: ignore[misc]
            return
        replicas = config.publish_wait_replicas
        if expires is None:
            expires = self.expires  # type: ignore[attr-defined]
        # Not a transaction: inside MULTI, WAIT would answer at once.
        with self.client.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
            if expires:
                pipe.setex(key, expires, value)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
            pipe.execute_command("WAIT", replicas,
                                 max(1, int(config.publish_wait_timeout * 1000)))
            reached = int(pipe.execute()[-1])
        if reached < replicas:
            raise redis.ConnectionError(
                f"only {reached} of the {replicas} replicas publish_wait_replicas asks for "
                f"have the result of {key!r}: storing it again")


class RevokingMixin:
    """Storing REVOKED for a cancellation, unless the request has finished already."""

    def revoke_unless_final(self, task_id: str, reason: str) -> str | None:
        """Store ``task_id`` as REVOKED (``reason``) unless it finished; the final state found.

        Celery's ``mark_as_revoked`` would write over a result stored a moment
        before; the check and the write are one step here where the store can
        (Redis), and two elsewhere.
        """
        meta = self.get_task_meta(task_id, cache=False)  # type: ignore[attr-defined]
        if meta.get("status") in FINAL_STATES:
            return str(meta["status"])
        self.mark_as_revoked(task_id, reason)  # type: ignore[attr-defined]
        return None


class RedisRevokingMixin(RevokingMixin):
    """:class:`RevokingMixin` in one Lua script on the result Redis."""

    def revoke_unless_final(self, task_id: str, reason: str) -> str | None:
        meta = self._get_result_meta(  # type: ignore[attr-defined]
            result=TaskRevokedError(reason), state=states.REVOKED, traceback=None,
            request=None)
        meta["result"] = self.prepare_exception(meta["result"])  # type: ignore[attr-defined]
        meta["task_id"] = task_id
        key = self.get_key_for_task(task_id)  # type: ignore[attr-defined]
        found = self.client.eval(  # type: ignore[attr-defined]
            _REVOKE_UNLESS_FINAL, 1, key, self.encode(meta),  # type: ignore[attr-defined]
            int(self.expires or 0))  # type: ignore[attr-defined]
        return bytes_to_str(found) if found else None



class RedisBackend(SafeExceptionsMixin, LedgerStartedMixin, RedisRevokingMixin, NodeRetryMixin,
                   ReplicatedResultsMixin, _RedisBackend):
    """Celery's Redis result backend, rebuilding only declared exceptions."""


class SentinelBackend(SafeExceptionsMixin, LedgerStartedMixin, RedisRevokingMixin,
                      NodeRetryMixin, ReplicatedResultsMixin, _SentinelBackend):
    """Celery's Redis Sentinel result backend, rebuilding only declared exceptions."""


class CacheBackend(SafeExceptionsMixin, LedgerStartedMixin, RevokingMixin, NodeRetryMixin,
                   _CacheBackend):
    """Celery's cache (and in-memory) result backend, rebuilding only declared exceptions."""
