"""Celery's publish signals on taskyard's own send paths: what tracing tools hook.

OpenTelemetry's Celery instrumentation, ddtrace and other tools see a
request leave a process through Celery's ``before_task_publish`` and
``after_task_publish`` signals, and carry their trace context in the
``headers`` the first one passes: whatever a receiver writes there
travels with the message. Celery sends them from the task sender that
``apply_async`` and ``send_task`` go through; a :class:`~workers.Client`
builds its messages itself and pushes them in one pipelined round trip
(:meth:`workers.extensions.transport.Channel.send_requests`), so it sends
them here, with the arguments Celery passes (read from
``celery/app/amqp.py``, ``AMQP._create_task_sender``, Celery 5.7):

- ``before_task_publish``: ``sender`` (the task name), ``body`` (the
  unserialized ``(args, kwargs, embed)``), ``exchange`` and
  ``routing_key`` (``""`` and the queue: the default exchange, as Celery
  converts a direct queue), ``declare`` (the queue, as Celery would declare
  it), ``headers`` (the dict that is then sent), ``properties``,
  ``retry_policy`` (the app's publish retry policy);
- ``after_task_publish``, once the message is on its queue (a delayed one:
  with the delayed requests in Redis, as Celery's is sent once its ETA
  message is published): ``sender``, ``body``, ``headers``, ``exchange``,
  ``routing_key``.

Every send of :class:`~workers.Client` goes through here: cast, call,
``cast_many`` and fanout (per batch, one round trip still), delayed
requests, and a node's retries (``send_again``). Forwarding to an owner and
periodic runs go through Celery's own task sender, which sends them itself.

A receiver's exception is logged and ignored, as Celery's signals do.

When signing is on (``security.signing_key``), a message is signed again
after the receivers ran, so the headers they added are signed with the
rest; nothing else about the message changes (its body is serialized once,
before). With no receiver connected, :func:`announce` returns at once:
the check is one look at each signal's list of receivers, as Celery's.

Each message's two signals run in a copy of the sender's context
(:mod:`contextvars`): a receiver that makes its span current in
``before_task_publish`` and ends it in ``after_task_publish`` (OpenTelemetry
does) affects neither the sender nor the next message of a batch, so the
messages of one ``cast_many`` or fanout are siblings under the sender's
span, as a loop of ``apply_async`` calls makes them.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any, Protocol

from celery import signals

from workers.extensions.signing import seal

__all__ = ["Outgoing", "Publication", "announce", "listened"]

_before = signals.before_task_publish
_after = signals.after_task_publish


class Outgoing(Protocol):
    """One task message as a caller sends it (the client's prepared request)."""

    #: The task name (``volume.create_volume``).
    name: str
    #: The unserialized body: ``(args, kwargs, embed)`` (Celery's message protocol 2).
    body: Any
    #: ``(queue, serialized body, headers, properties)``: what the channel pushes.
    message: tuple[str, bytes, dict[str, Any], dict[str, Any]]


def listened() -> bool:
    """Whether a receiver is connected to either publish signal (nothing to do otherwise)."""
    return bool(_before.receivers or _after.receivers)


class Publication:
    """Messages announced with ``before_task_publish``, to confirm once they are sent."""

    def __init__(self, announced: list[tuple[contextvars.Context, Outgoing]]) -> None:
        self._announced = announced

    def sent(self) -> None:
        """Send ``after_task_publish`` for each message (call once they are on their queues)."""
        for context, outgoing in self._announced:
            queue, _, headers, _ = outgoing.message
            context.run(_after.send, sender=outgoing.name, body=outgoing.body,
                        headers=headers, exchange="", routing_key=queue)


def announce(app: Any, outgoing: Sequence[Outgoing]) -> Publication | None:
    """Send ``before_task_publish`` for each message about to be sent; None with no receiver.

    Call it once the messages are sealed and before the first is sent; call
    :meth:`Publication.sent` once they are. ``app`` is the taskyard app they
    are sent with (its settings say whether to sign again).
    """
    if not listened():
        return None
    config = app.config
    policy = dict(app.conf.task_publish_retry_policy or {})
    queues = app.amqp.queues
    announced = []
    for message in outgoing:
        queue, payload, headers, properties = message.message
        # What Celery would declare for this queue (taskyard's send declares nothing).
        declared = queues.get(queue) or queues.new_missing(queue)
        context = contextvars.copy_context()
        context.run(_before.send, sender=message.name, body=message.body, exchange="",
                    routing_key=queue, declare=[declared], headers=headers,
                    properties=properties, retry_policy=policy)
        if config.security.signing_key:
            seal(config, message.name, headers, None, payload=payload)
        announced.append((context, message))
    return Publication(announced)
