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
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from kombu.exceptions import BatchPublishError, OperationalError

from managers.base import RequestContext, current_context
from workers.core.addresses import is_redis_address
from workers.core.api import ServiceAPI
from workers.core.application import Taskyard, default_app
from workers.core.binding import Binder
from workers.core.config import Config
from workers.core.keys import INFLIGHT_TASKS_KEY, PROGRESS, host_queue, task_name
from workers.exceptions import (
    InvalidRequest,
    RemoteError,
    TaskyardError,
    Timeout,
    Unavailable,
    UnknownService,
)
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


def _as_error(exc: BaseException, result: AsyncResult | None = None) -> TaskyardError:
    if isinstance(exc, TaskyardError):
        if isinstance(exc, RemoteError) and not exc.traceback and result is not None:
            exc.with_details(traceback=result.traceback or "")
        return exc
    return RemoteError.from_exception(exc)


class Handle:
    """A request that was sent: its task id, and a way to wait for its outcome."""

    def __init__(self, result: AsyncResult, service: str, method: str,
                 host: str | None, timeout: float) -> None:
        self.result = result
        self.service = service
        self.method = method
        self.host = host
        self.timeout = timeout

    @property
    def id(self) -> str:
        return str(self.result.id)

    @property
    def state(self) -> str:
        """Celery's state: PENDING, STARTED, PROGRESS, SUCCESS, FAILURE...

        STARTED comes from the in-flight ledger (a node holds the request),
        not from the result backend: nodes do not write it there, which
        saves a write and a publish per request (``task_track_started``).
        """
        state = str(self.result.state)
        if state == "PENDING" and self._taken():
            return "STARTED"
        return state

    def _taken(self) -> bool:
        """Whether a node holds this request now (the Redis broker's in-flight ledger)."""
        app = self.result.app
        config = getattr(app, "config", None)
        if config is None or not config.task_track_started or \
                not is_redis_address(config.broker_url):
            return False
        return bool(app.redis(config.broker_url).hexists(INFLIGHT_TASKS_KEY, self.id))

    def ready(self) -> bool:
        return bool(self.result.ready())

    def progress(self) -> dict[str, Any] | None:
        """``{done, total, message}`` while the endpoint reports progress, else None."""
        if self.result.state == PROGRESS and isinstance(self.result.info, Mapping):
            return dict(self.result.info)
        return None

    def wait(self, timeout: float | None = None) -> Any:
        """The endpoint's return value; its error raised as a taskyard error.

        :class:`Timeout` when no answer came within ``timeout`` seconds (the
        client's timeout by default): the request may still run.
        """
        timeout = self.timeout if timeout is None else timeout
        try:
            # ``interval`` only matters for backends that are polled (not Redis).
            return self.result.get(timeout=timeout, propagate=True, interval=0.02)
        except CeleryTimeoutError:
            self._stop_listening()
            raise Timeout(
                f"no answer from {self.service}.{self.method} within {timeout:g} s; "
                f"it may still run (task id {self.id})",
                {"task_id": self.id, "service": self.service, "method": self.method},
            ) from None
        except (OperationalError, redis.RedisError) as exc:
            raise Unavailable(
                f"lost the result backend while waiting for {self.service}.{self.method} "
                f"(task id {self.id}): {exc}; the request may still run", {"task_id": self.id},
            ) from exc
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _as_error(exc, self.result) from None

    def _stop_listening(self) -> None:
        """Drop the backend's subscription for this result until the next wait.

        A caller that gave up waiting should not keep a subscription (and its
        reconnection attempts) alive; waiting again subscribes again.
        """
        # A backend without subscriptions has nothing to drop.
        with contextlib.suppress(Exception):
            self.result.backend.remove_pending_result(self.result)

    def __repr__(self) -> str:
        return f"<Handle {self.service}.{self.method} {self.id}>"


