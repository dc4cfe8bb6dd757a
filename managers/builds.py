"""Building a resource on this node: its claim, and what a failed build does next.

A manager's create endpoint wraps the work that builds one resource in
:meth:`managers.base.Manager.building`, which returns a :class:`Build`::

    with self.building(volume_id, self.volumes, CREATING, size_gb=size_gb) as build:
        ...  # create the record (with build.attempts), run the driver

On entry, for a resource the scheduler placed, the build goes on only on the
host its claim is on now: a request that reaches another host (a message left
from before a reschedule) is handed on there; one whose placement failed for
good gets :class:`MaxRetriesExceeded`. A resource created without the
scheduler (a request sent straight to a node) is claimed on this host as it
is built, whether it fits or not: the backend decides there.

On the way out:

- success: the placement is done; the host's count of failed builds is reset;
- an error that is the caller's (``InvalidRequest``, ``Conflict``, any declared
  error but a driver's): the claim this build took is released, nothing is
  retried;
- any other error (a driver's, or an unexpected one): the host's count of
  failed builds goes up, the claim is released, and a placed resource moves to
  its next alternate (claimed there, the request handed on under the same task
  id) with the attempt recorded on its record; after the last one it is in
  error with every attempt's reason, and the caller gets
  :class:`MaxRetriesExceeded`.

A node that dies mid-build is handled by the scheduler's watch on builds
(:meth:`managers.scheduler.SchedulerManager.watch_builds`), which moves the
build on in the same way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from drivers.exceptions import DriverError, TaskyardError
from managers.claims import ClaimStore
from managers.exceptions import Conflict, MaxRetriesExceeded, NotFound
from managers.forwarding import Forward
from managers.placement import (
    BUILDING,
    DONE,
    FAILED,
    PlacementRecord,
    Placements,
    attempt,
    describe_attempts,
)
from managers.records import RecordStore, now

log = logging.getLogger("taskyard.placement")


def reschedulable(exc: BaseException) -> bool:
    """Whether a failed build may be tried on another host: not the caller's fault.

    A driver's error, or an unexpected one, is the host's; a declared error
    (bad arguments, a conflict with the resource's state) would fail anywhere.
    """
    return isinstance(exc, Exception) and not isinstance(exc, Forward) and (
        isinstance(exc, DriverError) or not isinstance(exc, TaskyardError))


class Build:
    """One build of one resource on this host (see the module doc)."""

    def __init__(self, *, resource_id: str, host: str, amounts: Mapping[str, int],
                 claims: ClaimStore, placements: Placements,
                 is_up: Callable[[str], bool] | None = None,
                 records: RecordStore | None = None, status: str | None = None,
                 kind: str = "resource") -> None:
        self.id = resource_id
        self.host = host
        self.amounts = dict(amounts)
        self.claims = claims
        self.placements = placements
        self.is_up = is_up
        self.records = records
        self.status = status
        self.kind = kind
        #: The placement this build carries on (None: the resource was not placed).
        self.placement: PlacementRecord | None = None
        #: The builds of this resource that failed before this one (for its record).
        self.attempts: list[dict[str, Any]] = []
        self.claimed_here = False

    def __enter__(self) -> Build:
        record = self.placements.get(self.id)
        if record is not None and record.state == FAILED:
            self._give_up(record.attempts)
        if record is not None and record.host and record.host != self.host:
            log.info("%s %s is placed on %s now: handing the request there",
                     self.kind, self.id, record.host)
            raise Forward(record.host)
        if record is not None and record.state == BUILDING:
            self.placement = record
            self.attempts = list(record.attempts)
            return self
        claimed = self.claims.claim(self.id, self.host, self.amounts, force=True)
        self.claimed_here = claimed.ok and claimed.new
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.claims.build_succeeded(self.host)
            if self.placement is not None:
                self.placements.finished(self.id, DONE)
            return
        if not isinstance(exc, Exception) or isinstance(exc, Forward):
            return  # the process stopping, or a hand-on: nothing was decided here
        error = f"{type(exc).__name__}: {exc}"
        if not reschedulable(exc):
            if self.placement is not None:
                self.claims.release(self.id, self.host)
                self.placements.finished(self.id, FAILED,
                                         [*self.attempts, attempt(self.host, error)])
            elif self.claimed_here:
                self.claims.release(self.id, self.host)
            return
        failures = self.claims.build_failed(self.host)
        attempts = [*self.attempts, attempt(self.host, error)]
        if self.placement is None:
            self.claims.release(self.id, self.host)
            return
        log.warning("building %s %s failed on %s (%s; %d failed builds here in a row): "
                    "rescheduling", self.kind, self.id, self.host, error, failures)
        moved_to, passed_over, _ = self.placements.reschedule(
            self.claims, self.placement, self.host, attempts, self.is_up)
        if passed_over:
            log.info("%s %s: alternates passed over: %s", self.kind, self.id,
                     ", ".join(passed_over))
        if moved_to is not None:
            self._update_record({"status": self.status, "host": moved_to, "error": None,
                                 "attempts": attempts})
            log.info("%s %s goes on at %s (attempt %d)", self.kind, self.id, moved_to,
                     len(attempts) + 1)
            raise Forward(moved_to, extra_hops=len(attempts)) from None
        self._give_up(attempts)

    def record_fields(self) -> dict[str, Any]:
        """What the resource's new record says of this build: the attempts that failed
        before it (none: nothing)."""
        return {"attempts": self.attempts} if self.attempts else {}

    def take_over(self) -> None:
        """This node goes on with a build another node began (it died): the claim moves here."""
        holder = self.claims.holder(self.id)
        if holder is not None and holder != self.host:
            self.claims.release(self.id, holder)
            log.info("%s %s: claim moved from %s to %s with the build", self.kind, self.id,
                     holder, self.host)
        claimed = self.claims.claim(self.id, self.host, self.amounts, force=True)
        self.claimed_here = self.claimed_here or (claimed.ok and claimed.new)

    def release(self) -> None:
        """The resource holds nothing here (its build had failed before): free its claim."""
        self.claims.release(self.id, self.host)

    def _give_up(self, attempts: list[dict[str, Any]]) -> None:
        """The build failed on every host it could go to: the record says so, the caller too."""
        reasons = describe_attempts(attempts) or "no host was tried"
        message = (f"{self.kind} {self.id}: the build failed on every host tried "
                   f"({len(attempts)}): {reasons}")
        self._update_record({"status": "error", "error": message, "attempts": attempts})
        log.warning("%s", message)
        raise MaxRetriesExceeded(message, {"id": self.id, "attempts": attempts}) from None

    def _update_record(self, updates: Mapping[str, Any]) -> None:
        if self.records is None or self.status is None:
            return
        # Never created (the build failed before it was), or retired: nothing to say on it.
        with contextlib.suppress(NotFound, Conflict):
            self.records.transition(self.id, None, {**updates, "updated_at": now()},
                                    action="rescheduling the build")
