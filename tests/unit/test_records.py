"""managers/records.py: RecordStore on fakeredis, atomic create and transitions."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from managers.records import DELETED_RECORD_TTL_S, Parent, RecordStore
from workers.exceptions import Conflict, NotFound


@pytest.fixture
def volumes(fake_redis: fakeredis.FakeRedis) -> RecordStore:
    return RecordStore(fake_redis, "volume", "volume")


@pytest.fixture
def snapshots(fake_redis: fakeredis.FakeRedis) -> RecordStore:
    return RecordStore(fake_redis, "volume", "snapshot")


def _volume(record_id: str, status: str = "available", created_at: str = "2024-01-01T00:00:00",
            **extra: Any) -> dict[str, Any]:
    return {"id": record_id, "status": status, "created_at": created_at, **extra}


# -- create -----------------------------------------------------------------------------


def test_create_returns_the_new_record_then_the_existing_one(volumes: RecordStore) -> None:
    first, created = volumes.create("v1", _volume("v1", size_gb=1))
    assert created is True
    assert first == _volume("v1", size_gb=1)

    again, created_again = volumes.create("v1", _volume("v1", size_gb=99, status="creating"))
    assert created_again is False
    assert again == first
    assert volumes.get("v1") == first
    assert volumes.ids() == ["v1"]


def test_values_keep_their_json_types(volumes: RecordStore) -> None:
    fields = {
        "id": "v1",
        "status": "available",
        "size_gb": 10,
        "ratio": 0.5,
        "name": None,
        "bootable": False,
        "tags": ["a", 1, None],
        "meta": {"nested": {"list": [1, 2], "flag": True}},
        "text_number": "10",
    }
    record, _ = volumes.create("v1", fields)
    assert record == fields
    stored = volumes.get("v1")
    assert stored == fields
    assert type(stored["size_gb"]) is int
    assert type(stored["text_number"]) is str


def test_get_of_an_unknown_id_is_none_and_require_raises_not_found(volumes: RecordStore) -> None:
    assert volumes.get("nope") is None
    with pytest.raises(NotFound) as info:
        volumes.require("nope")
    assert str(info.value) == "no volume with id 'nope'"
    assert info.value.details == {"id": "nope"}


def test_records_live_under_their_service_and_kind(
    fake_redis: fakeredis.FakeRedis, volumes: RecordStore
) -> None:
    volumes.create("v1", _volume("v1"))
    assert fake_redis.exists("taskyard:records:volume:volume:id:v1")
    assert fake_redis.smembers("taskyard:records:volume:volume:index") == {b"v1"}


# -- transition -------------------------------------------------------------------------


def test_transition_applies_updates_when_the_status_is_allowed(volumes: RecordStore) -> None:
    volumes.create("v1", _volume("v1", size_gb=1))

    record = volumes.transition(
        "v1", ("available", "error"), {"status": "extending", "size_gb": 2}, action="extend"
    )

    assert record == _volume("v1", status="extending", size_gb=2)
    assert volumes.get("v1") == record


def test_transition_without_updates_returns_the_record_unchanged(volumes: RecordStore) -> None:
    volumes.create("v1", _volume("v1"))
    assert volumes.transition("v1", ["available"], {}, action="check") == _volume("v1")


def test_transition_from_a_disallowed_status_is_a_conflict_naming_action_and_status(
    volumes: RecordStore,
) -> None:
    volumes.create("v1", _volume("v1", status="in-use"))

    with pytest.raises(Conflict) as info:
        volumes.transition("v1", ("available", "error"), {"status": "deleting"}, action="delete")

    assert str(info.value) == "volume v1 is 'in-use'; delete needs it to be available or error"
    assert info.value.details == {"id": "v1", "status": "in-use"}
    assert volumes.get("v1")["status"] == "in-use"


def test_status_must_match_exactly(volumes: RecordStore) -> None:
    volumes.create("v1", _volume("v1", status="available-soon"))
    with pytest.raises(Conflict):
        volumes.transition("v1", ["available"], {"status": "x"}, action="use")


def test_transition_of_an_unknown_id_is_not_found(volumes: RecordStore) -> None:
    with pytest.raises(NotFound) as info:
        volumes.transition("ghost", ["available"], {"status": "deleting"}, action="delete")
    assert str(info.value) == "no volume with id 'ghost'"
    assert volumes.get("ghost") is None


def test_no_children_blocks_while_children_exist(
    volumes: RecordStore, snapshots: RecordStore
) -> None:
    volumes.create("v1", _volume("v1"))
    snapshots.create("s1", _volume("s1"), parent=Parent(volumes, "v1", ("available",)))

    with pytest.raises(Conflict) as info:
        volumes.transition(
            "v1", ["available"], {"status": "deleting"}, action="delete", no_children="snapshot"
        )

    assert str(info.value) == "volume v1 still has snapshot records; delete them first"
    assert volumes.get("v1")["status"] == "available"

    snapshots.transition(
        "s1", ["available"], {"status": "deleted"}, action="delete", retire=True,
        parent=Parent(volumes, "v1", ()),
    )
    record = volumes.transition(
        "v1", ["available"], {"status": "deleting"}, action="delete", no_children="snapshot"
    )
    assert record["status"] == "deleting"


# -- parents ----------------------------------------------------------------------------


def test_create_with_parent_registers_the_child(
    fake_redis: fakeredis.FakeRedis, volumes: RecordStore, snapshots: RecordStore
) -> None:
    volumes.create("v1", _volume("v1"))

    record, created = snapshots.create(
        "s1", _volume("s1", volume_id="v1"), parent=Parent(volumes, "v1", ("available",))
    )

    assert created is True
    assert record["volume_id"] == "v1"
    assert volumes.count_children("v1", "snapshot") == 1
    assert fake_redis.smembers("taskyard:records:volume:volume:children:v1:snapshot") == {b"s1"}
    assert snapshots.ids() == ["s1"]


def test_create_with_parent_in_a_disallowed_state_is_a_conflict(
    volumes: RecordStore, snapshots: RecordStore
) -> None:
    volumes.create("v1", _volume("v1", status="creating"))

    with pytest.raises(Conflict) as info:
        snapshots.create(
            "s1", _volume("s1"), parent=Parent(volumes, "v1", ("available", "in-use"))
        )

    assert str(info.value) == (
        "volume v1 is 'creating'; a new snapshot needs it to be available or in-use"
    )
    assert info.value.details == {"id": "v1", "status": "creating"}
    assert snapshots.get("s1") is None
    assert snapshots.ids() == []
    assert volumes.count_children("v1", "snapshot") == 0


def test_create_with_a_missing_parent_is_not_found(
    volumes: RecordStore, snapshots: RecordStore
) -> None:
    with pytest.raises(NotFound) as info:
        snapshots.create("s1", _volume("s1"), parent=Parent(volumes, "v9", ("available",)))
    assert str(info.value) == "no volume with id 'v9'"
    assert snapshots.get("s1") is None
    assert volumes.count_children("v9", "snapshot") == 0


# -- retire -----------------------------------------------------------------------------


def test_retire_removes_from_index_and_parent_children_and_sets_a_ttl(
    fake_redis: fakeredis.FakeRedis, volumes: RecordStore, snapshots: RecordStore
) -> None:
    volumes.create("v1", _volume("v1"))
    parent = Parent(volumes, "v1", ("available",))
    snapshots.create("s1", _volume("s1"), parent=parent)
    snapshots.create("s2", _volume("s2"), parent=parent)

    record = snapshots.transition(
        "s1", ["available"], {"status": "deleted"}, action="delete", retire=True,
        parent=Parent(volumes, "v1", ()),
    )

    assert record["status"] == "deleted"
    assert snapshots.ids() == ["s2"]
    assert [r["id"] for r in snapshots.list()] == ["s2"]
    assert volumes.count_children("v1", "snapshot") == 1
    assert snapshots.get("s1")["status"] == "deleted"  # kept for repeated deletes
    ttl = fake_redis.ttl(snapshots.key("s1"))
    assert DELETED_RECORD_TTL_S - 5 <= ttl <= DELETED_RECORD_TTL_S
    assert fake_redis.ttl(snapshots.key("s2")) == -1


def test_retired_record_can_be_deleted_again(volumes: RecordStore) -> None:
    volumes.create("v1", _volume("v1"))
    volumes.transition("v1", ["available"], {"status": "deleted"}, action="delete", retire=True)

    again = volumes.transition(
        "v1", ["available", "deleted"], {}, action="delete", retire=True
    )

    assert again["status"] == "deleted"
    assert volumes.ids() == []


def test_transition_without_retire_keeps_the_record_forever(
    fake_redis: fakeredis.FakeRedis, volumes: RecordStore
) -> None:
    volumes.create("v1", _volume("v1"))
    volumes.transition("v1", ["available"], {"status": "in-use"}, action="attach")
    assert fake_redis.ttl(volumes.key("v1")) == -1
    assert volumes.ids() == ["v1"]


# -- list -------------------------------------------------------------------------------


def test_list_is_ordered_by_creation_time_then_id(volumes: RecordStore) -> None:
    volumes.create("a", _volume("a", created_at="2024-03-01T00:00:00"))
    volumes.create("b", _volume("b", created_at="2024-01-01T00:00:00"))
    volumes.create("d", _volume("d", created_at="2024-02-01T00:00:00"))
    volumes.create("c", _volume("c", created_at="2024-02-01T00:00:00"))

    assert [r["id"] for r in volumes.list()] == ["b", "c", "d", "a"]
    assert volumes.ids() == ["a", "b", "c", "d"]


def test_list_of_an_empty_store_is_empty(volumes: RecordStore) -> None:
    assert volumes.list() == []


def test_kinds_do_not_see_each_others_records(
    volumes: RecordStore, snapshots: RecordStore
) -> None:
    volumes.create("x", _volume("x"))
    assert snapshots.get("x") is None
    assert snapshots.list() == []
