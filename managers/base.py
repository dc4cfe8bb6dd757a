"""The base of every manager: the business logic of one service.

A manager is reached only through methods marked :func:`endpoint`;
everything else on it (private names, ``init_host``, helpers) is unreachable
from a message, because only endpoints become Celery tasks. A manager never
imports Celery: the service layer hands it a driver, its settings, a Redis
client for its records, and the request's context and progress sink.

Example::

    class EchoManager(Manager):
        driver_interface = EchoDriver

        @endpoint
        def echo(self, text: str, times: int = 1) -> str:
            return self.driver.echo(text) * times
"""

from __future__ import annotations

import contextvars
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, overload

from drivers.cancellation import CancelScope, check_cancelled
from managers.records import now
from managers.retries import RETRY_OPTIONS, RetryPolicy

__all__ = [
    "Fleet", "Forward", "Manager", "PeriodicSpec", "RequestContext", "RetryPolicy",
    "current_context", "current_progress", "endpoint", "now", "periodic_task", "retry_policy",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute set on a function by :func:`endpoint`.
ENDPOINT_MARK = "__taskyard_endpoint__"
#: Attribute set on a function by :func:`endpoint`: its :class:`RetryPolicy` (or None).
RETRY_MARK = "__taskyard_retry__"
#: Attribute set on a function by :func:`periodic_task`.
PERIODIC_MARK = "__taskyard_periodic__"

#: Names that are part of the manager's life cycle and can never be endpoints.
RESERVED = frozenset(
    {"init_host", "cleanup_host", "capabilities", "report_progress", "forward_to",
     "endpoints", "periodic_tasks", "context", "records", "driver", "settings", "host",
     "service", "redis", "fleet", "init_process"}
)


@overload
def endpoint(fn: F, /) -> F: ...


@overload
def endpoint(*, autoretry_for: Any = ..., max_retries: int | None = ...,
             retry_backoff: bool | float = ..., retry_backoff_max: float = ...,
             retry_jitter: bool = ..., default_retry_delay: float = ...) -> Callable[[F], F]: ...


def endpoint(fn: F | None = None, /, **options: Any) -> F | Callable[[F], F]:
    """Make a public method reachable by messages as the task ``<service>.<name>``.

    Arguments are bound to the method's signature before it runs: missing,
    unexpected or wrongly typed (JSON types, from the annotations) arguments
    are rejected with ``InvalidRequest`` naming the argument. Endpoints must
    be safe to run twice with the same arguments (a message can be delivered
    again after a crash).

    ``@endpoint(autoretry_for=(DriverError,), max_retries=3, retry_backoff=True)``
    tries a failure of those classes again, as a delayed request under the
    same task id, with Celery's names and meaning (see :mod:`managers.retries`).
    """
    if fn is None:
        def mark(method: F) -> F:
            return _mark_endpoint(method, RetryPolicy.from_options(method.__name__, options))

        return mark
    if options:
        raise TypeError("use @endpoint or @endpoint(option=...), not both")
    return _mark_endpoint(fn, None)


def _mark_endpoint(fn: F, retry: RetryPolicy | None) -> F:
    name = getattr(fn, "__name__", repr(fn))
    if not callable(fn):
        raise TypeError(f"@endpoint needs a method, got {fn!r}")
    if name.startswith("_"):
        raise TypeError(f"{name!r} cannot be an endpoint: names starting with '_' are private")
    if name in RESERVED:
        raise TypeError(f"{name!r} cannot be an endpoint: it is part of the manager's life cycle")
    setattr(fn, ENDPOINT_MARK, True)
    setattr(fn, RETRY_MARK, retry)
    return fn


def retry_policy(fn: Callable[..., Any]) -> RetryPolicy | None:
    """The retry policy ``@endpoint(...)`` gave ``fn`` (None: failures are not retried)."""
    policy = getattr(fn, RETRY_MARK, None)
    return policy if isinstance(policy, RetryPolicy) else None


@dataclass(frozen=True)
class PeriodicSpec:
    """How often a periodic task of a manager runs on each node."""

    name: str
    spacing: float
    run_immediately: bool = False


def periodic_task(*, spacing: float, run_immediately: bool = False,
                  **options: Any) -> Callable[[F], F]:
    """Run a manager method every ``spacing`` seconds on every node of the service.

    It runs as the task ``<service>.periodic.<name>`` on the node's own queue,
    never twice at once on one node; an exception is logged and the schedule
    goes on (its next run is its retry: retry options are refused here).
    """
    if options:
        retry = sorted(set(options) & RETRY_OPTIONS)
        if retry:
            raise TypeError(
                f"periodic_task takes no retry options ({', '.join(retry)}): retries are "
                "for endpoints (@endpoint(autoretry_for=...)); a periodic task's next run "
                "comes at its next spacing")
        raise TypeError(f"periodic_task got unknown option(s) {', '.join(sorted(options))}; "
                        "it takes spacing and run_immediately")
    if not spacing or spacing <= 0:
        raise ValueError("periodic_task needs spacing > 0 (seconds)")

    def mark(fn: F) -> F:
        if fn.__name__.startswith("_"):
            raise TypeError(f"periodic task {fn.__name__!r}: names starting with '_' are private")
        setattr(fn, PERIODIC_MARK, PeriodicSpec(fn.__name__, float(spacing), run_immediately))
        return fn

    return mark


@dataclass(frozen=True)
class RequestContext:
    """Who asked for the work in hand: travels with every message."""

    request_id: str
    caller_host: str | None = None
    user: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: The message's task id: the same on every delivery of one message.
    task_id: str | None = None
    #: Which run of the request this is: 1, then 2 for its first retry, and so on.
    attempt: int = 1
    #: Where a cancellation of the request lands (set by the service layer on a node).
    scope: CancelScope | None = field(default=None, compare=False, repr=False)

    @property
    def cancelled(self) -> bool:
        """Whether the request was cancelled while it runs (``terminate``): stop soon.

        Its driver's commands are already stopped, and the next progress report
        raises :class:`~drivers.exceptions.Cancelled`; an endpoint in a long loop
        of its own may look here and return, or call ``self.context.check()``.
        """
        return self.scope is not None and self.scope.cancelled

    def check(self) -> None:
        """Raise :class:`~drivers.exceptions.Cancelled` if the request was cancelled."""
        if self.scope is not None:
            self.scope.check()

    def as_headers(self) -> dict[str, Any]:
        return {
            "taskyard_request_id": self.request_id,
            "taskyard_caller": self.caller_host,
            "taskyard_user": self.user,
        }


#: The request being handled in this thread (set by the service layer).
current_context: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "taskyard_context", default=None
)
#: Where progress of the request in hand goes (set by the service layer).
current_progress: contextvars.ContextVar[Callable[[int, int, str], None] | None] = (
    contextvars.ContextVar("taskyard_progress", default=None)
)


