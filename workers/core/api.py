"""A service's API as nodes publish it: its version and each endpoint's arguments and doc.

A node publishes the API of each service it runs to the registry
(:meth:`workers.core.registry.Registry.publish_api`) when it starts: a JSON
document with the service's API version and, per endpoint, the JSON Schema
of its arguments and its docstring. A caller reads it back as a
:class:`ServiceAPI` and checks requests with the very binders the node uses,
so it refuses an unknown endpoint or a bad argument before sending anything —
without the service's manager or driver code.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from managers.placement import Placement
from workers.core.binding import Binder
from workers.core.keys import task_name
from workers.exceptions import UnknownEndpoint


@dataclass(frozen=True)
class EndpointAPI:
    """One endpoint: its argument binder and its documentation."""

    name: str
    binder: Binder
    doc: str = ""


@dataclass(frozen=True)
class ServiceAPI:
    """What a caller knows of a service's endpoints (from a node's publication)."""

    service: str
    #: The API version (``major.minor``) of the nodes that published this document.
    version: str
    endpoints: Mapping[str, EndpointAPI] = field(default_factory=dict)
    #: What the service's resources take of its nodes, for the scheduler (None: nothing).
    placement: Placement | None = None

    def binder(self, method: str) -> Binder:
        """The endpoint's binder; :class:`UnknownEndpoint` listing the endpoints otherwise."""
        endpoint = self.endpoints.get(method)
        if endpoint is None:
            raise UnknownEndpoint(
                f"{self.service} has no endpoint {method!r}; endpoints: "
                f"{', '.join(sorted(self.endpoints))}",
                {"service": self.service, "method": str(method)[:100]},
            )
        return endpoint.binder

    def to_doc(self) -> dict[str, Any]:
        """The JSON document nodes publish."""
        doc: dict[str, Any] = {
            "service": self.service,
            "version": self.version,
            "endpoints": {
                name: {"doc": endpoint.doc, "arguments": endpoint.binder.schema()}
                for name, endpoint in sorted(self.endpoints.items())
            },
        }
        if self.placement is not None:
            doc["placement"] = self.placement.to_doc()
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ServiceAPI:
        """Read a published document; ValueError when it is not one taskyard wrote."""
        try:
            service = str(doc["service"])
            endpoints = {
                str(name): EndpointAPI(
                    str(name), Binder.from_schema(task_name(service, str(name)),
                                                  entry["arguments"]),
                    str(entry.get("doc") or ""))
                for name, entry in dict(doc["endpoints"]).items()
            }
            placement = Placement.from_doc(doc["placement"]) if doc.get("placement") else None
            return cls(service, str(doc["version"]), endpoints, placement)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a published service API: {exc!r}") from None

    @classmethod
    def from_manager(cls, service: str, manager_cls: Any,
                     binders: Mapping[str, Binder]) -> ServiceAPI:
        """The API a node serves: its manager's version, endpoints and docstrings."""
        endpoints = manager_cls.endpoints()
        return cls(service, str(manager_cls.rpc_api_version), {
            name: EndpointAPI(name, binder, inspect.cleandoc(endpoints[name].__doc__ or ""))
            for name, binder in binders.items()
        }, getattr(manager_cls, "placement", None))


def version_key(version: str) -> tuple[int, int]:
    """``"1.10"`` -> ``(1, 10)``, for ordering versions (unreadable ones sort first)."""
    try:
        major, minor = version.split(".")
        return int(major), int(minor)
    except ValueError:
        return (-1, -1)
