"""A build on its node: its claim, rescheduling to alternates, giving up, and reconciliation.

The scheduler and the nodes' managers are called directly on one fakeredis with
a fake fleet; a hand-on (:class:`Forward`) is followed by calling the next
node's manager, as the service layer would send the request there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from drivers.compute.fake import FakeComputeDriver
from drivers.scheduler.least_loaded import LeastLoadedScheduler
from drivers.volume.fake import FakeVolumeDriver
from managers.base import RECONCILE_GRACE_S, Forward, RequestContext, current_context
from managers.claims import ClaimStore, Inventory
from managers.compute import ComputeManager
from managers.placement import DONE, FAILED, Placements
from managers.scheduler import SchedulerManager
from managers.volume import VolumeManager
from tests.unit.fleet import FakeFleet
from workers.exceptions import Conflict, MaxRetriesExceeded, NoValidHost
from workers.testing import build_manager

MANAGERS = {"volume": VolumeManager, "compute": ComputeManager}


@pytest.fixture
def records() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def fleet(records: Any) -> FakeFleet:
    return FakeFleet(records, placements=MANAGERS)


@pytest.fixture
def in_a_request() -> Iterator[None]:
    """Managers run inside a request (ids derive from its task id)."""
    token = current_context.set(RequestContext("req-1", task_id="task-of-the-test"))
    yield
    current_context.reset(token)


def volume_node(records: Any, fleet: FakeFleet, host: str, total: int = 100,
                fail: bool = False) -> VolumeManager:
    node = build_manager(VolumeManager, FakeVolumeDriver(total_gb=total,
                                                         fail=["create_volume"] if fail else []),
                         service="volume", host=host, redis=records, fleet=fleet)
    node.report_inventory()
    return node


def place(records: Any, fleet: FakeFleet, **arguments: Any) -> dict[str, Any]:
    placer = SchedulerManager(service="scheduler", host="sched", redis=records, fleet=fleet,
                              driver=LeastLoadedScheduler(seed=1))
    return placer.schedule_create_volume(**arguments)


def build(nodes: dict[str, VolumeManager], placed: dict[str, Any]) -> tuple[Any, list[str]]:
    """Run the handed-on request where it goes, following hand-ons; the answer and the path."""
    host, path = placed["host"], []
    kwargs = dict(placed.get("kwargs") or {"size_gb": placed["size_gb"], "volume_id": placed["id"]})
    while True:
        path.append(host)
        try:
            return nodes[host].create_volume(**kwargs), path
        except Forward as forward:
            host = forward.host
        except Exception as exc:
            return exc, path


def test_a_placed_volume_is_built_where_it_was_claimed_and_the_placement_is_done(
    records: Any, fleet: FakeFleet,
) -> None:
    nodes = {h: volume_node(records, fleet, h, total) for h, total in (("a", 50), ("b", 10))}
    placed = place(records, fleet, size_gb=5)
    volume, path = build(nodes, {**placed, "size_gb": 5})
    assert path == ["a"] and volume["status"] == "available" and "attempts" not in volume
    assert Placements(records, "volume").get(placed["id"]).state == DONE  # type: ignore[union-attr]
    assert Placements(records, "volume").building() == []


def test_a_build_the_driver_fails_moves_to_the_next_alternate_with_its_claim(
    records: Any, fleet: FakeFleet,
) -> None:
    nodes = {"a": volume_node(records, fleet, "a", 50, fail=True),
             "b": volume_node(records, fleet, "b", 40)}
    placed = place(records, fleet, size_gb=5)
    with pytest.raises(Forward) as caught:
        nodes["a"].create_volume(size_gb=5, volume_id=placed["id"])
    assert caught.value.host == "b" and caught.value.extra_hops == 1
    store = ClaimStore(records, "volume")
    assert store.holder(placed["id"]) == "b" and store.usage("a") == {"DISK_GB": 0}
    record = nodes["a"].get_volume(volume_id=placed["id"])
    assert (record["status"], record["host"]) == ("creating", "b")
    assert [(a["host"], a["error"]) for a in record["attempts"]] == [
        ("a", "VolumeDriverError: fake driver told to fail create_volume")]
    volume = nodes["b"].create_volume(size_gb=5, volume_id=placed["id"])
    assert volume["status"] == "available" and volume["host"] == "b"
    assert [a["host"] for a in volume["attempts"]] == ["a"]
    assert store.failures() == {"a": 1}


def test_after_the_last_alternate_the_volume_is_in_error_with_every_reason(
    records: Any, fleet: FakeFleet, caplog: pytest.LogCaptureFixture,
) -> None:
    nodes = {h: volume_node(records, fleet, h, total, fail=True)
             for h, total in (("a", 50), ("b", 40), ("c", 30), ("d", 20))}
    placed = place(records, fleet, size_gb=5)
    with caplog.at_level(logging.INFO, logger="taskyard.placement"):
        outcome, path = build(nodes, {**placed, "size_gb": 5})
    assert path == ["a", "b", "c"]  # max_attempts 3: d is never tried
    assert isinstance(outcome, MaxRetriesExceeded) and isinstance(outcome, NoValidHost)
    assert [a["host"] for a in outcome.details["attempts"]] == ["a", "b", "c"]
    assert str(outcome).count("fake driver told to fail create_volume") == 3
    record = nodes["a"].get_volume(volume_id=placed["id"])
    assert record["status"] == "error" and record["error"] == str(outcome)
    assert ClaimStore(records, "volume").holder(placed["id"]) is None
    assert Placements(records, "volume").get(placed["id"]).state == FAILED  # type: ignore[union-attr]
    assert "the build failed on every host tried (3)" in caplog.text


def test_an_alternate_that_is_down_or_full_is_passed_over(
    records: Any, fleet: FakeFleet,
) -> None:
    nodes = {"a": volume_node(records, fleet, "a", 50, fail=True),
             "b": volume_node(records, fleet, "b", 40), "c": volume_node(records, fleet, "c", 30)}
    placed = place(records, fleet, size_gb=5)
    fleet.set_state("volume", "b", "down")
    with pytest.raises(Forward) as caught:
        nodes["a"].create_volume(size_gb=5, volume_id=placed["id"])
    assert caught.value.host == "c"


def test_an_error_of_the_callers_own_is_not_retried_and_frees_the_claim(
    records: Any, fleet: FakeFleet,
) -> None:
    nodes = {"a": volume_node(records, fleet, "a", 50), "b": volume_node(records, fleet, "b")}
    nodes["a"].volumes.create("v-1", {"id": "v-1", "size_gb": 9, "host": "a",
                                      "status": "available"})
    ClaimStore(records, "volume").release("v-1")
    placed = place(records, fleet, size_gb=5, volume_id="v-1")
    with pytest.raises(Conflict, match="exists with size 9 GiB"):
        nodes[placed["host"]].create_volume(size_gb=5, volume_id="v-1")
    assert ClaimStore(records, "volume").holder("v-1") is None
    assert Placements(records, "volume").get("v-1").state == FAILED  # type: ignore[union-attr]


def test_a_request_left_on_the_old_host_is_handed_to_where_the_build_went(
    records: Any, fleet: FakeFleet,
) -> None:
    nodes = {"a": volume_node(records, fleet, "a", 50, fail=True),
             "b": volume_node(records, fleet, "b", 40)}
    placed = place(records, fleet, size_gb=5)
    with pytest.raises(Forward):
        nodes["a"].create_volume(size_gb=5, volume_id=placed["id"])
    nodes["b"].create_volume(size_gb=5, volume_id=placed["id"])
    with pytest.raises(Forward) as caught:  # the same message, delivered to a again
        nodes["a"].create_volume(size_gb=5, volume_id=placed["id"])
    assert caught.value.host == "b"


def test_a_volume_created_without_the_scheduler_is_claimed_and_its_delete_frees_it(
    records: Any, fleet: FakeFleet, in_a_request: None,
) -> None:
    node = volume_node(records, fleet, "a", 10)
    store = ClaimStore(records, "volume")
    volume = node.create_volume(size_gb=4)
    assert store.holder(volume["id"]) == "a" and store.usage("a") == {"DISK_GB": 4}
    assert node.create_volume(size_gb=4)["id"] == volume["id"]  # again: claimed once
    assert store.usage("a") == {"DISK_GB": 4}
    node.delete_volume(volume_id=volume["id"])
    assert store.usage("a") == {"DISK_GB": 0} and store.holder(volume["id"]) is None


def test_a_direct_create_that_fails_holds_nothing(records: Any, fleet: FakeFleet) -> None:
    node = volume_node(records, fleet, "a", 10, fail=True)
    with pytest.raises(Exception, match="fake driver told to fail"):
        node.create_volume(size_gb=4, volume_id="v-1")
    assert ClaimStore(records, "volume").usage("a") == {"DISK_GB": 0}
    assert node.create_volume(size_gb=4, volume_id="v-1")["status"] == "error"
    assert ClaimStore(records, "volume").usage("a") == {"DISK_GB": 0}


def test_extending_grows_the_claim_within_the_hosts_capacity(
    records: Any, fleet: FakeFleet,
) -> None:
    node = volume_node(records, fleet, "a", 10)
    volume = node.create_volume(size_gb=4, volume_id="v-1")
    node.create_volume(size_gb=3, volume_id="v-2")
    assert node.extend_volume(volume_id=volume["id"], new_size_gb=7)["size_gb"] == 7
    assert ClaimStore(records, "volume").usage("a") == {"DISK_GB": 10}
    with pytest.raises(NoValidHost, match="volume v-1 cannot grow on a: DISK_GB: 10 used"):
        node.extend_volume(volume_id="v-1", new_size_gb=8)
    assert node.get_volume(volume_id="v-1")["status"] == "available"


def test_an_instance_whose_spawn_fails_moves_on_and_terminating_frees_its_slot(
    records: Any, fleet: FakeFleet,
) -> None:
    nodes = {}
    for host, slots, fail in (("a", 5, True), ("b", 2, False)):
        nodes[host] = build_manager(ComputeManager,
                                    FakeComputeDriver(max_instances=slots,
                                                      fail=["spawn"] if fail else []),
                                    service="compute", host=host, redis=records, fleet=fleet)
        nodes[host].report_inventory()
    placer = SchedulerManager(service="scheduler", host="sched", redis=records, fleet=fleet,
                              driver=LeastLoadedScheduler(seed=1))
    placed = placer.schedule_run_instance(image="sleeper")
    with pytest.raises(Forward) as caught:
        nodes[placed["host"]].run_instance(image="sleeper", instance_id=placed["id"])
    instance = nodes[caught.value.host].run_instance(image="sleeper", instance_id=placed["id"])
    assert instance["status"] == "running" and instance["attempts"][0]["host"] == "a"
    store = ClaimStore(records, "compute")
    assert store.usage("b") == {"SLOTS": 1}
    nodes["b"].terminate_instance(instance_id=placed["id"])
    assert store.usage("b") == {"SLOTS": 0}


# -- a host that dies mid-build -----------------------------------------------------------


def test_the_build_of_a_host_that_died_is_sent_to_the_next_alternate_under_its_task_id(
    records: Any, fleet: FakeFleet, caplog: pytest.LogCaptureFixture,
) -> None:
    nodes = {"a": volume_node(records, fleet, "a", 50), "b": volume_node(records, fleet, "b", 40)}
    placer = SchedulerManager(service="scheduler", host="sched", redis=records, fleet=fleet,
                              driver=LeastLoadedScheduler(seed=1))
    placed = placer.schedule_create_volume(size_gb=5)
    assert placer.watch_builds() == {}  # a is up: nothing to do
    fleet.set_state("volume", "a", "down")
    with caplog.at_level(logging.WARNING, logger="taskyard.placement"):
        assert placer.watch_builds() == {"moved": [f"volume/{placed['id']}"],
                                         "unlisted": ["volume/a"]}
    assert fleet.resent == [{
        "service": "volume", "method": "create_volume", "host": "b",
        "task_id": placed["task_id"], "kwargs": {"size_gb": 5, "volume_id": placed["id"]},
        "headers": {}}]  # placed outside a request: no context to carry
    store = ClaimStore(records, "volume")
    assert store.holder(placed["id"]) == "b" and store.usage("a") == {"DISK_GB": 0}
    assert "its host a is down" in caplog.text
    volume = nodes["b"].create_volume(size_gb=5, volume_id=placed["id"])
    assert volume["host"] == "b"
    assert "stopped reporting" in volume["attempts"][0]["error"]
    assert placer.watch_builds() == {}  # done: nothing left to watch


def test_a_build_whose_last_host_died_fails_and_the_caller_hears_every_attempt(
    records: Any, fleet: FakeFleet,
) -> None:
    nodes = {"a": volume_node(records, fleet, "a", 50)}
    placer = SchedulerManager(service="scheduler", host="sched", redis=records, fleet=fleet,
                              driver=LeastLoadedScheduler(seed=1))
    placed = placer.schedule_create_volume(size_gb=5)
    fleet.set_state("volume", "a", "down")
    assert placer.watch_builds()["failed"] == [f"volume/{placed['id']}"]
    assert fleet.resent[0]["host"] is None  # any node of the service answers the caller
    assert ClaimStore(records, "volume").holder(placed["id"]) is None
    with pytest.raises(MaxRetriesExceeded, match="a: the host stopped reporting"):
        nodes["a"].create_volume(size_gb=5, volume_id=placed["id"])


def test_two_schedulers_watching_move_a_dead_hosts_build_once(
    records: Any, fleet: FakeFleet,
) -> None:
    volume_node(records, fleet, "a", 50)
    volume_node(records, fleet, "b", 40)
    placers = [SchedulerManager(service="scheduler", host=f"sched-{i}", redis=records,
                                fleet=fleet, driver=LeastLoadedScheduler(seed=1))
               for i in (1, 2)]
    placed = placers[0].schedule_create_volume(size_gb=5)
    fleet.set_state("volume", "a", "down")
    record = Placements(records, "volume").get(placed["id"])
    store = ClaimStore(records, "volume")
    outcomes = [p._move_on("volume", store, Placements(records, "volume"), record,  # type: ignore[arg-type]
                           {"state": "down", "age": 9.0}) for p in placers]
    assert outcomes == ["moved", None] and len(fleet.resent) == 1


# -- reconciliation -------------------------------------------------------------------------


def test_reconciliation_repairs_drift_and_says_what_it_fixed(
    records: Any, fleet: FakeFleet, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = volume_node(records, fleet, "a", 100)
    store = ClaimStore(records, "volume")
    node.create_volume(size_gb=5, volume_id="kept")
    node.create_volume(size_gb=6, volume_id="unclaimed")
    store.release("unclaimed")                          # a resource without a claim
    store.claim("gone", "a", {"DISK_GB": 7}, force=True)  # a claim of nothing held
    store.claim("resized", "a", {"DISK_GB": 1})
    node.volumes.create("resized", {"id": "resized", "size_gb": 3, "host": "a",
                                    "status": "available", "location": "fake://resized"})
    records.hincrby(store.key("usage", "DISK_GB"), "a", 50)  # bookkeeping drift
    placed = place(records, fleet, size_gb=2)            # a build under way: left alone
    assert placed["host"] == "a"
    now = time.time() + RECONCILE_GRACE_S + 1
    monkeypatch.setattr("managers.base.time.time", lambda: now)
    with caplog.at_level(logging.WARNING, logger="taskyard.placement"):
        report = node.reconcile_allocations()
    assert report["released"] == ["gone"] and report["claimed"] == ["unclaimed"]
    assert report["resized"] == ["resized"]
    # Counted after the fixes: only the 50 units of bookkeeping drift were left to remove.
    assert report["usage"] == {"DISK_GB": [5 + 6 + 3 + 2 + 50, 5 + 6 + 3 + 2]}
    assert store.usage("a") == {"DISK_GB": 16} and store.holder(placed["id"]) == "a"
    assert "released gone" in caplog.text and "claimed unclaimed" in caplog.text
    assert store.reconciliations()["a"]["released"] == ["gone"]
    assert node.reconcile_allocations().keys() == {"at", "held", "claims"}  # nothing left


def test_a_fresh_claim_is_not_taken_for_drift(records: Any, fleet: FakeFleet) -> None:
    node = volume_node(records, fleet, "a", 100)
    ClaimStore(records, "volume").claim("being-made", "a", {"DISK_GB": 1})
    assert "released" not in node.reconcile_allocations()


def test_only_managers_that_declare_placement_reconcile_allocations() -> None:
    from managers.scheduler import SchedulerManager as Scheduler

    assert "reconcile_allocations" in VolumeManager.periodic_tasks()
    assert "reconcile_allocations" not in Scheduler.periodic_tasks()
    assert Inventory(10, 2, 2.0).capacity == 16
