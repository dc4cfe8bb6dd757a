"""What a node checks of every message it takes, before the message reaches the pool.

Every endpoint and periodic task uses :func:`verifying_strategy`: Celery's
default strategy behind these checks, in order:

1. **The signature** (when signing is on): ``taskyard_signature`` against the
   signing key and every key in ``security.previous_signing_keys`` (so keys
   rotate without a flag day). An unsigned or altered message is refused:
   its caller gets ``InvalidRequest``, and the message goes to the
   dead-letter list with the reason.
2. **A cancellation**: a request cancelled before it ran (``taskyard cancel``)
   is settled as Celery settles a revoked task (state ``REVOKED``, a
   ``task-revoked`` event, the ``task_revoked`` signal), and never runs.
3. **Done once**: a message delivered again (after a crash, a restart, an
   acknowledgement lost with the connection) whose request already finished
   (``SUCCESS``, ``FAILURE`` or ``REVOKED``), or was retried since (a newer
   run is waiting), is acknowledged without running again.
4. **A delay**: a message whose ``eta`` is still ahead (a plain Celery
   caller's ``countdown``/``eta``) is handed to the delayed requests in Redis
   (:mod:`workers.core.delays`) in one step with its acknowledgement, instead
   of waiting in this node's memory as Celery would keep it; one that is due
   runs at once. ``expires`` is Celery's own check (state ``REVOKED``, its
   result saying when it expired: :mod:`workers.node.request`).

Steps 2 and 3 use what the transaction that took the message read
(:class:`workers.extensions.transport.Checks`): no extra round trip to
Redis, but for a message delivered again when results live in another
Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from celery.utils.time import maybe_iso8601
from celery.worker.strategy import default as default_strategy
from kombu.utils.json import loads

from workers.core.keys import FINAL_STATES
from workers.extensions.refusal import refuse_message
from workers.extensions.signing import body_bytes, verify
from workers.extensions.transport import QoS

log = logging.getLogger("taskyard.lifecycle")


def verifying_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """Celery's default strategy behind taskyard's checks (see the module's doc)."""
    handler = default_strategy(task, app, consumer, **kwargs)
    security = app.config.security
    keys = (security.signing_key, *security.previous_signing_keys) if security.enabled else ()
    revoked = consumer.controller.state.revoked

    def task_message_handler(message: Any, body: Any, ack: Any, reject: Any,
                             callbacks: Any, **kw: Any) -> Any:
        headers = message.headers if isinstance(message.headers, dict) else {}
        if keys:
            problem = verify(keys, body_bytes(message.body), headers)
            if problem is not None:
                refuse_message(app, message, problem, requeueable=False)
                return None
        task_id = headers.get("id")
        checks = getattr(message, "taskyard_checks", None)
        if checks is not None and task_id:
            if checks.revoked:
                # Celery's own path for a revoked id: REVOKED stored, event, signal, ack.
                revoked.add(task_id)
                return handler(message, body, ack, reject, callbacks, **kw)
            if checks.redelivered and _settled(app, message, headers, checks):
                return None
        eta = headers.get("eta")
        if eta:
            due = timestamp(eta)
            qos = getattr(getattr(message, "channel", None), "qos", None)
            if due is not None and due > time.time() and isinstance(qos, QoS) \
                    and not _expired(headers):
                qos.defer(message, due)
                log.info("%s[%s] waits until %s (eta) in Redis, not in this node's memory",
                         headers.get("task"), task_id, eta)
                return None
            if due is not None and due <= time.time():
                # Due now: run it at once rather than through Celery's timer.
                headers["eta"] = None
        return handler(message, body, ack, reject, callbacks, **kw)

    return task_message_handler


def _settled(app: Any, message: Any, headers: dict[str, Any], checks: Any) -> bool:
    """Acknowledge a message delivered again whose request needs no further run; whether it did."""
    task, task_id = headers.get("task"), headers.get("id")
    retries = headers.get("retries") or 0
    if checks.attempt is not None and isinstance(retries, int) and checks.attempt > retries + 1:
        why = f"it was retried since (run {checks.attempt} is sent)"
    else:
        state = _state(app, task_id, checks)
        if state not in FINAL_STATES:
            return False
        why = f"it already finished ({state})"
    log.info("%s[%s] was delivered again, but %s: acknowledged without running it again",
             task, task_id, why)
    message.ack()
    return True


def _state(app: Any, task_id: Any, checks: Any) -> str | None:
    """The stored state of ``task_id``: read with the message, or asked of the backend."""
    if checks.result_read:
        if checks.result is None:
            return None
        try:
            meta = loads(checks.result)
        except ValueError:
            return None
        return meta.get("status") if isinstance(meta, dict) else None
    try:
        return str(app.backend.get_task_meta(task_id).get("status"))
    except Exception as exc:  # results unreachable: run it (endpoints are idempotent)
        log.warning("could not read the state of %s, delivered again: %s", task_id, exc)
        return None


def timestamp(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 ``eta``/``expires`` (naive means UTC, as Celery sends)."""
    try:
        moment = maybe_iso8601(value) if isinstance(value, str) else value
    except (TypeError, ValueError):
        return None
    if not isinstance(moment, datetime):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _expired(headers: dict[str, Any]) -> bool:
    expires = headers.get("expires")
    moment = timestamp(expires) if expires else None
    return moment is not None and moment <= time.time()
