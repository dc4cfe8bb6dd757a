"""What the service layer knows of each configured service: its endpoints and periodic tasks.

A :class:`ServiceSpec` is built from a service's settings: the manager
class, one :class:`~workers.core.binding.Binder` per endpoint, the periodic
tasks with their spacing. An app builds the specs of its configuration once
(:meth:`workers.core.application.Taskyard.spec`); nodes register one Celery
task per endpoint from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from drivers.loading import load_manager_class
from managers.base import Manager, PeriodicSpec
from workers.core.api import ServiceAPI
from workers.core.binding import Binder
from workers.core.config import ServiceConfig
from workers.core.keys import task_name
from workers.exceptions import ConfigError


@dataclass(frozen=True)
class ServiceSpec:
    """One configured service as the service layer sees it."""

    name: str
    config: ServiceConfig
    manager_cls: type[Manager]
    binders: Mapping[str, Binder]
    periodic: Mapping[str, PeriodicSpec] = field(default_factory=dict)

    def task_name(self, method: str) -> str:
        return task_name(self.name, method)

    def api(self) -> ServiceAPI:
        """What nodes of this service publish for callers."""
        return ServiceAPI.from_manager(self.name, self.manager_cls, self.binders)


def build_spec(service: ServiceConfig) -> ServiceSpec:
    """Load the manager class of ``service`` and prepare its endpoints."""
    cls = load_manager_class(service.name, service.manager, Manager)
    binders: dict[str, Binder] = {}
    for name, fn in cls.endpoints().items():
        try:
            binders[name] = Binder(fn, task_name(service.name, name))
        except TypeError as exc:
            raise ConfigError(
                f"settings key 'services.{service.name}.manager' = {service.manager!r}: "
                f"endpoint {name} cannot be served: {exc}"
            ) from exc
    if cls.placement is not None:
        try:
            cls.placement.check(cls)
        except TypeError as exc:
            raise ConfigError(
                f"settings key 'services.{service.name}.manager' = {service.manager!r}: "
                f"{cls.__qualname__}.placement does not fit its endpoints: {exc}"
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
