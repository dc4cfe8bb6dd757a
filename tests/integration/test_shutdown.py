"""Stopping a node with SIGTERM: what runs finishes, what waits stays queued for others.

The nodes serve the test-only ``slow`` service (:mod:`tests.integration.faults`):
its requests run until the test releases them, and it records in Redis when
each starts and finishes and when ``cleanup_host`` runs. The visibility timeout
keeps its default (an hour): a message that comes back within the test came
back because the stopping node put it back, not because a sweep found it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.integration import faults
from tests.integration.conftest import Node, node_environment
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client, Handle
from workers.core.config import Config
from workers.core.registry import Registry
from workers.testing import wait_for

SLOW = faults.SLOW_SERVICE


@pytest.fixture(scope="module")
def cluster_env(redis_server: RedisServer, state_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    settings = faults.slow_settings(tmp_path_factory.mktemp("settings") / "slow.toml")
    return node_environment(redis_server.url, state_dir, TASKYARD_SETTINGS=settings,
                            **faults.node_env())


@pytest.fixture(scope="module")
def store(client_config: Config) -> redis.Redis:
    return redis.Redis.from_url(client_config.records_url, decode_responses=True)


@pytest.fixture
def slow(client_app: Celery) -> Client:
    return Client(SLOW, app=client_app)


@pytest.fixture
def nodes(start_node: Callable[..., Node], store: redis.Redis) -> Iterator[Callable[..., Node]]:
    """Start slow-service nodes for one test; at its end everything held is released."""
    started: list[Node] = []

    def start(host: str, **env: str) -> Node:
        node = start_node(host, services=[SLOW], env=env, concurrency=2)
        started.append(node)
        return node

    def forget() -> None:
        """No events, releases or queued requests left by an earlier test."""
        store.delete(faults.slow_key("events"), SLOW,
                     *store.keys(faults.slow_key("release", "*")))

    forget()
    yield start
    store.set(faults.slow_key("release", "*"), 1)
    for node in started:
        node.stop()
        node.kill()
    forget()


def events(store: redis.Redis, kind: str | None = None) -> list[tuple[str, str, str]]:
    """(event, tag, host) in the order they happened; only ``kind`` when given."""
    found = [tuple(entry.split()[:3]) for entry in store.lrange(faults.slow_key("events"), 0, -1)]
    return [e for e in found if kind is None or e[0] == kind]  # type: ignore[misc]


def release(store: redis.Redis, *tags: str) -> None:
    for tag in tags:
        store.set(faults.slow_key("release", tag), 1)


def test_sigterm_finishes_what_runs_cleans_up_leaves_and_exits_zero_leaving_the_rest_queued(
    nodes: Callable[..., Node], slow: Client, store: redis.Redis, registry: Registry,
) -> None:
    node = nodes("sd-term", TASKYARD_SHUTDOWN_TIMEOUT="60")
    handles = {f"t{i}": slow.cast("work", tag=f"t{i}", hold=True) for i in range(5)}
    wait_for(lambda: len(events(store, "started")) == 2, 30, "two requests to start")
    assert sorted(tag for _, tag, _ in events(store, "started")) == ["t0", "t1"]
    assert store.llen(SLOW) == 3

    assert node.process is not None
    node.process.send_signal(signal.SIGTERM)
    wait_for(lambda: registry.get(SLOW, node.host) is None, 10, "the node to leave the registry")
    late = slow.cast("work", tag="late", hold=True)
    assert node.alive() and events(store, "cleanup") == []  # still busy with t0 and t1

    release(store, "t0", "t1")
    assert node.process.wait(60) == 0
    happened = events(store)
    assert len(happened) == 5, happened
    assert set(happened[:2]) == {("started", "t0", "sd-term"), ("started", "t1", "sd-term")}
    assert set(happened[2:4]) == {("finished", "t0", "sd-term"), ("finished", "t1", "sd-term")}
    assert happened[4] == ("cleanup", "-", "sd-term")  # once, after the running work
    assert {handles[t].wait(timeout=10)["host"] for t in ("t0", "t1")} == {"sd-term"}
    # It took nothing more after the signal, though both its processes were free again.
    assert store.llen(SLOW) == 4

    release(store, "t2", "t3", "t4", "late")
    nodes("sd-after")
    for handle in [handles["t2"], handles["t3"], handles["t4"], late]:
        assert handle.wait(timeout=30)["host"] == "sd-after"


def ctrl_c(node: Node) -> None:
    """What Ctrl-C in the node's terminal does: SIGINT to its whole process group."""
    os.killpg(node.pid, signal.SIGINT)


