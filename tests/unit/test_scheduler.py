"""Scheduler drivers: filters and weighers with their reasons, options, plugins by name.

The scheduler manager (candidates, claims, hand-on) is in ``test_placement.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from drivers.scheduler import plugins
from drivers.scheduler.base import FilterScheduler, HostState, PlacementRequest, SchedulerDriver
from drivers.scheduler.chance import ChanceScheduler
from drivers.scheduler.fake import FakeScheduler
from drivers.scheduler.filters.base import HostFilter
from drivers.scheduler.least_loaded import LeastLoadedScheduler
from drivers.scheduler.weighers.base import normalize
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


def claimed(name: str, disk_free: float, zone: str = "", failures: int = 0,
            state: str = "up") -> HostState:
    """A candidate as placement reads it: what is free of DISK_GB counted from claims."""
    return HostState(name, state, {}, age=1.0, zone=zone, free={"DISK_GB": disk_free},
                     failures=failures)


DISK = PlacementRequest("volume", {"DISK_GB": 5}, "DISK_GB")


def test_capacity_is_what_claims_left_free_and_the_reason_gives_the_numbers() -> None:
    with pytest.raises(NoValidHost) as caught:
        LeastLoadedScheduler().select_host(DISK, [claimed("a", 3), claimed("b", 4.5)])
    assert caught.value.details["reasons"]["CapacityFilter"] == {"a": "DISK_GB 3 < 5",
                                                                  "b": "DISK_GB 4.5 < 5"}


def test_every_host_that_passes_is_ranked_best_first_for_alternates() -> None:
    hosts = [claimed("small", 10), claimed("big", 80), claimed("mid", 40), claimed("tiny", 2)]
    selection = LeastLoadedScheduler(seed=3).select_destinations(DISK, hosts)
    assert selection.hosts == ["big", "mid", "small"]
    assert selection.weights["big"] > selection.weights["mid"] > selection.weights["small"]
    assert selection.removed == {"CapacityFilter": {"tiny": "DISK_GB 2 < 5"}}
    assert selection.considered == 4


def test_a_zone_hint_keeps_only_that_zones_hosts_and_says_where_the_others_are() -> None:
    hosts = [claimed("a", 50, zone="az1"), claimed("b", 90, zone="az2"), claimed("c", 90)]
    request = PlacementRequest("volume", {"DISK_GB": 5}, "DISK_GB", hints={"zone": "az1"})
    selection = LeastLoadedScheduler().select_destinations(request, hosts)
    assert selection.hosts == ["a"]
    assert selection.removed["AvailabilityZoneFilter"] == {
        "b": "in zone 'az2', not 'az1'", "c": "in no zone, not 'az1'"}


def test_affinity_keeps_the_host_of_the_named_resource_and_anti_affinity_removes_it() -> None:
    hosts = [claimed("a", 50), claimed("b", 90)]
    near = PlacementRequest("volume", {"DISK_GB": 5}, "DISK_GB", hints={"affinity": "v1"},
                            resource_hosts={"v1": "a"})
    far = PlacementRequest("volume", {"DISK_GB": 5}, "DISK_GB",
                           hints={"anti_affinity": ["v1"]}, resource_hosts={"v1": "b"})
    near_choice = LeastLoadedScheduler().select_destinations(near, hosts)
    assert near_choice.hosts == ["a"]
    assert near_choice.removed["AffinityFilter"] == {"b": "affinity: v1 is on a"}
    far_choice = LeastLoadedScheduler().select_destinations(far, hosts)
    assert far_choice.hosts == ["a"]
    assert far_choice.removed["AntiAffinityFilter"] == {"b": "anti-affinity: holds v1"}


def test_a_host_whose_builds_failed_lately_goes_behind_every_healthy_one() -> None:
    hosts = [claimed("roomy-but-failing", 100, failures=2), claimed("tight", 6)]
    assert LeastLoadedScheduler().select_destinations(DISK, hosts).hosts == [
        "tight", "roomy-but-failing"]
    # Without the build-failure weigher, the free space alone decides.
    only_space = LeastLoadedScheduler(weighers={"CapacityWeigher": 1.0})
    assert only_space.select_destinations(DISK, hosts).hosts[0] == "roomy-but-failing"


def test_a_negative_capacity_multiplier_packs_work_onto_the_fullest_host() -> None:
    hosts = [claimed("empty", 100), claimed("nearly-full", 6), claimed("half", 50)]
    packer = LeastLoadedScheduler(weighers={"CapacityWeigher": -1.0})
    assert packer.select_destinations(DISK, hosts).hosts == ["nearly-full", "half", "empty"]


def test_weights_are_normalized_per_weigher_before_their_multipliers_apply() -> None:
    assert normalize([10, 20, 30]) == [0.0, 0.5, 1.0]
    assert normalize([7, 7]) == [0.0, 0.0]
    assert normalize([]) == []


def test_filters_run_in_the_order_settings_give_and_only_those() -> None:
    only_up = LeastLoadedScheduler(filters=["UpFilter"])
    hosts = [claimed("down", 100, state="down"), claimed("full", 0)]
    assert only_up.select_destinations(DISK, hosts).hosts == ["full"]


def test_an_unknown_filter_or_weigher_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"no filter named 'RamFilter' \(known: AffinityFilter"):
        LeastLoadedScheduler(filters=["UpFilter", "RamFilter"])
    with pytest.raises(ValueError, match="no weigher named 'RamWeigher'"):
        LeastLoadedScheduler(weighers={"RamWeigher": 1.0})
    with pytest.raises(ValueError, match=r"driver_options.max_attempts = 0: expected a whole"):
        LeastLoadedScheduler(max_attempts=0)
    with pytest.raises(ValueError, match=r"driver_options.weighers = .*multiplier"):
        LeastLoadedScheduler(weighers={"CapacityWeigher": "high"})  # type: ignore[dict-item]


class EvenHostsOnly(HostFilter):
    """A third party's filter: only hosts whose name ends in an even digit (hint ``even``)."""

    hints = ("even",)

    def host_passes(self, host: HostState, request: PlacementRequest) -> str | None:
        if request.hints.get("even") and int(host.host[-1]) % 2:
            return "odd"
        return None


