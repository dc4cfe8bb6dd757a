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

from celery import Celery, Task

from managers.base import Forward, RequestContext, current_context, current_progress
from workers.binding import Binder
from workers.constants import MAX_FORWARD_HOPS, host_queue
from workers.exceptions import RemoteError, TaskyardError, lookup_wire_error, wire_name
from workers.logs import log_request
from workers.services import ServiceSpec, get_manager

log = logging.getLogger("taskyard.dispatch")

#: The task state that carries ``{done, total, message}`` while an endpoint runs.
PROGRESS = "PROGRESS"


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
    )


class EndpointTask(Task):
    """Base of every endpoint task; ``service``, ``method`` and ``binder`` are set per task."""

    service: str = ""
    method: str = ""
    binder: Binder
    #: Declared errors are part of normal operation: the worker logs them at INFO, not ERROR.
    throws = (TaskyardError,)
    #: Arguments are checked by the binder on the node, not by Celery in the caller.
    typing = False

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
        host = None
        outcome = "ok"
        try:
            manager = get_manager(self.service)
            host = manager.host
            bound = self.binder.bind(args, kwargs)
            method = getattr(manager, self.method)
            progress_token = current_progress.set(self._report_progress)
            try:
                return _jsonable(method(**bound))
            finally:
                current_progress.reset(progress_token)
        except Forward as forward:
            outcome = f"forwarded to {forward.host}"
            return self._forward(forward.host, host, kwargs)
        except TaskyardError as exc:
            if lookup_wire_error(type(exc).__module__, type(exc).__qualname__) is not type(exc):
                outcome = f"error {type(exc).__name__}"
                raise RemoteError.from_exception(exc, host) from None
            outcome = f"error {type(exc).__name__}"
            if host:
                exc.with_details(host=host)
            raise
        except Exception as exc:
            outcome = f"error {type(exc).__name__}"
            log.exception("%s failed on %s", self.name, host)
            raise RemoteError.from_exception(exc, host) from None
        finally:
            log_request(self.name, host, context.request_id, self.request.id, started, outcome)
            current_context.reset(context_token)

    def _report_progress(self, done: int, total: int, message: str) -> None:
        if self.request.id and not self.request.is_eager:
            self.update_state(state=PROGRESS, meta={"done": done, "total": total,
                                                    "message": message})

    def _forward(self, target: str, here: str | None, kwargs: Any) -> Any:
        hops = int(self.request.get("replaced_task_nesting") or 0)
        if target == here or hops >= MAX_FORWARD_HOPS:
            raise RemoteError(
                f"{self.name} was forwarded to {target!r} {hops} times without being served",
                {"type": "ForwardLoop", "host": here},
            )
        log.info("%s[%s] belongs to %s: forwarding", self.name, self.request.id, target)
        headers = {
            key: getattr(self.request, key, None)
            for key in ("taskyard_request_id", "taskyard_caller", "taskyard_user")
        }
        signature = self.signature(
            kwargs=dict(kwargs), queue=host_queue(self.service, target), headers=headers
        )
        return self.replace(signature)


def register_endpoint_tasks(app: Celery, spec: ServiceSpec) -> list[str]:
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
                "__module__": __name__,
                "__doc__": getattr(spec.manager_cls.endpoints()[method], "__doc__", None),
            },
        )
        app.register_task(task_cls())
        names.append(name)
    return names


__all__ = ["PROGRESS", "EndpointTask", "register_endpoint_tasks", "wire_name"]
