"""Hostile and broken input against a real node: refused, kept as dead letters, node serving.

Messages are pushed straight into the node's Redis lists, as anyone who can
write to Redis could, and sent by clients of another API version.
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import make_app, make_config
from tests.integration.conftest import Node, run_cli
from tests.integration.versions import settings_file
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client, Handle
from workers.core.application import Taskyard
from workers.core.deadletters import DeadLetters
from workers.exceptions import InvalidRequest, UnknownEndpoint, UnsupportedVersion
from workers.testing import wait_for

HOST = "hostile-node"
QUEUE = f"volume.{HOST}"


@pytest.fixture(scope="module")
def v1_settings(tmp_path_factory: pytest.TempPathFactory) -> str:
    return settings_file(str(tmp_path_factory.mktemp("v1") / "greeter.toml"), "GreeterV1")


@pytest.fixture(scope="module")
def v2_settings(tmp_path_factory: pytest.TempPathFactory) -> str:
    return settings_file(str(tmp_path_factory.mktemp("v2") / "greeter.toml"), "GreeterV2")


@pytest.fixture(scope="module")
def node(start_node: Callable[..., Node], v1_settings: str) -> Node:
    return start_node(HOST, services=["volume", "greeter"],
                      env={"TASKYARD_SETTINGS": v1_settings, "TASKYARD_MAX_MESSAGE_BYTES": "65536"})


@pytest.fixture(scope="module")
def broker(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def letters(broker: redis.Redis) -> DeadLetters:
    """The dead-letter lists, emptied before each test so each finds only its own."""
    dead = DeadLetters(broker)
    for service in dead.services():
        broker.delete(f"taskyard:deadletters:{service}")
    return dead


def still_serving(client_app: Taskyard) -> None:
    assert Client("volume", app=client_app).prepare(host=HOST).call("ping")["host"] == HOST


def wait_for_letter(letters: DeadLetters, service: str, fragment: str) -> dict[str, Any]:
    return wait_for(lambda: next((e for e in letters.list(service) if fragment in e["reason"]),
                                 None), 20, f"a dead letter saying {fragment!r}")


def envelope(task: str, kwargs: dict[str, Any], *, content_type: str = "application/json",
             body: bytes | None = None, task_id: str = "hostile-1") -> str:
    """A kombu envelope as Celery writes it into a Redis list."""
    raw = body if body is not None else json.dumps([[], kwargs, {}]).encode()
    return json.dumps({
        "body": base64.b64encode(raw).decode(), "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
                    "parent_id": None, "group": None, "retries": 0, "eta": None,
                    "expires": None, "timelimit": [None, None], "argsrepr": "()",
                    "kwargsrepr": repr(kwargs), "origin": "attacker", "ignore_result": False},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": QUEUE},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": task_id},
    })


POISON = [
    ("not-json", "{not json", "not valid JSON"),
    ("truncated", envelope("volume.ping", {})[:120], "not valid JSON"),
    ("json-not-an-envelope", json.dumps(["a", "list"]), "not a kombu envelope"),
    ("oversized", envelope("volume.ping", {"pad": "x" * 70000}), "larger than max_message_bytes"),
]


@pytest.mark.parametrize(("label", "raw", "fragment"), POISON, ids=[p[0] for p in POISON])
def test_poison_pushed_into_a_queue_is_dead_lettered_and_the_node_serves_on(
    node: Node, broker: redis.Redis, letters: DeadLetters, client_app: Taskyard,
    label: str, raw: str, fragment: str,
) -> None:
    broker.lpush(QUEUE, raw)
    letter = wait_for_letter(letters, "volume", fragment)
    assert letter["queue"] == QUEUE and letter["host"] == HOST
    assert letter["raw"] == raw[:65536] and letter["requeueable"] is False
    assert node.alive()
    still_serving(client_app)


def test_a_pickle_message_is_refused_unread_with_an_error_to_its_caller(
    node: Node, broker: redis.Redis, letters: DeadLetters, client_app: Taskyard, tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(([], {}, {}))  # harmless: never loaded, whatever it holds
    broker.lpush(QUEUE, envelope("volume.ping", {}, task_id="pickled-1",
                                 content_type="application/x-python-serialize", body=payload))
    handle = Handle(client_app.AsyncResult("pickled-1"), "volume", "ping", HOST, 20)
    with pytest.raises(InvalidRequest, match="refused by node hostile-node"):
        handle.wait()
    assert "x-python-serialize" in wait_for_letter(letters, "volume", "invalid task")["reason"]
    assert not marker.exists()
    still_serving(client_app)


def test_an_unknown_task_pushed_into_a_queue_is_refused(
    node: Node, broker: redis.Redis, letters: DeadLetters, client_app: Taskyard,
) -> None:
    broker.lpush(QUEUE, envelope("volume.__class__", {}, task_id="unknown-1"))
    with pytest.raises(UnknownEndpoint):
        Handle(client_app.AsyncResult("unknown-1"), "volume", "?", HOST, 20).wait()
    assert wait_for_letter(letters, "volume", "unknown task 'volume.__class__'")
    still_serving(client_app)


def test_a_message_for_a_service_the_node_does_not_run_is_refused(
    node: Node, broker: redis.Redis, letters: DeadLetters, client_app: Taskyard,
) -> None:
    broker.lpush(QUEUE, envelope("compute.run_instance", {"image": "sleeper"},
                                 task_id="wrong-service-1"))
    with pytest.raises(UnknownEndpoint, match="does not run the compute service"):
        Handle(client_app.AsyncResult("wrong-service-1"), "compute", "run_instance", HOST,
               20).wait()
    assert wait_for_letter(letters, "compute", "does not run the compute service")
    still_serving(client_app)


def test_bad_arguments_are_refused_with_the_argument_named_and_kept(
    node: Node, client_app: Taskyard, letters: DeadLetters,
) -> None:
    result = client_app.send_task("volume.extend_volume", kwargs={"volume_id": 7},
                                  queue=QUEUE)
    with pytest.raises(InvalidRequest, match="missing argument 'new_size_gb'"):
        Handle(result, "volume", "extend_volume", HOST, 20).wait()
    letter = wait_for_letter(letters, "volume", "missing argument 'new_size_gb'")
    assert letter["kwargs"] == {"volume_id": 7} and letter["requeueable"] is True


def test_deadletters_command_lists_them(cluster_env: dict[str, str], node: Node,
                                        broker: redis.Redis, letters: DeadLetters) -> None:
    broker.lpush(QUEUE, "{garbage")
    wait_for_letter(letters, "volume", "not valid JSON")
    letters.add("compute", "unknown task 'compute.x': no such endpoint here", task="compute.x")
    listed = run_cli(cluster_env, "deadletters", "volume")
    assert listed.returncode == 0, listed.stderr
    assert "(undecodable)" in listed.stdout and "not valid JSON" in listed.stdout
    as_json = json.loads(run_cli(cluster_env, "deadletters", "--json").stdout)
    assert {e["service"] for e in as_json} >= {"volume", "compute"}


def test_a_rolling_upgrade_callers_speak_the_lowest_live_version_and_old_nodes_refuse_newer(
    node: Node, cluster_env: dict[str, str], v2_settings: str, letters: DeadLetters,
    start_node: Callable[..., Node],
) -> None:
    env = {k: v for k, v in cluster_env.items() if k.startswith("TASKYARD_")}
    caller = make_app(make_config(env={**env, "TASKYARD_SETTINGS": v2_settings}))
    # Only the 1.2 node runs: callers speak 1.2, whatever code they have.
    greeter = Client("greeter", app=caller)
    assert greeter.version == "1.2"
    assert greeter.prepare(host=HOST).call("greet", name="ada") == (
        "hello ada from hostile-node (1.2)")
    # A caller that insists on 1.3 is refused by the old node, and the request is kept.
    handle = greeter.prepare(host=HOST, version_cap="1.3").cast("greet", name="ada")
    with pytest.raises(UnsupportedVersion, match=r"needs API version 1\.3; this node serves 1\.2"):
        handle.wait()
    letter = wait_for_letter(letters, "greeter", "needs API version 1.3")

    # A 1.3 node joins: while the 1.2 node lives, callers still speak 1.2 (both serve it).
    start_node("upgraded", services=["greeter"], env={"TASKYARD_SETTINGS": v2_settings})
    assert Client("greeter", app=caller).version == "1.2"
    assert Client("greeter", app=caller, version_cap="1.3").api.version == "1.3"  # type: ignore[union-attr]

    # The refused request is sent again to the upgraded node, under its task id.
    assert letter["queue"] == f"greeter.{HOST}"
    moved = run_cli({**cluster_env, "TASKYARD_SETTINGS": v2_settings}, "deadletters",
                    "--requeue", letter["id"], "--host", "upgraded")
    assert moved.returncode == 0, moved.stderr
    assert "to greeter.upgraded" in moved.stdout
    assert letter["id"] not in {e["id"] for e in letters.list("greeter")}
    again = greeter.handle(handle.id, "greet")  # the first handle keeps the answer it got
    assert again.wait() == "hello ada from upgraded (1.3)"


def test_describe_prints_the_published_endpoints_without_the_services_code(
    node: Node, cluster_env: dict[str, str],
) -> None:
    # The caller's settings know no greeter service and cannot import its code.
    described = run_cli(cluster_env, "describe", "greeter")
    assert described.returncode == 0, described.stderr
    assert "greeter  API 1.2  (served now)" in described.stdout
    assert "  greet(name: str)" in described.stdout
    called = run_cli(cluster_env, "call", "greeter", "greet", "name=bo", "--host", HOST)
    assert called.stdout.strip() == '"hello bo from hostile-node (1.2)"', called.stderr
    wrong = run_cli(cluster_env, "call", "greeter", "greet", "name=1")
    assert wrong.returncode == 1
    assert "argument 'name' must be str, got int 1" in wrong.stderr
    unknown = run_cli(cluster_env, "describe", "nope")
    assert unknown.returncode == 1 and "no node of 'nope' has published" in unknown.stderr


def test_a_dead_letter_refused_for_its_signature_is_not_requeued(
    cluster_env: dict[str, str], letters: DeadLetters,
) -> None:
    letter_id = letters.add("volume", "bad signature: the message was altered", task="volume.ping",
                            task_id="sig-1", requeueable=False)
    moved = run_cli(cluster_env, "deadletters", "--requeue", letter_id)
    assert moved.returncode != 0
    assert "cannot be requeued" in moved.stderr