class Client:
    """Sends requests to one service; :meth:`prepare` makes one bound to a host or timeout."""

    def __init__(
        self,
        service: str,
        *,
        host: str | None = None,
        timeout: float | None = None,
        app: Taskyard | None = None,
        user: str | None = None,
        version_cap: str | None = None,
    ) -> None:
        self.app = app or default_app()
        self.config: Config = self.app.config
        self.service = service
        self.host = host
        self.timeout = self.config.rpc_timeout if timeout is None else float(timeout)
        self.user = user
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
        version_cap: str | None = None,
    ) -> Client:
        """A client like this one, bound to ``host``'s own queue, another timeout or version."""
        return Client(
            self.service, app=self.app,
            host=host if host is not None else self.host,
            timeout=timeout if timeout is not None else self.timeout,
            user=user if user is not None else self.user,
            version_cap=version_cap if version_cap is not None else self.version,
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
              shadow: str | None = None, subscribe: bool = False) -> Handle:
        """Check and send one request; ``subscribe`` to its result first for a call.

        The message and its task-sent event go in one round trip
        (:meth:`workers.extensions.transport.Channel.send_requests`), retried
        on a fresh pooled connection when the one in hand is broken. Its
        result is subscribed to only when asked (a call waits at once; a cast
        subscribes when its handle is waited on, reading the stored result
        first, so nothing is missed).
        """
        self._check(method, kwargs)
        name = task_name(self.service, method)
        queue = host_queue(self.service, host) if host else self.service
        events = self._sent_events()
        request = self._prepare(events, name, queue, kwargs, shadow=shadow)
        try:
            with self.app.producer_or_acquire() as producer:
                if subscribe:
                    self.app.backend.on_task_call(producer, request.task_id)
                if _speaks_taskyard(producer):
                    event = events.prepare("task-sent", request.sent) if request.sent else None
                    producer.connection.ensure(
                        producer, lambda: producer.channel.send_requests([request.message], event),
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
        return self._handle(request.task_id, method, host)

    def cast(self, method: str, /, **kwargs: Any) -> Handle:
        """Send a request and return its :class:`Handle` at once."""
        return self._send(method, kwargs, self.host)

    def call(self, method: str, /, **kwargs: Any) -> Any:
        """Send a request and wait (up to the timeout) for its result."""
        return self._send(method, kwargs, self.host, subscribe=True).wait()

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
                    one_request: bool = False) -> list[Handle]:
        """Send checked requests ``(queue, host, kwargs)`` in pipelined round trips.

        Each batch of ``batch_size`` messages, with their task-sent events as
        one message, is one round trip to Redis, whatever the number of
        queues. With ``one_request`` (a fanout: the same arguments to every
        queue) the messages share one request context and one serialized body.
        """
        if not requests:
            return []
        name = task_name(self.service, method)
        events = self._sent_events()
        shared = _Shared(self._request_headers(),
                         _short_repr(requests[0][2])) if one_request else None
        # Every message is made (sized and sealed) before the first is sent: one the broker
        # would refuse refuses the batch, with nothing sent.
        prepared = [(host, self._prepare(events, name, queue, kwargs, shadow=shadow,
                                         shared=shared)) for queue, host, kwargs in requests]
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
                        sent = [events.event("task-sent", r.sent) for _, r in chunk if r.sent]
                        if direct:
                            channel.send_requests([r.message for _, r in chunk],
                                                  events.gathered(sent) if sent else None)
                        else:
                            for _, request in chunk:
                                self._publish(producer, events, request)
                            if sent:
                                events.publish_gathered(sent, producer)
                        handles += [self._handle(r.task_id, method, host) for host, r in chunk]
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

    def _handle(self, task_id: str, method: str, host: str | None) -> Handle:
        return Handle(AsyncResult(task_id, app=self.app), self.service, method, host,
                      self.timeout)

    def _prepare(self, events: Any, name: str, queue: str, kwargs: dict[str, Any], *,
                 shadow: str | None = None, shared: _Shared | None = None) -> _Request:
        """One task message, in Celery's format with fewer layers, ready to send.

        The body is serialized once (to size it, sign it and send it); the
        messages of a fanout share it.
        """
        task_id = str(uuid.uuid4())
        headers = shared.headers if shared is not None else self._request_headers()
        kwargsrepr = shared.kwargsrepr if shared is not None else _short_repr(kwargs)
        task_headers, properties, body, sent_event = self.app.amqp.create_task_message(
            task_id, name, (), kwargs, argsrepr="()", kwargsrepr=kwargsrepr,
            create_sent_event=events is not None, shadow=shadow,
        )
        task_headers.update(headers)
        payload = seal(self.config, name, task_headers, body,
                       payload=shared.payload if shared is not None else None)
        if shared is not None and shared.payload is None:
            shared.payload = payload  # the body is the same for every message of the batch
        sent = ({**sent_event, "queue": queue, "exchange": "", "routing_key": queue}
                if events is not None and sent_event else None)
        return _Request(task_id, (queue, payload, task_headers, properties), sent)

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
        -> result (or the error raised there, as an exception object).
        """
        self._check(method, kwargs)
        hosts = self.app.registry.alive_hosts(self.service)
        # The shadow name is what logs and Flower show: "volume.ping (fanout)". One
        # pipelined round trip per batch of hosts, not one per host.
        shadow = f"{task_name(self.service, method)} (fanout)"
        sent = self._send_batch(method, [(host_queue(self.service, host), host, kwargs)
                                         for host in hosts], shadow=shadow, one_request=True)
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
        return f"<Client {self.service}{target} timeout={self.timeout:g}>"
