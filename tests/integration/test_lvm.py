"""The LVM volume driver against real LVM: a volume group on a loop device.

Each test that needs a group gets a fresh one, ``taskyard-test-<random>``, on
a sparse file in its tmp_path, and loses it again whatever happens (all LVs,
the group, the PV label, the loop device). Where the machine cannot host
one the tests skip and say why: not root, LVM or losetup missing, no loop
device to attach (a container without /dev/loop-control, say). The group
itself needs no device-mapper, so the setup check, capacity and deleting
what is not there are tested even where device-mapper is missing; creating
LVs needs it, and that test alone skips without it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.executor import Executor
from drivers.volume.base import GIB, SnapshotRef, VolumeDriverError, VolumeRef
from drivers.volume.lvm import LVMVolumeDriver

#: Size of the sparse backing file in GiB: room for a 2 GiB volume and its
#: 2 GiB snapshot; only written blocks take disk space.
BACKING_GB = 5

#: Seconds any one LVM or losetup command may take here; a hang (udev
#: waiting in a container, say) fails the test instead of the whole run.
COMMAND_TIMEOUT_S = 60.0

TOOLS = ("losetup", "pvcreate", "vgcreate", "vgs", "lvs", "lvcreate", "lvextend", "lvremove",
         "vgremove", "pvremove", "dmsetup")


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          stdin=subprocess.DEVNULL, check=False)


def must(*cmd: str) -> str:
    result = run(*cmd)
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}: {result.stderr}"
    return result.stdout


def why_no_volume_group() -> str | None:
    """Why this machine cannot build a volume group on a loop device, or None."""
    if os.geteuid() != 0:
        return f"building a volume group needs root (running as uid {os.geteuid()})"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH (apt-get install lvm2 util-linux)"
    return None


def why_no_device_mapper() -> str | None:
    """Why LVs cannot be activated here (``dmsetup version`` cannot reach the kernel), or None."""
    result = run("dmsetup", "version")
    if result.returncode == 0:
        return None
    said = "; ".join(line.strip() for line in result.stderr.splitlines()[:2])
    return f"device-mapper is unavailable in this kernel or container ({said})"


def lv_sizes(group: str) -> dict[str, int]:
    """LVM's own list of the group's LVs and their sizes in bytes, read independently."""
    out = must("lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size",
               group)
    return {name: int(size) for name, size in (line.split() for line in out.splitlines()
                                               if line.strip())}


@pytest.fixture
def volume_group(tmp_path: Path) -> Iterator[str]:
    """A new volume group on a loop device, torn down completely afterwards."""
    reason = why_no_volume_group()
    if reason:
        pytest.skip(reason)
    backing = tmp_path / "pv.img"
    with backing.open("wb") as image:
        image.truncate(BACKING_GB * GIB)
    undo: list[tuple[str, ...]] = []
    try:
        attach = run("losetup", "--find", "--show", str(backing))
        if attach.returncode != 0:
            hint = "" if Path("/dev/loop-control").exists() else " (no /dev/loop-control)"
            pytest.skip(f"no loop device can be attached{hint}: {attach.stderr.strip()}")
        device = attach.stdout.strip()
        undo.append(("losetup", "-d", device))
        must("pvcreate", device)
        undo.append(("pvremove", "-ff", "-y", device))
        group = f"taskyard-test-{secrets.token_hex(4)}"
        must("vgcreate", group, device)
        undo += [("vgremove", "-f", group), ("lvremove", "-f", group)]
        yield group
    finally:
        failures = []
        for cmd in reversed(undo):
            result = run(*cmd)
            if result.returncode != 0:
                failures.append(f"{' '.join(cmd)}: {result.stderr.strip()}")
        assert not failures, "tearing the volume group down failed:\n" + "\n".join(failures)


@pytest.fixture
def active_volume_group(request: pytest.FixtureRequest) -> str:
    """A volume group whose LVs can be activated: device-mapper is checked first."""
    reason = why_no_volume_group() or why_no_device_mapper()
    if reason:
        pytest.skip(reason)
    group: str = request.getfixturevalue("volume_group")
    return group


def driver_for(group: str) -> LVMVolumeDriver:
    """The driver as a node runs it as root: a real executor, no root helper."""
    return LVMVolumeDriver(volume_group=group, executor=Executor(), timeout_s=COMMAND_TIMEOUT_S)


def test_setup_check_accepts_a_real_group_and_names_a_missing_one(volume_group: str) -> None:
    driver = driver_for(volume_group)
    driver.do_setup()
    driver.check_for_setup_error()
    with pytest.raises(VolumeDriverError, match=rf"'{volume_group}-gone'.*vgcreate"):
        driver_for(f"{volume_group}-gone").check_for_setup_error()


def test_capacity_of_a_real_group_is_what_vgs_reports(volume_group: str) -> None:
    stats = driver_for(volume_group).get_volume_stats()
    assert stats["backend"] == "lvm"
    assert stats["volume_group"] == volume_group
    assert stats["total_gb"] == pytest.approx(BACKING_GB, abs=0.05)  # less LVM's metadata
    assert stats["free_gb"] == stats["total_gb"]
    assert stats["provisioned_gb"] == 0


def test_what_never_existed_is_already_deleted_but_cannot_be_extended(volume_group: str) -> None:
    driver = driver_for(volume_group)
    driver.delete_volume(VolumeRef(id="never", size_gb=1))
    driver.delete_snapshot(SnapshotRef(id="never", volume_id="never", size_gb=1))
    with pytest.raises(VolumeDriverError, match="volume-never does not exist"):
        driver.extend_volume(VolumeRef(id="never", size_gb=1), 2)


def test_a_volume_and_its_snapshot_live_and_die_on_real_lvm(active_volume_group: str) -> None:
    group = active_volume_group
    driver = driver_for(group)
    driver.check_for_setup_error()
    vol = VolumeRef(id=f"v-{secrets.token_hex(4)}", size_gb=1)
    lv = f"volume-{vol.id}"
    seen: list[tuple[int, int, str]] = []

    location = driver.create_volume(vol, lambda d, t, m: seen.append((d, t, m)))["location"]
    assert location == f"/dev/{group}/{lv}"
    assert stat.S_ISBLK(os.stat(location).st_mode)
    assert seen[-1][:2] == (1, 1)
    assert driver.create_volume(vol)["location"] == location
    assert lv_sizes(group) == {lv: GIB}
    assert driver.get_volume_stats()["provisioned_gb"] == pytest.approx(1)

    driver.extend_volume(vol, 2)
    driver.extend_volume(vol, 2)
    with pytest.raises(VolumeDriverError, match="refusing to shrink"):
        driver.extend_volume(vol, 1)
    assert lv_sizes(group) == {lv: 2 * GIB}

    grown = VolumeRef(id=vol.id, size_gb=2)
    snap = SnapshotRef(id=f"s-{secrets.token_hex(4)}", volume_id=vol.id, size_gb=2)
    snap_lv = f"_snapshot-{snap.id}"
    snap_location = driver.create_snapshot(snap, grown)["location"]
    assert snap_location == f"/dev/{group}/{snap_lv}"
    assert driver.create_snapshot(snap, grown)["location"] == snap_location
    assert must("lvs", "--noheadings", "-o", "origin", f"{group}/{snap_lv}").strip() == lv
    assert set(lv_sizes(group)) == {lv, snap_lv}
    assert driver.get_volume_stats()["provisioned_gb"] == pytest.approx(4, abs=0.05)

    driver.delete_snapshot(snap)
    driver.delete_snapshot(snap)
    driver.delete_volume(vol)
    driver.delete_volume(vol)
    assert lv_sizes(group) == {}
    assert driver.get_volume_stats()["provisioned_gb"] == 0
