"""The volume manager called directly: fake driver, records on fakeredis, no Celery."""

from __future__ import annotations

import fakeredis
import pytest

from drivers.volume.fake import FakeVolumeDriver
from managers.base import Forward
from managers.volume import VolumeManager
from workers.exceptions import Conflict, InvalidRequest, NotFound


def make_manager(redis: fakeredis.FakeRedis, host: str = "node-a", **driver_options: object
                 ) -> VolumeManager:
    manager = VolumeManager(
        service="volume", host=host, driver=FakeVolumeDriver(**driver_options), redis=redis
    )
    manager.init_host()
    return manager


@pytest.fixture
def volume(fake_redis: fakeredis.FakeRedis) -> VolumeManager:
    return make_manager(fake_redis)


def test_create_volume_records_an_available_volume_on_this_host(volume: VolumeManager) -> None:
    vol = volume.create_volume(size_gb=2, name="data")
    assert vol["status"] == "available"
    assert vol["host"] == "node-a"
    assert vol["size_gb"] == 2 and vol["name"] == "data"
    assert volume.get_volume(volume_id=vol["id"])["status"] == "available"
    assert volume.driver.volumes == {vol["id"]: 2}


def test_create_volume_twice_with_the_same_id_returns_the_existing_volume(
    volume: VolumeManager,
) -> None:
    first = volume.create_volume(size_gb=1, volume_id="v1")
    second = volume.create_volume(size_gb=1, volume_id="v1")
    assert second == first
    assert [v["id"] for v in volume.list_volumes()] == ["v1"]


def test_create_volume_with_a_known_id_but_another_size_is_a_conflict(
    volume: VolumeManager,
) -> None:
    volume.create_volume(size_gb=1, volume_id="v1")
    with pytest.raises(Conflict, match="exists with size 1 GiB"):
        volume.create_volume(size_gb=5, volume_id="v1")


@pytest.mark.parametrize("size", [0, -1, 10**9])
def test_create_volume_refuses_sizes_out_of_range(volume: VolumeManager, size: int) -> None:
    with pytest.raises(InvalidRequest, match="size_gb"):
        volume.create_volume(size_gb=size)


@pytest.mark.parametrize("bad_id", ["../etc", "a b", "", "x" * 65, "-lead"])
def test_create_volume_refuses_ids_that_could_escape(volume: VolumeManager, bad_id: str) -> None:
    with pytest.raises(InvalidRequest, match="not a valid id"):
        volume.create_volume(size_gb=1, volume_id=bad_id or "\n")