def holding(nodes: Callable[..., Node], slow: Client, store: redis.Redis, host: str, tag: str,
            shutdown_timeout: str = "60") -> tuple[Node, Handle]:
    """A node of its own running one request, held until the test releases ``tag``."""
    node = nodes(host, TASKYARD_SHUTDOWN_TIMEOUT=shutdown_timeout)
    handle = slow.cast("work", tag=tag, hold=True)
    wait_for(lambda: events(store, "started"), 30, "the request to start")
    assert node.process is not None
    return node, handle


def test_ctrl_c_is_a_warm_shutdown_that_finishes_what_runs_and_exits_zero(
    nodes: Callable[..., Node], slow: Client, store: redis.Redis, registry: Registry,
) -> None:
    node, handle = holding(nodes, slow, store, "sd-int", "i0")

    ctrl_c(node)
    wait_for(lambda: registry.get(SLOW, node.host) is None, 10, "the node to leave the registry")
    assert node.alive() and "Warm shutdown" in node.log()
    release(store, "i0")
    assert node.process.wait(60) == 0  # Celery alone ends a Ctrl-C'd worker with 1
    assert handle.wait(timeout=10)["host"] == "sd-int"


def test_a_second_ctrl_c_stops_running_work_exits_one_and_the_request_runs_elsewhere(
    nodes: Callable[..., Node], slow: Client, store: redis.Redis, registry: Registry,
) -> None:
    node, handle = holding(nodes, slow, store, "sd-int2", "i1")

    ctrl_c(node)
    wait_for(lambda: "Hitting Ctrl+C again" in node.log(), 10, "the first Ctrl-C to be taken")
    ctrl_c(node)  # at once: Celery's own status for this is sometimes 0
    assert node.process.wait(60) == 1
    assert events(store, "finished") == []

    release(store, "i1")
    nodes("sd-int-rescue")
    assert handle.wait(timeout=30)["host"] == "sd-int-rescue"


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_ctrl_c_lets_a_running_drivers_command_finish_whatever_the_pool(
    start_node: Callable[..., Node], client_app: Celery, pool: str,
) -> None:
    """The terminal signals its whole foreground group; the driver's ``dd`` must not die."""
    host = f"sd-{pool}"
    env = {"TASKYARD_SERVICES__VOLUME__DRIVER": "file",
           "TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__PREALLOCATE": "true",
           "TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__CHUNK_MB": "4"}
    node = start_node(host, services=["volume"], pool=pool, env=env)
    volume = Client("volume", app=client_app, host=host)
    handle = volume.cast("create_volume", size_gb=1, volume_id=f"ctrl-c-{pool}")
    wait_for(lambda: (handle.progress() or {}).get("done", 0) >= 2, 30,
             "the volume to be half-way written")  # 256 dd runs of 4 MiB

    ctrl_c(node)
    assert node.process is not None and node.process.wait(60) == 0, node.log()[-3000:]
    assert handle.wait(timeout=10)["status"] == "available"

    start_node(host, services=["volume"], pool=pool, env=env)  # to remove its 1 GiB
    volume.call("delete_volume", volume_id=f"ctrl-c-{pool}")


def test_a_request_running_past_shutdown_timeout_is_stopped_and_done_later_by_another_node(
    nodes: Callable[..., Node], slow: Client, store: redis.Redis, registry: Registry,
    record_property: Callable[[str, object], None],
) -> None:
    node, handle = holding(nodes, slow, store, "sd-cut", "long", shutdown_timeout="2")

    signalled = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    code = node.process.wait(60)
    took = time.monotonic() - signalled
    assert "requests still running 2 s after the stop signal (shutdown_timeout)" in node.log()
    assert 2 <= took < 30, took
    assert events(store, "finished") == []
    assert registry.get(SLOW, node.host) is None

    release(store, "long")
    nodes("sd-rescue")
    assert handle.wait(timeout=30)["host"] == "sd-rescue"
    # The cut-off is a cold shutdown (SIGQUIT to itself); the exit code is only reported.
    record_property("cut_off_exit_code", code)
    print(f"shutdown_timeout: node exited with {code} {took:.1f} s after SIGTERM; "
          f"events: {events(store)}")


def test_a_request_stopped_by_the_shutdown_timeout_is_not_logged_as_done(
    nodes: Callable[..., Node], slow: Client, store: redis.Redis,
) -> None:
    node, handle = holding(nodes, slow, store, "sd-log", "cut", shutdown_timeout="1")
    assert node.stop(signal.SIGTERM, timeout=60) is not None
    assert events(store, "finished") == []
    assert f"task={handle.id} " not in "".join(
        line for line in node.log().splitlines(keepends=True) if "outcome=ok" in line)
