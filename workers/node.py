"""A worker node's own life: its managers, its heartbeats, its way out.

A node is one Celery worker process tree serving some services on one
host. Before it consumes, its main process builds each service's manager
and runs ``init_host`` (a failure stops the node with one clear line).
While it runs, a thread reports each service to the registry every
``report_interval`` seconds. On warm shutdown it leaves the registry at
once, and runs ``cleanup_host`` once the running tasks are done. Periodic
tasks are sent by one scheduler thread of the main process (see
:mod:`workers.periodic`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery import bootsteps

import workers
from managers.base import Manager
from workers.config import Config, get_config
from workers.connections import client_for
from workers.exceptions import ConfigError
from workers.periodic import PeriodicScheduler
from workers.registry import Registry
from workers.services import build_manager, served_services, service_specs, set_manager

log = logging.getLogger("taskyard.node")


class Heartbeat(threading.Thread):
    """Reports a node's services to the registry until stopped.

    A failed report (Redis away) is logged once, then retried at every
    interval; it never stops the node.
    """

    def __init__(self, node: Node, interval: float) -> None:
        super().__init__(name="taskyard-heartbeat", daemon=True)
        self.node = node
        self.interval = interval
        self.stopped = threading.Event()
        self.report_count = 0
        self.failing = False

    def beat(self) -> None:
        self.report_count += 1
        for service, manager in self.node.managers.items():
            try:
                capabilities = manager.capabilities()
            except Exception as exc:
                capabilities = {"error": f"{type(exc).__name__}: {exc}"}
            self.node.registry.report(service, self.node.host, {
                "service": service,
                "host": self.node.host,
                "pid": os.getpid(),
                "version": workers.__version__,
                "rpc_api_version": manager.rpc_api_version,
                "started_at": self.node.started_at,
                "report_count": self.report_count,
                "capabilities": capabilities,
            })

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.beat()
            except Exception as exc:
                if not self.failing:
                    log.warning("heartbeat of %s failed (%s); retrying every %g s",
                                self.node.host, exc, self.interval)
                    self.failing = True
            else:
                if self.failing:
                    log.warning("heartbeat of %s works again", self.node.host)
                    self.failing = False
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()


class Node:
    """The services of one host in one worker, with their managers and heartbeat."""

    def __init__(self, config: Config, services: Iterable[str], app: Any = None) -> None:
        self.config = config
        self.app = app
        self.host = config.host
        self.services = list(services)
        self.managers: dict[str, Manager] = {}
        self.registry = Registry.from_config(config)
        self.started_at = time.time()
        self.heartbeat: Heartbeat | None = None
        self.scheduler: PeriodicScheduler | None = None
        #: Armed when a warm shutdown begins (see :func:`on_shutting_down`).
        self.deadline: threading.Timer | None = None
        self._left = False
        self._cleaned = False

    def start(self) -> None:
        """Build and initialise every manager, then start reporting. Raises on failure."""
        specs = service_specs(self.config)
        for service in self.services:
            try:
                manager = build_manager(specs[service], self.config)
                manager.init_host()
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"{service}: init_host failed: {type(exc).__name__}: {exc}"
                ) from exc
            set_manager(service, manager)
            self.managers[service] = manager
            log.info("%s ready on %s (driver %s)", service, self.host,
                     type(manager.driver).__name__)
        self.heartbeat = Heartbeat(self, self.config.report_interval)
        try:
            self.heartbeat.beat()
        except Exception as exc:
            log.warning("first heartbeat of %s failed: %s", self.host, exc)
        self.heartbeat.start()
        periodic = [(s, p) for s in self.services for p in specs[s].periodic.values()]
        if periodic and self.app is not None:
            self.scheduler = PeriodicScheduler(
                self.app, self.host, client_for(self.config, self.config.records_url), periodic,
                pending_ttl=self.config.visibility_timeout,
            )
            try:
                self.scheduler.clear_pending()
            except Exception as exc:
                log.warning("could not clear pending periodic runs of %s: %s", self.host, exc)
            self.scheduler.start()

    def leave(self) -> None:
        """Stop reporting and leave the registry at once (warm shutdown has begun)."""
        if self._left:
            return
        self._left = True
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        for service in self.managers:
            try:
                self.registry.remove(service, self.host)
            except Exception as exc:
                log.warning("could not remove %s/%s from the registry: %s",
                            service, self.host, exc)

    def stop(self) -> None:
        """Leave, then run every manager's ``cleanup_host`` (running work has finished)."""
        self.leave()
        if self.deadline is not None:
            self.deadline.cancel()
        if self._cleaned:
            return
        self._cleaned = True
        for service, manager in self.managers.items():
            try:
                manager.cleanup_host()
            except Exception:
                log.exception("cleanup_host of %s failed", service)


class NodeStep(bootsteps.StartStopStep):
    """Worker bootstep: start the node after the pool, before the consumer."""

    requires = ("celery.worker.components:Pool",)

    def start(self, worker: Any) -> None:
        config = get_config()
        node = Node(config, sorted(served_services(worker.app)), app=worker.app)
        try:
            node.start()
        except Exception as exc:
            log.critical("taskyard node %s cannot start: %s", config.host, exc)
            print(f"taskyard node {config.host} cannot start: {exc}", file=sys.stderr)
            node.stop()
            raise SystemExit(1) from exc
        worker.taskyard_node = node
        _nodes.append(node)


def on_shutting_down(how: str | None = None, **_: Any) -> None:
    """Warm shutdown began (signal received): leave the registry now, and start the clock.

    Running requests get ``shutdown_timeout`` seconds to finish; then the
    node shuts down cold, which stops them and puts their messages back in
    their queues (they are acknowledged only when done), for another node or
    this one's next start.
    """
    node = _current_node()
    if node is None:
        return
    node.leave()
    if how == "Warm" and node.deadline is None:
        node.deadline = threading.Timer(node.config.shutdown_timeout, _cut_off, (node,))
        node.deadline.daemon = True
        node.deadline.start()


def _cut_off(node: Node) -> None:
    log.warning("requests still running %g s after the stop signal (shutdown_timeout): "
                "stopping them; their messages go back to their queues",
                node.config.shutdown_timeout)
    os.kill(os.getpid(), signal.SIGQUIT)


def on_shutdown(sender: Any = None, **_: Any) -> None:
    """The worker stopped (running tasks done): clean up."""
    node = getattr(sender, "taskyard_node", None) or _current_node()
    if node is not None:
        node.stop()
        if node in _nodes:
            _nodes.remove(node)


_nodes: list[Node] = []


def _current_node() -> Node | None:
    return _nodes[-1] if _nodes else None
