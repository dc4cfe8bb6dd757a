"""A node SIGKILLed in the middle of ``create_volume``: the message comes back, made once.

Nodes run the file driver wrapped by :mod:`tests.integration.faults`, which
kills the node's whole process group before the driver acts, half way
through the image, or after the record says ``available`` but before the
message is acknowledged. The product's defaults throughout — the default
``visibility_timeout`` (3600 s) and no transport options — with heartbeats
every 0.5 s and ``service_down_time`` 3 s (documented settings): the
in-flight ledger brings the message back, not the visibility sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from managers.records import RecordStore
from tests.integration import faults
from tests.integration.conftest import Node, node_environment
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.config import Config
from workers.core.registry import Registry
from workers.testing import wait_for

GIB = 1024**3
#: The promise: a crashed node's work is done within service_down_time + 10 s by another
#: node, and within 10 s of the crashed node's restart by that node.
SERVICE_DOWN_TIME_S = 3.0
PROMISE_AFTER_DOWN_S = 10.0
PROMISE_AFTER_RESTART_S = 10.0
#: How long a test waits at most (longer than any promise: a failure says by how much).
REDELIVERY_DEADLINE_S = 60


@pytest.fixture(scope="module")
def cluster_env(redis_server: RedisServer, state_dir: Path) -> dict[str, str]:
    """Every node and the client: the file driver, the default visibility timeout."""
    return node_environment(redis_server.url, state_dir, TASKYARD_SERVICES__VOLUME__DRIVER="file",
                            **faults.node_env())


@pytest.fixture
def volume(client_app: Taskyard) -> Client:
    return Client("volume", app=client_app)


@pytest.fixture
def records(client_config: Config) -> RecordStore:
    """The volume records, read straight from Redis."""
    return RecordStore(redis.Redis.from_url(client_config.records_url), "volume", "volume")


@pytest.fixture
def nodes(start_node: Callable[..., Node]) -> Iterator[Callable[..., Node]]:
    """Start nodes for one test; they are stopped when it ends, so none serves the next."""
    started: list[Node] = []

    def start(host: str, **kwargs: Any) -> Node:
        node = start_node(host, **kwargs)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
        node.kill()


def crashing(marker: Path, at: str) -> dict[str, str]:
    """A node's environment: the crashing manager and driver, crashing at ``at`` once."""
    return {
        "TASKYARD_SERVICES__VOLUME__MANAGER": faults.MANAGER_PATH,
        "TASKYARD_SERVICES__VOLUME__DRIVER": faults.DRIVER_PATH,
        faults.CRASH_AT_ENV: at,
        faults.CRASH_MARKER_ENV: str(marker),
    }


def image_path(state_dir: Path, host: str, volume_id: str) -> Path:
    return state_dir / "volumes" / host / f"volume-{volume_id}.img"


def wait_for_crash(marker: Path, nodes: list[Node]) -> tuple[dict[str, Any], Node]:
    """The crash's account and the node it killed, once that node is gone."""
    account = wait_for(lambda: faults.read_marker(marker), 60, "a node to crash")
    crashed = next(node for node in nodes if node.pid == account["pgid"])
    assert crashed.process is not None
    assert crashed.process.wait(30) == -9  # SIGKILL, main process included
    return account, crashed


def assert_made_once(volume: Client, made: dict[str, Any], name: str, state_dir: Path,
                     host: str) -> None:
    """One available volume named ``name``, on ``host``, with its full image there."""
    assert made["host"] == host and made["status"] == "available" and made["name"] == name
    same_name = [v for v in volume.call("list_volumes") if v["name"] == name]
    assert [(v["id"], v["status"], v["host"]) for v in same_name] == [
        (made["id"], "available", host)]
    image = image_path(state_dir, host, made["id"])
    assert made["location"] == str(image)
    assert image.stat().st_size == GIB


