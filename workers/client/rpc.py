"""The client: call, cast and fan out to a service, by name.

::

    from workers import Client
    volume = Client("volume")
    vol = volume.call("create_volume", size_gb=1, name="data")   # waits for the result
    volume.cast("delete_volume", volume_id=vol["id"])             # returns a Handle at once
    volume.prepare(host="node-a", timeout=5).call("list_volumes")  # only node-a answers
    volume.fanout("ping", wait=True)                               # every live node, by host

Requests are checked here first (an unknown service, endpoint or argument
fails at once, before anything is sent) and again on the node.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from celery.result import AsyncResult
from kombu.exceptions import BatchPublishError, OperationalError

from managers.base import RequestContext, current_context
from workers.client.handle import Cancellation, Handle, cancel
from workers.client.timing import Times, Timing
from workers.core.api import ServiceAPI
from workers.core.application import Taskyard, default_app
from workers.core.binding import Binder
from workers.core.config import Config
from workers.core.delays import Marker
from workers.core.keys import host_queue, task_name
from workers.exceptions import (
    InvalidRequest,
    TaskyardError,
    Unavailable,
    UnknownService,
)
from workers.extensions.publishing import announce
from workers.extensions.signing import seal
from workers.extensions.transport import Channel

#: Messages per pipelined round trip of ``cast_many`` and ``fanout``.
DEFAULT_BATCH_SIZE = 500


@dataclass
class _Request:
    """One task message ready to send: its id, what the channel pushes, its task-sent event."""

    task_id: str
    #: ``(queue, body, headers, properties)``.
    message: tuple[str, bytes, dict[str, Any], dict[str, Any]]
    #: The fields of its task-sent event (None when those are off).
    sent: dict[str, Any] | None
    #: Its task name and unserialized body, for the publish signals (extensions.publishing).
    name: str = ""
    body: Any = None


@dataclass
class _Shared:
    """What every message of a fanout shares: request headers, arguments' repr, body."""

    headers: dict[str, Any]
    kwargsrepr: str
    payload: bytes | None = None


def _speaks_taskyard(producer: Any) -> bool:
    """Whether ``producer``'s channels are taskyard's Redis channels.

    Asked of the transport, not the channel: a pooled producer's channel is
    made (connecting) when first touched, which belongs inside the retried send.
    """
    channel_cls = getattr(producer.connection.transport, "Channel", None)
    return isinstance(channel_cls, type) and issubclass(channel_cls, Channel)


