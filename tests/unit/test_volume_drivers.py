"""Contract tests: every volume driver keeps the promises of VolumeDriver."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.executor import RecordingExecutor
from drivers.volume.base import SnapshotRef, VolumeDriver, VolumeRef
from drivers.volume.fake import FakeVolumeDriver
from drivers.volume.file import FileVolumeDriver

GIB = 1024**3


def _fake(tmp_path: Path) -> VolumeDriver:
    return FakeVolumeDriver(total_gb=100)


def _file(tmp_path: Path) -> VolumeDriver:
    return FileVolumeDriver(root=str(tmp_path / "volumes"), capacity_gb=100)


@pytest.fixture(params=[_fake, _file], ids=["fake", "file"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> VolumeDriver:
    factory: Callable[[Path], VolumeDriver] = request.param
    made = factory(tmp_path)
    made.do_setup()
    made.check_for_setup_error()
    return made


def test_create_volume_is_safe_to_repeat_and_uses_capacity(driver: VolumeDriver) -> None:
    vol = VolumeRef(id="v1", size_gb=3)
    first = driver.create_volume(vol)
    assert first["location"]
    assert driver.create_volume(vol) == first
    stats = driver.get_volume_stats()
    assert stats["total_gb"] == 100
    assert stats["provisioned_gb"] == pytest.approx(3)
    assert stats["free_gb"] <= 97


def test_extend_then_delete_twice(driver: VolumeDriver) -> None:
    vol = VolumeRef(id="v1", size_gb=1)
    driver.create_volume(vol)
    driver.extend_volume(vol, 2)
    assert driver.get_volume_stats()["provisioned_gb"] == pytest.approx(2)
    driver.delete_volume(vol)
    driver.delete_volume(vol)
    assert driver.get_volume_stats()["provisioned_gb"] == pytest.approx(0)


def test_snapshots_are_copies_that_can_be_deleted_twice(driver: VolumeDriver) -> None:
    vol = VolumeRef(id="v1", size_gb=1)
    driver.create_volume(vol)
    snap = SnapshotRef(id="s1", volume_id="v1", size_gb=1)
    done: list[tuple[int, int, str]] = []
    updates = driver.create_snapshot(snap, vol, lambda d, t, m: done.append((d, t, m)))
    assert updates["location"]
    assert done and done[-1][0] == done[-1][1]
    assert driver.create_snapshot(snap, vol)["location"] == updates["location"]
    driver.delete_snapshot(snap)
    driver.delete_snapshot(snap)
    driver.delete_volume(vol)
    assert driver.get_volume_stats()["provisioned_gb"] == pytest.approx(0)


def test_file_volumes_are_sparse_image_files_of_the_right_size(tmp_path: Path) -> None:
    driver = FileVolumeDriver(root=str(tmp_path))
    driver.do_setup()
    location = driver.create_volume(VolumeRef(id="v1", size_gb=2))["location"]
    image = Path(location)
    assert image.stat().st_size == 2 * GIB
    assert image.stat().st_blocks * 512 < 1024 * 1024  # sparse: nothing written yet
    driver.extend_volume(VolumeRef(id="v1", size_gb=2), 3)
    assert image.stat().st_size == 3 * GIB
    snap = driver.create_snapshot(SnapshotRef(id="s1", volume_id="v1", size_gb=3),
                                  VolumeRef(id="v1", size_gb=3))
    assert Path(snap["location"]).stat().st_size == 3 * GIB
    assert not list(tmp_path.glob("*.partial"))


def test_file_driver_preallocates_in_chunks_and_reports_each(tmp_path: Path) -> None:
    driver = FileVolumeDriver(root=str(tmp_path), preallocate=True, chunk_mb=256)
    driver.do_setup()
    seen: list[tuple[int, int, str]] = []
    location = driver.create_volume(VolumeRef(id="v1", size_gb=1),
                                    lambda d, t, m: seen.append((d, t, m)))
    assert [(d, t) for d, t, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert Path(location["location"]).stat().st_size == GIB


def test_file_driver_copies_written_out_images_in_chunks_and_reports_each(
    tmp_path: Path,
) -> None:
    driver = FileVolumeDriver(root=str(tmp_path), preallocate=True, chunk_mb=512)
    driver.do_setup()
    vol = VolumeRef(id="v1", size_gb=1)
    driver.create_volume(vol)
    seen: list[tuple[int, int, str]] = []
    snap = driver.create_snapshot(SnapshotRef(id="s1", volume_id="v1", size_gb=1), vol,
                                  lambda d, t, m: seen.append((d, t, m)))
    assert seen == [(1, 2, "copied 512 MiB"), (2, 2, "copied 1024 MiB")]
    assert Path(snap["location"]).stat().st_size == GIB


def test_file_driver_runs_exactly_these_commands(tmp_path: Path) -> None:
    executor = RecordingExecutor()
    driver = FileVolumeDriver(root=str(tmp_path), executor=executor)
    driver.do_setup()
    vol = VolumeRef(id="v1", size_gb=2)
    driver.create_volume(vol)
    driver.extend_volume(vol, 5)
    (tmp_path / "volume-v1.img").touch()  # the recording executor made nothing
    driver.create_snapshot(SnapshotRef(id="s1", volume_id="v1", size_gb=5), vol)
    driver.delete_snapshot(SnapshotRef(id="s1", volume_id="v1", size_gb=5))
    driver.delete_volume(vol)
    image, snap = tmp_path / "volume-v1.img", tmp_path / "snapshot-s1.img"
    assert executor.commands == [
        ("truncate", "-s", "2G", str(image.with_suffix(".partial"))),
        ("mv", "-f", str(image.with_suffix(".partial")), str(image)),
        ("truncate", "-s", "5G", str(image)),
        ("cp", "--sparse=always", str(image), str(snap.with_suffix(".partial"))),
        ("mv", "-f", str(snap.with_suffix(".partial")), str(snap)),
        ("rm", "-f", str(snap)),
        ("rm", "-f", str(image)),
    ]


def test_a_create_cut_short_leaves_only_a_partial_file_that_recovery_removes(
    tmp_path: Path,
) -> None:
    driver = FileVolumeDriver(root=str(tmp_path))
    driver.do_setup()
    (tmp_path / "volume-v1.partial").write_bytes(b"half")  # what a crash mid-create leaves
    driver.recover()
    assert list(tmp_path.iterdir()) == []
    driver.create_volume(VolumeRef(id="v1", size_gb=1))
    assert [p.name for p in tmp_path.iterdir()] == ["volume-v1.img"]


def test_file_driver_setup_error_names_the_problem(tmp_path: Path) -> None:
    driver = FileVolumeDriver(root=str(tmp_path / "missing"))
    with pytest.raises(Exception, match="is not a directory"):
        driver.check_for_setup_error()


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden"])
def test_file_driver_refuses_ids_that_name_other_files(tmp_path: Path, bad: str) -> None:
    driver = FileVolumeDriver(root=str(tmp_path))
    with pytest.raises(ValueError, match="cannot name anything on a backend"):
        driver.create_volume(VolumeRef(id=bad, size_gb=1))


def test_fake_driver_refuses_more_than_its_capacity() -> None:
    driver = FakeVolumeDriver(total_gb=2)
    driver.create_volume(VolumeRef(id="a", size_gb=2))
    with pytest.raises(Exception, match="not enough space"):
        driver.create_volume(VolumeRef(id="b", size_gb=1))