class Fleet(Protocol):
    """What a manager may ask of the rest of the fleet (given by the service layer).

    Managers that hand work on (the scheduler) use it instead of importing
    the service layer, so they stay testable with a fake fleet.
    """

    def hosts(self, service: str) -> list[dict[str, Any]]:
        """Every known host of ``service`` as the registry sees it: host, state, capabilities."""
        ...

    def cast(self, service: str, method: str, /, host: str | None = None,
             **kwargs: Any) -> str:
        """Send ``method`` to ``service`` (on ``host``'s own queue when given); the task id."""
        ...


class Forward(Exception):
    """Raised by a manager to have the request run on the node that owns the resource.

    Not an error: the service layer hands the same request to ``host``'s own
    queue under the same task id, so the caller gets that node's answer.
    """

    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.host = host


class Manager:
    """One service's business logic; one instance per service per process.

    Subclasses set ``driver_interface`` (the driver ABC the configured driver
    is checked against) and mark their endpoints.
    """

    #: The ABC a driver must implement; None when the service has no driver contract.
    driver_interface: ClassVar[type | None] = None
    #: The API version this manager serves (``major.minor``).
    rpc_api_version: ClassVar[str] = "1.0"

    def __init__(
        self,
        *,
        service: str,
        host: str,
        driver: Any,
        settings: Any = None,
        redis: Any = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.service = service
        self.host = host
        self.driver = driver
        self.settings = settings
        self.redis = redis
        self._fleet = fleet
        self.started_at = time.time()

    # -- discovery ---------------------------------------------------------

    @classmethod
    def endpoints(cls) -> dict[str, Callable[..., Any]]:
        """Endpoint name -> function, for every method marked :func:`endpoint`."""
        found: dict[str, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if callable(attr) and getattr(attr, ENDPOINT_MARK, False):
                    found[name] = attr
                elif name in found:
                    del found[name]  # overridden without the mark: no longer reachable
        return found

    @classmethod
    def periodic_tasks(cls) -> dict[str, PeriodicSpec]:
        """Name -> schedule, for every method marked :func:`periodic_task`."""
        found: dict[str, PeriodicSpec] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                spec = getattr(attr, PERIODIC_MARK, None)
                if isinstance(spec, PeriodicSpec):
                    found[name] = spec
        return found

    # -- life cycle ----------------------------------------------------------

    def init_host(self) -> None:
        """Prepare this node before it takes messages: set up, check and recover the driver.

        Runs once per node, before consuming; an exception stops the node.
        Subclasses extend it (and call ``super().init_host()``) to reconcile
        their records with what the backend holds.
        """
        if self.driver is not None:
            for step in ("do_setup", "check_for_setup_error", "recover"):
                method = getattr(self.driver, step, None)
                if callable(method):
                    method()

    def init_process(self) -> None:
        """Prepare a worker process other than the node's main one (a prefork child)."""
        setup = getattr(self.driver, "do_setup", None)
        if callable(setup):
            setup()

    def cleanup_host(self) -> None:
        """Release what ``init_host`` took; runs on warm shutdown."""

    def capabilities(self) -> dict[str, Any]:
        """What this node offers, reported with every heartbeat (JSON values)."""
        return {}

    # -- helpers for endpoints ---------------------------------------------

    @property
    def context(self) -> RequestContext | None:
        """The request in hand (its id, caller and user), or None outside a request."""
        return current_context.get()

    def report_progress(self, done: int, total: int, message: str = "") -> None:
        """Tell the caller (and Flower) how far the request in hand has come.

        Raises :class:`~drivers.exceptions.Cancelled` instead once the request
        was cancelled (``terminate``): a long endpoint stops at its next report.
        """
        check_cancelled()
        sink = current_progress.get()
        if sink is not None:
            sink(int(done), int(total), str(message))

    @property
    def fleet(self) -> Fleet:
        """The rest of the fleet: live hosts of a service, and a way to hand work on."""
        if self._fleet is None:
            raise RuntimeError(f"{type(self).__name__} was built without a fleet")
        return self._fleet

    def new_id(self, kind: str) -> str:
        """An id for a resource this request creates, the same on every delivery.

        Derived from the message's task id, so a message delivered again
        (after a crash, before its ack) names the same resource and the
        endpoint finds it instead of making a second one. Outside a request
        (a manager called directly) it is random.
        """
        context = current_context.get()
        if context is None or not context.task_id:
            return str(uuid.uuid4())
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.service}:{kind}:{context.task_id}"))

    def forward_to(self, host: str) -> None:
        """Hand the request in hand to ``host`` (which owns the resource); never returns."""
        raise Forward(host)

    @endpoint
    def ping(self) -> dict[str, Any]:
        """Who answered: for checks and for targeting tests."""
        return {
            "service": self.service,
            "host": self.host,
            "pid": os.getpid(),
            "rpc_api_version": self.rpc_api_version,
            "started_at": self.started_at,
        }


#: Namespace of the ids :meth:`Manager.new_id` derives from task ids.
_ID_NAMESPACE = uuid.UUID("6d1f3f5e-4b0c-4d0e-9a51-7a8d2f0c1e3b")