def _short_repr(value: Any, limit: int = 1024) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Client:
    """Sends requests to one service; :meth:`prepare` makes one bound to a host, a timeout,
    a delay (``countdown``, ``eta``) or a deadline (``expires``).

    ::

        volume = Client("volume")
        vol = volume.call("create_volume", size_gb=1)       # waits for the result
        handle = volume.cast("delete_volume", volume_id=vol["id"])  # a Handle, at once
        volume.prepare(host=vol["host"]).call("list_volumes")      # only that node answers

    :param service: the service's name, as its nodes serve it (``volume``).
    :param host: send to that node's own queue (``volume.<host>``) instead of the shared one.
    :param timeout: seconds :meth:`call` waits (default: the ``rpc_timeout`` setting).
    :param app: the app of the fleet to talk to (default: the process's, ``workers.app``).
    :param user: who asks, carried in each request's context (``self.context.user``).
    :param version_cap: the highest API version to ask for (default: the setting
        ``services.<name>.version_cap``, else the lowest a live node serves).
    :param countdown: seconds to wait before a sent request may run.
    :param eta: when a sent request may run (naive means local time).
    :param expires: seconds, or a datetime, after which a request that has not run never
        will.
    :raises UnknownService: no node of the service has published its endpoints and it is
        not configured here.
    :raises InvalidRequest: a bad ``timeout``, or timing options that cannot hold together.
    """

    def __init__(
        self,
        service: str,
        *,
        host: str | None = None,
        timeout: float | None = None,
        app: Taskyard | None = None,
        user: str | None = None,
        version_cap: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
    ) -> None:
        self.app = app or default_app()
        self.config: Config = self.app.config
        self.service = service
        self.host = host
        self.timeout = self.config.rpc_timeout if timeout is None else float(timeout)
        if not self.timeout > 0:
            raise InvalidRequest(f"timeout={timeout!r}: expected a number of seconds > 0",
                                 {"argument": "timeout"})
        self.user = user
        #: When requests may run and until when (checked now, turned into times at each send).
        self.timing = Timing(countdown, eta, expires)
        configured = self.config.services.get(service)
        cap = version_cap or (configured.version_cap if configured else None)
        #: What the service's nodes published: its endpoints and their arguments (None
        #: until a node has published; the node then checks each request alone).
        self.api: ServiceAPI | None = self.app.api(service, cap)
        if self.api is None and configured is None:
            known = ", ".join(sorted(self.config.services)) or "none"
            raise UnknownService(
                f"unknown service {service!r}: no node of it has published its endpoints and it "
                f"is not configured here (configured services are {known}); check the name, "
                "or start a node of it"
            )
        #: The API version requests ask for: the cap when one is set (here or in
        #: settings), else the lowest version a live node serves.
        self.version = cap or (self.api.version if self.api else None)

    def prepare(
        self, host: str | None = None, timeout: float | None = None, user: str | None = None,
        version_cap: str | None = None, *, countdown: float | None = None,
        eta: datetime | None = None, expires: float | datetime | None = None,
    ) -> Client:
        """A client like this one, bound to ``host``'s own queue, another timeout or version,
        a delay or a deadline.

        - ``countdown`` (seconds) or ``eta`` (a datetime): the requests wait in Redis
          until then (``cast``, ``cast_many``, ``fanout``), as Celery's names say;
        - ``expires`` (seconds from each send, or a datetime): a node that takes a
          request after then does not run it (``REVOKED``, its result saying it
          expired). A ``call`` expires at its timeout when no ``expires`` is given.
        """
        timing = self.timing.replace(countdown, eta, expires)
        return Client(
            self.service, app=self.app,
            host=host if host is not None else self.host,
            timeout=timeout if timeout is not None else self.timeout,
            user=user if user is not None else self.user,
            version_cap=version_cap if version_cap is not None else self.version,
            countdown=timing.countdown, eta=timing.eta, expires=timing.expires,
        )

    # -- sending ---------------------------------------------------------------

    def _context(self) -> RequestContext:
        """The caller's request context: inherited inside a manager, new otherwise."""
        inherited = current_context.get()
        if inherited is not None:
            return inherited
        return RequestContext(
            request_id=uuid.uuid4().hex, caller_host=self.config.host, user=self.user
        )

    def _binder(self, method: str) -> Binder | None:
        """The endpoint's published binder (None: nothing published, the node checks).

        :class:`UnknownEndpoint` when the service has no such endpoint, after
        looking once more in case its nodes were upgraded since.
        """
        if self.api is None:
            return None
        if method not in self.api.endpoints:
            fresh = self.app.api(self.service, self.version, refresh=True)
            self.api = fresh or self.api
        return self.api.binder(method)

    def _check(self, method: str, kwargs: dict[str, Any]) -> None:
        binder = self._binder(method)
        if binder is not None:
            binder.bind((), kwargs)

    def _send(self, method: str, kwargs: dict[str, Any], host: str | None,
              shadow: str | None = None, subscribe: bool = False,
              times: Times | None = None) -> Handle:
        """Check and send one request; ``subscribe`` to its result first for a call.

        The message and its task-sent event go in one round trip
        (:meth:`workers.extensions.transport.Channel.send_requests`), retried
        on a fresh pooled connection when the one in hand is broken; a
        delayed one goes to the delayed requests in Redis instead of its
        queue, in the same round trip. Its result is subscribed to only
        when asked (a call waits at once; a cast subscribes when its handle
        is waited on, reading the stored result first, so nothing is missed).
        """
        self._check(method, kwargs)
        times = times or self.timing.at(time.time())
        name = task_name(self.service, method)
        queue = host_queue(self.service, host) if host else self.service
        events = self._sent_events()
        request = self._prepare(events, name, queue, kwargs, shadow=shadow, times=times)
        published = announce(self.app, [request])  # before_task_publish (with receivers)
        try:
            with self.app.producer_or_acquire() as producer:
                if subscribe:
                    self.app.backend.on_task_call(producer, request.task_id)
                if _speaks_taskyard(producer):
                    event = events.prepare("task-sent", request.sent) if request.sent else None
                    producer.connection.ensure(
                        producer, lambda: producer.channel.send_requests(
                            [request.message], event, due=times.due),
                        **self.app.conf.task_publish_retry_policy)()
                else:
                    self._publish(producer, events, request, retry=True)
        except (OperationalError, redis.RedisError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not isinstance(exc.__cause__, redis.RedisError):
                raise
            cause = exc.__cause__ if isinstance(exc, RuntimeError) else exc
            raise Unavailable(
                f"cannot reach the broker to send {self.service}.{method}: {cause}; "
                "the request was not sent",
            ) from exc
        if published is not None:
            published.sent()  # after_task_publish
        return self._handle(request.task_id, method, host, times)

    def cast(self, method: str, /, **kwargs: Any) -> Handle:
        """Send a request and return its :class:`Handle` at once."""
        return self._send(method, kwargs, self.host)

    def call(self, method: str, /, **kwargs: Any) -> Any:
        """Send a request and wait (up to the timeout) for its result.

        Unless the client has an ``expires`` of its own, the request expires
        when the wait ends: a node that takes it later does not run it, so a
        call that raised :class:`Timeout` before it started never runs.
        """
        times = self.timing.at(time.time(), deadline_s=self.timeout)
        return self._send(method, kwargs, self.host, subscribe=True, times=times).wait()

    def send_again(self, method: str, kwargs: dict[str, Any], *, task_id: str, queue: str,
                   headers: dict[str, Any], retries: int, times: Times,
                   marker: Marker | None = None) -> None:
        """Send a request again as another run of itself (a retry): the same task id and
        context, ``retries`` runs before it, waiting until ``times.due``.

        On taskyard's Redis channel the message and ``marker`` (the request's
        record of its runs) are written in one atomic step; elsewhere (the
        in-memory transport of tests) Celery's own ``eta`` delays it.
        """
        request = self._prepare(None, task_name(self.service, method), queue, kwargs,
                                times=times, task_id=task_id, headers=dict(headers),
                                retries=retries)
        published = announce(self.app, [request])  # before_task_publish (with receivers)
        with self.app.producer_or_acquire() as producer:
            if _speaks_taskyard(producer):
                producer.connection.ensure(
                    producer, lambda: producer.channel.send_requests(
                        [request.message], due=times.due, marker=marker),
                    **self.app.conf.task_publish_retry_policy)()
            else:
                self._publish(producer, None, request, retry=True)
        if published is not None:
            published.sent()  # after_task_publish

    def cancel(self, task_id: str, terminate: bool = False) -> Cancellation:
        """Cancel the request ``task_id`` (see :func:`workers.client.handle.cancel`)."""
        return cancel(self.app, task_id, terminate=terminate)

    def cast_many(self, method: str, calls: Iterable[Mapping[str, Any]], /, *,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> list[Handle]:
        """Send many requests of one endpoint in pipelined round trips; their handles.

        Every call's arguments are checked first: one bad call refuses them
        all, before anything is sent. Then the messages (with their task-sent
        events) go out ``batch_size`` at a time, each batch one round trip to
        Redis instead of one per message. Each request is its own task with
        its own id, checked, sized and signed like a :meth:`cast`, and its
        result is subscribed to only when its handle is waited on.
        """
        binder = self._binder(method)
        kwargs_list = [dict(call) for call in calls]
        for index, kwargs in enumerate(kwargs_list):
            try:
                if binder is not None:
                    binder.bind((), kwargs)
            except InvalidRequest as exc:
                raise InvalidRequest(f"call {index} of {len(kwargs_list)}: {exc}",
                                     exc.details) from None
        queue = host_queue(self.service, self.host) if self.host else self.service
        return self._send_batch(method, [(queue, self.host, kwargs) for kwargs in kwargs_list],
                                batch_size=batch_size)

    def _send_batch(self, method: str, requests: list[tuple[str, str | None, dict[str, Any]]],
                    *, shadow: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                    one_request: bool = False, times: Times | None = None) -> list[Handle]:
        """Send checked requests ``(queue, host, kwargs)`` in pipelined round trips.

        Each batch of ``batch_size`` messages, with their task-sent events as
        one message, is one round trip to Redis, whatever the number of
        queues (delayed ones go to the delayed requests in one atomic step
        per batch). With ``one_request`` (a fanout: the same arguments to every
        queue) the messages share one request context and one serialized body.
        """
        if not requests:
            return []
        name = task_name(self.service, method)
        events = self._sent_events()
        times = times or self.timing.at(time.time())
        shared = _Shared(self._request_headers(),
                         _short_repr(requests[0][2])) if one_request else None
        # Every message is made (sized and sealed) before the first is sent: one the broker
        # would refuse refuses the batch, with nothing sent.
        prepared = [(host, self._prepare(events, name, queue, kwargs, shadow=shadow,
                                         shared=shared, times=times))
                    for queue, host, kwargs in requests]
        handles: list[Handle] = []
        pushing = 0
        try:
            # A publish batch needs a connection that never replays a write on its own.
            with self.app.connection_for_write(
                transport_options={"retry_on_timeout": False}
            ) as connection:
                # Published on the default exchange with the queue as routing key, as
                # `cast` does: nothing to declare, one list push per message.
                producer = self.app.amqp.Producer(connection)
                channel = producer.channel
                # taskyard's Redis channel pushes a batch itself; any other goes through
                # kombu's producer, which pipelines where its transport can.
                direct = isinstance(channel, Channel) and channel.supports_batch_publish
                with contextlib.nullcontext() if direct else \
                        producer.batch(max_size=batch_size + 1):
                    for start in range(0, len(prepared), batch_size):
                        chunk = prepared[start:start + batch_size]
                        pushing = len(chunk)
                        published = announce(self.app, [r for _, r in chunk])
                        sent = [events.event("task-sent", r.sent) for _, r in chunk if r.sent]
                        if direct:
                            channel.send_requests([r.message for _, r in chunk],
                                                  events.gathered(sent) if sent else None,
                                                  due=times.due)
                        else:
                            for _, request in chunk:
                                self._publish(producer, events, request)
                            if sent:
                                events.publish_gathered(sent, producer)
                        if published is not None:
                            published.sent()
                        handles += [self._handle(r.task_id, method, host, times)
                                    for host, r in chunk]
        except BatchPublishError as exc:
            raise Unavailable(
                f"the broker failed while sending {len(requests)} {name} requests "
                f"({exc.__cause__ or exc}); {len(handles)} were prepared, and whether they "
                "were sent is not known",
            ) from exc
        except Unavailable as exc:  # publish_wait_replicas not reached
            raise Unavailable(
                f"{len(requests)} {name} requests: the first {len(handles)} were sent and "
                f"replicated, the next {pushing} reached the master unreplicated ({exc})"
            ) from exc
        except (OperationalError, redis.RedisError) as exc:
            raise Unavailable(
                f"cannot reach the broker to send {len(requests)} {name} requests: {exc}; "
                f"{len(handles)} were sent, and whether the others were is not known",
            ) from exc
        return handles

    def _handle(self, task_id: str, method: str, host: str | None,
                times: Times | None = None) -> Handle:
        return Handle(AsyncResult(task_id, app=self.app), self.service, method, host,
                      self.timeout, times)

    def _prepare(self, events: Any, name: str, queue: str, kwargs: dict[str, Any], *,
                 shadow: str | None = None, shared: _Shared | None = None,
                 times: Times | None = None, task_id: str | None = None,
                 headers: dict[str, Any] | None = None, retries: int = 0) -> _Request:
        """One task message, in Celery's format with fewer layers, ready to send.

        The body is serialized once (to size it, sign it and send it); the
        messages of a fanout share it. ``times`` puts Celery's ``eta`` and
        ``expires`` in its headers; ``task_id``, ``headers`` and ``retries``
        send a request again as another run of itself (a retry).
        """
        task_id = task_id or str(uuid.uuid4())
        if headers is None:
            headers = shared.headers if shared is not None else self._request_headers()
        kwargsrepr = shared.kwargsrepr if shared is not None else _short_repr(kwargs)
        times = times or Times()
        task_headers, properties, body, sent_event = self.app.amqp.create_task_message(
            task_id, name, (), kwargs, argsrepr="()", kwargsrepr=kwargsrepr,
            create_sent_event=events is not None, shadow=shadow, retries=retries,
            eta=times.iso(times.due), expires=times.iso(times.expires),
        )
        task_headers.update(headers)
        payload = seal(self.config, name, task_headers, body,
                       payload=shared.payload if shared is not None else None)
        if shared is not None and shared.payload is None:
            shared.payload = payload  # the body is the same for every message of the batch
        sent = ({**sent_event, "queue": queue, "exchange": "", "routing_key": queue}
                if events is not None and sent_event else None)
        return _Request(task_id, (queue, payload, task_headers, properties), sent, name, body)

    def _publish(self, producer: Any, events: Any, request: _Request, *,
                 retry: bool = False) -> None:
        """Send ``request`` through kombu's ``producer`` (a batch's sends its event itself).

        ``retry`` (a message sent on its own) lets a broken pooled connection
        be replaced transparently, and publishes its task-sent event.
        """
        queue, payload, task_headers, properties = request.message
        policy = self.app.conf.task_publish_retry_policy if retry else None
        producer.publish(
            payload, exchange="", routing_key=queue, content_type="application/json",
            content_encoding="utf-8", declare=(), headers=task_headers, retry=retry,
            retry_policy=policy, **properties,
        )
        if retry and request.sent is not None:
            events.publish("task-sent", request.sent, producer, retry=retry,
                           retry_policy=policy)

    def _request_headers(self) -> dict[str, Any]:
        """The headers of one request: its context and the API version it asks for."""
        headers = self._context().as_headers()
        if self.version is not None:
            headers["taskyard_version"] = self.version
        return headers

    def _sent_events(self) -> Any:
        """What publishes task-sent events through a given producer (None when they are off)."""
        return self.app.sent_events if self.app.conf.task_send_sent_event else None

    def fanout(self, method: str, /, *, wait: bool = False, **kwargs: Any) -> Any:
        """Send the request to every live node of the service, each on its own queue.

        Live means reporting heartbeats in time (a disabled node included).
        Returns the hosts it was sent to, or with ``wait=True`` a dict of host
        -> result (or the error raised there, as an exception object); waiting,
        each message expires at the timeout unless the client has ``expires``.
        """
        self._check(method, kwargs)
        times = self.timing.at(time.time(), deadline_s=self.timeout if wait else None)
        hosts = self.app.registry.alive_hosts(self.service)
        # The shadow name is what logs and Flower show: "volume.ping (fanout)". One
        # pipelined round trip per batch of hosts, not one per host.
        shadow = f"{task_name(self.service, method)} (fanout)"
        sent = self._send_batch(method, [(host_queue(self.service, host), host, kwargs)
                                         for host in hosts], shadow=shadow, one_request=True,
                                times=times)
        handles = dict(zip(hosts, sent, strict=True))
        if not wait:
            return list(handles)
        outcome: dict[str, Any] = {}
        for host, handle in handles.items():
            try:
                outcome[host] = handle.wait()
            except TaskyardError as exc:
                outcome[host] = exc
        return outcome

    def handle(self, task_id: str, method: str = "?") -> Handle:
        """A handle on a request sent earlier (or handed on by another service)."""
        return Handle(AsyncResult(task_id, app=self.app), self.service, method, None,
                      self.timeout)

    def __repr__(self) -> str:
        target = f" host={self.host}" if self.host else ""
        if self.timing.delayed:
            target += (f" countdown={self.timing.countdown:g}" if self.timing.countdown
                       is not None else f" eta={self.timing.eta}")
        return f"<Client {self.service}{target} timeout={self.timeout:g}>"
