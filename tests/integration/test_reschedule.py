"""Builds that fail move to their alternates, with real nodes: a failing backend, a killed host.

Each test starts its own volume nodes (fake driver, threads pool) beside one
scheduler node, on the module's private redis-server. Settings changed from
the product's defaults, all documented: heartbeats every 0.5 s and down after
3 s (as in every integration test), the scheduler's watch on builds every
0.5 s (``services.scheduler.periodic.watch_builds``), and the fake driver's
own options (``total_gb``, ``fail``, ``create_seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from managers.claims import ClaimStore
from tests.integration.conftest import Node, run_cli
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.registry import Registry
from workers.exceptions import NotFound
from workers.testing import wait_for


@pytest.fixture(scope="module")
def scheduler(start_node: Callable[..., Node]) -> Node:
    return start_node("sched", services=["scheduler"], pool="threads", concurrency=4, env={
        "TASKYARD_SERVICES__SCHEDULER__PERIODIC__WATCH_BUILDS": "0.5"})


@pytest.fixture
def volume_nodes(start_node: Callable[..., Node], registry: Registry,
                 scheduler: Node) -> Iterator[Callable[..., Node]]:
    """Start volume nodes for one test (fake driver, threads); they stop at its end."""
    started: list[Node] = []

    def start(host: str, **options: Any) -> Node:
        env = {"TASKYARD_SERVICES__VOLUME__DRIVER": "fake"}
        for name, value in options.items():
            env[f"TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__{name.upper()}"] = str(value)
        node = start_node(host, services=["volume"], pool="threads", concurrency=4, env=env)
        started.append(node)
        return node

    yield start
    claims = ClaimStore(registry.redis, "volume")
    for node in started:
        node.stop()
        node.kill()
        registry.forget("volume", node.host)
        claims.unlist(node.host)


def place(client_app: Taskyard, size_gb: int) -> dict[str, Any]:
    placed = Client("scheduler", app=client_app).call("schedule_create_volume", size_gb=size_gb)
    return {"placed": placed,
            "volume": Client("volume", app=client_app).handle(placed["task_id"]).wait(30)}


def test_a_host_whose_backend_fails_every_build_has_its_requests_built_on_the_healthy_one(
    client_app: Taskyard, volume_nodes: Callable[..., Node], registry: Registry,
    cluster_env: dict[str, str],
) -> None:
    # The failing host has the most room: the least-loaded scheduler prefers it at first.
    volume_nodes("vol-bad", total_gb=100, fail='["create_volume"]')
    volume_nodes("vol-good", total_gb=40)
    claims = ClaimStore(registry.redis, "volume")
    wait_for(lambda: len(claims.candidates({"DISK_GB": 1}, 10)[0]) == 2, 10, "both inventories")
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: place(client_app, 2), range(8)))
    volumes = [o["volume"] for o in outcomes]
    assert [(v["status"], v["host"]) for v in volumes] == [("available", "vol-good")] * 8
    tried_bad = [v for v in volumes if v.get("attempts")]
    assert tried_bad, "the least-loaded scheduler sent at least the first build to vol-bad"
    for volume in tried_bad:
        assert [(a["host"], a["error"]) for a in volume["attempts"]] == [
            ("vol-bad", "VolumeDriverError: fake driver told to fail create_volume")]
    assert claims.usage("vol-bad") == {"DISK_GB": 0}
    assert claims.usage("vol-good") == {"DISK_GB": 16}
    # Once it failed, the build-failure weigher keeps new work away from it.
    later = place(client_app, 2)
    assert later["placed"]["host"] == "vol-good" and "attempts" not in later["volume"]
    why = run_cli(cluster_env, "placement", "volume", tried_bad[0]["id"]).stdout
    assert "1. vol-bad: VolumeDriverError: fake driver told to fail create_volume" in why


def test_a_host_killed_mid_build_has_the_request_rescheduled_and_its_claim_released(
    client_app: Taskyard, volume_nodes: Callable[..., Node], registry: Registry,
    client_config: Any,
) -> None:
    slow = volume_nodes("vol-slow", total_gb=100, create_seconds=60)
    volume_nodes("vol-spare", total_gb=40)
    claims = ClaimStore(registry.redis, "volume")
    wait_for(lambda: len(claims.candidates({"DISK_GB": 1}, 10)[0]) == 2, 10, "both inventories")
    placed = Client("scheduler", app=client_app).call("schedule_create_volume", size_gb=3)
    assert placed["host"] == "vol-slow" and placed["alternates"] == ["vol-spare"]
    handle = Client("volume", app=client_app).handle(placed["task_id"])
    volume = Client("volume", app=client_app)
    def building() -> bool:
        # The placement returns once the build is handed on: until vol-slow takes it, the
        # volume has no record yet.
        try:
            return bool(volume.call("get_volume", volume_id=placed["id"])["status"] == "creating")
        except NotFound:
            return False

    wait_for(building, 10, "vol-slow to start building")
    assert handle.progress() is not None or handle.state in ("STARTED", "PROGRESS")
    slow.kill()
    killed_at = time.monotonic()
    built = handle.wait(client_config.service_down_time + 15)
    took = time.monotonic() - killed_at
    print(f"\nrescheduled {took:.1f} s after the kill (service_down_time "
          f"{client_config.service_down_time:g} s)")
    assert built["status"] == "available" and built["host"] == "vol-spare"
    assert built["attempts"][0]["host"] == "vol-slow"
    assert "stopped reporting" in built["attempts"][0]["error"]
    assert claims.holder(placed["id"]) == "vol-spare"
    assert claims.usage("vol-slow") == {"DISK_GB": 0}
    assert took <= client_config.service_down_time + 5
