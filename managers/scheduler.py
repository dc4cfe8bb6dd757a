"""The scheduler service: places new resources, claiming what they take before handing them on.

A placement (``schedule``, or ``schedule_create_volume`` and
``schedule_run_instance`` for the reference services), as Nova's scheduler
does it since Placement:

1. what the resource takes is read from the service's placement
   declaration (:class:`managers.placement.Placement`, published by its
   nodes) and the request's arguments;
2. a capped set of **candidates** is read from the index of free capacity
   (the ``max_candidates`` freest hosts of the request's first resource
   class, of the hinted zone only when there is one), with their state from
   the registry;
3. the driver filters and weighs them (``NoValidHost`` says, per filter, why
   each host was removed);
4. the resources are **claimed** on the best host atomically; a host another
   placement filled meanwhile is passed over for the next one (and the
   candidates are read again when every one of them was);
5. the placement is recorded with up to ``max_attempts - 1`` alternates, and
   the request is handed to the chosen host's own queue. It returns at once
   with the host, the resource's id and the task id the caller waits on.

A build that fails on its host for a reason that is not the caller's moves to
the next alternate (:mod:`managers.builds`); a host that dies mid-build is
found by :meth:`SchedulerManager.watch_builds`, which moves its builds on and
releases their claims.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from drivers.exceptions import NoValidHost
from drivers.scheduler.base import HostState, PlacementRequest, SchedulerDriver, Selection
from drivers.scheduler.hosts import AFFINITY_HINT, ANTI_AFFINITY_HINT, ZONE_HINT
from managers.base import Manager, endpoint, periodic_task
from managers.claims import ClaimStore, placed_services, remember_service
from managers.exceptions import Conflict, InvalidRequest, NotFound
from managers.placement import (
    BUILDING,
    FAILED,
    Placement,
    PlacementRecord,
    Placements,
    attempt,
)

log = logging.getLogger("taskyard.placement")

#: Times the candidates are read again when other placements took every host that fit.
CLAIM_ROUNDS = 3
#: Seconds between two looks for builds whose host died, and for dead hosts in the index.
WATCH_SPACING_S = 10.0
#: How deep into each index the watch looks for hosts that stopped reporting, in
#: multiples of ``max_candidates``.
PRUNE_DEPTH = 5
#: Hosts per filter a placement record keeps the reasons of (it keeps the count of all).
RECORDED_REASONS = 20


def _ids(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidRequest(f"hint {name!r} = {value!r}: expected a resource id or a list of ids",
                         {"argument": "hints"})


class SchedulerManager(Manager):
    """Places new resources through the configured scheduler driver, claiming them first."""

    driver_interface = SchedulerDriver
    rpc_api_version = "1.1"
    driver: SchedulerDriver

    #: The services this scheduler places work for.
    volume_service = "volume"
    compute_service = "compute"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stores: dict[str, tuple[ClaimStore, Placements]] = {}
        self._remembered: set[str] = set()

    def _stores_of(self, service: str) -> tuple[ClaimStore, Placements]:
        stores = self._stores.get(service)
        if stores is None:
            stores = self._stores[service] = (ClaimStore(self.redis, service),
                                              Placements(self.redis, service))
        return stores

    # -- endpoints ---------------------------------------------------------------------

    @endpoint
    def schedule(self, service: str, hints: dict[str, Any] | None = None,
                 **arguments: Any) -> dict[str, Any]:
        """Place one new resource of ``service`` and hand its creation to the chosen host.

        ``arguments`` are those of the service's create endpoint (its id
        argument is made when not given); ``hints`` steer the choice: ``zone``,
        ``affinity`` and ``anti_affinity`` (resource ids of the service), and
        those of third-party filters. Returns ``host``, ``id``, ``task_id`` (wait
        on it with ``Client(service).handle(task_id).wait()``), ``alternates``.
        """
        placement = self.fleet.placement(service)
        if placement is None:
            raise InvalidRequest(
                f"service {service!r} declares no placement: no node of it has published one "
                "(its manager sets placement = Placement(...))", {"argument": "service"})
        hints = dict(hints or {})
        self._check_hints(hints)
        amounts = placement.amounts(arguments)
        resource_id = arguments.pop(placement.id_argument, None) or self.new_id(placement.kind)
        if not isinstance(resource_id, str):
            raise InvalidRequest(f"{placement.id_argument} = {resource_id!r}: expected a string",
                                 {"argument": placement.id_argument})
        claims, placements = self._stores_of(service)
        kwargs = {**arguments, placement.id_argument: resource_id}
        if service not in self._remembered:
            remember_service(self.redis, service)
            self._remembered.add(service)
        request = PlacementRequest(service, amounts, weigh_by=next(iter(amounts)), hints=hints,
                                   resource_hosts=self._resource_hosts(service, hints))
        context = self.context
        record = PlacementRecord(
            resource_id, "", BUILDING, [], [], amounts,
            {"service": service, "method": placement.creates, "kwargs": kwargs,
             "headers": context.as_headers() if context else {}},
            {}, self.driver.max_attempts, round(time.time(), 3))
        try:
            self._claim(claims, placements, request, record)
        except _AlreadyClaimed as claimed:
            # Placed before: this request delivered again (its id comes from its task id)
            # gets the first placement's answer; another request naming it is refused.
            earlier = placements.get(resource_id)
            if earlier is None or earlier.state == FAILED:
                raise Conflict(f"{placement.kind} {resource_id} already holds a claim on "
                               f"{claimed.holder}", {"id": resource_id,
                                                     "host": claimed.holder}) from None
            return self._hand_on(service, placement, earlier, kwargs, again=True)
        return self._hand_on(service, placement, record, kwargs)

    @endpoint
    def schedule_create_volume(self, size_gb: int, hints: dict[str, Any] | None = None,
                               **volume_args: Any) -> dict[str, Any]:
        """Create a volume on the host with the most free space that fits it.

        ``volume_args`` are the other arguments of ``volume.create_volume``
        (``name``, ``volume_id``); a ``volume_id`` is made when none is given.
        ``hints`` as for :meth:`schedule`.
        """
        return self.schedule(self.volume_service, hints, size_gb=size_gb, **volume_args)

    @endpoint
    def schedule_run_instance(self, hints: dict[str, Any] | None = None,
                              **instance_args: Any) -> dict[str, Any]:
        """Start an instance on the host with the most free slots.

        ``instance_args`` are the arguments of ``compute.run_instance``
        (``image``, ``name``, ``instance_id``); an ``instance_id`` is made
        when none is given. ``hints`` as for :meth:`schedule`.
        """
        return self.schedule(self.compute_service, hints, **instance_args)

    # -- placing -----------------------------------------------------------------------

    def _check_hints(self, hints: Mapping[str, Any]) -> None:
        known = self.driver.known_hints
        unknown = sorted(set(hints) - known) if known is not None else []
        if unknown:
            raise InvalidRequest(
                f"hints {', '.join(map(repr, unknown))}: no enabled filter or weigher reads "
                f"{'it' if len(unknown) == 1 else 'them'} (enabled ones read: "
                f"{', '.join(sorted(known or ())) or 'none'})", {"argument": "hints"})
        zone = hints.get(ZONE_HINT)
        if zone is not None and not isinstance(zone, str):
            raise InvalidRequest(f"hint 'zone' = {zone!r}: expected a zone name",
                                 {"argument": "hints"})
        for name in (AFFINITY_HINT, ANTI_AFFINITY_HINT):
            if name in hints:
                _ids(name, hints[name])

    def _resource_hosts(self, service: str, hints: Mapping[str, Any]) -> dict[str, str]:
        """Resource id -> host, for the resources the affinity hints name."""
        ids = [rid for name in (AFFINITY_HINT, ANTI_AFFINITY_HINT) if name in hints
               for rid in _ids(name, hints[name])]
        if not ids:
            return {}
        found = self._stores_of(service)[0].holders(ids)
        missing = [rid for rid in ids if rid not in found]
        if missing:
            raise NotFound(f"hints name {service} resources that are on no host: "
                           f"{', '.join(missing)}", {"id": missing[0]})
        return found

    def _candidates(self, request: PlacementRequest) -> list[HostState]:
        """The freest hosts from the index (and the hosts affinity names), with their state."""
        near = {request.resource_hosts[rid] for rid in request.hint_ids(AFFINITY_HINT)}
        return self.fleet.candidates(request.service, request.needs, self.driver.max_candidates,
                                     zone=request.hints.get(ZONE_HINT) or None,
                                     include=sorted(near))

    def _claim(self, claims: ClaimStore, placements: Placements, request: PlacementRequest,
               record: PlacementRecord) -> None:
        """Claim on the best host that still has room, and start ``record`` there in the same
        step (its host, alternates and why filled in)."""
        raced: dict[str, str] = {}
        for _ in range(CLAIM_ROUNDS):
            hosts = self._candidates(request)
            selection = self.driver.select_destinations(request, hosts)
            for i, host in enumerate(selection.hosts):
                record.host = host
                record.alternates = selection.hosts[i + 1:i + self.driver.max_attempts]
                record.decision = _decision(selection, host, request, raced)
                result = claims.claim(record.id, host, request.needs,
                                      record=placements.recording(record))
                if result.ok and result.new:
                    return
                if result.ok or result.why == "held":
                    raise _AlreadyClaimed(result.holder or host)
                raced[host] = result.reason(request.needs)
        shown = ", ".join(f"{h} ({why})" for h, why in list(raced.items())[:10])
        raise NoValidHost(
            f"no valid host for {request.describe()}: other placements took every host that "
            f"fitted before this one could claim it, {CLAIM_ROUNDS} times: {shown}",
            {"reasons": {"claim": dict(list(raced.items())[:RECORDED_REASONS])}})

    def _hand_on(self, service: str, placement: Placement, record: PlacementRecord,
                 kwargs: dict[str, Any], *, again: bool = False) -> dict[str, Any]:
        """Send the build to the host its claim is on (unless it was sent already)."""
        task_id = record.request.get("task_id")
        if task_id is None:
            _, placements = self._stores_of(service)
            try:
                task_id = self.fleet.cast(service, placement.creates, host=record.host,
                                          **kwargs)
            except BaseException:
                if not again:
                    self._stores_of(service)[0].release(record.id, record.host)
                    placements.forget(record.id)
                raise
            placements.set_task(record.id, task_id)
        return {"host": record.host, "id": record.id, "task_id": task_id, "service": service,
                "method": placement.creates, "alternates": list(record.alternates)}

    # -- watching builds ------------------------------------------------------------------

    @periodic_task(spacing=WATCH_SPACING_S)
    def watch_builds(self) -> dict[str, Any]:
        """Move the builds of hosts that stopped reporting to their alternates, and take
        such hosts out of the index of free capacity.

        A build whose host is down (no heartbeat for ``service_down_time``) is
        an attempt that failed: its claim is released and the request is sent,
        under its task id, to the next alternate that is up (claimed there);
        with none left, to any node of the service, which marks the resource
        in error and answers the caller with every attempt.
        """
        report: dict[str, list[str]] = {"moved": [], "failed": [], "unlisted": []}
        for service in placed_services(self.redis):
            claims, placements = self._stores_of(service)
            records = placements.get_many(placements.building())
            states = self.fleet.states(service, sorted({r.host for r in records}))
            for record in records:
                state = states.get(record.host) or {"state": "down", "age": None}
                if state["state"] != "down" or not record.request.get("task_id"):
                    continue
                outcome = self._move_on(service, claims, placements, record, state)
                if outcome is not None:
                    report[outcome].append(f"{service}/{record.id}")
            depth = self.driver.max_candidates * PRUNE_DEPTH
            for rc in claims.resource_classes():
                top = claims.index(rc, depth)
                for host, state in self.fleet.states(service, top).items():
                    if state["state"] == "down":
                        claims.unlist(host)
                        report["unlisted"].append(f"{service}/{host}")
        for what, items in report.items():
            if items:
                log.warning("watching builds: %s %s", what, ", ".join(items))
        return {k: v for k, v in report.items() if v}

    def _move_on(self, service: str, claims: ClaimStore, placements: Placements,
                 record: PlacementRecord, state: Mapping[str, Any]) -> str | None:
        """Move one build of a dead host on: ``moved``, ``failed`` (none left), or None when
        another scheduler did it first."""
        age = state.get("age")
        seen = "never reported" if age is None else f"last seen {age:.0f}s ago"
        attempts = [*record.attempts,
                    attempt(record.host, f"the host stopped reporting ({seen}) before the "
                                         "build finished")]

        def is_up(host: str) -> bool:
            return self.fleet.states(service, [host])[host]["state"] == "up"

        moved_to, passed_over, ours = placements.reschedule(
            claims, record, record.host, attempts, is_up)
        if not ours:
            return None
        request = record.request
        log.warning("%s %s: its host %s is down (%s); %s", service, record.id, record.host,
                    seen, f"sending the build to {moved_to}" if moved_to else
                    "no alternate left: the build failed")
        # With no alternate left, any node of the service takes it and answers the caller
        # (the placement now says it failed) with every attempt.
        self.fleet.resend(service, str(request.get("method")), host=moved_to,
                          task_id=str(request["task_id"]), kwargs=request.get("kwargs") or {},
                          headers=request.get("headers") or {})
        if passed_over:
            log.info("%s %s: alternates passed over: %s", service, record.id,
                     ", ".join(passed_over))
        return "moved" if moved_to else "failed"

    def capabilities(self) -> dict[str, Any]:
        return {"driver": type(self.driver).__name__}


class _AlreadyClaimed(Exception):
    """The resource a placement is for already holds a claim (on ``holder``)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def _decision(selection: Selection, chosen: str, request: PlacementRequest,
              raced: Mapping[str, str]) -> dict[str, Any]:
    """Why ``chosen`` was chosen, as the placement record keeps it (bounded in size)."""
    top = selection.hosts[:5]
    return {
        "considered": selection.considered, "passed": len(selection.hosts), "chosen": chosen,
        "weights": {h: round(selection.weights.get(h, 0.0), 4) for h in top},
        "removed": {name: dict(sorted(hosts.items())[:RECORDED_REASONS])
                    for name, hosts in selection.removed.items()},
        "removed_counts": {name: len(hosts) for name, hosts in selection.removed.items()},
        "hints": dict(request.hints), "needs": dict(request.needs),
        **({"taken_meanwhile": dict(list(raced.items())[:RECORDED_REASONS])} if raced else {}),
    }
