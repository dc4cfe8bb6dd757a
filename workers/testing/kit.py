"""The pieces of the testing kit (see :mod:`workers.testing`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from celery.contrib.testing.worker import start_worker

from drivers.loading import missing_methods
from managers.base import Fleet, Manager
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.config import Config, load_config
from workers.core.keys import host_queue
from workers.core.registry import Registry
from workers.exceptions import ConfigError

M = TypeVar("M", bound=Manager)

#: Where an in-process node keeps its records: a URL nothing listens on, served by fakeredis.
FAKE_RECORDS_URL = "redis://fakeredis.invalid:6379/0"
#: Seconds a node process may take to start and report itself up.
NODE_START_TIMEOUT_S = 60.0


def fake_redis() -> Any:
    """A new in-process Redis (with Lua scripts) for records and the registry."""
    try:
        import fakeredis
    except ImportError:  # an optional dependency: only the kit's first two levels need it
        raise ConfigError(
            "the testing kit keeps records in fakeredis, which is not installed: "
            "pip install 'taskyard[testing]'"
        ) from None
    return fakeredis.FakeRedis()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return it; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- 1. a manager, called directly ---------------------------------------------------------


def build_manager(manager_cls: type[M], driver: Any, *, service: str | None = None,
                  host: str = "test-node", settings: Any = None, redis: Any = None,
                  fleet: Fleet | None = None, setup: bool = True) -> M:
    """A manager of ``manager_cls`` with ``driver`` and its records on fakeredis (or ``redis``).

    The driver is checked against the manager's driver interface as a node
    checks it; with ``setup`` the manager's ``init_host`` runs (the driver's
    setup and recovery), as on a node before it takes messages.
    """
    interface = manager_cls.driver_interface
    if interface is not None:
        missing = missing_methods(driver, interface)
        if missing:
            raise ConfigError(f"{driver!r} does not implement {interface.__qualname__}: "
                              f"missing {', '.join(missing)}")
    manager = manager_cls(
        service=service or manager_cls.__name__.removesuffix("Manager").lower() or "service",
        host=host, driver=driver, settings=settings,
        redis=redis if redis is not None else fake_redis(), fleet=fleet,
    )
    if setup:
        manager.init_host()
    return manager


# -- 2. a node in this process ----------------------------------------------------------------


def in_memory(config: Config, **overrides: Any) -> Config:
    """``config`` on Celery's in-process transport, its records at :data:`FAKE_RECORDS_URL`.

    The memory transport is polled; every 10 ms keeps tests quick.
    """
    return config.with_overrides(
        broker_url="memory://", result_backend="cache+memory://", records_url=FAKE_RECORDS_URL,
        broker_transport_options={"polling_interval": 0.01}, **overrides,
    )


class InProcessNode:
    """A taskyard node in this process (threads pool) on the memory transport.

    ``with InProcessNode() as node: node.client("echo").call("echo", text="hi")``
    runs the project's settings (``config``, by default those of the current
    directory) for the host ``test-node``, serving ``services`` (all
    configured ones by default), with records in ``records`` (a new
    fakeredis by default). ``app`` runs an app of your own instead.
    """

    def __init__(self, config: Config | None = None, *, services: Sequence[str] | None = None,
                 records: Any = None, host: str = "test-node", concurrency: int = 2,
                 app: Taskyard | None = None, queues: Sequence[str] | None = None) -> None:
        if app is None:
            config = in_memory(config or load_config(), host=host)
            app = Taskyard(config, redis_clients={
                config.records_url: records if records is not None else fake_redis()})
        self.app = app
        names = list(services) if services is not None else list(app.config.services)
        for name in names:
            app.config.service(name)
        self.queues = list(queues) if queues is not None else [
            queue for name in names for queue in (name, host_queue(name, app.config.host))]
        self.concurrency = concurrency
        self._worker: contextlib.AbstractContextManager[Any] | None = None

    def __enter__(self) -> InProcessNode:
        self._worker = start_worker(self.app, pool="threads", concurrency=self.concurrency,
                                    perform_ping_check=False, queues=self.queues,
                                    shutdown_timeout=10)
        self._worker.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._worker is not None:
            self._worker.__exit__(kind, exc, tb)
            self._worker = None

    @property
    def records(self) -> Any:
        """The node's records (and registry) Redis."""
        return self.app.records

    def client(self, service: str, **options: Any) -> Client:
        """A client of this node's app for ``service`` (``host``, ``timeout``, ``user``...)."""
        return Client(service, app=self.app, **options)

    def manager(self, service: str) -> Manager:
        """The manager of ``service`` the node's tasks run in this process."""
        return manager_of(self.app, service)


def manager_of(app: Taskyard, service: str) -> Manager:
    """The manager of ``service`` that an in-process node of ``app`` runs in this process."""
    task = app.tasks[f"{service}.ping"]
    return task.managers.get(service)  # type: ignore[attr-defined, no-any-return]


# -- 3. a real node process -------------------------------------------------------------------


def node_environment(redis_url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a node or CLI process on ``redis_url``: this process's environment
    without its ``TASKYARD_*`` settings, plus ``extra`` (``TASKYARD_ENV="testing"``, say)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKYARD_", "DYNACONF_"))}
    env.update({"TASKYARD_REDIS_URL": redis_url, "TASKYARD_STATE_DIR": str(state_dir),
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


class NodeProcess:
    """``taskyard worker`` as a real process tree (its own session), logging to a file."""

    def __init__(self, host: str, env: Mapping[str, str], log_path: Path,
                 services: Sequence[str] = (), pool: str = "prefork", concurrency: int = 2,
                 command: Sequence[str] | None = None, cwd: Path | None = None) -> None:
        self.host = host
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.services = list(services)
        self.cwd = cwd
        self.command = list(command) if command else [
            sys.executable, "-m", "workers.cli", "worker", *self.services,
            "--host", host, "--pool", pool, "--concurrency", str(concurrency),
            "--loglevel", "INFO",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "the node was not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_up(self, registry: Registry, services: Sequence[str] | None = None,
                timeout: float = NODE_START_TIMEOUT_S) -> NodeProcess:
        """Wait until the node reports each of ``services`` up (its own services by default)."""
        wanted = list(services or self.services)

        def up() -> bool:
            if not self.alive():
                raise AssertionError(f"node {self.host} exited:\n{self.log()[-3000:]}")
            return all(registry.is_up(s, self.host) for s in wanted)

        wait_for(up, timeout, f"node {self.host} to report {', '.join(wanted)} up")
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


class RemoteFleet:
    """The app of a fleet on a Redis of its own (the project's settings, ``redis_url`` set)."""

    def __init__(self, redis_url: str, **environment: str) -> None:
        with environment_set({"TASKYARD_REDIS_URL": redis_url, **environment}):
            self.app = Taskyard(load_config())

    def client(self, service: str, **options: Any) -> Client:
        """A client of the fleet for ``service`` (``host``, ``timeout``, ``user``...)."""
        return Client(service, app=self.app, **options)

    @property
    def registry(self) -> Registry:
        return self.app.registry

    def close(self) -> None:
        self.app.close()


@contextlib.contextmanager
def environment_set(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` while the block runs (settings read there see them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def node_processes() -> Iterator[list[NodeProcess]]:
    """A list to put started nodes in; each is stopped (then killed) at the end."""
    nodes: list[NodeProcess] = []
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()
            node.kill()
