"""Canaries: the private internals of Celery and kombu that taskyard extends, as it expects them.

taskyard pins celery and kombu to the minor version below. Each extension of
a private internal names it here; when an upgrade changes its shape, the
test naming it fails instead of the guard silently doing nothing.
"""

from __future__ import annotations

import inspect

import celery
import kombu
from celery import signals
from celery.app.amqp import AMQP
from celery.backends.base import Backend
from celery.worker import strategy
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis
from kombu.utils.scheduling import cycle_by_name

from workers.extensions import consumer, signing, transport

#: The minor versions the pins in pyproject.toml admit, and these canaries were checked on.
CELERY_MINOR = (5, 7)
KOMBU_MINOR = (5, 7)


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def test_the_installed_celery_and_kombu_are_the_pinned_minor_versions() -> None:
    assert _minor(celery.__version__) == CELERY_MINOR
    assert _minor(kombu.__version__) == KOMBU_MINOR


# -- workers.extensions.transport --------------------------------------------------------


def test_kombus_redis_reads_decode_entries_with_the_module_global_loads() -> None:
    # The guard runs these two functions' code with another ``loads`` in their globals.
    for method in (kombu_redis.Channel._brpop_read, kombu_redis.Channel._get):
        assert "loads" in method.__code__.co_names, method.__qualname__
        assert method.__globals__["loads"] is kombu_redis.loads
        assert method.__closure__ is None


def test_kombus_redis_channel_reads_entries_through_the_methods_the_guard_replaces() -> None:
    source = inspect.getsource(kombu_redis.Channel.__init__)
    assert "'BRPOP': self._brpop_read" in source
    assert "self._queue_cycle = cycle_by_name(self.queue_order_strategy)()" in source
    assert list(inspect.signature(kombu_redis.Channel._get).parameters)[:2] == ["self", "queue"]


def test_kombus_queue_cycle_has_what_the_recording_cycle_forwards() -> None:
    made = cycle_by_name(kombu_redis.Channel.queue_order_strategy)()
    for name in ("update", "consume", "rotate"):
        assert callable(getattr(made, name)), name
    assert "self._queue_cycle.rotate(" in inspect.getsource(kombu_redis.Channel._brpop_read)


def test_kombus_create_client_takes_asynchronous_and_transport_options_are_read_by_name() -> None:
    assert "asynchronous" in inspect.signature(kombu_redis.Channel._create_client).parameters
    assert isinstance(kombu_redis.Channel.from_transport_options, tuple)
    assert set(transport.Channel.from_transport_options) >= {
        "taskyard_max_message_bytes", "taskyard_services", "taskyard_host"}


# -- workers.extensions.signing -------------------------------------------------------------


def test_kombus_channel_builds_envelopes_and_topics_with_the_helpers_send_requests_reuses() -> None:
    """``Channel.send_requests`` and ``publish_event`` build kombu's envelope with these."""
    params = {name: list(inspect.signature(getattr(kombu_redis.Channel, name)).parameters)
              for name in ("prepare_message", "_inplace_augment_message",
                           "_get_publish_topics", "_get_message_priority", "_q_for_pri")}
    assert params["prepare_message"][:7] == ["self", "body", "priority", "content_type",
                                             "content_encoding", "headers", "properties"]
    assert params["_inplace_augment_message"] == ["self", "message", "exchange", "routing_key"]
    assert params["_get_publish_topics"] == ["self", "exchange", "routing_key"]


def test_celerys_amqp_makes_its_task_sender_in_create_task_sender() -> None:
    assert callable(AMQP._create_task_sender)
    source = inspect.getsource(AMQP._create_task_sender)
    assert "def send_task_message(producer, name, message," in source
    assert issubclass(signing.GuardedAMQP, AMQP)


def test_celerys_task_sender_sends_the_publish_signals_with_the_arguments_we_send() -> None:
    """``workers.extensions.publishing`` sends these arguments on the client's path, and
    ``GuardedAMQP`` signs again in ``producer.publish``, which Celery calls with the very
    headers dict it gave ``before_task_publish``."""
    source = " ".join(inspect.getsource(AMQP._create_task_sender).split())
    before = source.index("send_before_publish( sender=name, body=body, exchange=exchange, "
                          "routing_key=routing_key, declare=declare, headers=headers2, "
                          "properties=properties, retry_policy=_rp, )")
    publish = source.index("ret = producer.publish(body, **publish_kwargs)")
    after = source.index("send_after_publish( sender=name, body=body, headers=headers2, "
                         "exchange=exchange, routing_key=routing_key, )")
    assert before < publish < after
    assert "headers=headers2," in source[before:publish]
    assert "retry_over_time( producer.publish," in source
    assert isinstance(signals.before_task_publish.receivers, list)