@pytest.mark.parametrize("at", faults.CRASH_POINTS)
def test_a_create_cut_short_by_a_node_crash_is_finished_once_by_another_node(
    nodes: Callable[..., Node], volume: Client, state_dir: Path, tmp_path: Path, at: str,
) -> None:
    # Either node may take the request first; the shared marker lets only that one crash.
    marker = tmp_path / "crash.json"
    fleet = [nodes(f"shared-{at}-{x}", env=crashing(marker, at), services=["volume"],
                   concurrency=1) for x in ("a", "b")]
    name = f"shared-{at}"
    handle = volume.cast("create_volume", size_gb=1, name=name)

    account, crashed = wait_for_crash(marker, fleet)
    survivor = next(node for node in fleet if node is not crashed)
    assert survivor.alive()
    made = handle.wait(timeout=REDELIVERY_DEADLINE_S)
    redelivered_after = time.time() - account["time"]

    # The id comes from the task id: the second delivery named the same volume.
    assert made["id"] == account["volume_id"]
    if at == "after":
        # The crashed node had made it: the second delivery found it available and
        # answered with it, leaving it where it is.
        assert account["status"] == "available"
        assert_made_once(volume, made, name, state_dir, crashed.host)
        assert not image_path(state_dir, survivor.host, made["id"]).exists()
    else:
        # Still "creating": the survivor took the creation over and made it itself.
        assert_made_once(volume, made, name, state_dir, survivor.host)
    if at == "during":
        assert account["partial_bytes"] == GIB // 2
    # The survivor took it back once the dead node's heartbeats lapsed, an hour before the
    # visibility timeout would have.
    assert redelivered_after <= SERVICE_DOWN_TIME_S + PROMISE_AFTER_DOWN_S, redelivered_after
    print(f"crash {at}: answered by {survivor.host} {redelivered_after:.1f} s after the crash")


@pytest.mark.parametrize("at", faults.CRASH_POINTS)
def test_a_create_cut_short_by_a_crash_is_finished_by_that_node_when_it_comes_back(
    nodes: Callable[..., Node], volume: Client, records: RecordStore, state_dir: Path,
    tmp_path: Path, at: str,
) -> None:
    marker = tmp_path / "crash.json"
    host = f"solo-{at}"
    node = nodes(host, env=crashing(marker, at), services=["volume"], concurrency=1)
    name = f"solo-{at}"
    # On the node's own queue: nobody else can take it, before or after the crash.
    handle = volume.prepare(host=host).cast("create_volume", size_gb=1, name=name)

    account, _ = wait_for_crash(marker, [node])
    record = records.get(account["volume_id"])  # straight from Redis: no node is up
    assert record is not None
    assert record["host"] == host
    assert record["status"] == ("available" if at == "after" else "creating")
    assert not handle.ready()

    restarted_at = time.time()
    nodes(host, env=node.env, services=["volume"], concurrency=1, wait=False)
    made = handle.wait(timeout=REDELIVERY_DEADLINE_S)
    finished_after = time.time() - restarted_at
    assert finished_after <= PROMISE_AFTER_RESTART_S, finished_after

    assert made["id"] == account["volume_id"]
    assert_made_once(volume, made, name, state_dir, host)
    print(f"crash {at}: finished by the restarted {host} {finished_after:.1f} s after "
          f"its restart, {time.time() - account['time']:.1f} s after the crash")


def test_a_half_made_image_left_by_a_crash_is_gone_when_its_node_comes_back(
    nodes: Callable[..., Node], volume: Client, registry: Registry, tmp_path: Path,
) -> None:
    marker = tmp_path / "crash.json"
    fleet = [nodes(f"orphan-{x}", env=crashing(marker, "during"), services=["volume"],
                   concurrency=1) for x in ("a", "b")]
    made = volume.cast("create_volume", size_gb=1).wait(timeout=REDELIVERY_DEADLINE_S)
    account, crashed = wait_for_crash(marker, fleet)
    assert made["host"] != crashed.host

    back = nodes(crashed.host, env=crashed.env, services=["volume"], concurrency=1)

    def report_of_the_restarted_node() -> Any:
        record = registry.get("volume", crashed.host)
        return record if record is not None and record.info["pid"] == back.pid else None

    report = wait_for(report_of_the_restarted_node, 30, "the restarted node to report")
    assert not Path(account["image"]).exists()
    assert report.capabilities["provisioned_gb"] == 0
