"""Two fleets, two apps, one calling process: each call reaches its own fleet.

Each fleet is a private ``redis-server`` with one node (a real process); the
test process holds one :class:`~workers.core.application.Taskyard` app per
fleet, built from settings that differ only in ``redis_url``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.conftest import make_app, make_config
from tests.integration.conftest import Node, node_environment
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.registry import Registry


@pytest.fixture(scope="module")
def fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Taskyard]]:
    servers: list[RedisServer] = []
    nodes: list[Node] = []
    apps: dict[str, Taskyard] = {}
    try:
        for name in ("east", "west"):
            base = tmp_path_factory.mktemp(name)
            server = RedisServer(base / "redis").start()
            servers.append(server)
            env = node_environment(server.url, base / "state")
            node = Node(f"{name}-node", env, base / "node.log", services=["volume"]).start()
            nodes.append(node)
            registry = Registry(redis.Redis.from_url(server.url), service_down_time=3)
            node.wait_up(registry)
            apps[name] = make_app(make_config(
                env={k: v for k, v in env.items() if k.startswith("TASKYARD_")},
                host=f"{name}-caller"))
        yield apps
    finally:
        for app in apps.values():
            app.close()
        for node in nodes:
            node.stop()
            node.kill()
        for server in servers:
            server.stop()


def test_two_apps_in_one_process_each_reach_their_own_fleet(fleets: dict[str, Taskyard]) -> None:
    east, west = Client("volume", app=fleets["east"]), Client("volume", app=fleets["west"])
    for _ in range(3):  # interleaved, on the same connections each time
        assert east.call("ping")["host"] == "east-node"
        assert west.call("ping")["host"] == "west-node"
    made = east.call("create_volume", size_gb=1, name="only-in-east")
    assert [v["name"] for v in east.call("list_volumes")] == ["only-in-east"]
    assert west.call("list_volumes") == []
    assert east.fanout("ping") == ["east-node"] and west.fanout("ping") == ["west-node"]
    assert fleets["east"].registry.hosts("volume") == ["east-node"]
    assert fleets["west"].registry.hosts("volume") == ["west-node"]
    east.call("delete_volume", volume_id=made["id"])
