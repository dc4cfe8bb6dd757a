"""Periodic tasks through an in-process worker: schedule, no overlap, errors, refusals."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from managers.base import Manager, PeriodicSpec, endpoint, periodic_task
from tests.conftest import in_process_worker, make_app, make_config, memory_config
from workers.client.rpc import Client, Handle
from workers.core.application import Taskyard
from workers.core.config import Config, ServiceConfig
from workers.core.specs import build_spec
from workers.exceptions import ConfigError, UnknownEndpoint

_running = 0
_most_at_once = 0
_lock = threading.Lock()


class TickManager(Manager):
    @endpoint
    def runs(self, name: str) -> int:
        return int(self.redis.llen(f"runs:{name}"))

    @periodic_task(spacing=3600, run_immediately=True)
    def count(self) -> None:
        self.redis.rpush("runs:count", time.time())

    @periodic_task(spacing=0.02)
    def slow(self) -> None:
        global _running, _most_at_once
        with _lock:
            _running += 1
            _most_at_once = max(_most_at_once, _running)
        time.sleep(0.1)  # the work itself, longer than the spacing on purpose
        with _lock:
            _running -= 1
        self.redis.rpush("runs:slow", 1)

    @periodic_task(spacing=0.05)
    def boom(self) -> None:
        self.redis.rpush("runs:boom", 1)
        raise RuntimeError("housekeeping failed")

    def not_periodic(self) -> None:
        raise AssertionError("never runs")


@pytest.fixture(scope="module")
def module_redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture(scope="module")
def config() -> Config:
    base = make_config(env={"TASKYARD_ENV": "testing"})
    tick = ServiceConfig(name="tick", manager=f"{__name__}:TickManager", driver="os.path",
                         periodic={"count": 0.1})
    return memory_config(base, host="node-p", services={"tick": tick})


@pytest.fixture(scope="module")
def app(config: Config, module_redis: fakeredis.FakeRedis) -> Iterator[Taskyard]:
    queues = ["tick", "tick.node-p"]
    with in_process_worker(make_app(config, module_redis), queues, concurrency=4) as app:
        yield app


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_a_periodic_task_runs_at_its_spacing_from_settings(
    app: Taskyard, module_redis: fakeredis.FakeRedis
) -> None:
    wait_for(lambda: module_redis.llen("runs:count") >= 4)
    stamps = [float(x) for x in module_redis.lrange("runs:count", 0, 3)]
    # Runs are sent every 0.1 s (from settings, not the manager's 3600 s). Each waits its
    # turn in the node's queue, so one gap may be shorter than the spacing when the run
    # before it waited longer; on average they are the spacing.
    mean_gap = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    assert 0.05 < mean_gap < 5, stamps


def test_a_slow_periodic_task_never_runs_twice_at_once(
    app: Taskyard, module_redis: fakeredis.FakeRedis
) -> None:
    wait_for(lambda: module_redis.llen("runs:slow") >= 4, timeout=30)
    assert _most_at_once == 1, f"{_most_at_once} runs of the slow task at once"


def test_an_exception_is_logged_and_the_schedule_goes_on(
    app: Taskyard, module_redis: fakeredis.FakeRedis
) -> None:
    wait_for(lambda: module_redis.llen("runs:boom") >= 3)


def test_a_periodic_task_sent_by_anyone_but_the_node_is_refused(app: Taskyard) -> None:
    result = app.send_task("tick.periodic.count", queue="tick.node-p")
    with pytest.raises(UnknownEndpoint, match="own scheduler"):
        Handle(result, "tick", "periodic.count", None, 10).wait()


def test_periodic_tasks_are_not_endpoints(app: Taskyard) -> None:
    with pytest.raises(UnknownEndpoint):
        Client("tick", app=app).cast("count")


def test_the_manager_lists_its_periodic_tasks() -> None:
    assert TickManager.periodic_tasks() == {
        "count": PeriodicSpec("count", 3600.0, True),
        "slow": PeriodicSpec("slow", 0.02, False),
        "boom": PeriodicSpec("boom", 0.05, False),
    }


def test_a_spacing_for_an_unknown_periodic_task_is_a_config_error() -> None:
    service = ServiceConfig(name="tick", manager=f"{__name__}:TickManager", driver="os.path",
                            periodic={"cont": 1})
    with pytest.raises(ConfigError, match=r"no periodic task 'cont' \(it has: boom, count, slow"):
        build_spec(service)


def test_periodic_task_needs_a_positive_spacing() -> None:
    with pytest.raises(ValueError, match="spacing > 0"):
        periodic_task(spacing=0)
