"""Checking a request's arguments against an endpoint's signature, on both ends of the wire.

Celery never checks the arguments of a message it runs, so every endpoint
gets a :class:`Binder`. On a node it is built from the endpoint's signature
and annotations; the same arguments are also described as JSON Schema
(:meth:`Binder.schema`), which nodes publish so that a caller without the
service's code builds the very same :class:`Binder` from it
(:meth:`Binder.from_schema`) and refuses a bad request before sending it.
On the per-message path there is no ``inspect`` and no annotation parsing,
only a few set operations and type checks.

Annotations must describe JSON values: ``int``, ``float`` (an int is
accepted), ``str``, ``bool``, ``None``, ``list``/``list[T]``,
``dict``/``dict[str, T]``, ``Any``, ``Literal[...]`` and unions of them.
A bool is never accepted for a number. They map to the JSON Schema
keywords ``type`` (integer, number, string, boolean, null, array, object),
``items``, ``additionalProperties``, ``enum`` and ``anyOf``.
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
Schema = dict[str, Any]

_SIMPLE: dict[Any, Schema] = {
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    None: {"type": "null"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    dict: {"type": "object"},
    Any: {},
    object: {},
    inspect.Parameter.empty: {},
}

_LISTS = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)
_DICTS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def schema_of(annotation: Any, where: str) -> Schema:
    """The JSON Schema of the values ``annotation`` allows.

    Raises TypeError (at service load, never per message) for an annotation
    that no JSON value can satisfy, naming ``where``.
    """
    if annotation in _SIMPLE:
        return dict(_SIMPLE[annotation])
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [schema_of(arg, where) for arg in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in _LISTS or annotation in _LISTS:
        homogeneous = bool(args) and (origin is not tuple or (len(args) == 2 and args[1] is ...))
        item = schema_of(args[0], where) if homogeneous else {}
        return {"type": "array", "items": item} if item else {"type": "array"}
    if origin in _DICTS or annotation in _DICTS:
        value: Schema = {}
        if args:
            if schema_of(args[0], where) not in ({"type": "string"}, {}):
                raise TypeError(f"{where}: JSON object keys are strings, not {args[0]!r}")
            value = schema_of(args[1], where)
        return {"type": "object", "additionalProperties": value} if value else {"type": "object"}
    raise TypeError(
        f"{where}: annotation {annotation!r} is not a JSON type "
        "(use int, float, str, bool, None, list[...], dict[str, ...], Any or a union)"
    )


def _any(value: Any) -> bool:
    return True


def _int(value: Any) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _number(value: Any) -> bool:
    return type(value) in (float, int) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    )


_TYPES: dict[str, tuple[Check, str]] = {
    "integer": (_int, "int"),
    "number": (_number, "number"),
    "string": (lambda v: isinstance(v, str), "str"),
    "boolean": (lambda v: isinstance(v, bool), "bool"),
    "null": (lambda v: v is None, "null"),
    "array": (lambda v: isinstance(v, list), "list"),
    "object": (lambda v: isinstance(v, dict), "object"),
}


def compile_schema(schema: Mapping[str, Any]) -> tuple[Check, str]:
    """A function accepting exactly the JSON values ``schema`` allows, and a name for messages.

    Understands the subset :func:`schema_of` writes; a schema using anything
    else is refused with ValueError (a published schema is never trusted
    blindly).
    """
    if not isinstance(schema, Mapping):
        raise ValueError(f"not a JSON Schema: {schema!r:.100}")
    unknown = set(schema) - {"type", "items", "additionalProperties", "enum", "anyOf",
                             "description", "title"}
    if unknown:
        raise ValueError(f"unsupported JSON Schema keywords: {sorted(unknown)}")
    if "anyOf" in schema:
        parts = [compile_schema(part) for part in schema["anyOf"]]
        checks = [c for c, _ in parts]
        return (lambda v: any(c(v) for c in checks)), " | ".join(n for _, n in parts)
    if "enum" in schema:
        allowed = tuple(schema["enum"])
        return (
            lambda v: any(v == a and type(v) is type(a) for a in allowed),
            " | ".join(repr(a) for a in allowed),
        )
    kind = schema.get("type")
    if kind is None:
        return _any, "any"
    if kind not in _TYPES:
        raise ValueError(f"unsupported JSON Schema type {kind!r}")
    base, name = _TYPES[kind]
    if kind == "array" and schema.get("items"):
        item, item_name = compile_schema(schema["items"])
        return (lambda v: isinstance(v, list) and all(item(x) for x in v)), f"list[{item_name}]"
    if kind == "object" and schema.get("additionalProperties"):
        value, value_name = compile_schema(schema["additionalProperties"])
        return (
            lambda v: isinstance(v, dict) and all(value(x) for x in v.values()),
            f"dict[str, {value_name}]",
        )
    return base, name


def checker(annotation: Any, where: str) -> tuple[Check, str]:
    """A function that accepts exactly the JSON values ``annotation`` allows, and its name."""
    return compile_schema(schema_of(annotation, where))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Binder:
    """Binds a message's arguments to one endpoint, or says exactly what is wrong."""

    __slots__ = ("checks", "label", "names", "optional", "properties", "required",
                 "var_keyword")

    def __init__(self, fn: Callable[..., Any], label: str) -> None:
        signature = inspect.signature(fn, eval_str=True)
        params = list(signature.parameters.values())
        if params and params[0].name == "self":
            params = params[1:]
        properties: dict[str, Schema] = {}
        required: list[str] = []
        var_keyword = False
        for param in params:
            where = f"{label}({param.name})"
            if param.kind is param.VAR_KEYWORD:
                var_keyword = True
                continue
            if param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY):
                raise TypeError(f"{where}: endpoints take keyword arguments only")
            properties[param.name] = schema_of(param.annotation, where)
            if param.default is param.empty:
                required.append(param.name)
        self._setup(label, properties, required, var_keyword)

    @classmethod
    def from_schema(cls, label: str, schema: Mapping[str, Any]) -> Binder:
        """The binder an endpoint's published arguments schema (:meth:`schema`) describes.

        Raises ValueError for a schema this module did not write.
        """
        if not isinstance(schema, Mapping) or schema.get("type") != "object":
            raise ValueError(f"{label}: the arguments schema is not an object schema")
        properties = dict(schema.get("properties") or {})
        required = [str(n) for n in schema.get("required") or ()]
        if not set(required) <= set(properties):
            raise ValueError(f"{label}: required arguments without a schema")
        binder = cls.__new__(cls)
        binder._setup(label, properties, required, schema.get("additionalProperties") is True)
        return binder

    def _setup(self, label: str, properties: Mapping[str, Schema], required: list[str],
               var_keyword: bool) -> None:
        self.label = label
        self.properties = dict(properties)
        self.checks: dict[str, tuple[Check, str]] = {
            name: compile_schema(schema) for name, schema in properties.items()}
        self.required = frozenset(required)
        self.optional = frozenset(properties).difference(required)
        # Required first, each group in the signature's order.
        self.names = tuple([n for n in properties if n in self.required]
                           + [n for n in properties if n not in self.required])
        self.var_keyword = var_keyword

    def schema(self) -> Schema:
        """The arguments as a JSON Schema object (what nodes publish)."""
        return {
            "type": "object",
            "properties": {name: self.properties[name] for name in self.names},
            "required": [name for name in self.names if name in self.required],
            "additionalProperties": self.var_keyword,
        }

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