def test_celerys_default_strategy_takes_task_app_and_consumer() -> None:
    params = list(inspect.signature(strategy.default).parameters)
    assert params[:3] == ["task", "app", "consumer"]


# -- workers.extensions.consumer -------------------------------------------------------------


def test_celerys_consumer_has_the_hooks_the_dead_letter_consumer_overrides() -> None:
    expected = {
        "on_decode_error": ["self", "message", "exc"],
        "on_unknown_message": ["self", "body", "message"],
        "on_unknown_task": ["self", "body", "message", "exc"],
        "on_invalid_task": ["self", "body", "message", "exc"],
        "on_connection_error_after_connected": ["self", "exc"],
        "ensure_connected": ["self", "conn"],
    }
    for name, params in expected.items():
        ours = getattr(consumer.Consumer, name)
        theirs = getattr(CeleryConsumer, name)
        assert ours is not theirs, name
        assert list(inspect.signature(theirs).parameters) == params, name


def test_celerys_consumer_reconnects_through_conn_ensure_connection_without_intervals() -> None:
    """The consumer's reconnection loop calls ``conn.ensure_connection`` (given intervals)."""
    source = inspect.getsource(CeleryConsumer.ensure_connected)
    assert "conn.ensure_connection(" in source and "interval_" not in source
    params = inspect.signature(kombu.Connection.ensure_connection).parameters
    assert "args" in params or "interval_start" in params


# -- workers.extensions.transport: Sentinel and durable publishing ------------------------


def test_kombus_sentinel_channel_builds_its_pool_in_sentinel_managed_pool() -> None:
    """SentinelChannel replaces it; kombu's _disconnect_pools closes the managers it keeps."""
    source = inspect.getsource(kombu_redis.SentinelChannel._get_pool)
    assert "self._sentinel_managed_pool(asynchronous)" in source
    assert "client.alt" in inspect.getsource(kombu_redis.SentinelChannel._sentinel_managed_pool)
    disconnect = inspect.getsource(kombu_redis.Channel._disconnect_pools)
    assert "_sentinel_manager" in disconnect and "_async_sentinel_manager" in disconnect
    assert transport.SentinelChannel._sentinel_managed_pool is not \
        kombu_redis.SentinelChannel._sentinel_managed_pool


def test_kombus_failover_switch_takes_the_transport_from_the_next_urls_scheme() -> None:
    """Why a Sentinel list reaches kombu as one part: a switch to an alternate would
    replace taskyard's transport by kombu's ``sentinel``."""
    source = inspect.getsource(kombu.Connection.switch)
    assert "parse_url(conn_str)" in source and "_init_params" in source


def test_kombus_channel_builds_pools_from_the_transports_client() -> None:
    """A closed connection forgets its transport's client; _connparams reads it."""
    assert "self.connection.client" in inspect.getsource(kombu_redis.Channel._connparams)
    assert "self._connparams(" in inspect.getsource(kombu_redis.Channel._get_pool)


def test_kombus_publish_batch_runs_its_commands_on_its_pipeline_attribute() -> None:
    source = inspect.getsource(kombu_redis.PublishBatch)
    assert "self.pipeline = " in source and "self.pipeline.execute()" in source
    assert "_publish_batch" in inspect.getsource(kombu_redis.Channel._put)
    assert "create_publish_batch" in dir(kombu_redis.Channel)


# -- workers.extensions.backend ----------------------------------------------------------------


def test_celerys_backends_rebuild_exceptions_in_exception_to_python() -> None:
    assert list(inspect.signature(Backend.exception_to_python).parameters) == ["self", "exc"]


# -- workers.cli.flower --------------------------------------------------------------------


def test_flowers_api_handler_refuses_unauthenticated_requests_in_prepare() -> None:
    from flower.api import BaseApiHandler

    source = inspect.getsource(BaseApiHandler.prepare)
    assert "raise tornado.web.HTTPError(" in source and "401" in source
