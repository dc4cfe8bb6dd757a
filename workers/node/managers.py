"""The managers of one node process: built from the specs, one per service per process.

A node's main process builds each manager before it consumes (and runs its
``init_host``); every other process of the node (a prefork child) builds
its own on first use, since objects made before a fork must not be shared.
A manager gets its driver (loaded by name and checked against its
interface), its settings, a Redis client for its records, and a
:class:`NodeFleet` to reach the rest of the fleet.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from drivers.executor import Executor
from drivers.loading import load_driver
from drivers.scheduler.hosts import HostState
from managers.base import Manager
from managers.claims import ClaimStore
from managers.placement import Placement
from workers.client.rpc import Client
from workers.core.addresses import is_redis_address
from workers.core.application import Taskyard
from workers.core.config import Config
from workers.core.keys import host_queue, task_name
from workers.core.registry import HostsView
from workers.core.specs import ServiceSpec
from workers.node.cancellation import Terminations

log = logging.getLogger("taskyard.node")


def expand_options(options: Mapping[str, Any], config: Config) -> dict[str, Any]:
    """Replace ``{host}`` and ``{state_dir}`` in string options with this node's values."""
    state_dir = str(config.state_dir)

    def expand(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{host}", config.host).replace("{state_dir}", state_dir)
        if isinstance(value, list):
            return [expand(v) for v in value]
        if isinstance(value, dict):
            return {k: expand(v) for k, v in value.items()}
        return value

    return {key: expand(value) for key, value in options.items()}


class NodeFleet:
    """The :class:`managers.base.Fleet` a node gives its managers: registry, claims, client.

    :meth:`hosts` reads the registry incrementally (:class:`HostsView`): only the
    reports that changed. :meth:`candidates` reads a placement's candidates from
    the index of free capacity with their registry entries, in one round trip.
    """

    def __init__(self, app: Taskyard) -> None:
        self.app = app
        self._views: dict[str, HostsView] = {}
        self._claims: dict[str, ClaimStore] = {}

    def hosts(self, service: str) -> list[dict[str, Any]]:
        self.app.config.service(service)
        view = self._views.get(service)
        if view is None:
            view = self._views[service] = HostsView(service)
        return view.read(self.app.records, self.app.config.service_down_time)

    def cast(self, service: str, method: str, /, host: str | None = None,
             **kwargs: Any) -> str:
        return Client(service, app=self.app, host=host).cast(method, **kwargs).id

    def candidates(self, service: str, needs: Mapping[str, float], limit: int, *,
                   zone: str | None = None, include: Sequence[str] = ()) -> list[HostState]:
        """Read from the index of free capacity with each host's registry entries, in one
        round trip (the hosts ``include`` names, in one more)."""
        registry = self.app.registry
        claims = self._claims.get(service)
        if claims is None:
            claims = self._claims[service] = ClaimStore(self.app.records, service)
        found, now = claims.candidates(needs, limit, zone, also=registry.state_keys(service))
        hosts = []
        for candidate in found:
            state = registry.state_of(candidate.also[0], candidate.also[1], now)
            hosts.append(HostState(candidate.host, state["state"], {}, state["disabled_reason"],
                                   state["age"], candidate.zone, candidate.free,
                                   candidate.failures))
        have = {host.host for host in hosts}
        extra = [host for host in include if host not in have]
        if extra:
            states = registry.states(service, extra)
            for candidate in claims.hosts(extra, list(needs)):
                state = states[candidate.host]
                hosts.append(HostState(candidate.host, state["state"], {},
                                       state["disabled_reason"], state["age"], candidate.zone,
                                       candidate.free, candidate.failures))
        return hosts

    def states(self, service: str, hosts: list[str]) -> dict[str, dict[str, Any]]:
        return self.app.registry.states(service, hosts)

    def placement(self, service: str) -> Placement | None:
        """As the service's nodes published it; as configured here when none has."""
        api = self.app.api(service)
        if api is not None and api.placement is not None:
            return api.placement
        if service in self.app.config.services:
            return self.app.spec(service).manager_cls.placement
        return None

    def resend(self, service: str, method: str, /, *, host: str | None, task_id: str,
               kwargs: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        self.app.send_task(task_name(service, method), kwargs=dict(kwargs), task_id=task_id,
                           queue=host_queue(service, host) if host else service,
                           headers={k: v for k, v in headers.items()
                                    if k.startswith("taskyard_")})


def build_manager(app: Taskyard, spec: ServiceSpec, redis: Any = None) -> Manager:
    """A new manager for ``spec`` with its driver loaded and checked (no setup run yet)."""
    config = app.config
    driver = load_driver(
        spec.name,
        spec.config.driver,
        spec.manager_cls.driver_interface,
        expand_options(spec.config.driver_options, config),
        inject={"executor": Executor(config.root_helper)},
    )
    return spec.manager_cls(
        service=spec.name,
        host=config.host,
        driver=driver,
        settings=spec.config,
        redis=redis if redis is not None else app.records,
        fleet=NodeFleet(app),
    )


class ProcessManagers:
    """The managers of the services one node serves, one per service per process."""

    def __init__(self, app: Taskyard, served: frozenset[str]) -> None:
        self.app = app
        #: The services whose queues this node consumes.
        self.served = served
        #: The node's main process (a prefork child runs requests in a process of its own).
        self.main_pid = os.getpid()
        self._managers: dict[str, Manager] = {}
        self._terminations: Terminations | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _forget_parents(self) -> None:
        """In a forked child, drop what it inherited from the parent (with the lock)."""
        if self._pid != os.getpid():
            self._managers = {}
            self._terminations = None
            self._pid = os.getpid()

    def terminations(self) -> Terminations | None:
        """This process's watcher of cancellations with terminate (None off the Redis broker)."""
        if self._terminations is not None and self._pid == os.getpid():
            return self._terminations
        config = self.app.config
        if not is_redis_address(config.broker_url):
            return None
        with self._lock:
            self._forget_parents()
            if self._terminations is None:
                self._terminations = Terminations(self.app.redis(config.broker_url))
            return self._terminations

    def get(self, service: str) -> Manager:
        """This process's manager of ``service``, built (its driver set up) on first use."""
        manager = self._managers.get(service)
        if manager is not None and self._pid == os.getpid():
            return manager
        with self._lock:
            self._forget_parents()
            manager = self._managers.get(service)
            if manager is None:
                manager = build_manager(self.app, self.app.spec(service))
                manager.init_process()
                self._managers[service] = manager
                log.debug("built %s manager in process %d", service, os.getpid())
        return manager

    def set(self, service: str, manager: Manager) -> None:
        """Use ``manager`` for ``service`` in this process (the node's main process; tests)."""
        with self._lock:
            self._forget_parents()
            self._managers[service] = manager

    def built(self) -> dict[str, Manager]:
        """The managers this process has built so far."""
        return dict(self._managers) if self._pid == os.getpid() else {}
