"""The Celery app: reliable defaults, one task per endpoint, queues per service and host.

Built from a :class:`~workers.config.Config`; ``workers.app`` (what
``celery -A workers`` finds) is the app of the process's configuration.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, signals
from kombu import Queue

from workers import logs  # noqa: F401 - installs the logging hooks
from workers.backend import OVERRIDES
from workers.config import Config, get_config
from workers.constants import host_queue
from workers.node import NodeStep, on_shutdown, on_shutting_down
from workers.periodic import register_periodic_tasks
from workers.services import service_specs
from workers.tasks import register_endpoint_tasks

#: Seconds a broker or result socket operation may take before it fails.
SOCKET_TIMEOUT_S = 30
#: Seconds to establish a connection to Redis.
SOCKET_CONNECT_TIMEOUT_S = 5
#: Seconds of idleness before a pooled Redis connection is checked.
HEALTH_CHECK_INTERVAL_S = 25
#: How the result backend retries a lost connection: 5 tries, at most 1 s apart.
RESULT_RETRY_POLICY = {"max_retries": 5, "interval_start": 0, "interval_step": 0.5,
                       "interval_max": 1}


def celery_settings(config: Config) -> dict[str, Any]:
    """The Celery settings taskyard runs with (``celery`` in settings.toml adds to them)."""
    transport = {
        "visibility_timeout": config.visibility_timeout,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    transport.update(config.raw.get("broker_transport_options") or {})
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
        # Messages the consumer cannot run are dead-lettered (workers.consumer).
        "worker_consumer": "workers.consumer:Consumer",
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
        "broker_transport_options": transport,
        # Give up on an unreachable result backend after a few seconds, not twenty.
        "result_backend_transport_options": {**transport, "retry_policy": RESULT_RETRY_POLICY},
        "visibility_timeout": config.visibility_timeout,
        "result_expires": config.result_expires,
        # What Flower needs to show the fleet.
        "worker_send_task_events": config.task_events,
        "task_send_sent_event": config.task_sent_events,
        "task_track_started": config.task_track_started,
        "task_queues": queues,
        "task_default_queue": next(iter(config.services), "taskyard"),
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
    }
    if urlsplit(config.broker_url).scheme in ("redis", "rediss"):
        # Guards against poison entries in the queues (workers.transport).
        settings["broker_transport"] = "workers.transport:Transport"
    if config.broker_url.startswith("rediss://"):
        settings["broker_use_ssl"] = config.tls.redis_kwargs()
    if config.result_backend.startswith("rediss://"):
        settings["redis_backend_use_ssl"] = config.tls.redis_kwargs()
    settings.update(config.raw.get("celery") or {})
    return settings


def create_app(config: Config | None = None, *, set_as_current: bool = True) -> Celery:
    """A Celery app serving every configured service of ``config``."""
    config = config or get_config()
    # GuardedAMQP checks every message's size and signs it (workers.security).
    app = Celery("taskyard", set_as_current=set_as_current,
                 amqp="workers.security:GuardedAMQP")
    app.conf.update(celery_settings(config))
    # Result backends that rebuild only declared exceptions (see workers.backend).
    app.loader.override_backends = dict(OVERRIDES)
    app.taskyard_config = config  # type: ignore[attr-defined]
    for spec in service_specs(config).values():
        register_endpoint_tasks(app, spec)
        register_periodic_tasks(app, spec)
    app.steps["worker"].add(NodeStep)
    return app


signals.worker_shutting_down.connect(on_shutting_down, weak=False,
                                     dispatch_uid="taskyard.shutting_down")
signals.worker_shutdown.connect(on_shutdown, weak=False, dispatch_uid="taskyard.shutdown")

_app: Celery | None = None
_lock = threading.Lock()


def get_app() -> Celery:
    """The process's app, made from the process's configuration on first use."""
    global _app
    if _app is None:
        with _lock:
            if _app is None:
                _app = create_app()
    return _app


def set_app(app: Celery | None) -> None:
    """Replace (or with None, forget) the process's app."""
    global _app
    _app = app
