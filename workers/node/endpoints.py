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

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from typing import Any, NoReturn

from celery import Task, signals
from celery.exceptions import Ignore, Retry

from drivers.cancellation import CancelScope, current_scope
from managers.base import (
    Forward,
    RequestContext,
    RetryPolicy,
    current_context,
    current_progress,
    retry_policy,
)
from workers.client.rpc import Client
from workers.client.timing import Times
from workers.core.binding import Binder
from workers.core.deadletters import DeadLetters
from workers.core.delays import Marker
from workers.core.keys import MAX_FORWARD_HOPS, PROGRESS, attempts_key, host_queue
from workers.core.revocations import Holder
from workers.core.specs import ServiceSpec
from workers.exceptions import (
    InvalidRequest,
    RemoteError,
    TaskyardError,
    UnsupportedVersion,
    lookup_wire_error,
)
from workers.extensions.signing import SIGNATURE_HEADER
from workers.extensions.strategy import timestamp
from workers.node.cancellation import TERMINATED, Terminations
from workers.node.logs import log_request
from workers.node.managers import ProcessManagers
from workers.node.request import count

log = logging.getLogger("taskyard.dispatch")

#: Every endpoint and periodic task checks signatures before the pool (signing on).
VERIFYING_STRATEGY = "workers.extensions.strategy:verifying_strategy"
#: ... and settles what did not run (expired, cancelled) saying why.
REQUEST = "workers.node.request:Request"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def context_from_request(request: Any, *, attempt: int = 1,
                         scope: CancelScope | None = None) -> RequestContext:
    """The request context a message carries (a new one when it carries none)."""
    request_id = getattr(request, "taskyard_request_id", None) or getattr(request, "id", None)
    return RequestContext(
        request_id=str(request_id or uuid.uuid4().hex),
        caller_host=getattr(request, "taskyard_caller", None),
        user=getattr(request, "taskyard_user", None),
        task_id=getattr(request, "id", None),
        attempt=attempt,
        scope=scope,
    )


def _wire_form(exc: Exception, host: str | None) -> TaskyardError:
    """What the caller gets for ``exc``: a declared error as itself (with ``host``), anything
    else as :class:`RemoteError` naming it."""
    if isinstance(exc, TaskyardError) and \
            lookup_wire_error(type(exc).__module__, type(exc).__qualname__) is type(exc):
        if host:
            exc.with_details(host=host)
        return exc
    return RemoteError.from_exception(exc, host)


