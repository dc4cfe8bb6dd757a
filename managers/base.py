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
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, overload

from drivers.cancellation import CancelScope, check_cancelled
from drivers.exceptions import NoValidHost
from managers.builds import Build
from managers.claims import ClaimStore, Inventory
from managers.forwarding import Forward
from managers.placement import Placement, Placements
from managers.records import RecordStore, now
from managers.retries import RETRY_OPTIONS, RetryPolicy

if TYPE_CHECKING:  # a caller imports this module: it loads no scheduler driver code
    from drivers.scheduler.hosts import HostState

__all__ = [
    "Fleet", "Forward", "Manager", "PeriodicSpec", "RequestContext", "RetryPolicy",
    "current_context", "current_progress", "endpoint", "now", "periodic_task", "retry_policy",
]

log = logging.getLogger("taskyard.placement")

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute set on a function by :func:`endpoint`.
ENDPOINT_MARK = "__taskyard_endpoint__"
#: Attribute set on a function by :func:`endpoint`: its :class:`RetryPolicy` (or None).
RETRY_MARK = "__taskyard_retry__"
#: Attribute set on a function by :func:`periodic_task`.
PERIODIC_MARK = "__taskyard_periodic__"

#: Attribute set on a periodic task that only managers declaring a placement run.
PLACEMENT_ONLY_MARK = "__taskyard_placement_only__"

#: Names that are part of the manager's life cycle and can never be endpoints.
RESERVED = frozenset(
    {"init_host", "cleanup_host", "capabilities", "report_progress", "forward_to",
     "endpoints", "periodic_tasks", "context", "records", "driver", "settings", "host",
     "service", "redis", "fleet", "init_process", "placement", "inventory", "allocations",
     "claims", "placements", "building", "release_claim", "report_inventory"}
)

#: Seconds a claim must have existed before the reconciliation may release it for a
#: resource the node does not hold (a build claims just before it makes its record).
RECONCILE_GRACE_S = 30.0
#: Seconds between two reconciliations of a node's claims with what it holds.
RECONCILE_SPACING_S = 60.0


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
    goes on (its next run is its retry: retry options are refused here)::

        @periodic_task(spacing=10)
        def reconcile_instances(self) -> None:
            ...

    :param spacing: seconds between runs; the setting
        ``services.<name>.periodic.<method>`` changes it per fleet.
    :param run_immediately: run once as the node starts, instead of after the
        first ``spacing``.
    :raises TypeError: retry options, unknown options, or a private method.
    :raises ValueError: a ``spacing`` that is not a number of seconds above 0.
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


