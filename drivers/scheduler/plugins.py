"""Filters and weighers by name: the built-in ones, entry points, or dotted paths.

Settings name them (``driver_options.filters = ["UpFilter", ...]``,
``driver_options.weighers = {CapacityWeigher = 1.0}``). A name is looked up
among the built-in ones, then in the entry point group
``taskyard.scheduler.filters`` (or ``.weighers``), where a package registers
its own; a dotted path (``pkg.module:MyFilter``) works too. A class is
instantiated with no arguments.
"""

from __future__ import annotations

from typing import Any

from drivers.loading import LoadError, resolve, short_names
from drivers.scheduler.filters.affinity import AffinityFilter
from drivers.scheduler.filters.anti_affinity import AntiAffinityFilter
from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.filters.capacity import CapacityFilter
from drivers.scheduler.filters.enabled import EnabledFilter
from drivers.scheduler.filters.up import UpFilter
from drivers.scheduler.filters.zone import AvailabilityZoneFilter
from drivers.scheduler.weighers.base import HostWeigher
from drivers.scheduler.weighers.build_failure import BuildFailureWeigher
from drivers.scheduler.weighers.capacity import CapacityWeigher

FILTER_GROUP = "taskyard.scheduler.filters"
WEIGHER_GROUP = "taskyard.scheduler.weighers"

BUILTIN_FILTERS: dict[str, type[HostFilter]] = {
    cls.__name__: cls for cls in (UpFilter, EnabledFilter, CapacityFilter,
                                  AvailabilityZoneFilter, AffinityFilter, AntiAffinityFilter)
}
BUILTIN_WEIGHERS: dict[str, type[HostWeigher]] = {
    cls.__name__: cls for cls in (CapacityWeigher, BuildFailureWeigher)
}


def _load(name: str, builtin: dict[str, Any], group: str, base: type, what: str) -> Any:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} names must be strings, got {name!r}")
    if name in builtin:
        obj = builtin[name]
    elif "." in name or ":" in name:
        try:
            obj = resolve(name)
        except LoadError as exc:
            raise ValueError(f"{what} {name!r}: {exc}") from exc
    else:
        found = short_names(group)
        if name not in found:
            known = ", ".join(sorted({*builtin, *found}))
            raise ValueError(f"no {what} named {name!r} (known: {known}; a package adds its "
                             f"own with an entry point in {group!r}, or give a dotted path)")
        obj = found[name].load()
    instance = obj() if isinstance(obj, type) else obj
    if not isinstance(instance, base):
        raise ValueError(f"{what} {name!r} is {instance!r}, not a {base.__qualname__}")
    return instance


def load_filter(name: str) -> HostFilter:
    """The filter settings call ``name``; ValueError naming the known ones otherwise."""
    filter_: HostFilter = _load(name, BUILTIN_FILTERS, FILTER_GROUP, HostFilter, "filter")
    return filter_


def load_weigher(name: str) -> HostWeigher:
    """The weigher settings call ``name``; ValueError naming the known ones otherwise."""
    weigher: HostWeigher = _load(name, BUILTIN_WEIGHERS, WEIGHER_GROUP, HostWeigher, "weigher")
    return weigher
