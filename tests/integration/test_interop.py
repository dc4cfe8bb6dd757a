"""What Celery's ecosystem sends keeps working: a plain Celery app, celery-node, celery inspect.

A taskyard node is a Celery worker whose endpoints are tasks named
``<service>.<endpoint>``: any Celery client that sends a task by name to
the service's shared queue, or to a host's own queue, calls it. Here a
plain ``Celery()`` app (nothing of taskyard's client) and the Node.js
client ``celery-node`` (installed from npm by ``.ci/run`` into
``tests/integration/interop``) call a real node on a private redis-server,
and ``celery -A workers inspect registered`` lists its endpoints. Flower is
``test_observe.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.conftest import REPO_ROOT
from tests.integration.conftest import Node
from workers.cli.embedded import RedisServer

HOST = "interop-a"
INTEROP = Path(__file__).parent / "interop"
#: Seconds a foreign client waits for an answer.
ANSWER_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def node(start_node: Callable[..., Node]) -> Node:
    return start_node(HOST, concurrency=1)


@pytest.fixture(scope="module")
def plain(redis_server: RedisServer) -> Iterator[Celery]:
    """A plain Celery app on the same Redis: Celery's defaults, JSON (as the node accepts)."""
    app = Celery("plain", broker=redis_server.url, backend=redis_server.url, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True)
    yield app
    app.close()


@pytest.mark.parametrize("queue", ["volume", f"volume.{HOST}"])
def test_a_plain_celery_app_calls_an_endpoint_by_name(plain: Celery, node: Node,
                                                      queue: str) -> None:
    """On the service's shared queue, and on the host's own queue."""
    result = plain.send_task("volume.ping", queue=queue)
    answer = result.get(timeout=ANSWER_TIMEOUT_S)
    assert (answer["service"], answer["host"]) == ("volume", HOST)
    assert result.state == "SUCCESS"


def test_a_plain_celery_callers_bad_argument_gets_a_clear_error_and_the_node_serves_on(
        plain: Celery, node: Node) -> None:
    result = plain.send_task("volume.create_volume", kwargs={"size_gb": "one"}, queue="volume")
    with pytest.raises(Exception) as caught:
        result.get(timeout=ANSWER_TIMEOUT_S)
    assert type(caught.value).__name__ == "InvalidRequest"
    assert "size_gb" in str(caught.value), caught.value
    assert result.state == "FAILURE"
    assert plain.send_task("volume.ping", queue="volume").get(
        timeout=ANSWER_TIMEOUT_S)["host"] == HOST
    assert node.alive()


def celery_node(redis_server: RedisServer, queue: str, task: str, **kwargs: Any
                ) -> dict[str, Any]:
    """Call ``task`` with celery-node (``interop/call.js``); its outcome as the script prints it.

    Skips, saying why, where Node.js or the package is missing; in CI, where
    npm is there, ``.ci/run`` installs the package, so its absence fails.
    """
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("Node.js is not installed here (no `node` on PATH): celery-node cannot run")
    if not (INTEROP / "node_modules" / "celery-node").is_dir():
        reason = ("the npm package celery-node is not installed: run "
                  "`npm install --prefix tests/integration/interop` (.ci/run does)")
        if os.environ.get("CI") and shutil.which("npm"):
            pytest.fail(reason)
        pytest.skip(reason)
    done = subprocess.run(
        [node_bin, str(INTEROP / "call.js"), redis_server.url, redis_server.url, queue, task,
         json.dumps(kwargs)],
        capture_output=True, text=True, timeout=ANSWER_TIMEOUT_S + 30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    outcome: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return outcome


@pytest.mark.parametrize("queue", ["volume", f"volume.{HOST}"])
def test_celery_node_calls_an_endpoint_by_name(redis_server: RedisServer, node: Node,
                                               queue: str) -> None:
    outcome = celery_node(redis_server, queue, "volume.ping")
    assert outcome["status"] == "SUCCESS", outcome
    assert (outcome["result"]["service"], outcome["result"]["host"]) == ("volume", HOST)


def test_celery_nodes_bad_argument_gets_a_clear_error_and_the_node_serves_on(
        redis_server: RedisServer, node: Node) -> None:
    outcome = celery_node(redis_server, "volume", "volume.create_volume", size_gb="one")
    assert (outcome["status"], outcome["exc_type"]) == ("FAILURE", "InvalidRequest"), outcome
    assert "size_gb" in outcome["exc_message"][0]
    assert celery_node(redis_server, "volume", "volume.ping")["status"] == "SUCCESS"
    assert node.alive()


def test_celery_inspect_registered_lists_the_nodes_endpoints(
        node: Node, cluster_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "inspect", "registered",
         "--destination", f"taskyard@{HOST}", "--timeout", "10"],
        env=cluster_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"taskyard@{HOST}: OK" in done.stdout
    for task in ("volume.create_volume", "volume.ping", "volume.extend_volume"):
        assert f"* {task}" in done.stdout, done.stdout
