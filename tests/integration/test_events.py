"""A node's task events, published in one step, are the envelopes kombu would publish.

The node's dispatcher (:mod:`workers.extensions.events`) builds the Redis
pub/sub envelope itself; Flower reads it through kombu. On a private Redis,
the same event goes out once through kombu's ``Producer.publish`` and once
through the direct path, and the two envelopes match but for the delivery
tag (a new uuid each). Flower showing a fleet's calls is
``test_observe.py``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.conftest import make_config
from tests.integration.conftest import node_environment
from workers.cli.embedded import RedisServer
from workers.core.application import Taskyard
from workers.extensions.events import EventDispatcher


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
