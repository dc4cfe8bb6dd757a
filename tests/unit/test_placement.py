"""The scheduler manager places by claims: candidates, filters, the claim, the hand-on.

Managers called directly, on fakeredis, with a fake fleet (``tests/unit/fleet.py``);
hosts report inventory as a node's heartbeat does.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from drivers.scheduler.least_loaded import LeastLoadedScheduler
from managers.base import RequestContext, current_context
from managers.claims import ClaimStore, Inventory
from managers.compute import ComputeManager
from managers.placement import BUILDING, Placements
from managers.scheduler import SchedulerManager
from managers.volume import VolumeManager
from tests.unit.fleet import FakeFleet
from workers.exceptions import Conflict, InvalidRequest, NotFound, NoValidHost

MANAGERS = {"volume": VolumeManager, "compute": ComputeManager}


@pytest.fixture
def records() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def fleet(records: Any) -> FakeFleet:
    return FakeFleet(records, placements=MANAGERS)


def volume_hosts(records: Any, zones: dict[str, str] | None = None, **totals: int) -> ClaimStore:
    store = ClaimStore(records, "volume")
    for host, total in totals.items():
        store.report_inventory(host, {"DISK_GB": Inventory(total)},
                               zone=(zones or {}).get(host, ""))
    return store


def scheduler(records: Any, fleet: FakeFleet, **options: Any) -> SchedulerManager:
    return SchedulerManager(service="scheduler", host="sched-1", redis=records, fleet=fleet,
                            driver=LeastLoadedScheduler(seed=1, **options))


def test_a_volume_is_claimed_on_the_host_with_most_free_space_before_it_is_handed_on(
    records: Any, fleet: FakeFleet,
) -> None:
    store = volume_hosts(records, a=10, b=90)
    placed = scheduler(records, fleet).schedule_create_volume(size_gb=5, name="data")
    assert placed["host"] == "b" and placed["task_id"] == "task-1"
    assert placed["alternates"] == ["a"]
    assert fleet.casts == [("volume", "create_volume", "b",
                            {"size_gb": 5, "volume_id": placed["id"], "name": "data"})]
    assert store.claim_of(placed["id"])["amounts"] == {"DISK_GB": 5}  # type: ignore[index]
    assert store.usage("b") == {"DISK_GB": 5}


def test_a_given_volume_id_is_kept_and_names_the_claim(records: Any, fleet: FakeFleet) -> None:
    store = volume_hosts(records, a=10)
    placed = scheduler(records, fleet).schedule_create_volume(size_gb=1, volume_id="v-1")
    assert placed["id"] == "v-1" and fleet.casts[0][3]["volume_id"] == "v-1"
    assert store.holder("v-1") == "a"


def test_an_instance_takes_a_slot_of_a_host_that_has_one(records: Any, fleet: FakeFleet) -> None:
    store = ClaimStore(records, "compute")
    store.report_inventory("full", {"SLOTS": Inventory(1)})
    store.report_inventory("roomy", {"SLOTS": Inventory(3)})
    store.claim("earlier", "full", {"SLOTS": 1})
    placed = scheduler(records, fleet).schedule_run_instance(image="sleeper")
    assert placed["host"] == "roomy"
    assert fleet.casts == [("compute", "run_instance", "roomy",
                            {"instance_id": placed["id"], "image": "sleeper"})]
    assert store.usage("roomy") == {"SLOTS": 1}


def test_no_valid_host_says_why_per_filter_and_nothing_is_claimed_or_sent(
    records: Any, fleet: FakeFleet,
) -> None:
    store = volume_hosts(records, a=1, b=90, c=90)
    fleet.set_state("volume", "b", "down")
    fleet.set_state("volume", "c", "disabled", reason="disk swap")
    with pytest.raises(NoValidHost) as caught:
        scheduler(records, fleet).schedule_create_volume(size_gb=50)
    assert caught.value.details["reasons"] == {
        "UpFilter": {"b": "down, last seen 99s ago"},
        "EnabledFilter": {"c": "disabled: disk swap"},
        "CapacityFilter": {"a": "DISK_GB 1 < 50"}}
    assert fleet.casts == [] and all(store.host_claims(h) == {} for h in "abc")


def test_no_host_reporting_inventory_is_no_valid_host(records: Any, fleet: FakeFleet) -> None:
    with pytest.raises(NoValidHost, match="no volume host has reported"):
        scheduler(records, fleet).schedule_create_volume(size_gb=1)


def test_placements_see_each_others_claims_at_once(records: Any, fleet: FakeFleet) -> None:
    volume_hosts(records, a=10, b=10)
    placer = scheduler(records, fleet)
    hosts = [placer.schedule_create_volume(size_gb=6)["host"] for _ in range(2)]
    assert sorted(hosts) == ["a", "b"]  # the second saw the first one's claim
    with pytest.raises(NoValidHost, match=r"CapacityFilter removed a \(DISK_GB 4 < 6\)"):
        placer.schedule_create_volume(size_gb=6)


def test_a_burst_that_exactly_fills_the_fleet_all_lands(records: Any, fleet: FakeFleet) -> None:
    store = volume_hosts(records, a=10, b=10, c=10)
    placer = scheduler(records, fleet)
    for _ in range(15):
        placer.schedule_create_volume(size_gb=2)
    assert all(store.usage(h) == {"DISK_GB": 10} for h in "abc")
    with pytest.raises(NoValidHost):
        placer.schedule_create_volume(size_gb=1)


def test_capacity_a_release_frees_is_placeable_at_once(records: Any, fleet: FakeFleet) -> None:
    store = volume_hosts(records, a=4)
    placer = scheduler(records, fleet)
    first = placer.schedule_create_volume(size_gb=4)
    with pytest.raises(NoValidHost):
        placer.schedule_create_volume(size_gb=4)
    store.release(first["id"])
    assert placer.schedule_create_volume(size_gb=4)["host"] == "a"


def test_a_host_filled_under_the_placement_is_passed_over_for_the_next(
    records: Any, fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = volume_hosts(records, a=10, b=8)
    placer = scheduler(records, fleet)
    read = placer._candidates

    def read_then_another_placement_fills_a(*args: Any) -> Any:
        found = read(*args)
        store.claim("raced", "a", {"DISK_GB": 10})
        return found

    monkeypatch.setattr(placer, "_candidates", read_then_another_placement_fills_a)
    placed = placer.schedule_create_volume(size_gb=5)
    assert placed["host"] == "b"
    decision = Placements(records, "volume").get(placed["id"]).decision  # type: ignore[union-attr]
    assert decision["taken_meanwhile"] == {"a": "DISK_GB: 10 used + 5 > capacity 10"}


def test_the_placement_records_its_alternates_and_why_the_host_was_chosen(
    records: Any, fleet: FakeFleet,
) -> None:
    volume_hosts(records, a=30, b=20, c=10, d=2)
    context = RequestContext("req-1", caller_host="laptop", task_id="sched-task")
    token = current_context.set(context)
    try:
        placed = scheduler(records, fleet, max_attempts=3).schedule_create_volume(size_gb=5)
    finally:
        current_context.reset(token)
    record = Placements(records, "volume").get(placed["id"])
    assert record is not None
    assert (record.host, record.state, record.alternates) == ("a", BUILDING, ["b", "c"])
    assert record.decision["considered"] == 4 and record.decision["passed"] == 3
    assert record.decision["removed"] == {"CapacityFilter": {"d": "DISK_GB 2 < 5"}}
    assert list(record.decision["weights"]) == ["a", "b", "c"]
    assert record.request["task_id"] == "task-1"
    assert record.request["kwargs"] == {"size_gb": 5, "volume_id": placed["id"]}
    assert record.request["headers"]["taskyard_request_id"] == "req-1"


def test_a_schedule_delivered_twice_claims_and_sends_once(records: Any, fleet: FakeFleet) -> None:
    store = volume_hosts(records, a=10, b=10)
    placer = scheduler(records, fleet)
    token = current_context.set(RequestContext("req", task_id="the-schedule-message"))
    try:
        first = placer.schedule_create_volume(size_gb=3)
        again = placer.schedule_create_volume(size_gb=3)
    finally:
        current_context.reset(token)
    assert again == first and len(fleet.casts) == 1
    assert sum(store.usage(h)["DISK_GB"] for h in "ab") == 3


def test_a_resource_that_already_holds_a_claim_is_not_placed_again(
    records: Any, fleet: FakeFleet,
) -> None:
    store = volume_hosts(records, a=10)
    store.claim("v-1", "a", {"DISK_GB": 1})
    with pytest.raises(Conflict, match="volume v-1 already holds a claim on a"):
        scheduler(records, fleet).schedule_create_volume(size_gb=1, volume_id="v-1")


def test_a_hand_on_refused_by_the_caller_check_leaves_no_claim(
    records: Any, fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = volume_hosts(records, a=10)

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise InvalidRequest("volume.create_volume: unexpected argument 'colour'")

    monkeypatch.setattr(fleet, "cast", refuse)
    with pytest.raises(InvalidRequest, match="unexpected argument 'colour'"):
        scheduler(records, fleet).schedule_create_volume(size_gb=1, colour="red")
    assert store.usage("a") == {"DISK_GB": 0}
    assert Placements(records, "volume").building() == []


def test_a_zone_hint_places_in_that_zone_from_its_own_index(
    records: Any, fleet: FakeFleet,
) -> None:
    volume_hosts(records, {"a": "az1", "b": "az2", "c": "az2"}, a=10, b=90, c=80)
    placer = scheduler(records, fleet, max_candidates=1)  # the index of az1 alone has a
    assert placer.schedule_create_volume(size_gb=1, hints={"zone": "az1"})["host"] == "a"
    assert placer.schedule_create_volume(size_gb=1, hints={"zone": "az2"})["host"] == "b"
    with pytest.raises(NoValidHost):
        placer.schedule_create_volume(size_gb=1, hints={"zone": "az3"})


def test_affinity_and_anti_affinity_follow_the_named_volume(
    records: Any, fleet: FakeFleet,
) -> None:
    volume_hosts(records, a=100, b=90, c=10)
    placer = scheduler(records, fleet, max_candidates=2)  # c is not among the candidates
    first = placer.schedule_create_volume(size_gb=5, volume_id="v-c", hints={"zone": ""})
    assert first["host"] == "a"
    ClaimStore(records, "volume").release("v-c")
    ClaimStore(records, "volume").claim("v-c", "c", {"DISK_GB": 5})
    near = placer.schedule_create_volume(size_gb=1, hints={"affinity": "v-c"})
    assert near["host"] == "c"
    far = placer.schedule_create_volume(size_gb=1, hints={"anti_affinity": ["v-c", near["id"]]})
    assert far["host"] == "a"


def test_bad_hints_are_refused_saying_what_is_read(records: Any, fleet: FakeFleet) -> None:
    volume_hosts(records, a=10)
    placer = scheduler(records, fleet)
    with pytest.raises(InvalidRequest, match=r"hints 'zones': no enabled filter or weigher "
                                             r"reads it \(enabled ones read: affinity, "
                                             r"anti_affinity, zone\)"):
        placer.schedule_create_volume(size_gb=1, hints={"zones": "az1"})
    with pytest.raises(InvalidRequest, match="hint 'affinity' = 3: expected a resource id"):
        placer.schedule_create_volume(size_gb=1, hints={"affinity": 3})
    with pytest.raises(NotFound, match="hints name volume resources that are on no host: v-9"):
        placer.schedule_create_volume(size_gb=1, hints={"anti_affinity": "v-9"})


def test_a_service_without_placement_is_refused(records: Any, fleet: FakeFleet) -> None:
    with pytest.raises(InvalidRequest, match="service 'words' declares no placement"):
        scheduler(records, fleet).schedule("words", text="hello")


def test_a_size_that_is_not_a_whole_number_is_refused_naming_the_argument(
    records: Any, fleet: FakeFleet,
) -> None:
    volume_hosts(records, a=10)
    with pytest.raises(InvalidRequest, match=r"argument 'size_gb' = -1: expected a whole"):
        scheduler(records, fleet).schedule("volume", size_gb=-1)


def test_a_disabled_host_leaves_the_index_with_its_next_report(
    records: Any, fleet: FakeFleet,
) -> None:
    store = volume_hosts(records, a=10, b=90)
    store.report_inventory("b", {"DISK_GB": Inventory(90)}, listed=False)
    assert scheduler(records, fleet).schedule_create_volume(size_gb=1)["host"] == "a"
