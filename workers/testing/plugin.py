"""taskyard's pytest plugin (entry point ``pytest11``): the testing kit as fixtures.

Installed with taskyard, active in every pytest run of a project that has it:

``taskyard_records``
    A fakeredis for a manager's records (with Lua scripts).
``taskyard_config``
    The project's settings (``TASKYARD_ENV=testing`` unless set) for the host
    ``test-node``, on the memory transport, records on fakeredis.
``taskyard_node``
    An :class:`~workers.testing.InProcessNode` of every configured service.
``taskyard_redis_server``
    A private ``redis-server`` on a free port, for the session.
``taskyard_node_process``
    A factory: ``taskyard_node_process("node-a", services=["echo"])`` starts a
    real node on the private Redis (the project's settings, testing
    environment) and waits until it reports up; every node it started is
    stopped after the test.
``taskyard_fleet``
    A :class:`~workers.testing.RemoteFleet` on the private Redis, to call
    those nodes: ``taskyard_fleet.client("echo").call("echo", text="hi")``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from workers.cli.embedded import RedisServer
from workers.core.config import Config, load_config
from workers.core.registry import Registry
from workers.testing.kit import (
    InProcessNode,
    NodeProcess,
    RemoteFleet,
    environment_set,
    fake_redis,
    in_memory,
    node_environment,
    node_processes,
)


@pytest.fixture
def taskyard_records() -> Any:
    """A new fakeredis for records and the registry."""
    return fake_redis()


@pytest.fixture
def taskyard_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Config:
    """The project's testing settings for ``test-node``, in memory, state in a temporary dir."""
    monkeypatch.setenv("TASKYARD_ENV", _testing_env())
    monkeypatch.setenv("TASKYARD_STATE_DIR", str(tmp_path / "state"))
    return in_memory(load_config(), host="test-node")


@pytest.fixture
def taskyard_node(taskyard_config: Config, taskyard_records: Any) -> Iterator[InProcessNode]:
    """A node of every configured service in this process, on the memory transport."""
    with InProcessNode(taskyard_config, records=taskyard_records, host="test-node") as node:
        yield node


@pytest.fixture(scope="session")
def taskyard_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private ``redis-server`` on a free port for the session (never anyone else's data)."""
    server = RedisServer(tmp_path_factory.mktemp("taskyard-redis")).start()
    yield server
    server.stop()


@pytest.fixture
def taskyard_node_process(taskyard_redis_server: RedisServer, tmp_path: Path,
                          ) -> Iterator[Callable[..., NodeProcess]]:
    """Start real node processes on the private Redis; they are stopped after the test."""
    registry = Registry(redis.Redis.from_url(taskyard_redis_server.url), service_down_time=60)
    with node_processes() as started:

        def start(host: str, *, services: list[str] | None = None, wait: bool = True,
                  env: dict[str, str] | None = None, **options: Any) -> NodeProcess:
            environment = node_environment(taskyard_redis_server.url, tmp_path / "state",
                                           TASKYARD_ENV=_testing_env(), **(env or {}))
            node = NodeProcess(host, environment, tmp_path / f"{host}.log",
                               services=services or [], cwd=Path.cwd(), **options).start()
            started.append(node)
            if wait:
                node.wait_up(registry, services or _configured(environment))
            return node

        yield start


@pytest.fixture
def taskyard_fleet(taskyard_redis_server: RedisServer, tmp_path: Path) -> Iterator[RemoteFleet]:
    """The app of the fleet on the private Redis (the project's testing settings)."""
    fleet = RemoteFleet(taskyard_redis_server.url, TASKYARD_ENV=_testing_env(),
                        TASKYARD_STATE_DIR=str(tmp_path / "state"))
    yield fleet
    fleet.close()


def _testing_env() -> str:
    return os.environ.get("TASKYARD_ENV") or "testing"


def _configured(environment: dict[str, str]) -> list[str]:
    """The services a node started with ``environment`` (and no names) serves: all configured."""
    with environment_set({k: v for k, v in environment.items() if k.startswith("TASKYARD_")}):
        return list(load_config().services)
