"""The app: one Celery app per fleet, carrying its configuration and service specs.

:class:`Taskyard` is a Celery app built from a :class:`~workers.core.config.Config`
with taskyard's reliable defaults. Everything that works for a fleet takes
its app (``Client(service, app=...)``) or its config; two apps with two
configurations live side by side in one process. :func:`default_app` is the
process's convenience default, built from the process's settings on first
use: it is what ``workers.app`` (``celery -A workers``) and ``Client(service)``
without an app use.

The worker side is named here, never imported: the node bootstep, the
consumer, the transport and the result backends are given to Celery as
``module:attribute`` strings, which Celery loads only where they run; so is
what builds a service's spec (its manager class). A caller that builds an
app and sends requests loads none of the node runtime and no service's code.
"""

from __future__ import annotations

import threading
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
from celery import Celery
from kombu import Queue
from kombu.utils.imports import symbol_by_name

from workers.core.addresses import is_sentinel, parse_sentinels
from workers.core.api import ServiceAPI
from workers.core.config import Config, load_config
from workers.core.connections import RedisClients
from workers.core.keys import host_queue
from workers.core.masking import mask_url
from workers.core.registry import Registry
from workers.exceptions import Unavailable

if TYPE_CHECKING:
    from workers.core.specs import ServiceSpec

#: The worker bootstep that makes a Celery worker a taskyard node (workers.node).
NODE_STEP = "workers.node.node:NodeStep"
#: The consumer bootstep that takes the node's in-flight messages back at each connection.
RECOVER_STEP = "workers.node.recovery:RecoverStep"
#: The consumer that dead-letters what it cannot run (workers.extensions).
CONSUMER = "workers.extensions.consumer:Consumer"
#: kombu's Redis transport, guarded against poison entries; and its Sentinel variant.
TRANSPORT = "workers.extensions.transport:Transport"
SENTINEL_TRANSPORT = "workers.extensions.transport:SentinelTransport"
#: Celery's AMQP helper, checking size and signing every task message it sends.
AMQP = "workers.extensions.signing:GuardedAMQP"
#: Task events a node publishes in one step (workers.extensions.events).
EVENTS = "workers.extensions.events:Events"
#: What builds a service's spec from its settings: it loads the service's manager class
#: (and the loading machinery of drivers), which a node and the operator's tools need and a
#: caller never does (a caller checks requests against the API the nodes published).
SPEC_BUILDER = "workers.core.specs:build_spec"
#: Result backends that rebuild only declared exceptions, by URL scheme.
BACKENDS = {
    "redis": "workers.extensions.backend:RedisBackend",
    "rediss": "workers.extensions.backend:RedisBackend",
    "sentinel": "workers.extensions.backend:SentinelBackend",
    "cache": "workers.extensions.backend:CacheBackend",
}

#: The key of a task's result in Celery's Redis result backend, before the task id
#: (``KeyValueStoreBackend.task_keyprefix``; checked by tests/unit/test_canaries.py).
RESULT_KEY_PREFIX = "celery-task-meta-"

#: Seconds a broker or result socket operation may take before it fails.
SOCKET_TIMEOUT_S = 30
#: Seconds to establish a connection to Redis.
SOCKET_CONNECT_TIMEOUT_S = 5
#: Seconds of idleness before a pooled Redis connection is checked.
HEALTH_CHECK_INTERVAL_S = 25
#: How a caller's result backend retries a lost connection: 5 tries, at most 1 s apart.
RESULT_RETRY_POLICY = {"max_retries": 5, "interval_start": 0, "interval_step": 0.5,
                       "interval_max": 1}
#: ... and a node's, storing the result of a request it ran: for two minutes, so that a
#: request that finished while Redis restarted has its result once Redis is back, and is
#: never run again (see workers.extensions.consumer).
NODE_RESULT_RETRY_POLICY = {"max_retries": 120, "interval_start": 0, "interval_step": 0.5,
                            "interval_max": 1}


#: The visibility sweep runs every tenth of ``visibility_timeout``, within these bounds (s).
SWEEP_INTERVAL_BOUNDS_S = (1, 60)


