"""When a request may run: its delay (``countdown``, ``eta``) and its deadline (``expires``).

A client carries these as given (``Client(...).prepare(countdown=60)``) and
turns them into times at each send (:meth:`Timing.at`): a ``countdown`` and
an ``expires`` in seconds count from the moment of the send, as Celery's
``apply_async`` counts them. Everything is checked when given, and again at
the send, so bad input fails before anything is sent:

- ``countdown`` is a number of seconds >= 0; ``eta`` an aware ``datetime``
  (a naive one is read as local time) no more than :data:`ETA_PAST_TOLERANCE_S`
  in the past; not both;
- ``expires`` is a number of seconds > 0 or a ``datetime``, and must fall
  after the request's ``eta``: a request that expires before it may run
  would never run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from workers.exceptions import InvalidRequest

#: How far in the past an ``eta`` may be (clocks differ a little): it then runs at once.
ETA_PAST_TOLERANCE_S = 10.0


def _moment(value: datetime) -> float:
    """Epoch seconds of ``value``; a naive datetime is local time, as Python reads it."""
    return value.timestamp() if value.tzinfo is not None else value.astimezone().timestamp()


def _seconds(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise InvalidRequest(f"{name}={value!r}: expected a number of seconds {bound}",
                             {"argument": name})
    return float(value)


@dataclass(frozen=True)
class Times:
    """A send's times: when it may run and when it expires (epoch seconds, or None)."""

    due: float | None = None
    expires: float | None = None

    def iso(self, moment: float | None) -> datetime | None:
        """``moment`` as an aware UTC datetime, as Celery's message headers carry it."""
        return None if moment is None else datetime.fromtimestamp(moment, timezone.utc)


@dataclass(frozen=True)
class Timing:
    """A client's delay and deadline, as given; checked when made."""

    countdown: float | None = None
    eta: datetime | None = None
    expires: float | datetime | None = None

    def __post_init__(self) -> None:
        if self.countdown is not None:
            _seconds("countdown", self.countdown, positive=False)
        if self.eta is not None and not isinstance(self.eta, datetime):
            raise InvalidRequest(f"eta={self.eta!r}: expected a datetime "
                                 "(datetime.now(timezone.utc) + timedelta(...))",
                                 {"argument": "eta"})
        if self.countdown is not None and self.eta is not None:
            raise InvalidRequest("give countdown or eta, not both", {"argument": "eta"})
        if self.expires is not None and not isinstance(self.expires, datetime):
            _seconds("expires", self.expires, positive=True)
        self.at(time.time())

    @property
    def delayed(self) -> bool:
        return self.countdown is not None or self.eta is not None

    def replace(self, countdown: float | None = None, eta: datetime | None = None,
                expires: float | datetime | None = None) -> Timing:
        """This timing with what is given changed (a delay given replaces the other kind)."""
        if countdown is not None or eta is not None:
            return Timing(countdown, eta, self.expires if expires is None else expires)
        return Timing(self.countdown, self.eta, self.expires if expires is None else expires)

    def at(self, now: float, *, deadline_s: float | None = None) -> Times:
        """The times of a request sent at ``now``; ``deadline_s`` is the expiry when none is
        given (a call's timeout: a call nobody waits for any more never runs)."""
        due = None
        if self.countdown is not None:
            due = now + float(self.countdown) if self.countdown > 0 else None
        elif self.eta is not None:
            due = _moment(self.eta)
            if due < now - ETA_PAST_TOLERANCE_S:
                raise InvalidRequest(
                    f"eta={self.eta.isoformat()} is {now - due:.0f} s in the past (more than "
                    f"{ETA_PAST_TOLERANCE_S:g} s): give a time to come, or no eta to run it now",
                    {"argument": "eta"})
            if due <= now:
                due = None
        if isinstance(self.expires, datetime):
            expires: float | None = _moment(self.expires)
        elif self.expires is not None:
            expires = now + float(self.expires)
        else:
            expires = now + deadline_s if deadline_s is not None else None
        if expires is not None and expires <= (due if due is not None else now):
            when = "its eta" if due is not None else "it is sent"
            if self.expires is None:  # the deadline of a call: its timeout
                raise InvalidRequest(
                    f"the call's timeout ({deadline_s:g} s) ends before {when}: it would never "
                    "run; cast it (a delayed request), or give the call a longer timeout",
                    {"argument": "timeout"})
            raise InvalidRequest(
                f"expires ({datetime.fromtimestamp(expires, timezone.utc).isoformat()}) is not "
                f"after {when}: it would never run; give a later expires, or none",
                {"argument": "expires"})
        return Times(due, expires)
