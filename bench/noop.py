"""The bench-only service: endpoints that cost the framework and nothing else.

``noop`` does nothing, so timing it times taskyard alone (client, broker,
node dispatch, result). ``mark`` adds one ``HINCRBY`` so a bulk run can
check that each message ran exactly once; ``stamp`` notes when it started,
so a delayed one's lateness is measured. The service is added to a node
through ``bench/noop.toml`` in ``TASKYARD_SETTINGS``; the plain Celery app
(:mod:`bench.plain`) has tasks doing the same.
"""

from __future__ import annotations

import time
from pathlib import Path

from managers.base import Manager, endpoint

#: Name of the bench service (its tasks are ``bench.noop`` and ``bench.mark``).
SERVICE = "bench"
#: The settings file that adds the service to a node (``TASKYARD_SETTINGS``).
SETTINGS_FILE = Path(__file__).with_name("noop.toml")


def tally_key(batch: str) -> str:
    """Redis hash counting, per message index, how often a ``mark`` of ``batch`` ran."""
    return f"bench:tally:{batch}"


def stamps_key(batch: str) -> str:
    """Redis hash of message index -> when a ``stamp`` of ``batch`` started (epoch seconds)."""
    return f"bench:stamps:{batch}"


class NullDriver:
    """The service's driver: it has nothing to do."""


class NoopManager(Manager):
    """Endpoints for timing the framework: no driver work, no records."""

    @endpoint
    def noop(self) -> None:
        """Do nothing."""

    @endpoint
    def mark(self, batch: str, index: int) -> None:
        """Count one run of message ``index`` of ``batch``."""
        self.redis.hincrby(tally_key(batch), str(index), 1)

    @endpoint
    def stamp(self, batch: str, index: int) -> None:
        """Note when message ``index`` of ``batch`` started (how late a delayed one ran)."""
        self.redis.hset(stamps_key(batch), str(index), repr(time.time()))
