"""The plain Celery app the suite measures taskyard against.

Its settings are taskyard's own (:func:`workers.core.application.celery_settings`: broker
and result backend, JSON only, late ack, reject on worker lost, prefetch 1,
visibility timeout, transport options, task events, sent events, STARTED
tracking) minus taskyard's own classes: no dead-lettering consumer, no
guarded transport, no size-checking and signing AMQP class, no result
backend override, no endpoint binding. Its tasks do what the bench
service's endpoints do.

A worker is started as ``celery -A bench.plain worker -Q ...``; the module's
``app`` is built on first access from the process's taskyard settings (the
``TASKYARD_*`` environment), so it matches the nodes started beside it.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

import redis
from celery import Celery

from bench.noop import stamps_key, tally_key
from workers.core.application import celery_settings
from workers.core.config import Config, load_config

#: Settings that make a worker a taskyard node; the plain app goes without them.
TASKYARD_ONLY = ("worker_consumer", "broker_transport", "task_queues", "task_default_queue")
#: The plain app's services, named like taskyard's: tasks ``<service>.<name>``.
NOOP_SERVICE = "pbench"
VOLUME_SERVICE = "pvolume"


class _Clients:
    """One Redis client per URL per process (made after a fork, never shared across one)."""

    made: ClassVar[dict[tuple[int, str], redis.Redis]] = {}

    @classmethod
    def get(cls, url: str) -> redis.Redis:
        key = (os.getpid(), url)
        if key not in cls.made:
            cls.made[key] = redis.Redis.from_url(url)
        return cls.made[key]


redis_client = _Clients.get


def plain_settings(config: Config) -> dict[str, Any]:
    """taskyard's Celery settings for ``config`` without taskyard's own classes."""
    settings = celery_settings(config)
    for key in TASKYARD_ONLY:
        settings.pop(key, None)
    settings["broker_transport_options"] = {
        k: v for k, v in settings["broker_transport_options"].items()
        if not k.startswith("taskyard_")}
    settings["task_default_queue"] = NOOP_SERVICE
    # Plain Celery shows a task STARTED only by writing it to the result backend; taskyard
    # derives it from its in-flight ledger, so its settings leave that write out.
    settings["task_track_started"] = config.task_track_started
    return settings


def describe(settings: dict[str, Any]) -> dict[str, Any]:
    """What the plain app shares with taskyard, for the report."""
    keys = ("task_serializer", "accept_content", "task_acks_late", "task_reject_on_worker_lost",
            "worker_prefetch_multiplier", "visibility_timeout", "worker_send_task_events",
            "task_send_sent_event", "task_track_started", "worker_deduplicate_successful_tasks",
            "result_expires")
    shared = {key: settings.get(key) for key in keys}
    shared["broker_transport_options"] = dict(settings.get("broker_transport_options") or {})
    shared["without"] = ["taskyard consumer (dead letters)", "guarded transport",
                         "GuardedAMQP (size check, signing)", "result backend override",
                         "endpoint binding, API versions, request context, request log line"]
    return shared


def create_plain_app(config: Config) -> Celery:
    """The plain app for ``config``'s broker and settings, with the bench tasks."""
    app = Celery("plain", set_as_current=False)
    app.conf.update(plain_settings(config))
    records_url = config.records_url

    @app.task(name=f"{NOOP_SERVICE}.noop", shared=False)
    def noop() -> None:
        """Do nothing (taskyard: ``bench.noop``)."""

    @app.task(name=f"{NOOP_SERVICE}.mark", shared=False)
    def mark(batch: str, index: int) -> None:
        """Count one run of message ``index`` of ``batch`` (taskyard: ``bench.mark``)."""
        redis_client(records_url).hincrby(tally_key(batch), str(index), 1)

    @app.task(name=f"{NOOP_SERVICE}.stamp", shared=False)
    def stamp(batch: str, index: int) -> None:
        """Note when message ``index`` of ``batch`` started (taskyard: ``bench.stamp``)."""
        redis_client(records_url).hset(stamps_key(batch), str(index), repr(time.time()))

    @app.task(name=f"{VOLUME_SERVICE}.create_record", shared=False)
    def create_record(size_gb: int, name: str | None = None) -> dict[str, Any]:
        """The Redis work of taskyard's create_volume on the fake driver, without its checks.

        Two round trips, like taskyard's two scripts: insert the record and index
        it, then mark it available.
        """
        client = redis_client(records_url)
        record_id = create_record.request.id
        key = _record_key(record_id)
        stamp = str(time.time())
        pipe = client.pipeline(transaction=True)
        pipe.hset(key, mapping={"id": record_id, "name": name or "", "size_gb": size_gb,
                                "status": "creating", "created_at": stamp})
        pipe.sadd(_index_key(), record_id)
        pipe.execute()
        client.hset(key, mapping={"status": "available", "updated_at": stamp})
        return {"id": record_id, "size_gb": size_gb, "name": name, "status": "available"}

    @app.task(name=f"{VOLUME_SERVICE}.delete_record", shared=False)
    def delete_record(record_id: str) -> dict[str, Any]:
        """The Redis work of taskyard's delete_volume: read, mark deleting, retire.

        Three round trips, like taskyard's read and two scripts.
        """
        client = redis_client(records_url)
        key = _record_key(record_id)
        record = client.hgetall(key)
        client.hset(key, "status", "deleting")
        pipe = client.pipeline(transaction=True)
        pipe.hset(key, "status", "deleted")
        pipe.expire(key, 3600)
        pipe.srem(_index_key(), record_id)
        pipe.execute()
        return {"id": record_id, "status": "deleted", "fields": len(record)}

    return app


def _record_key(record_id: str) -> str:
    return f"bench:plain:volume:{record_id}"


def _index_key() -> str:
    return "bench:plain:volume:index"


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    """``app``: what ``celery -A bench.plain`` runs, made from this process's settings."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create_plain_app(load_config())
    return _app