def sweep_interval(visibility_timeout: int) -> int:
    """Seconds between two scans of kombu's visibility sweep for ``visibility_timeout``.

    kombu scans every ``unacked_restore_interval * unacked_restore_throttle``
    seconds (10 x 10 by default, whatever the timeout): taskyard scans every
    tenth of the timeout (1 to 60 s, throttle 1), so a message nothing else
    restores comes back at most that long after ``visibility_timeout``.
    """
    low, high = SWEEP_INTERVAL_BOUNDS_S
    return max(low, min(high, visibility_timeout // 10))


def transport_options(config: Config) -> dict[str, Any]:
    """kombu's Redis transport options for the broker (``broker_transport_options`` last)."""
    options: dict[str, Any] = {
        "visibility_timeout": config.visibility_timeout,
        "unacked_restore_interval": sweep_interval(config.visibility_timeout),
        "unacked_restore_throttle": 1,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    if is_sentinel(config.broker_url):
        options.update(config.sentinel.transport_options())
    options.update(config.broker_transport_options)
    return options


def celery_settings(config: Config) -> dict[str, Any]:
    """The Celery settings taskyard runs with (``celery`` in the settings adds to them)."""
    transport = transport_options(config)
    queues = []
    for service in config.services:
        queues.append(Queue(service, routing_key=service))
        queues.append(Queue(host_queue(service, config.host),
                            routing_key=host_queue(service, config.host)))
    settings: dict[str, Any] = {
        "broker_url": config.broker_url,
        "result_backend": config.result_backend,
        # Start-up: each attempt to reach the broker is bounded; a node retries (with a
        # log line each time) until Redis answers, instead of exiting.
        "broker_connection_timeout": config.broker_connection_timeout,
        "broker_connection_max_retries": None,
        "worker_consumer": CONSUMER,
        # JSON only, both ways: a pickle message is refused, never run.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # No lost work: ack after the task ran, take the message back when a
        # worker process dies, hold one unacked message per process.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Requests running when the broker goes away are stopped by our consumer
        # without being acknowledged (Celery's own cancellation would lose them).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_deduplicate_successful_tasks": True,
        "broker_connection_retry_on_startup": True,
        # The guard settings ride along for the transport's channels (workers.extensions).
        "broker_transport_options": {
            **transport,
            "taskyard_max_message_bytes": config.max_message_bytes,
            "taskyard_services": sorted(config.services),
            "taskyard_host": config.host,
            "taskyard_wait_replicas": config.publish_wait_replicas,
            "taskyard_wait_timeout": config.publish_wait_timeout,
            # Taking a message reads its cancellation (and, delivered again, its result
            # when results live in the broker's Redis) in the same transaction.
            "taskyard_lifecycle": True,
            "taskyard_result_prefix": RESULT_KEY_PREFIX if config.result_backend ==
            config.broker_url and "global_keyprefix" not in config.celery.get(
                "result_backend_transport_options", {}) else "",
        },
        # Give up on an unreachable result backend after a few seconds, not twenty.
        "result_backend_transport_options": {
            **transport, "retry_policy": RESULT_RETRY_POLICY,
            **(config.sentinel.transport_options() if is_sentinel(config.result_backend)
               else {}),
        },
        "visibility_timeout": config.visibility_timeout,
        "result_expires": config.result_expires,
        # What Flower needs to show the fleet.
        "worker_send_task_events": config.task_events,
        "task_send_sent_event": config.task_sent_events,
        # STARTED is not written to the result backend (a write and a publish per
        # request): a caller's Handle.state derives it from the in-flight ledger, and
        # Flower from the task-started event.
        "task_track_started": False,
        "task_queues": queues,
        "task_default_queue": next(iter(config.services), "taskyard"),
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
    }
    if is_sentinel(config.broker_url):
        # One part for kombu (see workers.extensions.transport.SentinelChannel), every
        # sentinel in the transport options.
        address = parse_sentinels(config.broker_url)
        settings["broker_url"] = config.broker_url.split(";")[0]
        settings["broker_transport"] = SENTINEL_TRANSPORT
        settings["broker_transport_options"]["taskyard_sentinels"] = [
            list(sentinel) for sentinel in address.sentinels]
    elif urlsplit(config.broker_url).scheme in ("redis", "rediss"):
        settings["broker_transport"] = TRANSPORT
    if config.broker_url.startswith("rediss://"):
        settings["broker_use_ssl"] = config.tls.redis_kwargs()
    if config.result_backend.startswith("rediss://"):
        settings["redis_backend_use_ssl"] = config.tls.redis_kwargs()
    settings.update(config.celery)
    return settings


class Taskyard(Celery):
    """A Celery app for one fleet: its configuration, its service specs, its Redis clients.

    ``redis_clients`` maps URLs to clients to use instead of connecting
    (fakeredis in unit tests).
    """

    def __init__(self, config: Config, *, redis_clients: dict[str, Any] | None = None,
                 set_as_current: bool = False, **kwargs: Any) -> None:
        super().__init__("taskyard", set_as_current=set_as_current, amqp=AMQP, events=EVENTS,
                         **kwargs)
        self.config = config
        self.redis = RedisClients(config, redis_clients)
        self._apis: dict[tuple[str, str | None], tuple[float, ServiceAPI | None]] = {}
        self._specs: dict[str, ServiceSpec] = {}
        self.conf.update(celery_settings(config))
        #: Whether this app runs a node (set by the node's bootstep): results are stored
        #: with :data:`NODE_RESULT_RETRY_POLICY`.
        self.serving = False
        self.loader.override_backends = dict(BACKENDS)
        self.steps["worker"].add(NODE_STEP)
        self.steps["consumer"].add(RECOVER_STEP)

    @property
    def specs(self) -> dict[str, ServiceSpec]:
        """Every configured service's spec (manager class, endpoints, periodic tasks)."""
        return {name: self.spec(name) for name in self.config.services}

    def spec(self, service: str) -> ServiceSpec:
        """One service's spec, built once; ``UnknownService`` when it is not configured.

        Built on first use, one service at a time: a node loads the manager
        classes of the services it serves, not of every configured one, and a
        process that never asks (a caller) loads none (:data:`SPEC_BUILDER`).
        """
        spec = self._specs.get(service)
        if spec is None:
            build_spec = symbol_by_name(SPEC_BUILDER)
            spec = self._specs[service] = build_spec(self.config.service(service))
        return spec

    def api(self, service: str, version: str | None = None, *,
            refresh: bool = False) -> ServiceAPI | None:
        """The API of ``service`` its nodes published (see :meth:`Registry.api`), or None.

        Read from the registry at most once per ``report_interval`` (or when
        ``refresh``), so creating clients costs no round trip each time.
        """
        key = (service, version)
        now = time.monotonic()
        cached = self._apis.get(key)
        if cached is not None and not refresh and now - cached[0] < self.config.report_interval:
            return cached[1]
        try:
            api = self.registry.api(service, version)
        except redis.RedisError as exc:
            raise Unavailable(
                f"cannot reach Redis at records_url {mask_url(self.config.records_url)} to look "
                f"up the endpoints of {service}: {exc}; the request was not sent"
            ) from exc
        if version is None or (api is not None and api.version == version):
            # A version asked for and not published yet is looked for again next time.
            self._apis[key] = (now, api)
        return api

    @property
    def records(self) -> Any:
        """This process's client of the records (and registry) Redis."""
        return self.redis(self.config.records_url)

    @property
    def registry(self) -> Registry:
        """The fleet's service registry."""
        return Registry(self.records, service_down_time=self.config.service_down_time)

    @cached_property
    def sent_events(self) -> Any:
        """What publishes task-sent events through a given producer."""
        return self.events.Dispatcher(enabled=False)

    def close(self) -> None:
        super().close()
        self.redis.close()

    def __repr__(self) -> str:
        return f"<Taskyard {self.config.host} broker={self.config.broker_url.split('@')[-1]}>"


_default: Taskyard | None = None
_lock = threading.Lock()


def default_app() -> Taskyard:
    """The process's app, made from the process's settings on first use."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = Taskyard(load_config(), set_as_current=True)
    return _default


def set_default_app(app: Taskyard | None) -> None:
    """Replace (or with None, forget) the process's default app."""
    global _default
    _default = app