class EndpointTask(Task):
    """Base of every endpoint task: ``service``, ``method``, ``binder``, ``managers`` per task."""

    service: str = ""
    method: str = ""
    binder: Binder
    #: The node's managers (one per service per process).
    managers: ProcessManagers
    #: The endpoint's retry policy (``@endpoint(autoretry_for=...)``; None: no retries).
    retry_policy: RetryPolicy | None = None
    #: Declared errors are part of normal operation: the worker logs them at INFO, not ERROR.
    throws = (TaskyardError,)
    #: Arguments are checked by the binder on the node, not by Celery in the caller.
    typing = False
    #: Signed messages are checked before they reach the pool (workers.security).
    Strategy = VERIFYING_STRATEGY
    #: A request that expired or was cancelled before it ran says so (workers.node.request).
    Request = REQUEST

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.dispatch(args, kwargs)

    def dispatch(self, args: Any, kwargs: Any) -> Any:
        """Bind, call the manager, and turn the outcome into what crosses the wire.

        The request runs in a cancel scope that a cancellation with
        ``terminate`` reaches (:mod:`workers.node.cancellation`); a failure
        the endpoint's retry policy covers is sent again as a delayed
        request. Writes one log line per request: endpoint, host, request
        id, duration and outcome.
        """
        started = time.perf_counter()
        request = self.request
        retries = request.retries if isinstance(request.retries, int) else 0
        scope = CancelScope(request.id)
        context = context_from_request(request, attempt=retries + 1, scope=scope)
        context_token = current_context.set(context)
        scope_token = current_scope.set(scope)
        host = self.app.config.host
        forward_to, extra_hops = None, 0
        # Until the method returns: a request stopped mid-way (SystemExit in a pool
        # process at a shutdown cut-off or a lost broker) must not read as done.
        outcome = "interrupted"
        terminations = self.managers.terminations() if request.id and not request.is_eager \
            else None
        try:
            with terminations.watch(request.id, scope) if terminations is not None \
                    else contextlib.nullcontext():
                if terminations is not None and os.getpid() != self.managers.main_pid:
                    self._note_process(terminations, host)
                if scope.cancelled:
                    # Cancelled with terminate between its take and its start: it never runs.
                    outcome = "cancelled (terminate) before it started"
                    self._settle_cancelled(scope)
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
                    if scope.cancelled:
                        # It saw the cancellation (self.context.cancelled) and returned early.
                        outcome = "cancelled (terminate)"
                        self._settle_cancelled(scope)
                    outcome = "ok"
                    return result
                except Forward as forward:
                    forward_to, extra_hops = forward.host, forward.extra_hops
                    outcome = f"forwarded to {forward_to}"
                except Exception as exc:
                    outcome = f"error {type(exc).__name__}"
                    if scope.cancelled:
                        outcome = "cancelled (terminate)"
                        self._settle_cancelled(scope)
                    error = _wire_form(exc, host)
                    policy = self.retry_policy
                    if policy is not None and policy.retries(exc) and policy.allows(retries):
                        outcome = f"retry: {type(exc).__name__}"
                        outcome = self._retry(error, policy, retries, kwargs)
                    if error is not exc:
                        # Not part of the service's API (a driver's error, say): logged here
                        # with its traceback, and the caller gets RemoteError naming it.
                        log.exception("%s failed on %s", self.name, host)
                    raise error from None
        finally:
            log_request(self.name, host, context.request_id, request.id, started, outcome)
            current_scope.reset(scope_token)
            current_context.reset(context_token)
        # Handed on outside the except block: nothing of the manager's frames stays
        # chained to the exception that ends this run (Celery's Ignore).
        return self._forward(forward_to, host, kwargs, extra_hops)

    def _note_process(self, terminations: Terminations, host: str) -> None:
        """In a prefork child, say in the ledger which process runs the request (Celery's
        STARTED ``pid``): the node's main process took it."""
        try:
            terminations.revocations.move_holder(
                self.request.id, Holder(host, os.getpid(), round(time.time(), 3)))
        except Exception as exc:  # what the ledger says of a pid never stops a request
            log.debug("could not note the process of %s: %s", self.request.id, exc)

    def _settle_cancelled(self, scope: CancelScope) -> NoReturn:
        """End a request stopped by a cancellation with terminate: ``REVOKED``, as Celery's."""
        request = self.request
        reason = scope.reason or TERMINATED
        self.backend.mark_as_revoked(request.id, reason, request=request)
        self.send_event("task-revoked", terminated=True, signum=None, expired=False)
        signals.task_revoked.send(sender=self, request=request, terminated=True, signum=None,
                                  expired=False)
        count(self.app, "cancelled", self.name)
        raise Ignore()

    def _retry(self, error: TaskyardError, policy: RetryPolicy, retries: int,
               kwargs: Any) -> str:
        """Send the request again, delayed as ``policy`` says, and end this run as RETRY.

        The next run is a delayed request under the same task id (it waits in
        Redis, never in a node's memory), written in one step with the
        request's record of its runs, which is how a message of this run
        delivered again after a crash knows it was retried and does not run.
        Returns the outcome instead when no retry can run (its deadline comes first).
        """
        request = self.request
        countdown = policy.countdown(retries)
        due = time.time() + countdown
        expires = timestamp(request.expires) if request.expires else None
        if expires is not None and expires <= due:
            return f"error {error.details.get('type') or type(error).__name__} (its deadline " \
                   "comes before a retry could run)"
        attempt = retries + 2
        runs = "" if policy.max_retries is None else f" of {policy.max_retries + 1}"
        error.with_details(attempt=retries + 1)
        log.warning("%s[%s] failed on run %d%s (%s); run %d in %.1f s", self.name, request.id,
                    retries + 1, runs, error, attempt, countdown)
        headers = {key: value for key, value in (request.headers or {}).items()
                   if key.startswith("taskyard_") and key != SIGNATURE_HEADER}
        queue = (request.delivery_info or {}).get("routing_key") or self.service
        marker = Marker(attempts_key(request.id), attempt, f"{error}"[:2000], due,
                        int(self.app.config.result_expires))
        Client(self.service, app=self.app).send_again(
            self.method, dict(kwargs), task_id=request.id, queue=queue, headers=headers,
            retries=retries + 1, times=Times(due, expires), marker=marker)
        raise Retry(f"run {attempt} in {countdown:.1f} s", exc=error, when=due)

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
                "retry_policy": retry_policy(spec.manager_cls.endpoints()[method]),
                "__module__": __name__,
                "__doc__": getattr(spec.manager_cls.endpoints()[method], "__doc__", None),
            },
        )
        app.register_task(task_cls())
        names.append(name)
    return names


__all__ = ["EndpointTask", "register_endpoint_tasks", "version_compatible"]