def test_a_creation_left_half_done_by_a_dead_node_is_taken_over(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    dead = make_manager(fake_redis, host="node-dead")
    dead.volumes.create("v1", {"id": "v1", "name": None, "size_gb": 1, "host": "node-dead",
                               "status": "creating", "created_at": "t", "updated_at": "t"})
    survivor = make_manager(fake_redis, host="node-b")
    vol = survivor.create_volume(size_gb=1, volume_id="v1")
    assert vol["status"] == "available" and vol["host"] == "node-b"
    assert "v1" in survivor.driver.volumes


def test_a_failing_driver_leaves_the_volume_in_error_with_the_reason(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    volume = make_manager(fake_redis, fail=["create_volume"])
    with pytest.raises(Exception, match="told to fail create_volume"):
        volume.create_volume(size_gb=1, volume_id="v1")
    record = volume.get_volume(volume_id="v1")
    assert record["status"] == "error"
    assert "told to fail create_volume" in record["error"]


def test_delete_volume_deletes_and_deleting_again_succeeds(volume: VolumeManager) -> None:
    vol = volume.create_volume(size_gb=1)
    assert volume.delete_volume(volume_id=vol["id"])["status"] == "deleted"
    assert volume.delete_volume(volume_id=vol["id"])["status"] == "deleted"
    assert volume.list_volumes() == []
    assert volume.driver.volumes == {}


def test_an_unknown_volume_is_not_found(volume: VolumeManager) -> None:
    for call in (
        lambda: volume.get_volume(volume_id="nope"),
        lambda: volume.delete_volume(volume_id="nope"),
        lambda: volume.extend_volume(volume_id="nope", new_size_gb=2),
        lambda: volume.create_snapshot(volume_id="nope"),
        lambda: volume.delete_snapshot(snapshot_id="nope"),
    ):
        with pytest.raises(NotFound, match="'nope'"):
            call()


def test_extend_volume_grows_and_refuses_to_shrink(volume: VolumeManager) -> None:
    vol = volume.create_volume(size_gb=2)
    grown = volume.extend_volume(volume_id=vol["id"], new_size_gb=4)
    assert grown["size_gb"] == 4 and grown["status"] == "available"
    assert volume.driver.volumes[vol["id"]] == 4
    with pytest.raises(InvalidRequest, match="shrinking"):
        volume.extend_volume(volume_id=vol["id"], new_size_gb=3)
    assert volume.extend_volume(volume_id=vol["id"], new_size_gb=4)["size_gb"] == 4


def test_a_volume_with_snapshots_cannot_be_deleted_until_they_are(volume: VolumeManager) -> None:
    vol = volume.create_volume(size_gb=1)
    snap = volume.create_snapshot(volume_id=vol["id"], name="before-upgrade")
    assert snap["status"] == "available" and snap["volume_id"] == vol["id"]
    assert volume.get_volume(volume_id=vol["id"])["snapshots"] == [snap["id"]]
    with pytest.raises(Conflict, match="snapshot"):
        volume.delete_volume(volume_id=vol["id"])
    assert volume.get_volume(volume_id=vol["id"])["status"] == "available"
    assert volume.delete_snapshot(snapshot_id=snap["id"])["status"] == "deleted"
    assert volume.delete_snapshot(snapshot_id=snap["id"])["status"] == "deleted"
    assert volume.get_volume(volume_id=vol["id"])["snapshots"] == []
    assert volume.delete_volume(volume_id=vol["id"])["status"] == "deleted"


def test_create_snapshot_twice_with_the_same_id_returns_the_existing_one(
    volume: VolumeManager,
) -> None:
    vol = volume.create_volume(size_gb=1)
    first = volume.create_snapshot(volume_id=vol["id"], snapshot_id="s1")
    assert volume.create_snapshot(volume_id=vol["id"], snapshot_id="s1") == first
    assert [s["id"] for s in volume.list_snapshots(volume_id=vol["id"])] == ["s1"]


def test_a_snapshot_needs_an_available_volume(volume: VolumeManager) -> None:
    vol = volume.create_volume(size_gb=1)
    volume.delete_volume(volume_id=vol["id"])
    with pytest.raises(Conflict, match="is 'deleted'"):
        volume.create_snapshot(volume_id=vol["id"])


def test_requests_about_another_nodes_volume_are_forwarded_to_it(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    owner = make_manager(fake_redis, host="node-a")
    other = make_manager(fake_redis, host="node-b")
    vol = owner.create_volume(size_gb=1)
    for call in (
        lambda: other.delete_volume(volume_id=vol["id"]),
        lambda: other.extend_volume(volume_id=vol["id"], new_size_gb=2),
        lambda: other.create_snapshot(volume_id=vol["id"]),
    ):
        with pytest.raises(Forward) as forward:
            call()
        assert forward.value.host == "node-a"
    # Reading needs no forwarding: records are shared.
    assert other.get_volume(volume_id=vol["id"])["host"] == "node-a"


def test_list_volumes_can_filter_by_host(fake_redis: fakeredis.FakeRedis) -> None:
    a = make_manager(fake_redis, host="node-a")
    b = make_manager(fake_redis, host="node-b")
    a.create_volume(size_gb=1, volume_id="va")
    b.create_volume(size_gb=1, volume_id="vb")
    assert [v["id"] for v in a.list_volumes()] == ["va", "vb"]
    assert [v["id"] for v in a.list_volumes(host="node-b")] == ["vb"]


def test_capabilities_report_the_drivers_capacity(fake_redis: fakeredis.FakeRedis) -> None:
    volume = make_manager(fake_redis, total_gb=10)
    volume.create_volume(size_gb=3)
    caps = volume.capabilities()
    assert caps["total_gb"] == 10 and caps["free_gb"] == 7


def test_init_host_fails_when_the_driver_cannot_set_up(fake_redis: fakeredis.FakeRedis) -> None:
    manager = VolumeManager(service="volume", host="h",
                            driver=FakeVolumeDriver(fail=["check_for_setup_error"]),
                            redis=fake_redis)
    with pytest.raises(Exception, match="check_for_setup_error"):
        manager.init_host()
