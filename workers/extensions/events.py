"""Task events gathered and published straight to Redis: what Flower needs, at little cost.

A node sends three events per request (received, started, succeeded), the
monitoring Flower shows. Celery buffers them and publishes the buffer at
the next turn of the event loop, which on a busy node is one message (and
one round trip to Redis) per request. A node gathers them instead for
``task_events_interval`` (:class:`workers.extensions.consumer.Consumer`),
so that many requests share one message; the dispatcher here publishes up
to :data:`BATCH_LIMIT` events in one message, and loses none of what it
gathered: a stopping node publishes them before its ``worker-offline`` (and
those of requests that finish while it drains, when it shuts down, where
Celery drops them), and a reconnection carries them over to the new
dispatcher (Celery's carries only the events that failed to send).

Celery publishes each message through kombu's
``Producer.publish``: the serializer registry, a ``Message`` object, the
channel's ``basic_publish``, the exchange's routing, then the Redis
``PUBLISH``. On the Redis transport the result is one JSON envelope on one
pub/sub topic, so a node's dispatcher builds that envelope itself, byte for
byte what kombu builds (:meth:`workers.extensions.transport.Channel.publish_event`),
and publishes it in one step. Flower, ``celery events`` and any kombu
consumer read it as they read kombu's.

A dispatcher that sends on its own does this (a node's, created enabled by
Celery's events bootstep). A caller's task-sent event goes in the same round
trip as its task message (:meth:`EventDispatcher.prepare`,
:meth:`workers.extensions.transport.Channel.send_requests`); a publish batch
(``cast_many``, fanout) sends its requests' events as one message, in its
pipeline (:meth:`EventDispatcher.gathered`).
"""

from __future__ import annotations

from typing import Any

from celery.app.events import Events as CeleryEvents
from celery.events.dispatcher import EventDispatcher as CeleryEventDispatcher

from workers.extensions.transport import Channel, Event

#: Task events one message carries at most (Celery's default is 24): about 60 KB of JSON
#: for no-op requests, and a busy node's interval's worth at a few hundred requests/s.
BATCH_LIMIT = 300
#: The group of task events (Celery's ``buffer_group`` of a node).
_TASK_GROUP = "task"


class EventDispatcher(CeleryEventDispatcher):  # type: ignore[misc]
    """Celery's event dispatcher, publishing a node's events in one step on taskyard's Redis."""

    def __init__(self, *args: Any, buffer_limit: int = BATCH_LIMIT, **kwargs: Any) -> None:
        super().__init__(*args, buffer_limit=buffer_limit, **kwargs)

    def extend_buffer(self, other: CeleryEventDispatcher) -> None:
        """Take over what ``other`` (the dispatcher of a lost connection) had not sent yet.

        Celery carries over only events that failed to send; the task
        events gathered for the next message come along too, ahead of
        anything the new dispatcher gathers.
        """
        super().extend_buffer(other)
        for group, events in other._group_buffer.items():
            self._group_buffer[group][:0] = events
            del events[:]

    def _publish(self, event: Any, producer: Any, routing_key: str, retry: bool = False,
                 retry_policy: Any = None, **kwargs: Any) -> Any:
        channel = getattr(producer, "channel", None)
        if not self.enabled or not isinstance(channel, Channel):
            return super()._publish(event, producer, routing_key, retry=retry,
                                    retry_policy=retry_policy, **kwargs)
        try:
            channel.publish_event(self.route(routing_key, event))
        except Exception:
            if not self.buffer_while_offline:
                raise
            self._outbound_buffer.append((event, routing_key))
        return None

    def route(self, routing_key: str, event: Any) -> Event:
        """``event`` as this dispatcher publishes it under ``routing_key``."""
        return Event(self.exchange.name, routing_key, event, self.headers, self.delivery_mode)

    def event(self, type: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The event ``publish(type, fields, producer)`` would send (its clock moved on)."""
        event: dict[str, Any] = self._prepare_event(type, fields)
        return event

    def prepare(self, type: str, fields: dict[str, Any]) -> Event:
        """The event ``publish(type, fields, producer)`` would send, to send along a message.

        A caller's task-sent event travels in the same round trip as its task
        message (:meth:`workers.extensions.transport.Channel.send_requests`).
        """
        return self.route(type.replace("-", "."), self.event(type, fields))

    def gathered(self, events: list[dict[str, Any]]) -> Event:
        """``events`` as one message, as a node's ``task.multi`` (see :meth:`publish_gathered`)."""
        return self.route(f"{_TASK_GROUP}.multi", events)

    def publish_gathered(self, events: list[dict[str, Any]], producer: Any) -> None:
        """Publish ``events`` as one message through ``producer``, as a node's ``task.multi``.

        A caller's publish batch (``cast_many``, fanout) sends its requests'
        task-sent events this way, one message for the whole batch: Flower,
        ``celery events`` and every kombu event receiver take a list body
        as the events it holds.
        """
        self._publish(events, producer, f"{_TASK_GROUP}.multi")


class Events(CeleryEvents):  # type: ignore[misc]
    """The app's events, with :class:`EventDispatcher`."""

    dispatcher_cls = "workers.extensions.events:EventDispatcher"
