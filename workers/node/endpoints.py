"""Endpoint tasks: the thin layer between a Celery message and a manager method.

One task per endpoint, named ``<service>.<endpoint>``. Running one means:
bind the arguments (or refuse them with ``InvalidRequest``), set the
request's context and progress sink, call the method on this process's
manager, and return plain JSON data. Declared errors travel back as
themselves with the node's host added; anything else travels as
``RemoteError``. A manager's :class:`~managers.base.Forward` hands the same
request, under the same task id, to the node that owns the resource.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any

from celery import Task

from managers.base import Forward, RequestContext, current_context, current_progress
from workers.core.binding import Binder
from workers.core.deadletters import DeadLetters
from workers.core.keys import MAX_FORWARD_HOPS, PROGRESS, host_queue
from workers.core.specs import ServiceSpec
from workers.exceptions import (
    InvalidRequest,
    RemoteError,
    TaskyardError,
    UnsupportedVersion,
    lookup_wire_error,
)
from workers.extensions.signing import SIGNATURE_HEADER
from workers.node.logs import log_request
from workers.node.managers import ProcessManagers

log = logging.getLogger("taskyard.dispatch")

#: Every endpoint and periodic task checks signatures before the pool (signing on).
VERIFYING_STRATEGY = "workers.extensions.strategy:verifying_strategy"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def context_from_request(request: Any) -> RequestContext:
    """The request context a message carries (a new one when it carries none)."""
    request_id = getattr(request, "taskyard_request_id", None) or getattr(request, "id", None)
    return RequestContext(
        request_id=str(request_id or uuid.uuid4().hex),
        caller_host=getattr(request, "taskyard_caller", None),
        user=getattr(request, "taskyard_user", None),
        task_id=getattr(request, "id", None),
    )


class EndpointTask(Task):
    """Base of every endpoint task: ``service``, ``method``, ``binder``, ``managers`` per task."""

    service: str = ""
    method: str = ""
    binder: Binder
    #: The node's managers (one per service per process).
    managers: ProcessManagers
    #: Declared errors are part of normal operation: the worker logs them at INFO, not ERROR.
    throws = (TaskyardError,)
    #: Arguments are checked by the binder on the node, not by Celery in the caller.
    typing = False
    #: Signed messages are checked before they reach the pool (workers.security).
    Strategy = VERIFYING_STRATEGY

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.dispatch(args, kwargs)

    def dispatch(self, args: Any, kwargs: Any) -> Any:
        """Bind, call the manager, and turn the outcome into what crosses the wire.

        Writes one log line per request: endpoint, host, request id,
        duration and outcome.
        """
        started = time.perf_counter()
        context = context_from_request(self.request)
        context_token = current_context.set(context)
        host = self.app.config.host
        forward_to, extra_hops = None, 0
        # Until the method returns: a request stopped mid-way (SystemExit in a pool
        # process at a shutdown cut-off or a lost broker) must not read as done.
        outcome = "interrupted"
        try:
            manager = self.managers.get(self.service)
            host = manager.host
            self.check_version(manager.rpc_api_version)
            try:
                bound = self.binder.bind(args, kwargs)
            except InvalidRequest as exc:
                self.dead_letter(str(exc), args, kwargs, host)
                raise
            method = getattr(manager, self.method)
            progress_token = current_progress.set(self._report_progress)
            try:
                result = _jsonable(method(**bound))
            finally:
                current_progress.reset(progress_token)
            outcome = "ok"
            return result
        except Forward as forward:
            forward_to, extra_hops = forward.host, forward.extra_hops
            outcome = f"forwarded to {forward_to}"
        except TaskyardError as exc:
            outcome = f"error {type(exc).__name__}"
            if lookup_wire_error(type(exc).__module__, type(exc).__qualname__) is type(exc):
                if host:
                    exc.with_details(host=host)
                raise
            # Not part of the service's API (a driver's error, say): logged here with its
            # traceback, and the caller gets RemoteError naming it.
            log.exception("%s failed on %s", self.name, host)
            raise RemoteError.from_exception(exc, host) from None
        except Exception as exc:
            outcome = f"error {type(exc).__name__}"
            log.exception("%s failed on %s", self.name, host)
            raise RemoteError.from_exception(exc, host) from None
        finally:
            log_request(self.name, host, context.request_id, self.request.id, started, outcome)
            current_context.reset(context_token)
        # Handed on outside the except block: nothing of the manager's frames stays
        # chained to the exception that ends this run (Celery's Ignore).
        return self._forward(forward_to, host, kwargs, extra_hops)

    def check_version(self, served: str) -> None:
        """:class:`UnsupportedVersion` unless this node serves the version the request needs."""
        wanted = getattr(self.request, "taskyard_version", None)
        if wanted is None or wanted == served:
            return
        if not version_compatible(str(wanted), served):
            reason = (f"{self.name} needs API version {wanted}; this node serves {served} "
                      "(same major, minor up to its own); pin version_cap on the caller "
                      "until every node is upgraded")
            self.dead_letter(reason, self.request.args, self.request.kwargs, None)
            raise UnsupportedVersion(reason, {"served": served, "wanted": str(wanted)})

    def dead_letter(self, reason: str, args: Any, kwargs: Any, host: str | None) -> None:
        config = self.app.config
        DeadLetters(self.app.records).add(
            self.service, reason, host=host or config.host,
            queue=(self.request.delivery_info or {}).get("routing_key"), task=self.name,
            task_id=self.request.id, args=list(args or ()), kwargs=kwargs,
            headers=self.request.headers,
        )

    def _report_progress(self, done: int, total: int, message: str) -> None:
        if self.request.id and not self.request.is_eager:
            self.update_state(state=PROGRESS, meta={"done": done, "total": total,
                                                    "message": message})

    def _forward(self, target: str, here: str | None, kwargs: Any, extra_hops: int = 0) -> Any:
        hops = int(self.request.get("replaced_task_nesting") or 0)
        if target == here or hops >= MAX_FORWARD_HOPS + extra_hops:
            raise RemoteError(
                f"{self.name} was forwarded to {target!r} {hops} times without being served",
                {"type": "ForwardLoop", "host": here},
            )
        log.info("%s[%s] belongs to %s: forwarding", self.name, self.request.id, target)
        # The request's context and API version go with it; the new message is signed anew.
        headers = {key: value for key, value in (self.request.headers or {}).items()
                   if key.startswith("taskyard_") and key != SIGNATURE_HEADER}
        signature = self.signature(
            kwargs=dict(kwargs), queue=host_queue(self.service, target), headers=headers
        )
        return self.replace(signature)


def version_compatible(wanted: str, served: str) -> bool:
    """Whether a node serving ``served`` can take a request that needs ``wanted``."""
    try:
        want_major, want_minor = (int(p) for p in wanted.split("."))
        have_major, have_minor = (int(p) for p in served.split("."))
    except ValueError:
        return False
    return want_major == have_major and want_minor <= have_minor


def register_endpoint_tasks(app: Any, spec: ServiceSpec, managers: ProcessManagers) -> list[str]:
    """Register one task per endpoint of ``spec`` on ``app``; return their names."""
    names = []
    for method, binder in spec.binders.items():
        name = spec.task_name(method)
        task_cls = type(
            name,
            (EndpointTask,),
            {
                "name": name,
                "service": spec.name,
                "method": method,
                "binder": binder,
                "managers": managers,
                "__module__": __name__,
                "__doc__": getattr(spec.manager_cls.endpoints()[method], "__doc__", None),
            },
        )
        app.register_task(task_cls())
        names.append(name)
    return names


__all__ = ["EndpointTask", "register_endpoint_tasks", "version_compatible"]
