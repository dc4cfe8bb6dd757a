"""What the service layer knows of each configured service, and its managers.

A :class:`ServiceSpec` is built once per process from the settings: the
manager class, one :class:`~workers.binding.Binder` per endpoint, the
periodic tasks. Clients use it to refuse unknown services and endpoints at
once; nodes use it to register one Celery task per endpoint.

Managers are built lazily, one per service per process (after a fork, the
child builds its own), and can be replaced in tests with
:func:`set_manager`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from drivers.executor import Executor, set_default_executor
from drivers.loading import load_driver, load_manager_class
from managers.base import Manager, PeriodicSpec
from workers.binding import Binder
from workers.config import Config, ServiceConfig, get_config
from workers.connections import client_for
from workers.exceptions import ConfigError, UnknownEndpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """One configured service as the service layer sees it."""

    name: str
    config: ServiceConfig
    manager_cls: type[Manager]
    binders: Mapping[str, Binder]
    periodic: Mapping[str, PeriodicSpec] = field(default_factory=dict)

    def task_name(self, method: str) -> str:
        return f"{self.name}.{method}"

    def binder(self, method: str) -> Binder:
        """The endpoint's binder; :class:`UnknownEndpoint` listing the endpoints otherwise."""
        binder = self.binders.get(method)
        if binder is None:
            raise UnknownEndpoint(
                f"{self.name} has no endpoint {method!r}; endpoints: "
                f"{', '.join(sorted(self.binders))}",
                {"service": self.name, "method": str(method)[:100]},
            )
        return binder


def build_spec(service: ServiceConfig) -> ServiceSpec:
    """Load the manager class of ``service`` and prepare its endpoints."""
    cls = load_manager_class(service.name, service.manager, Manager)
    binders: dict[str, Binder] = {}
    for name, fn in cls.endpoints().items():
        try:
            binders[name] = Binder(fn, f"{service.name}.{name}")
        except TypeError as exc:
            raise ConfigError(
                f"settings key 'services.{service.name}.manager' = {service.manager!r}: "
                f"endpoint {name} cannot be served: {exc}"
            ) from exc
    periodic = dict(cls.periodic_tasks())
    for name, spacing in service.periodic.items():
        if name not in periodic:
            known = ", ".join(sorted(periodic)) or "none"
            raise ConfigError(
                f"settings key 'services.{service.name}.periodic.{name}': {cls.__qualname__} has "
                f"no periodic task {name!r} (it has: {known})"
            )
        periodic[name] = replace(periodic[name], spacing=spacing)
    return ServiceSpec(service.name, service, cls, binders, periodic)


_specs: dict[int, dict[str, ServiceSpec]] = {}


def service_specs(config: Config | None = None) -> dict[str, ServiceSpec]:
    """Every configured service's spec (built once per configuration)."""
    config = config or get_config()
    specs = _specs.get(id(config))
    if specs is None:
        specs = {name: build_spec(svc) for name, svc in config.services.items()}
        _specs.clear()
        _specs[id(config)] = specs
    return specs


_served: dict[tuple[int, int], frozenset[str]] = {}


def served_services(app: Any) -> frozenset[str]:
    """The services whose queues this worker consumes (all configured ones without -Q)."""
    key = (os.getpid(), id(app))
    found = _served.get(key)
    if found is None:
        queues = app.amqp.queues
        names = list((queues.consume_from or queues).keys())
        configured = set(app.taskyard_config.services)
        found = frozenset(n.split(".", 1)[0] for n in names) & configured
        _served[key] = found
    return found


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


def build_manager(spec: ServiceSpec, config: Config, redis: Any = None) -> Manager:
    """A new manager for ``spec`` with its driver loaded and checked (no setup run yet)."""
    executor = Executor(config.root_helper)
    set_default_executor(executor)
    driver = load_driver(
        spec.name,
        spec.config.driver,
        spec.manager_cls.driver_interface,
        expand_options(spec.config.driver_options, config),
        inject={"executor": executor},
    )
    return spec.manager_cls(
        service=spec.name,
        host=config.host,
        driver=driver,
        settings=spec.config,
        redis=redis if redis is not None else client_for(config, config.records_url),
        fleet=NodeFleet(config),
    )


class NodeFleet:
    """The :class:`managers.base.Fleet` a node gives its managers: registry and client."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def hosts(self, service: str) -> list[dict[str, Any]]:
        from workers.registry import Registry

        self.config.service(service)
        return [record.as_dict() for record in Registry.from_config(self.config).list(service)]

    def cast(self, service: str, method: str, /, host: str | None = None,
             **kwargs: Any) -> str:
        from workers.rpc import Client

        return Client(service).prepare(host=host).cast(method, **kwargs).id


_managers: dict[str, Manager] = {}
_managers_pid = os.getpid()
_lock = threading.Lock()


def _forget_parents_managers() -> None:
    """In a forked child, drop the managers inherited from the parent (call with the lock)."""
    global _managers_pid
    if _managers_pid != os.getpid():
        _managers.clear()
        _managers_pid = os.getpid()


def get_manager(service: str) -> Manager:
    """This process's manager of ``service``, built (and its driver set up) on first use."""
    manager = _managers.get(service)
    if manager is not None and _managers_pid == os.getpid():
        return manager
    with _lock:
        _forget_parents_managers()
        manager = _managers.get(service)
        if manager is None:
            config = get_config()
            spec = service_specs(config).get(service)
            if spec is None:
                config.service(service)  # raises UnknownService
                raise AssertionError("unreachable")  # pragma: no cover
            manager = build_manager(spec, config)
            manager.init_process()
            _managers[service] = manager
            log.debug("built %s manager in process %d", service, os.getpid())
    return manager


def set_manager(service: str, manager: Manager) -> None:
    """Use ``manager`` for ``service`` in this process (tests; the node's main process)."""
    with _lock:
        _forget_parents_managers()
        _managers[service] = manager


def reset_managers() -> None:
    """Forget every manager of this process."""
    with _lock:
        _managers.clear()
