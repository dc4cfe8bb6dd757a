"""Task events: published in one step as kombu would publish them, gathered, never lost.

The node's dispatcher (:mod:`workers.extensions.events`) builds the Redis
pub/sub envelope itself; Flower reads it through kombu. On a private Redis,
the same event goes out once through kombu's ``Producer.publish`` and once
through the direct path, and the two envelopes match but for the delivery
tag (a new uuid each); so do a cast's queue entry and task-sent event, sent
in one round trip. Real nodes with their defaults gather many requests'
events into one message and publish what they gathered when they stop.
Flower showing a fleet's calls is ``test_observe.py``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.conftest import make_config
from tests.integration.conftest import Node, node_environment
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.registry import Registry
from workers.exceptions import InvalidRequest
from workers.extensions.events import EventDispatcher
from workers.testing import wait_for


@pytest.fixture
def app(redis_server: RedisServer, tmp_path: Any) -> Iterator[Taskyard]:
    env = node_environment(redis_server.url, tmp_path)
    app = Taskyard(make_config(env={k: v for k, v in env.items() if k.startswith("TASKYARD_")}))
    yield app
    app.close()


def published(redis_server: RedisServer, send: Any) -> dict[str, Any]:
    """The one message ``send()`` publishes on the event topics, as JSON."""
    pubsub = redis.Redis(port=redis_server.port).pubsub()
    pubsub.psubscribe("/0.celeryev/*")
    assert pubsub.get_message(timeout=1)["type"] == "psubscribe"
    send()
    message = pubsub.get_message(timeout=5)
    pubsub.close()
    assert message is not None and message["type"] == "pmessage"
    return {"topic": message["channel"].decode(), **json.loads(message["data"])}


@pytest.mark.parametrize("event", [
    {"type": "task-succeeded", "uuid": "9f1c", "result": "{'id': 'v-1'}", "runtime": 0.01},
    [{"type": "task-received", "uuid": "a"}, {"type": "task-started", "uuid": "a"}],
])
def test_a_nodes_event_envelope_is_the_one_kombu_publishes(
        app: Taskyard, redis_server: RedisServer, event: Any) -> None:
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname="taskyard@events", enabled=True)
        assert isinstance(dispatcher, EventDispatcher)
        routing_key = "task.multi" if isinstance(event, list) else "task.succeeded"
        direct = published(redis_server, lambda: dispatcher._publish(
            event, dispatcher.producer, routing_key))
        dispatcher.enabled = False  # the path a caller's dispatcher takes: kombu's
        through_kombu = published(redis_server, lambda: dispatcher._publish(
            event, dispatcher.producer, routing_key))
        dispatcher.close()
    for message in (direct, through_kombu):
        assert message["properties"].pop("delivery_tag")
    assert direct == through_kombu
    assert json.loads(base64.b64decode(direct["body"])) == event
    assert direct["topic"] == f"/0.celeryev/{routing_key}"


def test_a_casts_queue_entry_and_sent_event_are_the_ones_kombu_sends(
        app: Taskyard, redis_server: RedisServer) -> None:
    """``Channel.send_requests`` (one round trip) against ``Producer.publish`` twice."""
    queue = "volume.entry-check"
    body = json.dumps([[], {"size_gb": 1}, {}]).encode()
    headers = {"id": "t-1", "task": "volume.create_volume", "lang": "py"}
    fields = {"uuid": "t-1", "name": "volume.create_volume", "queue": queue}
    server = redis.Redis(port=redis_server.port)
    entries, events = [], []
    with app.producer_or_acquire() as producer:
        dispatcher = app.sent_events
        for direct in (True, False):
            pubsub = server.pubsub()
            pubsub.psubscribe("/0.celeryev/*")
            assert pubsub.get_message(timeout=1)["type"] == "psubscribe"
            if direct:
                producer.channel.send_requests([(queue, body, dict(headers), {"priority": 0})],
                                               dispatcher.prepare("task-sent", dict(fields)))
            else:
                producer.publish(body, exchange="", routing_key=queue,
                                 content_type="application/json", content_encoding="utf-8",
                                 declare=(), headers=dict(headers), priority=0)
                dispatcher.publish("task-sent", dict(fields), producer)
            entries.append(json.loads(server.rpop(queue)))
            message = pubsub.get_message(timeout=5)
            pubsub.close()
            assert message is not None and message["type"] == "pmessage"
            events.append(json.loads(message["data"]))
    for entry in (*entries, *events):
        assert entry["properties"].pop("delivery_tag")
    assert entries[0] == entries[1]
    assert base64.b64decode(entries[0]["body"]) == body
    bodies = [json.loads(base64.b64decode(event.pop("body"))) for event in events]
    assert events[0] == events[1]
    for event in bodies:  # the clock and time of each send differ; the rest is the same
        assert event.pop("clock") and event.pop("timestamp")
    assert bodies[0] == bodies[1] and bodies[0]["type"] == "task-sent"


class EventTap:
    """Every task and worker event published on a private Redis, as a subscriber sees them."""

    def __init__(self, redis_server: RedisServer) -> None:
        self.pubsub = redis.Redis(port=redis_server.port).pubsub()
        self.pubsub.psubscribe("/0.celeryev/*")
        #: Per message published: its routing key and its events.
        self.messages: list[tuple[str, list[dict[str, Any]]]] = []

    def read(self) -> list[dict[str, Any]]:
        """Take what has arrived; every event so far, in order."""
        while (message := self.pubsub.get_message(timeout=0.05)) is not None:
            if message["type"] != "pmessage":
                continue
            envelope = json.loads(message["data"])
            body = json.loads(base64.b64decode(envelope["body"]))
            key = envelope["properties"]["delivery_info"]["routing_key"]
            self.messages.append((key, body if isinstance(body, list) else [body]))
        return [event for _, events in self.messages for event in events]

    def of(self, task_ids: set[str]) -> list[dict[str, Any]]:
        return [e for e in self.read() if e.get("uuid") in task_ids]

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def tap(redis_server: RedisServer) -> Iterator[EventTap]:
    tap = EventTap(redis_server)
    yield tap
    tap.close()


def test_a_batchs_sent_events_go_out_as_one_message_per_round_trip(
        app: Taskyard, redis_server: RedisServer, tap: EventTap) -> None:
    """``cast_many`` of 7 in batches of 3: 7 task-sent events, in 3 messages (no node runs)."""
    handles = Client("volume", app=app, host="nobody").cast_many("ping", [{}] * 7, batch_size=3)
    ids = [handle.id for handle in handles]
    wait_for(lambda: len(tap.of(set(ids))) == 7, 10, "seven task-sent events")
    assert [(key, [e["uuid"] for e in events]) for key, events in tap.messages] == [
        ("task.multi", ids[0:3]), ("task.multi", ids[3:6]), ("task.multi", ids[6:])]
    assert {(e["type"], e["queue"]) for e in tap.of(set(ids))} == {("task-sent", "volume.nobody")}
    assert redis.Redis(port=redis_server.port).llen("volume.nobody") == 7
    redis.Redis(port=redis_server.port).delete("volume.nobody")


def test_a_batch_with_a_request_too_large_sends_nothing(
        app: Taskyard, redis_server: RedisServer, tap: EventTap) -> None:
    """Every message is sized and sealed before the first batch goes out."""
    calls = [{"size_gb": 1, "name": "small"}] * 4 + [{"size_gb": 1, "name": "x" * 1_100_000}]
    with pytest.raises(InvalidRequest, match="more than max_message_bytes"):
        Client("volume", app=app, host="refuser").cast_many("create_volume", calls,
                                                             batch_size=2)
    assert redis.Redis(port=redis_server.port).llen("volume.refuser") == 0
    assert tap.read() == []


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_busy_node_gathers_many_requests_events_into_one_message(
        redis_server: RedisServer, tmp_path: Any, tap: EventTap, pool: str) -> None:
    """The defaults (``task_events_interval`` 0.1 s): 60 requests, every event, few messages.

    With threads, the events are gathered in the pool's threads and published from the
    node's loop.
    """
    env = node_environment(redis_server.url, tmp_path)
    app = Taskyard(make_config(env={k: v for k, v in env.items() if k.startswith("TASKYARD_")}))
    registry = Registry(redis.Redis(port=redis_server.port), service_down_time=3)
    node = Node(f"gatherer-{pool}", env, tmp_path / "gatherer.log", pool=pool).start()
    try:
        node.wait_up(registry)
        client = Client("volume", app=app, host=f"gatherer-{pool}")
        handles = client.cast_many("ping", [{}] * 60)
        for handle in handles:
            handle.wait()
        ids = {handle.id for handle in handles}
        kinds = ("task-received", "task-started", "task-succeeded")
        wait_for(lambda: len([e for e in tap.of(ids) if e["type"] in kinds]) == 3 * len(ids),
                 10, "every request's three events")
        for task_id in ids:
            assert [e["type"] for e in tap.of({task_id}) if e["type"] in kinds] == list(kinds)
        carrying = [events for key, events in tap.messages
                    if key == "task.multi" and any(e.get("uuid") in ids for e in events)]
        # Celery's own worker publishes a message per request or more (128 for these 60).
        assert len(carrying) <= len(ids) // 4, [len(events) for events in carrying]
        print(f"\n{pool}: {len(ids)} requests' {3 * len(ids)} events in {len(carrying)} "
              "messages")
    finally:
        node.stop()
        node.kill()
        app.close()


def test_a_stopping_node_publishes_the_events_it_gathered_before_it_goes_offline(
        redis_server: RedisServer, tmp_path: Any, tap: EventTap) -> None:
    """With ``task_events_interval`` 10 s (a documented setting) nothing is sent until the stop."""
    env = node_environment(redis_server.url, tmp_path, TASKYARD_TASK_EVENTS_INTERVAL="10")
    app = Taskyard(make_config(env={k: v for k, v in env.items() if k.startswith("TASKYARD_")}))
    registry = Registry(redis.Redis(port=redis_server.port), service_down_time=3)
    node = Node("holder", env, tmp_path / "holder.log").start()
    try:
        node.wait_up(registry)
        handle = Client("volume", app=app, host="holder").cast("ping")
        handle.wait()
        tap.read()
        held = tap.of({handle.id})
        assert [e["type"] for e in held] == ["task-sent"]  # the caller's, sent with the message
        assert node.stop() == 0
        wait_for(lambda: any(e["type"] == "worker-offline" and e["hostname"].endswith("holder")
                             for e in tap.read()), 10, "the node's worker-offline event")
    finally:
        node.kill()
        app.close()
    events = [e for e in tap.read() if e.get("uuid") == handle.id
              or (e["type"] == "worker-offline" and e["hostname"].endswith("holder"))]
    assert [e["type"] for e in events] == ["task-sent", "task-received", "task-started",
                                           "task-succeeded", "worker-offline"]
