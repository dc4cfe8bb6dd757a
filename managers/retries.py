"""When an endpoint's failure is tried again: Celery's autoretry, as plain data.

``@endpoint(autoretry_for=(DriverError,), max_retries=3, retry_backoff=True)``
keeps a :class:`RetryPolicy` on the endpoint. The names and their meaning are
Celery's (``celery/app/autoretry.py``), so a Celery user's habits carry over:

- ``autoretry_for``: the exception classes that are tried again;
- ``max_retries``: how many times (3; None: without end), after the first run;
- ``retry_backoff``: False waits ``default_retry_delay`` seconds (180) each
  time; True or a number ``f`` waits ``f * 2 ** retries`` seconds (1, 2, 4 ...
  for True), at most ``retry_backoff_max`` (600);
- ``retry_jitter``: with backoff, a random wait between 0 and that (True).

Errors that say the request itself is wrong (:data:`NEVER_RETRIED`:
``InvalidRequest``, ``NotFound``, ``Conflict``, ``Cancelled``) are never
tried again, whatever ``autoretry_for`` says: running the same request
again cannot make them pass. The service layer carries the retry out (a
delayed request under the same task id); this module only decides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from drivers.exceptions import Cancelled
from managers.exceptions import Conflict, InvalidRequest, NotFound

__all__ = ["NEVER_RETRIED", "RETRY_OPTIONS", "RetryPolicy"]

#: Errors of the request itself: another run of the same request fails the same way.
NEVER_RETRIED: tuple[type[BaseException], ...] = (InvalidRequest, NotFound, Conflict, Cancelled)

#: The keyword arguments of ``@endpoint(...)`` that describe retries (Celery's names).
RETRY_OPTIONS = frozenset({"autoretry_for", "max_retries", "retry_backoff",
                           "retry_backoff_max", "retry_jitter", "default_retry_delay"})


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures of an endpoint are tried again, how often and after how long."""

    autoretry_for: tuple[type[BaseException], ...] = ()
    max_retries: int | None = 3
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    default_retry_delay: float = 180.0

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> RetryPolicy | None:
        """The policy ``@endpoint(**options)`` asks for on ``name``; None without retries.

        :class:`TypeError` names an unknown option or a value of the wrong kind.
        """
        unknown = sorted(set(options) - RETRY_OPTIONS)
        if unknown:
            raise TypeError(f"@endpoint on {name!r}: unknown option(s) {', '.join(unknown)}; "
                            f"the retry options are {', '.join(sorted(RETRY_OPTIONS))}")
        if not options:
            return None
        raw = options.get("autoretry_for", ())
        classes = tuple(raw) if isinstance(raw, (tuple, list)) else (raw,)
        if not classes or not all(isinstance(c, type) and issubclass(c, BaseException)
                                  for c in classes):
            raise TypeError(f"@endpoint on {name!r}: autoretry_for needs exception classes, "
                            f"got {raw!r}")
        policy = cls(autoretry_for=classes, **{k: v for k, v in options.items()
                                               if k != "autoretry_for"})
        policy._check(name)
        return policy

    def _check(self, name: str) -> None:
        def bad(option: str, expected: str) -> TypeError:
            return TypeError(f"@endpoint on {name!r}: {option}={getattr(self, option)!r}: "
                             f"expected {expected}")

        if self.max_retries is not None and (
                isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int)
                or self.max_retries < 0):
            raise bad("max_retries", "a whole number >= 0, or None for no limit")
        backoff = self.retry_backoff
        if not isinstance(backoff, (bool, int, float)) or (
                not isinstance(backoff, bool) and backoff <= 0):
            raise bad("retry_backoff", "True, False or a number of seconds > 0")
        for option in ("retry_backoff_max", "default_retry_delay"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise bad(option, "a number of seconds >= 0")
        if not isinstance(self.retry_jitter, bool):
            raise bad("retry_jitter", "True or False")

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is one this policy tries again (never a request's own error)."""
        return isinstance(exc, self.autoretry_for) and not isinstance(exc, NEVER_RETRIED)

    def allows(self, retries: int) -> bool:
        """Whether another run may follow ``retries`` earlier retries."""
        return self.max_retries is None or retries < self.max_retries

    def countdown(self, retries: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the run that follows ``retries`` earlier retries."""
        if self.retry_backoff is False:
            return float(self.default_retry_delay)
        factor = 1 if self.retry_backoff is True else self.retry_backoff
        wait = min(self.retry_backoff_max, factor * 2 ** retries)
        if self.retry_jitter:
            wait = (rng or random).uniform(0, wait)
        return float(max(0.0, wait))
