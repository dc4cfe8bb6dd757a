"""The suite's private world: one redis-server, the two apps, and their workers.

A :class:`Lab` starts a ``redis-server`` on a free port and builds, from the
same settings the children get, taskyard's app (with the bench service) and
the plain Celery app. It starts taskyard nodes and plain workers side by
side, waits until each has taken a message, counts what each was sent, and
stops everything it started when it is closed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.harness import (
    START_TIMEOUT_S,
    Worker,
    child_environment,
    node_command,
    plain_command,
    wait_for,
)
from bench.noop import SERVICE, tally_key
from bench.plain import NOOP_SERVICE, VOLUME_SERVICE, create_plain_app
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard, set_default_app
from workers.core.config import Config, load_config
from workers.core.keys import host_queue
from workers.core.registry import Registry

#: Services of the nodes that the figures use, and their plain counterparts.
NODE_SERVICES = (SERVICE, "volume")
PLAIN_SERVICES = (NOOP_SERVICE, VOLUME_SERVICE)


def _load_config(env: dict[str, str]) -> Config:
    """The settings a child with ``env`` reads (``env`` set only while reading)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return load_config()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Pair:
    """A taskyard node and a plain Celery worker for the same host name and pool."""

    host: str
    pool: str
    concurrency: int
    node: Worker
    plain: Worker
    #: Messages each has been sent so far (warm-ups included).
    sent: dict[str, int] = field(default_factory=lambda: {"taskyard": 0, "plain": 0})


class Lab:
    """Private Redis, settings, apps and worker processes of one benchmark run."""

    def __init__(self, loglevel: str = "INFO", keep_dir: Path | None = None) -> None:
        self.loglevel = loglevel
        self.dir = Path(keep_dir or tempfile.mkdtemp(prefix="taskyard-bench-"))
        self._own_dir = keep_dir is None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.workers: list[Worker] = []
        self.server = RedisServer(self.dir / "redis", appendonly=False)
        self.server.start()
        try:
            self.env = child_environment(self.server.url, self.dir / "state")
            self.config = _load_config(self.env)
            # The suite's own process uses the same settings as its children.
            self.app = Taskyard(self.config)
            set_default_app(self.app)
            self.plain: Celery = create_plain_app(self.config)
            self.redis = redis.Redis.from_url(self.config.records_url)
            self.registry = Registry(self.redis, service_down_time=self.config.service_down_time)
        except BaseException:
            self.server.stop()
            raise

    # -- apps --------------------------------------------------------------------

    def client(self, service: str = SERVICE, host: str | None = None) -> Client:
        return Client(service, host=host, app=self.app)

    def plain_task(self, name: str, service: str = NOOP_SERVICE) -> Any:
        return self.plain.tasks[f"{service}.{name}"]

    @staticmethod
    def plain_queue(host: str | None, service: str = NOOP_SERVICE) -> str:
        return host_queue(service, host) if host else service

    def tally(self, batch: str) -> list[int]:
        """How often each ``mark`` of ``batch`` ran, by message index (absent: 0)."""
        return [int(v) for v in self.redis.hvals(tally_key(batch))]

    # -- workers -----------------------------------------------------------------

    def start_node(self, host: str, pool: str, concurrency: int,
                   services: Sequence[str] = NODE_SERVICES) -> Worker:
        worker = Worker(f"taskyard node {host} ({pool})",
                        node_command(services, host, pool, concurrency, self.loglevel),
                        self.env, self.dir / f"node-{host}.log")
        self.workers.append(worker.start())
        return worker

    def start_plain(self, host: str, pool: str, concurrency: int,
                    services: Sequence[str] = PLAIN_SERVICES) -> Worker:
        queues = [q for s in services for q in (s, host_queue(s, host))]
        worker = Worker(f"plain celery worker {host} ({pool})",
                        plain_command(queues, host, pool, concurrency, self.loglevel),
                        self.env, self.dir / f"plain-{host}.log")
        self.workers.append(worker.start())
        return worker

    def wait_ready(self, host: str, node: Worker, plain: Worker, concurrency: int = 1,
                   services: Sequence[str] = NODE_SERVICES,
                   timeout: float = START_TIMEOUT_S) -> int:
        """Registry up for the node; then both answer warm-ups (two per pool process).

        The warm-ups go to the host's own queues, behind anything already
        waiting there. Returns how many warm-ups each was sent.
        """

        def node_up() -> bool:
            node.check_alive()
            return all(self.registry.is_up(s, host) for s in services)

        wait_for(node_up, timeout, f"{node.name} to report up")
        client = self.client(host=host).prepare(timeout=timeout)
        noop = self.plain_task("noop")
        queue = self.plain_queue(host)
        warm = max(2, 2 * concurrency)
        for handle in [client.cast("noop") for _ in range(warm)]:
            node.check_alive()
            handle.wait()
        for result in [noop.apply_async(queue=queue) for _ in range(warm)]:
            plain.check_alive()
            result.get(timeout=timeout)
        return warm

    def stop(self, workers: Sequence[Worker]) -> None:
        """Stop ``workers`` together (SIGTERM to all first, then wait for each)."""
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.stop()
            if worker in self.workers:
                self.workers.remove(worker)

    @contextlib.contextmanager
    def pair(self, host: str, pool: str, concurrency: int,
             ready_timeout: float = START_TIMEOUT_S) -> Iterator[Pair]:
        """A node and a plain worker, started together, ready once both took messages.

        Both are stopped on the way out.
        """
        started: list[Worker] = []
        try:
            node = self.start_node(host, pool, concurrency)
            started.append(node)
            plain = self.start_plain(host, pool, concurrency)
            started.append(plain)
            warm = self.wait_ready(host, node, plain, concurrency, timeout=ready_timeout)
            yield Pair(host, pool, concurrency, node, plain, {"taskyard": warm, "plain": warm})
        finally:
            self.stop(started)

    @contextlib.contextmanager
    def fleet(self, hosts: Sequence[str]) -> Iterator[list[Worker]]:
        """A solo node of the bench service and a solo plain worker per host, all ready."""
        started: list[Worker] = []
        try:
            for host in hosts:
                started.append(self.start_node(host, "solo", 1, services=(SERVICE,)))
                started.append(self.start_plain(host, "solo", 1, services=(NOOP_SERVICE,)))
            for i, host in enumerate(hosts):
                self.wait_ready(host, started[2 * i], started[2 * i + 1],
                                services=(SERVICE,))
            yield started
        finally:
            self.stop(started)

    def close(self) -> None:
        try:
            self.stop(list(self.workers))
        finally:
            for app in (self.app, self.plain):
                with contextlib.suppress(Exception):
                    app.close()
            set_default_app(None)
            self.server.stop()
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def log_tails(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_tail()}" for w in self.workers)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def elapsed_since(start: float) -> float:
    """Seconds since ``start`` (``time.perf_counter``), never zero."""
    return max(time.perf_counter() - start, 1e-9)
