"""A node's heartbeat: failures are logged once and retried, never fatal."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import redis
from celery import signals as celery_signals

from workers.node import exits
from workers.node.exits import StopWatch
from workers.node.node import Heartbeat


class FlakyRegistry:
    """Fails the first ``failures`` reports, then works; signals after ``total`` reports."""

    def __init__(self, failures: int, total: int) -> None:
        self.failures = failures
        self.total = total
        self.calls = 0
        self.reports: list[dict[str, Any]] = []
        self.done = threading.Event()

    def report(self, service: str, host: str, info: dict[str, Any]) -> float:
        self.calls += 1
        if self.calls >= self.total:
            self.done.set()
        if self.calls <= self.failures:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379")
        self.reports.append(info)
        return 0.0


class BrokenCapabilities:
    rpc_api_version = "1.0"

    def capabilities(self) -> dict[str, Any]:
        raise OSError("statvfs failed")


class FakeNode:
    def __init__(self, registry: FlakyRegistry) -> None:
        self.registry = registry
        self.host = "node-h"
        self.started_at = 1.0
        self.managers = {"volume": BrokenCapabilities()}
        self.published = 0

    def housekeeping(self) -> None:
        self.housekept = getattr(self, "housekept", 0) + 1

    def publish_apis(self) -> None:
        self.registry.report("volume", self.host, {"publishing": True})  # fails like a report
        self.published += 1


def test_heartbeat_failures_are_logged_once_retried_and_recovery_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = FlakyRegistry(failures=5, total=8)
    node = FakeNode(registry)
    beat = Heartbeat(node, interval=0.001)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="taskyard.node"):
        beat.start()
        assert registry.done.wait(10)
        beat.stop()
        beat.join(5)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("heartbeat of node-h failed" in m for m in messages) == 1
    assert sum("works again" in m for m in messages) == 1
    assert registry.reports, "it kept trying until Redis answered"
    assert node.published == 1, "the APIs are published once, at the first beat that works"


def test_a_manager_whose_capabilities_fail_still_reports_with_the_error() -> None:
    registry = FlakyRegistry(failures=0, total=1)
    Heartbeat(FakeNode(registry), interval=1).beat()  # type: ignore[arg-type]
    _, info = registry.reports
    assert info["capabilities"] == {"error": "OSError: statvfs failed"}
    assert info["report_count"] == 1 and info["host"] == "node-h"


# -- exit status -----------------------------------------------------------------------


def stopped(*stops: tuple[str, str], ready: bool = True, cut_off: bool = False) -> StopWatch:
    """A watch that saw ``stops`` through Celery's own signals (after ``worker_ready``)."""
    with StopWatch.watching() as watch:
        if ready:
            celery_signals.worker_ready.send(sender=None)
        if cut_off:
            exits.cutting_off()
        for sig, how in stops:
            celery_signals.worker_shutting_down.send(sender="taskyard@n", sig=sig, how=how,
                                                     exitcode=1)
    return watch


@pytest.mark.parametrize(("stops", "celery_code", "expected"), [
    ([("SIGTERM", "Warm")], 0, 0),
    ([("SIGINT", "Warm")], 1, 0),  # one Ctrl-C: Celery says 1
    ([("SIGINT", "Warm"), ("SIGTERM", "Warm")], 1, 0),
    ([("SIGINT", "Warm"), ("SIGINT", "Cold")], 1, 1),  # a second Ctrl-C
    ([("SIGINT", "Warm"), ("SIGINT", "Cold")], None, 1),  # ... quick: Celery says nothing
    ([("SIGQUIT", "Cold")], None, 1),  # an operator's SIGQUIT
    ([("SIGTERM", "Warm")], 1, 1),  # a failure after a SIGTERM stays one
])
def test_a_nodes_exit_status_says_whether_it_stopped_as_asked(
    stops: list[tuple[str, str]], celery_code: int | None, expected: int,
) -> None:
    assert stopped(*stops).exit_code(celery_code) == expected


def test_the_shutdown_timeouts_own_cut_off_is_part_of_the_stop_asked_for() -> None:
    watch = stopped(("SIGINT", "Warm"), ("SIGQUIT", "Cold"), cut_off=True)
    assert watch.exit_code(1) == 0
    assert stopped(("SIGTERM", "Warm"), ("SIGQUIT", "Cold"), cut_off=True).exit_code(None) == 0


def test_a_node_that_never_got_ready_keeps_celerys_status() -> None:
    assert stopped(("SIGINT", "Warm"), ready=False).exit_code(1) == 1  # a start failure
    assert stopped(ready=False).exit_code(None) == 0


def test_the_watch_stops_listening_when_its_run_ends() -> None:
    watch = stopped()
    celery_signals.worker_shutting_down.send(sender="taskyard@n", sig="SIGINT", how="Cold",
                                             exitcode=1)
    assert watch.stops == []
