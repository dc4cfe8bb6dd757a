"""Recovery with the product's defaults: long work runs once, one node per host name, orphans seen.

The nodes serve the test-only ``slow`` service (:mod:`tests.integration.faults`),
which records in Redis when each request starts and finishes. No transport
option is set anywhere: only documented settings (``visibility_timeout``,
``report_interval``, ``service_down_time``), and each test says which.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.integration import faults
from tests.integration.conftest import Node, node_environment, run_cli
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.config import Config
from workers.core.keys import INFLIGHT_OWNERS_KEY, claim_key
from workers.testing import wait_for

SLOW = faults.SLOW_SERVICE
#: A short visibility timeout (a documented setting) so that a request can outlive it
#: four times over within a test; heartbeats every 0.5 s keep it visible.
VISIBILITY_TIMEOUT_S = 5


@pytest.fixture(scope="module")
def cluster_env(redis_server: RedisServer, state_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    settings = faults.slow_settings(tmp_path_factory.mktemp("settings") / "slow.toml")
    return node_environment(redis_server.url, state_dir, TASKYARD_SETTINGS=settings,
                            TASKYARD_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_S),
                            **faults.node_env())


@pytest.fixture(scope="module")
def store(client_config: Config) -> redis.Redis:
    return redis.Redis.from_url(client_config.records_url, decode_responses=True)


@pytest.fixture
def nodes(start_node: Callable[..., Node], store: redis.Redis) -> Iterator[Callable[..., Node]]:
    started: list[Node] = []

    def start(host: str, **kwargs: object) -> Node:
        node = start_node(host, services=[SLOW], concurrency=1, **kwargs)
        started.append(node)
        return node

    store.delete(faults.slow_key("events"))
    yield start
    store.set(faults.slow_key("release", "*"), 1)
    for node in started:
        node.stop()
        node.kill()
    store.delete(faults.slow_key("events"), *store.keys(faults.slow_key("release", "*")))


def events(store: redis.Redis) -> list[tuple[str, ...]]:
    return [tuple(e.split()[:3]) for e in store.lrange(faults.slow_key("events"), 0, -1)]


def test_a_request_four_times_longer_than_the_visibility_timeout_runs_once(
    nodes: Callable[..., Node], client_app: Taskyard, store: redis.Redis,
) -> None:
    busy, idle = nodes("long-a"), nodes("long-b")
    seconds = 4 * VISIBILITY_TIMEOUT_S
    handle = Client(SLOW, app=client_app).cast("work", tag="long", seconds=seconds)
    done = handle.wait(timeout=seconds + 30)
    assert [e[:2] for e in events(store)] == [("started", "long"), ("finished", "long")]
    ran_on = done["host"]
    assert ran_on in (busy.host, idle.host)
    assert busy.alive() and idle.alive()  # the other node idled beside it all along
    # Acknowledged (just after the result is stored): out of the ledger too.
    wait_for(lambda: not store.hlen(INFLIGHT_OWNERS_KEY), 10, "the ledger to be empty")


def test_a_second_node_with_the_name_of_a_live_one_is_refused(
    nodes: Callable[..., Node], cluster_env: dict[str, str], state_dir: Path,
) -> None:
    first = nodes("only-one")
    second = Node("only-one", cluster_env, state_dir / "only-one-again.log",
                  services=[SLOW]).start()
    assert second.process is not None
    code = second.process.wait(60)
    assert code != 0
    log = second.log()
    assert f"host name 'only-one' is held by a live node: pid {first.pid} on machine" in log
    assert first.alive()


def test_a_node_restarted_right_after_a_crash_takes_its_name_over_at_once(
    nodes: Callable[..., Node], store: redis.Redis,
) -> None:
    crashed = nodes("phoenix")
    crashed.kill()
    assert store.exists(claim_key("phoenix"))  # the claim has not lapsed yet
    started = time.monotonic()
    nodes("phoenix")
    assert time.monotonic() - started < 30  # not after service_down_time: the pid is gone


def test_status_lists_every_non_empty_queue_and_marks_those_no_live_node_consumes(
    nodes: Callable[..., Node], client_app: Taskyard, cluster_env: dict[str, str],
) -> None:
    nodes("watched")
    Client(SLOW, app=client_app).prepare(host="nowhere").cast("work", tag="orphan")
    Client(SLOW, app=client_app).prepare(host="watched").cast("work", tag="held", hold=True)
    Client(SLOW, app=client_app).prepare(host="watched").cast("work", tag="queued")

    def shown() -> dict[str, object] | None:
        done = run_cli(cluster_env, "status", "--json")
        status = json.loads(done.stdout)
        return status if status["queues"].get(f"{SLOW}.watched") == 1 else None

    status = wait_for(shown, 30, "the watched node's queue to hold one request")
    assert status["queues"][f"{SLOW}.nowhere"] == 1
    assert status["orphans"] == [f"{SLOW}.nowhere"]
    text = run_cli(cluster_env, "status").stdout
    assert f"{SLOW}.nowhere" in text and "no live node consumes it" in text
    line = next(line for line in text.splitlines() if f"{SLOW}.watched " in line)
    assert "no live node" not in line


def test_a_node_that_dies_with_work_on_its_own_queue_leaves_it_there_for_its_return(
    nodes: Callable[..., Node], client_app: Taskyard, store: redis.Redis,
) -> None:
    held = nodes("mortal")
    nodes("witness")
    handle = Client(SLOW, app=client_app).prepare(host="mortal").cast("work", tag="mine",
                                                                       hold=True)
    wait_for(lambda: ("started", "mine", "mortal") in events(store), 30, "the request to start")
    held.stop(signal.SIGKILL)
    # Once mortal is down, witness puts the message back on mortal's own queue: it waits
    # there (shown by `taskyard status`) until mortal returns.
    wait_for(lambda: store.llen(f"{SLOW}.mortal") == 1, 30,
             "the dead node's message to be back on its queue")
    store.set(faults.slow_key("release", "mine"), 1)
    nodes("mortal")
    assert handle.wait(timeout=30)["host"] == "mortal"


def test_hosts_gone_for_good_are_forgotten_by_the_live_nodes_or_at_once_by_hand(
    nodes: Callable[..., Node], cluster_env: dict[str, str], client_app: Taskyard,
) -> None:
    registry = client_app.registry
    registry.report(SLOW, "long-gone", {"rpc_api_version": "1.0"})
    registry.report(SLOW, "gone-today", {"rpc_api_version": "1.0"})
    seconds, _ = registry.redis.time()
    registry.redis.hset(f"taskyard:registry:{SLOW}:seen", "long-gone", seconds - 90_000)
    registry.redis.delete("taskyard:registry-hygiene")
    nodes("keeper")  # a live node: at its heartbeats, it forgets what is down for a day
    wait_for(lambda: registry.get(SLOW, "long-gone") is None, 30,
             "the live node to forget the host gone for a day")
    assert registry.get(SLOW, "gone-today") is not None
    forgot = run_cli(cluster_env, "services", "forget", SLOW, "gone-today")
    assert forgot.returncode == 0, forgot.stderr
    assert registry.get(SLOW, "gone-today") is None
    again = run_cli(cluster_env, "services", "forget", SLOW, "gone-today")
    assert again.returncode == 1 and "knows no slow on 'gone-today'" in again.stderr


def test_a_request_a_node_holds_is_started_for_its_caller_without_a_backend_write(
    nodes: Callable[..., Node], client_app: Taskyard, store: redis.Redis,
) -> None:
    nodes("starter")
    handle = Client(SLOW, app=client_app).prepare(host="starter").cast("work", tag="st",
                                                                        hold=True)
    wait_for(lambda: handle.state == "STARTED", 30, "the request to be STARTED")
    # The node wrote nothing to the backend for it: STARTED comes from the ledger.
    assert not store.exists(f"celery-task-meta-{handle.id}")
    store.set(faults.slow_key("release", "st"), 1)
    handle.wait(timeout=30)
    assert handle.state == "SUCCESS"