def test_a_third_party_filter_is_enabled_by_dotted_path_or_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_path = LeastLoadedScheduler(filters=[f"{__name__}:EvenHostsOnly", "CapacityFilter"])
    request = PlacementRequest("volume", {"DISK_GB": 5}, "DISK_GB", hints={"even": True})
    hosts = [claimed("h1", 90), claimed("h2", 10)]
    selection = by_path.select_destinations(request, hosts)
    assert selection.hosts == ["h2"] and selection.removed == {"EvenHostsOnly": {"h1": "odd"}}
    assert "even" in by_path.known_hints

    class EntryPoint:
        def load(self) -> type:
            return EvenHostsOnly

    monkeypatch.setattr(plugins, "short_names", lambda group: (
        {"EvenHostsOnly": EntryPoint()} if group == plugins.FILTER_GROUP else {}))
    by_name = LeastLoadedScheduler(filters=["EvenHostsOnly"])
    assert by_name.select_destinations(request, hosts).hosts == ["h2"]


def test_every_built_in_driver_ranks_alternates_and_knows_the_built_in_hints(
    scheduler: SchedulerDriver,
) -> None:
    hosts = [claimed("a", 50), claimed("b", 40), claimed("c", 30)]
    selection = scheduler.select_destinations(DISK, hosts)
    assert sorted(selection.hosts) == ["a", "b", "c"]
    assert {"zone", "affinity", "anti_affinity"} <= (scheduler.known_hints or set())
    assert scheduler.max_attempts == 3


def test_a_driver_that_ranks_one_host_gives_no_alternates() -> None:
    class OneHost(SchedulerDriver):
        def select_host(self, request: PlacementRequest, hosts: Any) -> str:
            return "only"

    assert OneHost().select_destinations(DISK, [claimed("only", 9)]).hosts == ["only"]
    assert isinstance(LeastLoadedScheduler(), FilterScheduler)


def test_a_filter_scheduler_subclass_that_chooses_its_host_itself_still_works() -> None:
    class Alphabetical(FilterScheduler):
        """Written for the scheduler before weighers: picks with ``choose``."""

        def choose(self, request: PlacementRequest, hosts: Any) -> str:
            return min(h.host for h in hosts)

    selection = Alphabetical().select_destinations(DISK, [claimed("b", 90), claimed("a", 10),
                                                          claimed("c", 50)])
    assert selection.hosts == ["a", "b", "c"]  # its choice, then the others by weight