def _placement_only(fn: F) -> F:
    setattr(fn, PLACEMENT_ONLY_MARK, True)
    return fn


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

    def candidates(self, service: str, needs: Mapping[str, float], limit: int, *,
                   zone: str | None = None, include: Sequence[str] = ()) -> list[HostState]:
        """Up to ``limit`` hosts of ``service`` with the most free of the first resource class
        of ``needs`` (of ``zone`` only, when given), and the hosts ``include`` names, each
        with its state, zone, what it has free (from claims) and its failed builds."""
        ...

    def states(self, service: str, hosts: list[str]) -> dict[str, dict[str, Any]]:
        """Host -> ``{state, age, disabled_reason}`` of each of ``hosts`` (``down``, age
        None, when the registry does not know it)."""
        ...

    def placement(self, service: str) -> Placement | None:
        """What ``service`` declares its resources take of its nodes, or None."""
        ...

    def resend(self, service: str, method: str, /, *, host: str | None, task_id: str,
               kwargs: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        """Send a request again under its task id (a waiting caller gets the new answer),
        with the request context it first had (``headers``: ``taskyard_*``)."""
        ...


class Manager:
    """One service's business logic; one instance per service per process.

    Subclasses set ``driver_interface`` (the driver ABC the configured driver
    is checked against) and mark their endpoints::

        class WordsManager(Manager):
            driver_interface = WordCounter

            @endpoint
            def count_words(self, text: str) -> dict[str, Any]:
                return {"words": self.driver.count(text), "host": self.host}

    Only methods marked :func:`endpoint` can be reached by a message, and only
    with the keyword arguments their annotations allow (JSON types). The node
    builds the manager with the configured driver (``self.driver``), its host
    name (``self.host``) and the records' Redis (``self.redis``); in tests,
    ``workers.testing.build_manager`` does the same on fakeredis.
    """

    driver_interface: ClassVar[type | None] = None
    """The ABC a driver must implement; None when the service has no driver contract."""
    rpc_api_version: ClassVar[str] = "1.0"
    """The API version this manager serves (``major.minor``): see rolling upgrades."""
    placement: ClassVar[Placement | None] = None
    """What this service's resources take of its nodes (None: the scheduler does not
    place them). See :class:`~managers.placement.Placement`."""

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
        self._claims: ClaimStore | None = None
        self._placements: Placements | None = None

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
        """Name -> schedule, for every method marked :func:`periodic_task` (those of
        placement, only when the manager declares one)."""
        found: dict[str, PeriodicSpec] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                spec = getattr(attr, PERIODIC_MARK, None)
                if isinstance(spec, PeriodicSpec):
                    if getattr(attr, PLACEMENT_ONLY_MARK, False) and cls.placement is None:
                        continue
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

    # -- placement (managers that declare ``placement``) ---------------------------

    def inventory(self) -> Mapping[str, int | Inventory]:
        """What this node offers, per resource class: a total (whole units), or an
        :class:`~managers.claims.Inventory`; reported with every heartbeat.

        The service's ``inventory`` settings (``reserved``, ``allocation_ratio``
        per class) apply to what this returns.
        """
        return {}

    def allocations(self) -> Mapping[str, Mapping[str, int]]:
        """What this node holds: resource id -> what it takes, per resource class.

        The reconciliation compares it with the claims on this host. A
        resource whose build failed holds nothing.
        """
        return {}

    @property
    def claims(self) -> ClaimStore:
        """Inventory and claims of this service's nodes."""
        if self._claims is None:
            self._claims = ClaimStore(self.redis, self.service)
        return self._claims

    @property
    def placements(self) -> Placements:
        """The scheduler's placement records of this service's resources."""
        if self._placements is None:
            self._placements = Placements(self.redis, self.service)
        return self._placements

    def _placement(self) -> Placement:
        if self.placement is None:
            raise TypeError(f"{type(self).__qualname__} declares no placement (set the class "
                            "attribute placement = Placement(...))")
        return self.placement

    def building(self, resource_id: str, records: RecordStore | None = None,
                 status: str | None = None, **arguments: Any) -> Build:
        """The build of ``resource_id`` on this node, as a context manager (see
        :mod:`managers.builds`): its claim, and what a failure does next.

        ``arguments`` are the create endpoint's (what the resource needs is read
        from them); with ``records`` and ``status`` (the building state), a
        rescheduled or failed build updates the resource's record.
        """
        is_up = None
        if self._fleet is not None:
            fleet = self._fleet

            def is_up(host: str) -> bool:
                return fleet.states(self.service, [host])[host]["state"] == "up"

        return Build(resource_id=resource_id, host=self.host,
                     amounts=self._placement().amounts(arguments), claims=self.claims,
                     placements=self.placements, is_up=is_up, records=records,
                     status=status, kind=self._placement().kind)

    def resize_claim(self, resource_id: str, **arguments: Any) -> None:
        """Make ``resource_id``'s claim on this node what ``arguments`` (the create endpoint's,
        with their new values) need; growing past this node's capacity is
        :class:`NoValidHost`, saying by how much."""
        amounts = self._placement().amounts(arguments)
        result = self.claims.resize(resource_id, self.host, amounts)
        if result.ok:
            return
        if result.why == "held" and result.holder is None:  # it holds no claim: it has one now
            self.claims.claim(resource_id, self.host, amounts, force=True)
            return
        if result.why == "noinv":  # no inventory to check against: the backend decides
            self.claims.resize(resource_id, self.host, amounts, force=True)
            return
        kind = self._placement().kind
        raise NoValidHost(f"{kind} {resource_id} cannot grow on {self.host}: "
                          f"{result.reason(amounts)}",
                          {"id": resource_id, "host": self.host,
                           "reasons": {"CapacityFilter": {self.host: result.reason(amounts)}}})

    def release_claim(self, resource_id: str) -> None:
        """The resource is gone from this node: free what its claim held, at once."""
        if self.claims.release(resource_id, self.host) is not None:
            self.placements.retire(resource_id)

    def report_inventory(self, zone: str = "", listed: bool = True) -> None:
        """Report :meth:`inventory`, with the settings' ``reserved`` and ``allocation_ratio``
        applied (the heartbeat calls it); ``listed``: whether the node takes new work."""
        adjust = getattr(self.settings, "inventory", None) or {}
        inventories = {}
        for rc, offered in self.inventory().items():
            base = offered if isinstance(offered, Inventory) else Inventory(int(offered))
            tuned = adjust.get(rc) or {}
            inventories[rc] = Inventory(
                base.total, int(tuned.get("reserved", base.reserved)),
                float(tuned.get("allocation_ratio", base.allocation_ratio)))
        self.claims.report_inventory(self.host, inventories, zone=zone, listed=listed)

    @_placement_only
    @periodic_task(spacing=RECONCILE_SPACING_S)
    def reconcile_allocations(self) -> dict[str, Any]:
        """Make the claims on this node agree with what it holds, and say what was fixed.

        A claim of a resource this node does not hold (gone, or never built) is
        released, unless its build is under way; a resource it holds without a
        claim (created around the scheduler, or a claim lost) is claimed; a
        claim of another size is set to the resource's; then usage is counted
        again from the claims.
        """
        claims = self.claims.host_claim_details(self.host)
        held = {rid: dict(amounts) for rid, amounts in self.allocations().items()}
        building = set(self.placements.building())
        young = time.time() - RECONCILE_GRACE_S
        fixed: dict[str, Any] = {"released": [], "claimed": [], "resized": [], "elsewhere": []}
        for rid, claim in claims.items():
            if rid in held or rid in building or claim["at"] > young:
                continue
            if self.claims.release(rid, self.host) is not None:
                self.placements.retire(rid)
                fixed["released"].append(rid)
        for rid, amounts in held.items():
            existing = claims.get(rid)
            if existing is not None and existing["amounts"] == amounts:
                continue
            if existing is not None:
                self.claims.release(rid, self.host)
                fixed["resized"].append(rid)
            result = self.claims.claim(rid, self.host, amounts, force=True)
            if not result.ok:
                fixed["elsewhere"].append(f"{rid} (claimed on {result.holder})")
            elif existing is None:
                fixed["claimed"].append(rid)
        usage = self.claims.recount(self.host)
        report = {"at": time.time(), "held": len(held), "claims": len(claims),
                  **{k: v for k, v in fixed.items() if v},
                  **({"usage": {rc: list(v) for rc, v in usage.items()}} if usage else {})}
        self.claims.note_reconciliation(self.host, report)
        for what, ids in fixed.items():
            if ids:
                log.warning("reconciliation of %s on %s: %s %s", self.service, self.host,
                            what, ", ".join(ids))
        if usage:
            log.warning("reconciliation of %s on %s: usage counted again from claims: %s",
                        self.service, self.host, ", ".join(
                            f"{rc} {before} -> {after}" for rc, (before, after) in usage.items()))
        return report

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


