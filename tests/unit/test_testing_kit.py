"""The testing kit users test their own services with, on this repository's services."""

from __future__ import annotations

import pytest

from drivers.volume.fake import FakeVolumeDriver
from managers.volume import VolumeManager
from workers.exceptions import ConfigError, InvalidRequest, NotFound
from workers.testing import InProcessNode, build_manager


class NotAVolumeDriver:
    def create_volume(self) -> None: ...


def test_build_manager_gives_a_manager_with_records_on_fakeredis() -> None:
    manager = build_manager(VolumeManager, FakeVolumeDriver())
    assert manager.service == "volume" and manager.host == "test-node"
    made = manager.create_volume(size_gb=1, name="kit")
    assert manager.get_volume(volume_id=made["id"])["status"] == "available"
    assert manager.redis.keys("taskyard:records:volume:*")


def test_build_manager_checks_the_driver_against_the_interface() -> None:
    with pytest.raises(ConfigError, match="does not implement VolumeDriver: missing"):
        build_manager(VolumeManager, NotAVolumeDriver())


def test_the_node_fixture_serves_every_configured_service_through_the_client(
    taskyard_node: InProcessNode,
) -> None:
    volume = taskyard_node.client("volume")
    made = volume.call("create_volume", size_gb=1)
    assert made["host"] == "test-node"
    assert taskyard_node.manager("volume").volumes.get(made["id"]) is not None
    with pytest.raises(InvalidRequest, match="argument 'size_gb' must be int"):
        volume.call("create_volume", size_gb="big")
    with pytest.raises(NotFound):
        volume.call("get_volume", volume_id="nope")
    assert taskyard_node.client("compute").call("ping")["service"] == "compute"
