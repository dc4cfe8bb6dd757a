"""Checking a request's arguments against an endpoint's signature.

Celery never checks the arguments of a message it runs, so every endpoint
gets a :class:`Binder`, built once from the signature and annotations when
the service is loaded: on the per-message path there is no ``inspect`` and
no annotation parsing, only a few set operations and ``isinstance`` calls.

Annotations must describe JSON values: ``int``, ``float`` (an int is
accepted), ``str``, ``bool``, ``None``, ``list``/``list[T]``,
``dict``/``dict[str, T]``, ``Any``, ``Literal[...]`` and unions of them.
A bool is never accepted for a number.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from workers.exceptions import InvalidRequest

Check = Callable[[Any], bool]


def _any(value: Any) -> bool:
    return True


def _int(value: Any) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _float(value: Any) -> bool:
    return type(value) in (float, int) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    )


_SIMPLE: dict[Any, tuple[Check, str]] = {
    int: (_int, "int"),
    float: (_float, "number"),
    str: (lambda v: isinstance(v, str), "str"),
    bool: (lambda v: isinstance(v, bool), "bool"),
    type(None): (lambda v: v is None, "null"),
    None: (lambda v: v is None, "null"),
    list: (lambda v: isinstance(v, list), "list"),
    tuple: (lambda v: isinstance(v, list), "list"),
    dict: (lambda v: isinstance(v, dict), "object"),
    Any: (_any, "any"),
    object: (_any, "any"),
    inspect.Parameter.empty: (_any, "any"),
}

_LISTS = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)
_DICTS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def checker(annotation: Any, where: str) -> tuple[Check, str]:
    """A function that accepts exactly the JSON values ``annotation`` allows, and its name.

    Raises TypeError (at service load, never per message) for an annotation
    that no JSON value can satisfy, naming ``where``.
    """
    if annotation in _SIMPLE:
        return _SIMPLE[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [checker(arg, where) for arg in args]
        checks = [c for c, _ in parts]
        return (lambda v: any(c(v) for c in checks)), " | ".join(n for _, n in parts)
    if origin is typing.Literal:
        allowed = args
        return (
            lambda v: any(v == a and type(v) is type(a) for a in allowed),
            " | ".join(repr(a) for a in allowed),
        )
    if origin in _LISTS or annotation in _LISTS:
        homogeneous = bool(args) and (origin is not tuple or (len(args) == 2 and args[1] is ...))
        item, item_name = checker(args[0], where) if homogeneous else (_any, "any")
        if item is _any:
            return (lambda v: isinstance(v, list)), "list"
        return (lambda v: isinstance(v, list) and all(item(x) for x in v)), f"list[{item_name}]"
    if origin in _DICTS or annotation in _DICTS:
        if args:
            key, _ = checker(args[0], where)
            if key is not _SIMPLE[str][0] and key is not _any:
                raise TypeError(f"{where}: JSON object keys are strings, not {args[0]!r}")
            value, value_name = checker(args[1], where)
        else:
            value, value_name = _any, "any"
        if value is _any:
            return (lambda v: isinstance(v, dict)), "object"
        return (
            lambda v: isinstance(v, dict) and all(value(x) for x in v.values()),
            f"dict[str, {value_name}]",
        )
    raise TypeError(
        f"{where}: annotation {annotation!r} is not a JSON type "
        "(use int, float, str, bool, None, list[...], dict[str, ...], Any or a union)"
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Binder:
    """Binds a message's arguments to one endpoint, or says exactly what is wrong."""

    __slots__ = ("checks", "label", "names", "optional", "required", "var_keyword")

    def __init__(self, fn: Callable[..., Any], label: str) -> None:
        self.label = label
        signature = inspect.signature(fn, eval_str=True)
        params = list(signature.parameters.values())
        if params and params[0].name == "self":
            params = params[1:]
        self.checks: dict[str, tuple[Check, str]] = {}
        required: list[str] = []
        optional: list[str] = []
        self.var_keyword = False
        for param in params:
            where = f"{label}({param.name})"
            if param.kind is param.VAR_KEYWORD:
                self.var_keyword = True
                continue
            if param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY):
                raise TypeError(f"{where}: endpoints take keyword arguments only")
            self.checks[param.name] = checker(param.annotation, where)
            (required if param.default is param.empty else optional).append(param.name)
        self.required = frozenset(required)
        self.optional = frozenset(optional)
        self.names = tuple(required + optional)

    def describe(self) -> str:
        """The endpoint's arguments as ``name: type`` (optional ones with ``=``)."""
        parts = [
            f"{name}: {self.checks[name][1]}" + ("=..." if name in self.optional else "")
            for name in self.names
        ]
        if self.var_keyword:
            parts.append("**extra")
        return ", ".join(parts)

    def bind(self, args: Any, kwargs: Any) -> dict[str, Any]:
        """Check ``args``/``kwargs`` from a message; return the keyword arguments to call with."""
        if args:
            raise InvalidRequest(
                f"{self.label} takes keyword arguments only; got {len(args)} positional "
                f"(expected: {self.describe()})",
                {"argument": None},
            )
        if not isinstance(kwargs, Mapping):
            raise InvalidRequest(
                f"{self.label}: the arguments must be a JSON object, got {type(kwargs).__name__}",
                {"argument": None},
            )
        missing = self.required.difference(kwargs)
        if missing:
            name = sorted(missing)[0]
            raise InvalidRequest(
                f"{self.label}: missing argument {name!r} ({self.checks[name][1]}); "
                f"expected: {self.describe()}",
                {"argument": name},
            )
        checks = self.checks
        for name, value in kwargs.items():
            entry = checks.get(name)
            if entry is None:
                if self.var_keyword and isinstance(name, str) and name.isidentifier():
                    continue
                raise InvalidRequest(
                    f"{self.label}: unexpected argument {_show(name)}; expected: {self.describe()}",
                    {"argument": str(name)},
                )
            if not entry[0](value):
                raise InvalidRequest(
                    f"{self.label}: argument {name!r} must be {entry[1]}, got "
                    f"{type(value).__name__} {_show(value)}",
                    {"argument": name},
                )
        return kwargs if type(kwargs) is dict else dict(kwargs)
