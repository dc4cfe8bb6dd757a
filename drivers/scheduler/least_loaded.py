"""Least loaded: the live, enabled host with the most free capacity that fits."""

from __future__ import annotations

from drivers.scheduler.base import FilterScheduler


class LeastLoadedScheduler(FilterScheduler):
    """Every built-in filter; weighed by free capacity (counted from claims) and by recent
    build failures; ties at random. Nova's filter scheduler with its default weighers."""
