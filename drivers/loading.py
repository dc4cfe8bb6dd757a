"""Turning a name from the settings into a manager class or a ready driver.

A name is either a short name registered as an entry point (the group
``taskyard.drivers.<service>`` for drivers, ``taskyard.managers`` for
managers; a third-party package adds its own by installing itself) or a
dotted path ``pkg.mod.Name`` / ``pkg.mod:Name``. A path may lead to a class
(instantiated with the options), a factory callable (called with them), or a
module or any other object (used as is). Whatever answers the interface
works: a loaded driver is checked against the manager's driver ABC, and any
failure stops start-up with one message naming the settings key, the value
and the cause.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from drivers.exceptions import ConfigError

T = TypeVar("T")

DRIVER_GROUP = "taskyard.drivers.{service}"
MANAGER_GROUP = "taskyard.managers"


class LoadError(ConfigError):
    """Raised when a dotted path or short name cannot be turned into an object."""


class _Missing(Exception):
    """The module itself does not exist (as opposed to failing inside its import)."""


def _import_module(name: str) -> types.ModuleType:
    """Import ``name``; :class:`_Missing` (chaining the original) when it does not exist.

    An ImportError raised *inside* an existing module (a missing dependency)
    is not taken for a missing module: it says what is really wrong.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise _Missing(name) from exc
        raise


def resolve(path: str) -> Any:
    """The object a dotted path names, without calling it."""
    if not path or path.strip() != path or path.startswith((".", ":")):
        raise LoadError(f"{path!r} is not a dotted path such as pkg.module:Name")
    if ":" in path:
        module_name, _, attrs = path.partition(":")
        candidates = [(module_name, attrs.split(".") if attrs else [])]
    else:
        parts = path.split(".")
        candidates = [(".".join(parts[:cut]), parts[cut:]) for cut in range(len(parts), 0, -1)]
    module = None
    missing: _Missing | None = None
    attr_path: list[str] = []
    for module_name, attrs_after in candidates:
        try:
            module = _import_module(module_name)
            attr_path = attrs_after
            break
        except _Missing as exc:
            missing = missing or exc
        except ImportError as exc:
            raise LoadError(f"importing module {module_name!r} failed: {exc}") from exc
    if module is None:
        assert missing is not None
        shortest = candidates[-1][0]
        raise LoadError(f"no module named {shortest!r}") from missing.__cause__
    obj: Any = module
    for i, attr in enumerate(attr_path):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            owner = module_name if i == 0 else ".".join([module_name, *attr_path[:i]])
            raise LoadError(f"{owner!r} has no attribute {attr!r}") from None
    return obj


def _is_factory(obj: Any) -> bool:
    return (
        inspect.isfunction(obj)
        or inspect.ismethod(obj)
        or inspect.isbuiltin(obj)
        or isinstance(obj, functools.partial)
    )


def _accepts(factory: Any, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build(obj: Any, options: Mapping[str, Any], inject: Mapping[str, Any] | None = None) -> Any:
    """Instantiate a class, call a factory, or use a module or object as it is.

    ``inject`` holds keyword arguments (the executor, say) given only to a
    class or factory whose signature accepts them.
    """
    if isinstance(obj, type) or _is_factory(obj):
        kwargs = dict(options)
        for name, value in (inject or {}).items():
            if name not in kwargs and _accepts(obj, name):
                kwargs[name] = value
        try:
            inspect.signature(obj).bind(**kwargs)
        except TypeError as exc:
            raise LoadError(f"options {sorted(options)} do not fit {obj!r}: {exc}") from None
        except ValueError:
            pass  # no introspectable signature: let the call decide
        return obj(**kwargs)
    if options:
        raise LoadError(
            f"driver_options {sorted(options)} were given, but {obj!r} is used as it is "
            "(it is neither a class nor a factory function)"
        )
    return obj


def load_object(path: str, /, **options: Any) -> Any:
    """Load what ``path`` names: a class is instantiated and a factory called with ``options``."""
    return build(resolve(path), options)


def missing_methods(obj: Any, interface: type) -> list[str]:
    """Names of ``interface``'s abstract methods that ``obj`` does not provide callable."""
    missing = []
    for name in sorted(getattr(interface, "__abstractmethods__", ())):
        attr = getattr(obj, name, None)
        if attr is None or not callable(attr) or getattr(attr, "__isabstractmethod__", False):
            missing.append(name)
    return missing


def short_names(group: str) -> dict[str, Any]:
    """Entry points of ``group`` by name."""
    return {ep.name: ep for ep in entry_points(group=group)}


def _lookup(value: str, group: str) -> Any:
    """Resolve a short name through ``group`` or a dotted path directly."""
    if "." in value or ":" in value:
        return resolve(value)
    names = short_names(group)
    if value not in names:
        known = ", ".join(sorted(names)) or "none are installed"
        raise LoadError(
            f"no short name {value!r} in entry point group {group!r} (known: {known}); "
            "or give a dotted path such as pkg.module:Name"
        )
    try:
        return names[value].load()
    except ImportError as exc:
        raise LoadError(f"entry point {value!r} = {names[value].value!r} failed: {exc}") from exc
    except AttributeError as exc:
        raise LoadError(f"entry point {value!r} = {names[value].value!r} failed: {exc}") from exc


def _fail(key: str, value: Any, exc: Exception) -> ConfigError:
    """One start-up error naming the key and value; an ImportError behind it stays chained."""
    error = ConfigError(f"settings key {key!r} = {value!r}: {exc}")
    error.__cause__ = exc.__cause__
    error.__suppress_context__ = True
    return error


def load_manager_class(service: str, value: str, base: type[T]) -> type[T]:
    """The manager class ``services.<service>.manager`` names; it must subclass ``base``."""
    key = f"services.{service}.manager"
    try:
        cls = _lookup(value, MANAGER_GROUP)
    except LoadError as exc:
        raise _fail(key, value, exc)  # noqa: B904 - _fail chains the real cause
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(
            f"settings key {key!r} = {value!r}: expected a subclass of "
            f"{base.__module__}.{base.__qualname__}, got {cls!r}"
        )
    return cls


def load_driver(
    service: str,
    value: str,
    interface: type | None,
    options: Mapping[str, Any],
    inject: Mapping[str, Any] | None = None,
) -> Any:
    """Load, check and build the driver ``services.<service>.driver`` names.

    The interface is checked before a class is called, so a missing method
    is reported as such rather than hidden behind a constructor error, and
    again on what a factory returned.
    """
    key = f"services.{service}.driver"
    try:
        obj = _lookup(value, DRIVER_GROUP.format(service=service))
        if interface is not None and isinstance(obj, type):
            _check(obj, interface)
        driver = build(obj, options, inject)
        if interface is not None:
            _check(driver, interface)
    except LoadError as exc:
        raise _fail(key, value, exc)  # noqa: B904 - _fail chains the real cause
    except Exception as exc:
        raise ConfigError(
            f"settings key {key!r} = {value!r}: building the driver failed: {exc!r}"
        ) from exc
    return driver


def _check(obj: Any, interface: type) -> None:
    missing = missing_methods(obj, interface)
    if missing:
        raise LoadError(
            f"{obj!r} does not implement {interface.__qualname__}: missing "
            f"{', '.join(missing)}"
        )
