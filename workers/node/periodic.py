"""Periodic tasks: each node runs its managers' housekeeping on its own schedule.

A method marked ``@periodic_task(spacing=S)`` runs every ``S`` seconds on
every node of the service, as the Celery task ``<service>.periodic.<name>``
on the node's own queue (so Flower shows each run). One scheduler thread in
the node's main process sends them, whatever the pool, so there is exactly
one schedule per node.

Before sending a run, the scheduler stores the run's task id under a
per-node key; the task runs only when the key holds its own id, and clears
it when done. That one key gives three guarantees: a run is never sent
while the previous one is queued or running (no overlap, no backlog), a
message nobody scheduled (sent by hand, or left from before a restart) is
refused, and an exception in a run is only logged: the next tick sends the
next run.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
import uuid
from typing import Any

from celery import Celery, Task

from managers.base import PeriodicSpec
from workers.core.keys import host_queue, periodic_pending_key, periodic_task_name
from workers.core.specs import ServiceSpec
from workers.exceptions import UnknownEndpoint
from workers.node.endpoints import REQUEST, VERIFYING_STRATEGY
from workers.node.logs import log_request
from workers.node.managers import ProcessManagers

log = logging.getLogger("taskyard.periodic")

#: Longest random delay (seconds) before a node's first run of a periodic task,
#: so that nodes started together do not all run their housekeeping at once.
MAX_START_JITTER_S = 2.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class PeriodicTask(Task):
    """Base of every periodic task; ``service``, ``periodic_name`` and ``managers`` per task."""

    service: str = ""
    periodic_name: str = ""
    managers: ProcessManagers
    typing = False
    #: Nobody waits for a run: keep no result of a success (Flower still sees every run
    #: through events), but keep failures and refusals where they can be looked up.
    ignore_result = True
    store_errors_even_if_ignored = True
    #: A failing run is logged here once, with its traceback; Celery need not log it again.
    throws = (Exception,)
    Strategy = VERIFYING_STRATEGY
    Request = REQUEST

    def run(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        manager = self.managers.get(self.service)
        key = periodic_pending_key(self.service, manager.host, self.periodic_name)
        token = manager.redis.get(key)
        token = token.decode() if isinstance(token, bytes) else token
        if args or kwargs or token != self.request.id:
            log_request(self.name, manager.host, "-", self.request.id, started,
                        "refused: not sent by this node's scheduler")
            raise UnknownEndpoint(
                f"{self.name} runs only when {manager.host}'s own scheduler sends it",
                {"host": manager.host},
            )
        outcome = "interrupted"
        try:
            result = getattr(manager, self.periodic_name)()
            outcome = "ok"
            return result
        except Exception as exc:
            outcome = f"error {type(exc).__name__}: {exc}"
            log.exception("%s failed on %s; the schedule goes on", self.name, manager.host)
            raise
        finally:
            manager.redis.eval(_RELEASE, 1, key, self.request.id)
            log_request(self.name, manager.host, "-", self.request.id, started, outcome)


def register_periodic_tasks(app: Celery, spec: ServiceSpec,
                            managers: ProcessManagers) -> list[str]:
    """Register one task per periodic task of ``spec``; return their names."""
    names = []
    for name in spec.periodic:
        full = periodic_task_name(spec.name, name)
        task_cls = type(full, (PeriodicTask,), {
            "name": full, "service": spec.name, "periodic_name": name, "managers": managers,
            "__module__": __name__,
        })
        app.register_task(task_cls())
        names.append(full)
    return names


class PeriodicScheduler(threading.Thread):
    """Sends each periodic task of a node's services at its spacing, until stopped."""

    def __init__(self, app: Celery, host: str, redis: Any,
                 periodic: list[tuple[str, PeriodicSpec]], pending_ttl: int) -> None:
        super().__init__(name="taskyard-periodic", daemon=True)
        self.app = app
        self.host = host
        self.redis = redis
        self.periodic = periodic
        self.pending_ttl = max(1, int(pending_ttl))
        self.stopped = threading.Event()
        self.sent = 0
        self._failing = False

    def clear_pending(self) -> None:
        """Forget runs pending from before this node started: they cannot be running now."""
        keys = [periodic_pending_key(s, self.host, spec.name) for s, spec in self.periodic]
        if keys:
            self.redis.delete(*keys)

    def _first_run(self, spec: PeriodicSpec, now: float) -> float:
        jitter = random.uniform(0, min(MAX_START_JITTER_S, spec.spacing / 10))
        return now + jitter + (0.0 if spec.run_immediately else spec.spacing)

    def run(self) -> None:
        now = time.monotonic()
        queue = [(self._first_run(spec, now), i) for i, (_, spec) in enumerate(self.periodic)]
        heapq.heapify(queue)
        while queue and not self.stopped.is_set():
            due, index = queue[0]
            if self.stopped.wait(max(0.0, due - time.monotonic())):
                break
            heapq.heappop(queue)
            service, spec = self.periodic[index]
            self.fire(service, spec)
            heapq.heappush(queue, (max(due + spec.spacing, time.monotonic()), index))

    def fire(self, service: str, spec: PeriodicSpec) -> bool:
        """Send one run unless the previous one is still queued or running."""
        key = periodic_pending_key(service, self.host, spec.name)
        run_id = str(uuid.uuid4())
        try:
            if not self.redis.set(key, run_id, nx=True, ex=self.pending_ttl):
                log.debug("%s on %s: previous run still pending; skipped this tick",
                          periodic_task_name(service, spec.name), self.host)
                return False
            try:
                self.app.send_task(periodic_task_name(service, spec.name), task_id=run_id,
                                   queue=host_queue(service, self.host))
            except Exception:
                self.redis.eval(_RELEASE, 1, key, run_id)
                raise
        except Exception as exc:
            if not self._failing:
                log.warning("cannot send periodic task %s (%s); retrying at its next tick",
                            periodic_task_name(service, spec.name), exc)
                self._failing = True
            return False
        self._failing = False
        self.sent += 1
        return True

    def stop(self) -> None:
        self.stopped.set()
