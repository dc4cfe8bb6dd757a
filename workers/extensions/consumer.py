"""The worker's consumer: messages Celery cannot run are dead-lettered, not dropped.

It also publishes the node's task events every ``task_events_interval``
instead of at every turn of the event loop (see :mod:`workers.extensions.events`).

Celery logs and drops a message it cannot decode, a message of a content
type it does not accept (pickle) and a message of a shape it does not
know; for a task name it does not have it stores ``NotRegistered``. Each of
those now also goes to the dead-letter list with the reason, and the caller
(when the message names its task id) gets a failure it can read.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from typing import Any

from celery.exceptions import CPendingDeprecationWarning
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.state import active_requests, reserved_requests

from workers.exceptions import UnknownEndpoint
from workers.extensions.refusal import header, refuse_message
from workers.extensions.transport import ACKS

log = logging.getLogger("taskyard.consumer")

#: How the consumer retries a lost broker: after 0.5 s, then 1 s, 1.5 s ... at most 3 s
#: apart (kombu's default waits 2, 4, 6 ... 30 s, so a Redis back or a replica promoted
#: after 2.1 s would wait until 6 s, and one back after a minute up to 30 s more).
RECONNECT_INTERVALS_S = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 3.0}
#: How late an armed publication of task events may be before another is armed.
EVENTS_TIMER_SLACK_S = 1.0


class Consumer(CeleryConsumer):
    """Celery's consumer, keeping every message it cannot run as a dead letter."""

    #: Until when a publication of the gathered task events is armed (0: none is). Set from
    #: any pool thread; a timer lost with its loop is armed again once this has passed.
    _events_due_by = 0.0

    def on_send_event_buffered(self) -> None:
        """A task event was gathered: publish the gathered ones ``task_events_interval`` later.

        Celery publishes at the next turn of the loop, one message per
        request on a busy node; the first event of an interval arms one
        timer instead, and everything gathered until it fires goes out in
        one message (or sooner, at the dispatcher's batch limit). Pool
        threads may gather events too: the timer is armed from the loop
        (``call_soon`` is the hub's thread-safe entry).
        """
        interval = self.app.config.task_events_interval
        if not self.hub or interval <= 0:
            super().on_send_event_buffered()
            return
        now = time.monotonic()
        if now >= self._events_due_by:
            self._events_due_by = now + interval + EVENTS_TIMER_SLACK_S
            self.hub.call_soon(self.hub.call_later, interval, self._publish_due_events)

    def _publish_due_events(self) -> None:
        self._events_due_by = 0.0
        self._flush_events()

    def stop(self) -> None:
        """Publish the gathered task events while the connection is still there, then stop."""
        self._publish_due_events()
        super().stop()

    def shutdown(self) -> None:
        self._publish_due_events()
        super().shutdown()

    def ensure_connected(self, conn: Any) -> Any:
        """Celery's reconnection loop, retrying at :data:`RECONNECT_INTERVALS_S`.

        Celery calls ``conn.ensure_connection`` without intervals; the
        connection object is this consumer's own, so its method is given
        the intervals for this one call.
        """
        ensure = conn.ensure_connection
        conn.ensure_connection = functools.partial(ensure, **RECONNECT_INTERVALS_S)
        try:
            return super().ensure_connected(conn)
        finally:
            del conn.ensure_connection

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """The broker went away: running requests go on, and nothing is recorded for them.

        Celery's own answer (``worker_cancel_long_running_tasks_on_connection_loss``)
        records the running requests as revoked and acknowledges them, so a
        request running when Redis itself restarts would be lost; stopping
        them instead would run again, after the reconnect, work whose effects
        were half made. They finish: their results are stored once Redis is
        back (a node's result backend keeps trying, see
        :data:`workers.core.application.NODE_RESULT_RETRY_POLICY`), their
        messages stay in the in-flight ledger (the reconnection does not put
        back what the node still holds, :class:`workers.node.recovery.RecoverStep`),
        an acknowledgement the lost connection refused is made at the next
        heartbeat, and those made just before the loss are made again at the
        reconnection, in case a failed-over master lost them
        (:class:`workers.extensions.transport.Acknowledgements`).
        """
        ACKS.connection_lost()
        with warnings.catch_warnings():
            # Celery warns that it will cancel running tasks by default one day; it does not
            # here (worker_cancel_long_running_tasks_on_connection_loss is off).
            warnings.simplefilter("ignore", CPendingDeprecationWarning)
            super().on_connection_error_after_connected(exc)
        running = [request for request in tuple(active_requests)
                   if request.task.acks_late and not request.acknowledged]
        if running:
            log.warning("the broker connection was lost while %d request(s) ran here: they "
                        "finish, and are settled once it is back", len(running))

    def on_close(self) -> None:
        """Celery's, keeping held the requests a pool process has although it did not yet say
        it took them (:class:`workers.extensions.transport.Acknowledgements`, *handed*).

        Celery forgets every reserved request that is not yet accepted when the
        connection closes, and its prefork pool discards their jobs, "for the
        broker to deliver again"; but a job already being written to a pool
        process runs there, and a threads pool's queued request runs too. Put
        back at the reconnection, such a request would run twice.
        """
        handed = [request for request in tuple(reserved_requests)
                  if request not in active_requests and _runs_in_the_pool(request)]
        super().on_close()
        for request in handed:
            ACKS.handed(str(request.message.delivery_tag), request.id)
        if handed:
            log.warning("%d request(s) handed to the pool as the broker connection was lost "
                        "run here; they are settled once their results are stored",
                        len(handed))

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        refuse_message(self.app, message, f"undecodable message: {exc}", requeueable=False)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        refuse_message(self.app, message, "not a task message (unknown format)",
                       requeueable=False)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        task = header(message, "task")
        config = self.app.config
        service = str(task).split(".", 1)[0]
        served = any(name.startswith(f"{service}.") for name in self.app.tasks)
        if service in config.services and not served:
            # A configured service whose queue this node does not consume.
            reason = (f"{task}: node {config.host} does not run the {service} service; the "
                      "message was put in a queue of a service it does not serve")
        else:
            reason = f"unknown task {task!r}: no endpoint of that name on node {config.host}"
        log.warning("refused %s[%s]: %s", task, header(message, "id"), reason)
        refuse_message(self.app, message, reason, error=UnknownEndpoint)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        refuse_message(self.app, message, f"invalid task message: {exc}", requeueable=False)


def _runs_in_the_pool(request: Any) -> bool:
    """Whether a request Celery has not seen accepted will run in the pool all the same: a
    prefork job already being written to a pool process (one still in the pool's outgoing
    buffer is dropped), a threads pool's future not done (nothing cancels it)."""
    ref = getattr(request, "_apply_result", None)
    job = ref() if ref is not None else None
    if job is None:
        return False
    if hasattr(job, "_write_to"):  # billiard's ApplyResult: the prefork pool
        return job._write_to is not None and not job.ready()
    future = getattr(job, "f", None)  # Celery's threads pool
    return future is not None and not future.done()
