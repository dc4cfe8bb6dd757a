"""Scheduler drivers (filters, weighing, reasons) and the scheduler manager with a fake fleet."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.scheduler.base import HostState, PlacementRequest, SchedulerDriver
from drivers.scheduler.chance import ChanceScheduler
from drivers.scheduler.fake import FakeScheduler
from drivers.scheduler.least_loaded import LeastLoadedScheduler
from managers.scheduler import SchedulerManager
from workers.exceptions import NoValidHost

VOLUME = PlacementRequest("volume", {"free_gb": 5}, "free_gb")


def host(name: str, state: str = "up", free_gb: float = 100, **extra: Any) -> HostState:
    return HostState(name, state, {"free_gb": free_gb, **extra},
                     disabled_reason="maintenance" if state == "disabled" else None, age=1.0)


@pytest.fixture(params=[ChanceScheduler, LeastLoadedScheduler, FakeScheduler],
                ids=["chance", "least_loaded", "fake"])
def scheduler(request: pytest.FixtureRequest) -> SchedulerDriver:
    return request.param(seed=7)


def test_no_driver_ever_picks_a_down_or_disabled_host(scheduler: SchedulerDriver) -> None:
    hosts = [host("a", "down"), host("b", "disabled"), host("c"), host("d")]
    picked = {scheduler.select_host(VOLUME, hosts) for _ in range(50)}
    assert picked <= {"c", "d"}


def test_every_driver_says_why_when_no_host_is_live(scheduler: SchedulerDriver) -> None:
    with pytest.raises(NoValidHost) as caught:
        scheduler.select_host(VOLUME, [host("a", "down"), host("b", "disabled")])
    message = str(caught.value)
    assert "UpFilter removed a (down, last seen 1s ago)" in message
    assert "EnabledFilter removed b (disabled: maintenance)" in message
    assert caught.value.details["reasons"]["UpFilter"] == {"a": "down, last seen 1s ago"}


def test_every_driver_says_when_no_host_has_reported(scheduler: SchedulerDriver) -> None:
    with pytest.raises(NoValidHost, match="no volume host has reported"):
        scheduler.select_host(VOLUME, [])


def test_least_loaded_picks_the_host_with_most_free_capacity() -> None:
    hosts = [host("small", free_gb=10), host("big", free_gb=80), host("mid", free_gb=40)]
    assert {LeastLoadedScheduler(seed=s).select_host(VOLUME, hosts) for s in range(20)} == {"big"}


def test_least_loaded_breaks_ties_at_random_among_the_best() -> None:
    hosts = [host("a", free_gb=50), host("b", free_gb=50), host("c", free_gb=10)]
    picked = {LeastLoadedScheduler(seed=s).select_host(VOLUME, hosts) for s in range(40)}
    assert picked == {"a", "b"}


def test_least_loaded_refuses_hosts_without_enough_capacity_with_the_numbers() -> None:
    hosts = [host("a", free_gb=2), host("b", free_gb=4.5), host("c", "down")]
    with pytest.raises(NoValidHost) as caught:
        LeastLoadedScheduler().select_host(VOLUME, hosts)
    assert str(caught.value) == (
        "no valid host for volume (needs free_gb >= 5): UpFilter removed c (down, last seen "
        "1s ago); CapacityFilter removed a (free_gb 2 < 5), b (free_gb 4.5 < 5)"
    )


def test_a_host_that_reports_no_capacity_is_not_taken_for_an_empty_one() -> None:
    hosts = [HostState("bare", "up", {}, age=1.0)]
    with pytest.raises(NoValidHost, match=r"bare \(reports no free_gb\)"):
        LeastLoadedScheduler().select_host(VOLUME, hosts)


def test_chance_spreads_over_every_live_enabled_host_whatever_their_capacity() -> None:
    hosts = [host("a", free_gb=1), host("b", free_gb=1000)]
    assert {ChanceScheduler(seed=s).select_host(VOLUME, hosts) for s in range(40)} == {"a", "b"}


def test_the_fake_scheduler_takes_hosts_in_turn() -> None:
    fake = FakeScheduler()
    hosts = [host("b"), host("a")]
    assert [fake.select_host(VOLUME, hosts) for _ in range(4)] == ["a", "b", "a", "b"]


class FakeFleet:
    """What the scheduler manager sees of the fleet, recorded."""

    def __init__(self, hosts: dict[str, list[dict[str, Any]]]) -> None:
        self._hosts = hosts
        self.casts: list[tuple[str, str, str | None, dict[str, Any]]] = []

    def hosts(self, service: str) -> list[dict[str, Any]]:
        return self._hosts.get(service, [])

    def cast(self, service: str, method: str, /, host: str | None = None,
             **kwargs: Any) -> str:
        self.casts.append((service, method, host, kwargs))
        return f"task-{len(self.casts)}"


def entry(name: str, state: str = "up", **caps: Any) -> dict[str, Any]:
    return {"host": name, "state": state, "capabilities": caps, "age": 0.5,
            "disabled_reason": None}


def make_scheduler(fleet: FakeFleet) -> SchedulerManager:
    return SchedulerManager(service="scheduler", host="sched-1",
                            driver=LeastLoadedScheduler(seed=1), fleet=fleet)


def test_schedule_create_volume_hands_the_request_to_the_chosen_host_and_returns_at_once() -> None:
    fleet = FakeFleet({"volume": [entry("a", free_gb=10), entry("b", free_gb=90)]})
    placed = make_scheduler(fleet).schedule_create_volume(size_gb=5, name="data")
    assert placed["host"] == "b" and placed["task_id"] == "task-1"
    assert fleet.casts == [("volume", "create_volume", "b",
                            {"size_gb": 5, "volume_id": placed["id"], "name": "data"})]


def test_schedule_create_volume_keeps_a_given_volume_id() -> None:
    fleet = FakeFleet({"volume": [entry("a", free_gb=10)]})
    placed = make_scheduler(fleet).schedule_create_volume(size_gb=1, volume_id="v-1")
    assert placed["id"] == "v-1" and fleet.casts[0][3]["volume_id"] == "v-1"


def test_schedule_run_instance_picks_the_host_with_free_slots() -> None:
    fleet = FakeFleet({"compute": [entry("full", free_slots=0), entry("roomy", free_slots=3)]})
    placed = make_scheduler(fleet).schedule_run_instance(image="sleeper")
    assert placed["host"] == "roomy"
    assert fleet.casts == [("compute", "run_instance", "roomy",
                            {"instance_id": placed["id"], "image": "sleeper"})]


def test_no_valid_host_reaches_the_caller_with_reasons_and_nothing_is_sent() -> None:
    fleet = FakeFleet({"volume": [entry("a", free_gb=1)]})
    with pytest.raises(NoValidHost, match=r"CapacityFilter removed a \(free_gb 1 < 50\)"):
        make_scheduler(fleet).schedule_create_volume(size_gb=50)
    assert fleet.casts == []
