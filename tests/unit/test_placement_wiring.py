"""What the service layer adds to placement: published declarations, host states, heartbeats,
rescheduling hand-ons, and the operator's views, on fakeredis."""

from __future__ import annotations

import logging
from typing import Any

import fakeredis
import pytest

from drivers.volume.fake import FakeVolumeDriver
from managers import Manager, Placement, endpoint
from managers.claims import ClaimStore, Inventory
from managers.placement import BUILDING, PlacementRecord, Placements
from managers.volume import VolumeManager
from tests.conftest import make_app, make_config, memory_config
from workers.cli import placement as views
from workers.core.api import ServiceAPI
from workers.core.config import ServiceConfig
from workers.core.keys import MAX_FORWARD_HOPS
from workers.core.registry import Registry
from workers.core.specs import build_spec
from workers.exceptions import ConfigError, RemoteError
from workers.node.node import Heartbeat, register_tasks
from workers.testing import build_manager


@pytest.fixture
def registry(fake_redis: fakeredis.FakeRedis) -> Registry:
    return Registry(fake_redis, service_down_time=60)


def test_nodes_publish_what_their_resources_take_and_callers_read_it_back() -> None:
    spec = build_spec(ServiceConfig("volume", "volume", "fake"))
    doc = spec.api().to_doc()
    assert doc["placement"] == {"creates": "create_volume", "id_argument": "volume_id",
                                "needs": {"DISK_GB": "size_gb"}, "kind": "volume"}
    assert ServiceAPI.from_doc(doc).placement == VolumeManager.placement
    words = ServiceAPI.from_doc({**doc, "placement": None})
    assert words.placement is None


class Misplaced(Manager):
    placement = Placement(creates="make", id_argument="thing_id", needs={"UNITS": "size"})

    @endpoint
    def make(self, size: int) -> dict[str, Any]:
        return {}


def test_a_declaration_that_does_not_fit_its_endpoint_stops_the_node_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"Misplaced.placement does not fit its endpoints: "
                                          r"placement names argument 'thing_id', which "
                                          r"Misplaced.make does not take"):
        build_spec(ServiceConfig("things", f"{__name__}:Misplaced", "fake"))
    with pytest.raises(TypeError, match="'units' is not a resource class name"):
        Placement(creates="make", id_argument="id", needs={"units": 1})
    with pytest.raises(TypeError, match=r"needs\['UNITS'\] = -1: expected the name"):
        Placement(creates="make", id_argument="id", needs={"UNITS": -1})


def test_states_of_named_hosts_come_in_one_read_whatever_the_fleet(
    fake_redis: fakeredis.FakeRedis, registry: Registry,
) -> None:
    registry.report_many("volume", {"a": {"capabilities": {}}, "b": {"capabilities": {}}})
    registry.disable("volume", "b", "disk swap")
    states = registry.states("volume", ["a", "b", "never"])
    assert states["a"]["state"] == "up" and states["a"]["age"] < 5
    assert (states["b"]["state"], states["b"]["disabled_reason"]) == ("disabled", "disk swap")
    assert (states["never"]["state"], states["never"]["age"]) == ("down", None)
    assert registry.is_disabled("volume", "b") and not registry.is_disabled("volume", "a")
    assert registry.states("volume", []) == {}


class BeatingNode:
    """What a heartbeat needs of its node."""

    def __init__(self, registry: Registry, manager: Manager, zone: str = "") -> None:
        self.registry = registry
        self.host = manager.host
        self.started_at = 1.0
        self.managers = {manager.service: manager}
        self.config = memory_config(make_config(), zone=zone)

    def publish_apis(self) -> None:
        pass

    def housekeeping(self) -> None:
        pass


def test_a_heartbeat_reports_inventory_with_the_settings_tuning_and_leaves_the_index_disabled(
    fake_redis: fakeredis.FakeRedis, registry: Registry,
) -> None:
    settings = ServiceConfig("volume", "volume", "fake",
                             inventory={"DISK_GB": {"reserved": 10, "allocation_ratio": 2.0}})
    manager = build_manager(VolumeManager, FakeVolumeDriver(total_gb=50), service="volume",
                            host="vol-1", redis=fake_redis, settings=settings)
    beat = Heartbeat(BeatingNode(registry, manager, zone="az1"), interval=1)  # type: ignore[arg-type]
    beat.beat()
    claims = ClaimStore(fake_redis, "volume")
    assert claims.inventories()["vol-1"]["zone"] == "az1"
    assert claims.inventories()["vol-1"]["classes"]["DISK_GB"] == {
        "total": 50, "reserved": 10, "allocation_ratio": 2.0, "capacity": 80}
    assert [(c.host, c.zone) for c in claims.candidates({"DISK_GB": 1}, 5, zone="az1")[0]] == [
        ("vol-1", "az1")]
    registry.disable("volume", "vol-1", "maintenance")
    beat.beat()
    assert claims.candidates({"DISK_GB": 1}, 5)[0] == []


def test_a_heartbeat_whose_inventory_fails_still_reports_and_says_why_once(
    fake_redis: fakeredis.FakeRedis, registry: Registry, caplog: pytest.LogCaptureFixture,
) -> None:
    class Blind(VolumeManager):
        def inventory(self) -> dict[str, int]:
            raise OSError("statvfs failed")

    manager = build_manager(Blind, FakeVolumeDriver(), service="volume", host="vol-1",
                            redis=fake_redis)
    beat = Heartbeat(BeatingNode(registry, manager), interval=1)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="taskyard.node"):
        beat.beat()
        beat.beat()
    assert registry.is_up("volume", "vol-1")
    assert caplog.text.count("inventory of volume on vol-1 cannot be reported: OSError: "
                             "statvfs failed") == 1


