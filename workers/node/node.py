"""A worker node's own life: its managers, its heartbeats, its way out.

A node is one Celery worker process tree serving some services on one
host. :class:`NodeStep`, a worker bootstep the app names
(:data:`workers.core.application.NODE_STEP`), makes a Celery worker a node:
when the worker is built (before its pool forks) it registers one task per
endpoint and periodic task of the services whose queues the worker consumes;
before it consumes, its main process builds each service's manager and runs
``init_host`` (a failure stops the node with one clear line). While it
runs, a thread reports each service to the registry every
``report_interval`` seconds. On warm shutdown it leaves the registry as soon
as the consumer stops, and runs ``cleanup_host`` once the running tasks are
done. Periodic tasks are sent by one scheduler thread of the main process
(see :mod:`workers.node.periodic`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from celery import bootsteps, signals

from managers.base import Manager
from workers.core.addresses import is_redis_address
from workers.core.application import Taskyard
from workers.core.keys import VERSION, key
from workers.exceptions import ConfigError
from workers.node import exits, logs
from workers.node.endpoints import register_endpoint_tasks
from workers.node.managers import ProcessManagers, build_manager
from workers.node.mover import Mover
from workers.node.periodic import PeriodicScheduler, register_periodic_tasks
from workers.node.recovery import Recovery

log = logging.getLogger("taskyard.node")

#: Held by the one node of the fleet that forgets long-gone hosts, for this many seconds.
REGISTRY_HYGIENE_KEY = key("registry-hygiene")
REGISTRY_HYGIENE_EVERY_S = 60


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
        #: Whether the APIs of the node's services are published (at the first good beat).
        self.published = False
        #: Service -> why its inventory could not be reported (logged once per cause).
        self.inventory_errors: dict[str, str] = {}

    def beat(self) -> None:
        """Report every service (publishing their APIs first, once, for callers)."""
        if not self.published:
            self.node.publish_apis()
            self.published = True
        self.report_count += 1
        for service, manager in self.node.managers.items():
            try:
                capabilities = manager.capabilities()
            except Exception as exc:
                capabilities = {"error": f"{type(exc).__name__}: {exc}"}
            # Inventory first: once a node is seen up, placement finds what it offers.
            if getattr(manager, "placement", None) is not None:
                self.report_inventory(service, manager)
            self.node.registry.report(service, self.node.host, {
                "service": service,
                "host": self.node.host,
                "pid": os.getpid(),
                "version": VERSION,
                "rpc_api_version": manager.rpc_api_version,
                "started_at": self.node.started_at,
                "report_count": self.report_count,
                "capabilities": capabilities,
            })
        self.node.housekeeping()

    def report_inventory(self, service: str, manager: Manager) -> None:
        """Report what the node offers for placement (out of the index while disabled).

        A failure (the backend cannot say its capacity) is logged when it
        starts or changes, and leaves the last inventory in place.
        """
        node = self.node
        try:
            manager.report_inventory(node.config.zone,
                                     listed=not node.registry.is_disabled(service, node.host))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if self.inventory_errors.get(service) != error:
                log.warning("inventory of %s on %s cannot be reported: %s", service,
                            node.host, error)
            self.inventory_errors[service] = error
        else:
            self.inventory_errors.pop(service, None)

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

    def __init__(self, app: Taskyard, managers: ProcessManagers) -> None:
        self.app = app
        self.config = app.config
        self.host = app.config.host
        self.services = sorted(managers.served)
        self.process_managers = managers
        #: The managers of the main process, by service (built by :meth:`start`).
        self.managers: dict[str, Manager] = {}
        self.registry = app.registry
        self.recovery = Recovery(app)
        self.started_at = time.time()
        self.heartbeat: Heartbeat | None = None
        self.scheduler: PeriodicScheduler | None = None
        #: Hands due delayed requests to their queues (while this node holds the lease).
        self.mover: Mover | None = None
        #: Armed when a warm shutdown begins (see :meth:`NodeStep.stop`).
        self.deadline: threading.Timer | None = None
        self._left = False
        self._cleaned = False

    def start(self) -> None:
        """Claim the host name, build and initialise every manager, then start reporting.

        Raises on failure (a host name held by a live node, a driver that cannot start).
        """
        self.recovery.start()
        for service in self.services:
            try:
                manager = build_manager(self.app, self.app.spec(service))
                manager.init_host()
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"{service}: init_host failed: {type(exc).__name__}: {exc}"
                ) from exc
            self.process_managers.set(service, manager)
            self.managers[service] = manager
            log.info("%s ready on %s (driver %s)", service, self.host,
                     type(manager.driver).__name__)
        self.heartbeat = Heartbeat(self, self.config.report_interval)
        try:
            self.heartbeat.beat()
        except Exception as exc:
            log.warning("first heartbeat of %s failed: %s", self.host, exc)
        self.heartbeat.start()
        if is_redis_address(self.config.broker_url):
            self.mover = Mover(self.app.redis(self.config.broker_url), self.host)
            self.mover.start()
        periodic = [(s, p) for s in self.services for p in self.app.spec(s).periodic.values()]
        if periodic:
            self.scheduler = PeriodicScheduler(
                self.app, self.host, self.app.records, periodic,
                pending_ttl=self.config.visibility_timeout,
            )
            try:
                self.scheduler.clear_pending()
            except Exception as exc:
                log.warning("could not clear pending periodic runs of %s: %s", self.host, exc)
            self.scheduler.start()

    def housekeeping(self) -> None:
        """At each heartbeat: the node's part in recovery (see :mod:`workers.node.recovery`),
        and, by one node of the fleet at a time, forgetting hosts down for too long."""
        self.recovery.tick()
        if self.app.records.set(REGISTRY_HYGIENE_KEY, self.host, nx=True,
                                ex=REGISTRY_HYGIENE_EVERY_S):
            for service, host in self.registry.forget_down(self.config.registry_forget_after):
                log.info("forgot %s on %s: down longer than registry_forget_after (%g s)",
                         service, host, self.config.registry_forget_after)

    def publish_apis(self) -> None:
        """Publish the API of every service of this node, for callers without their code."""
        for service in self.managers:
            self.registry.publish_api(self.app.spec(service).api())

    def leave(self) -> None:
        """Stop reporting and leave the registry at once (warm shutdown has begun)."""
        if self._left:
            return
        self._left = True
        if self.mover is not None:
            self.mover.stop()
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

    def arm_deadline(self) -> None:
        """Give running requests ``shutdown_timeout`` seconds, then stop them.

        The node then shuts down cold, which stops them and puts their
        messages back in their queues (they are acknowledged only when done),
        for another node or this one's next start.
        """
        if self.deadline is None:
            self.deadline = threading.Timer(self.config.shutdown_timeout, self._cut_off)
            self.deadline.daemon = True
            self.deadline.start()

    def _cut_off(self) -> None:
        log.warning("requests still running %g s after the stop signal (shutdown_timeout): "
                    "stopping them; their messages go back to their queues",
                    self.config.shutdown_timeout)
        exits.cutting_off()
        os.kill(os.getpid(), signal.SIGQUIT)

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
        terminations = self.process_managers.terminations()
        if terminations is not None:
            terminations.stop()
        self.recovery.stop()


def served_services(app: Taskyard) -> frozenset[str]:
    """The configured services whose queues the worker of ``app`` consumes (all without -Q)."""
    queues = app.amqp.queues
    names = list((queues.consume_from or queues).keys())
    return frozenset(n.split(".", 1)[0] for n in names) & set(app.config.services)


def register_tasks(app: Taskyard, served: frozenset[str]) -> ProcessManagers:
    """Register the endpoint and periodic tasks of the ``served`` services on ``app``.

    Returns the process managers the tasks dispatch to.
    """
    managers = ProcessManagers(app, served)
    for service in sorted(served):
        spec = app.spec(service)
        register_endpoint_tasks(app, spec, managers)
        register_periodic_tasks(app, spec, managers)
    return managers


class NodeStep(bootsteps.StartStopStep):
    """Worker bootstep: a taskyard node in a Celery worker.

    Built with the worker (before its pool forks, after its queues are
    known): registers the endpoint and periodic tasks of the services the
    worker consumes. Started after the pool, before the consumer: builds
    the managers, runs ``init_host`` and starts the heartbeat. Stopped right
    after the consumer (before the pool waits for running requests): leaves
    the registry and, on a warm shutdown, arms ``shutdown_timeout``.
    """

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        app = worker.app
        if not isinstance(app, Taskyard):
            raise TypeError(f"a taskyard node needs a Taskyard app, got {app!r}")
        app.serving = True
        # A node's consumer takes each message in one step with its record.
        app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                             "taskyard_take": True}
        backend = app.backend  # made already in this thread, perhaps, before it served
        if hasattr(backend, "for_node"):
            backend.for_node()
        managers = register_tasks(app, served_services(app))
        logs.install_now()
        self.node = Node(app, managers)
        worker.taskyard_node = self.node

    def start(self, worker: Any) -> None:
        try:
            self.node.start()
        except Exception as exc:
            host = self.node.host
            log.critical("taskyard node %s cannot start: %s", host, exc)
            print(f"taskyard node {host} cannot start: {exc}", file=sys.stderr)
            self.node.stop()
            raise SystemExit(1) from exc

    def stop(self, worker: Any) -> None:
        """Warm shutdown: leave now; running requests get ``shutdown_timeout`` seconds."""
        self.node.leave()
        self.node.arm_deadline()

    def terminate(self, worker: Any) -> None:
        """Cold shutdown: leave now; running requests are stopped."""
        self.node.leave()


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    """The worker stopped (running requests done): clean up."""
    node = getattr(sender, "taskyard_node", None)
    if node is not None:
        node.stop()


signals.worker_shutdown.connect(_on_worker_shutdown, weak=False,
                                dispatch_uid="taskyard.node.shutdown")
