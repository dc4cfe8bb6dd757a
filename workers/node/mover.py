"""The mover: one node at a time hands due delayed requests to their queues.

Every node runs a :class:`Mover` thread in its main process; one of them
holds the lease (``taskyard:delayed:mover``, :data:`LEASE_S` seconds, renewed
at every turn) and runs the move script (:mod:`workers.core.delays`) every
:data:`POLL_S` seconds or sooner when the next request is due sooner; the
others try to take the lease every :data:`STANDBY_S` seconds, so a mover
that dies is replaced within ``LEASE_S + STANDBY_S``. The lease only saves
work: the script itself moves each request once, whoever runs it. A node
that stops gives the lease up at once.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from typing import Any

from workers.core.delays import MOVE_BATCH, DelayedRequests
from workers.core.keys import MOVER_LEASE_KEY

log = logging.getLogger("taskyard.mover")

#: Longest wait between two moves while holding the lease: the lateness of a due request.
POLL_S = 0.05
#: Seconds the lease lasts without being renewed.
LEASE_S = 5.0
#: Seconds (about) between two attempts of a node without the lease to take it.
STANDBY_S = 2.0

#: Takes or keeps the lease for ARGV[1] (ARGV[2] ms); 1 when held.
_LEASE = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Mover(threading.Thread):
    """Moves due delayed requests to their queues while this node holds the lease."""

    def __init__(self, client: Any, host: str) -> None:
        super().__init__(name="taskyard-mover", daemon=True)
        self.client = client
        self.delays = DelayedRequests(client)
        self.token = f"{host}:{uuid.uuid4().hex[:8]}"
        self.stopped = threading.Event()
        self.holding = False
        #: Requests this node moved.
        self.moved = 0
        self._failing = False

    def turn(self) -> float:
        """One turn: keep (or try to take) the lease and move what is due; seconds to wait."""
        held = bool(self.client.eval(_LEASE, 1, MOVER_LEASE_KEY, self.token,
                                     int(LEASE_S * 1000)))
        if held != self.holding:
            self.holding = held
            if held:
                log.info("moving due delayed requests to their queues (lease %s)", self.token)
        if not held:
            return random.uniform(0.75, 1.25) * STANDBY_S
        result = self.delays.move_due(MOVE_BATCH)
        self.moved += result.moved
        if result.moved >= MOVE_BATCH:
            return 0.0
        return POLL_S if result.next_in is None else min(POLL_S, result.next_in)

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                wait = self.turn()
            except Exception as exc:
                if not self._failing:
                    log.warning("moving delayed requests failed (%s); trying again", exc)
                    self._failing = True
                self.holding = False
                wait = STANDBY_S
            else:
                if self._failing:
                    log.warning("moving delayed requests works again")
                    self._failing = False
            if wait:
                self.stopped.wait(wait)

    def stop(self) -> None:
        """Stop moving and give the lease up, so another node takes it at once."""
        self.stopped.set()
        try:
            self.client.eval(_RELEASE, 1, MOVER_LEASE_KEY, self.token)
        except Exception as exc:
            log.debug("could not give the mover's lease up: %s", exc)