def test_a_rescheduled_build_may_be_handed_on_more_often_than_a_plain_forward(
    fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app(memory_config(make_config(), host="node-a"), fake_redis)
    register_tasks(app, frozenset({"volume"}))
    task = app.tasks["volume.create_volume"]
    sent: list[Any] = []
    monkeypatch.setattr(task, "replace", lambda signature: sent.append(signature))
    task.push_request(id="t-1", replaced_task_nesting=MAX_FORWARD_HOPS, headers={})
    try:
        with pytest.raises(RemoteError, match="forwarded to 'node-b' 3 times"):
            task._forward("node-b", "node-a", {"size_gb": 1})
        task._forward("node-b", "node-a", {"size_gb": 1}, extra_hops=2)
    finally:
        task.pop_request()
    assert len(sent) == 1 and sent[0].options["queue"] == "volume.node-b"
    app.close()


# -- the operator's views --------------------------------------------------------------


def a_fleet(fake_redis: fakeredis.FakeRedis, registry: Registry) -> ClaimStore:
    registry.report_many("volume", {"vol-1": {}, "vol-2": {}})
    claims = ClaimStore(fake_redis, "volume")
    claims.report_inventory("vol-1", {"DISK_GB": Inventory(10)})
    claims.report_inventory("vol-2", {"DISK_GB": Inventory(20, 5, 2.0)}, zone="az2")
    claims.claim("v-1", "vol-1", {"DISK_GB": 4})
    Placements(fake_redis, "volume")  # placement records live beside the claims
    return claims


def test_the_hosts_table_shows_inventory_usage_and_claims(
    fake_redis: fakeredis.FakeRedis, registry: Registry,
) -> None:
    a_fleet(fake_redis, registry)
    rows = views.hosts(registry, "volume")
    assert [(r["host"], r["zone"], r["claims"]) for r in rows] == [("vol-1", "", 1),
                                                                   ("vol-2", "az2", 0)]
    assert rows[1]["classes"]["DISK_GB"] == {"total": 20, "reserved": 5,
                                             "allocation_ratio": 2.0, "capacity": 30,
                                             "used": 0, "free": 30}
    text = views.render_hosts(rows)
    assert "volume   vol-2  up     az2   DISK_GB  20     5         2      30        0     30" \
        in text
    assert views.disagreements(registry) == []


def test_status_flags_claims_beyond_capacity_and_what_reconciliation_fixed(
    fake_redis: fakeredis.FakeRedis, registry: Registry,
) -> None:
    claims = a_fleet(fake_redis, registry)
    claims.claim("v-2", "vol-1", {"DISK_GB": 9}, force=True)
    claims.note_reconciliation("vol-2", {"at": 1.0, "released": ["gone"],
                                         "usage": {"DISK_GB": [7, 0]}})
    assert views.disagreements(registry) == [
        {"service": "volume", "host": "vol-1", "why": ["DISK_GB: claims hold 13 > capacity 10"]},
        {"service": "volume", "host": "vol-2",
         "why": ["its last reconciliation fixed released gone; usage of DISK_GB 7 -> 0"]}]
    assert "CLAIMS AND INVENTORY DISAGREE" in views.render_hosts(views.hosts(registry, "volume"))


def test_why_a_resource_is_where_it_is_lists_candidates_filters_weights_and_attempts(
    fake_redis: fakeredis.FakeRedis, registry: Registry,
) -> None:
    claims = a_fleet(fake_redis, registry)
    record = PlacementRecord(
        "v-9", "vol-2", BUILDING, ["vol-1"],
        [{"host": "vol-3", "error": "VolumeDriverError: disk on fire", "at": 1.0}],
        {"DISK_GB": 2}, {"task_id": "t-9"},
        {"considered": 3, "passed": 2, "chosen": "vol-3", "weights": {"vol-3": 1.0,
                                                                      "vol-2": 0.5},
         "removed": {"CapacityFilter": {"vol-4": "DISK_GB 1 < 2"}},
         "removed_counts": {"CapacityFilter": 3}, "needs": {"DISK_GB": 2}, "hints": {}},
        3, 1.0)
    claims.claim("v-9", "vol-2", {"DISK_GB": 2},
                 record=Placements(fake_redis, "volume").recording(record))
    text = views.render_placement(views.placement(registry, "volume", "v-9"))  # type: ignore[arg-type]
    assert "volume v-9: claimed on vol-2 (DISK_GB 2)" in text
    assert "first choice vol-3: 3 candidates, 2 passed every filter" in text
    assert "weights (best first): vol-3 1, vol-2 0.5" in text
    assert "CapacityFilter removed vol-4 (DISK_GB 1 < 2) and 2 more" in text
    assert "1. vol-3: VolumeDriverError: disk on fire" in text
    assert "alternates left: vol-1" in text
    direct = views.render_placement(views.placement(registry, "volume", "v-1"))  # type: ignore[arg-type]
    assert "not placed by the scheduler" in direct
    assert views.placement(registry, "volume", "nothing") is None
    assert "v-1" in views.render_allocations("volume", "vol-1",
                                             views.allocations(registry, "volume", "vol-1"))
