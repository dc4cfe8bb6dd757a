"""Refusing a message a node cannot run: dead-letter it, tell its caller, take it off the queue.

Shared by the consumer (undecodable, unknown or malformed messages) and the
signature check (unsigned or altered ones).
"""

from __future__ import annotations

import logging
from typing import Any

from workers.core.deadletters import DeadLetters, service_of
from workers.exceptions import InvalidRequest

log = logging.getLogger("taskyard.consumer")


def header(message: Any, name: str) -> Any:
    """A header of ``message``, or None when it has no such header (or no headers)."""
    headers = getattr(message, "headers", None) or {}
    return headers.get(name) if isinstance(headers, dict) else None


def refuse_message(app: Any, message: Any, reason: str, requeueable: bool = True,
                   error: type[InvalidRequest] = InvalidRequest) -> None:
    """Dead-letter ``message``, tell its caller why (as ``error``), take it off the queue."""
    config = app.config
    host = config.host
    task, task_id = header(message, "task"), header(message, "id")
    queue = (getattr(message, "delivery_info", None) or {}).get("routing_key")
    args = kwargs = None
    raw = None
    try:
        args, kwargs, _ = message.decode()
    except Exception:
        raw = message.body
    DeadLetters(app.records).add(
        service_of(task or queue, set(config.services)), reason, host=host,
        queue=queue, task=task, task_id=task_id, args=args, kwargs=kwargs,
        headers=message.headers if isinstance(message.headers, dict) else None, raw=raw,
        requeueable=requeueable,
    )
    if task_id:
        try:
            app.backend.mark_as_failure(task_id, error(
                f"{task or 'the message'} was refused by node {host}: {reason}",
                {"host": host}))
        except Exception:
            log.exception("could not store the refusal of %s", task_id)
    try:
        message.ack()
    except Exception:
        log.exception("could not take refused message %s off its queue", task_id)
