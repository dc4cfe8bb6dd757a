"""The LVM volume driver: the exact commands it runs as root, and how it reads LVM's answers.

Nothing here touches LVM: a :class:`RecordingExecutor` with the root helper
``sudo -n`` records every command and answers from a script of realistic LVM
output, and a small in-memory volume group runs the shared contract tests
through the real driver code. ``tests/integration/test_lvm.py`` runs it
against the real tools.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

import tests.unit.test_volume_drivers as contract
from drivers.executor import ProcessExecutionError, RecordingExecutor, Result
from drivers.loading import load_driver
from drivers.volume.base import GIB, SnapshotRef, VolumeDriver, VolumeDriverError, VolumeRef
from drivers.volume.lvm import LVMVolumeDriver

ROOT = ("sudo", "-n")
VG = "vg0"
VOL = VolumeRef(id="v1", size_gb=2)
SNAP = SnapshotRef(id="s1", volume_id="v1", size_gb=2)

LVS_V1 = (*ROOT, "lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size",
          f"{VG}/volume-v1")
LVS_S1 = (*LVS_V1[:-1], f"{VG}/_snapshot-s1")
LVCREATE = (*ROOT, "lvcreate")
LVREMOVE = (*ROOT, "lvremove")
VGS_CAPACITY = (*ROOT, "vgs", "--noheadings", "--units", "g", "--nosuffix",
                "-o", "vg_size,vg_free", VG)


def lvm_failure(stderr: str, exit_code: int = 5) -> Result:
    """What an LVM command that refuses prints: a message on stderr and exit code 5."""
    return Result("", f"  {stderr}\n", exit_code)


def no_lv(lv: str) -> Result:
    return lvm_failure(f'Failed to find logical volume "{VG}/{lv}"')


def lv_size(gib: int) -> Result:
    """``lvs --noheadings --units b --nosuffix -o lv_size`` of an LV of ``gib`` GiB."""
    return Result(f"  {gib * GIB}\n", "", 0)


@dataclass
class ChangingExecutor(RecordingExecutor):
    """A recording executor whose answer to a prefix changes from call to call.

    ``queued[prefix]`` is consumed one answer per matching command; once it is
    empty the last answer keeps being given.
    """

    root_helper: tuple[str, ...] = ROOT
    queued: dict[tuple[str, ...], list[Result]] = field(default_factory=dict)

    def _run_once(self, argv: tuple[str, ...], ok_codes: frozenset[int] | None,
                  timeout: float | None, input: str | None) -> Result:
        for prefix, answers in self.queued.items():
            if argv[: len(prefix)] == prefix and answers:
                self.responses[prefix] = answers.pop(0)
        return super()._run_once(argv, ok_codes, timeout, input)


def make_driver(
    responses: dict[tuple[str, ...], Result | ProcessExecutionError] | None = None,
    queued: dict[tuple[str, ...], list[Result]] | None = None,
) -> tuple[LVMVolumeDriver, ChangingExecutor]:
    executor = ChangingExecutor(responses=dict(responses or {}), queued=dict(queued or {}))
    return LVMVolumeDriver(volume_group=VG, executor=executor), executor


# -- options -------------------------------------------------------------------


def test_the_driver_cannot_be_built_without_a_volume_group() -> None:
    with pytest.raises(ValueError, match=r"needs driver_options\.volume_group"):
        LVMVolumeDriver()


@pytest.mark.parametrize("bad", ["-ff", "vg/x", "vg 0", ".", ".."])
def test_a_volume_group_name_lvm_would_not_take_is_refused_at_once(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an LVM volume group name"):
        LVMVolumeDriver(volume_group=bad)


@pytest.mark.parametrize("name", ["lvm", "drivers.volume.lvm:LVMVolumeDriver"])
def test_the_loader_builds_it_with_the_injected_executor(name: str) -> None:
    executor = RecordingExecutor(root_helper=ROOT)
    driver = load_driver("volume", name, VolumeDriver, {"volume_group": VG},
                         inject={"executor": executor})
    assert isinstance(driver, LVMVolumeDriver)
    assert driver.execute is executor


# -- setup ---------------------------------------------------------------------


def test_setup_does_nothing_and_the_check_asks_vgs_about_the_group() -> None:
    driver, executor = make_driver()
    driver.do_setup()
    driver.check_for_setup_error()
    assert executor.commands == [(*ROOT, "vgs", VG)]


def test_setup_check_names_a_missing_group_and_how_to_create_it() -> None:
    driver, _ = make_driver({(*ROOT, "vgs"): Result(
        "", f'  Volume group "{VG}" not found\n  Cannot process volume group {VG}\n', 5)})
    with pytest.raises(VolumeDriverError) as info:
        driver.check_for_setup_error()
    message = str(info.value)
    assert f"LVM volume group {VG!r} (driver_options.volume_group)" in message
    assert f"Cannot process volume group {VG}" in message
    assert f"vgcreate {VG} <device>" in message


def test_setup_check_reports_lvm_tools_that_cannot_run() -> None:
    missing = ProcessExecutionError("cannot run sudo -n vgs vg0: No such file or directory",
                                    cmd=(*ROOT, "vgs", VG))
    driver, _ = make_driver({(*ROOT, "vgs"): missing})
    with pytest.raises(VolumeDriverError, match=r"No such file or directory.*lvm2 tools"):
        driver.check_for_setup_error()


# -- volumes -------------------------------------------------------------------


def test_create_looks_for_the_lv_then_runs_lvcreate_as_root() -> None:
    driver, executor = make_driver({LVS_V1: no_lv("volume-v1")})
    seen: list[tuple[int, int, str]] = []
    updates = driver.create_volume(VOL, lambda d, t, m: seen.append((d, t, m)))
    assert updates == {"location": f"/dev/{VG}/volume-v1"}
    assert executor.commands == [
        LVS_V1,
        (*ROOT, "lvcreate", "-L", "2G", "-n", "volume-v1", VG),
    ]
    assert [(d, t) for d, t, _ in seen] == [(0, 1), (1, 1)]


def test_create_of_a_volume_that_exists_runs_no_lvcreate() -> None:
    driver, executor = make_driver({LVS_V1: lv_size(2)})
    assert driver.create_volume(VOL) == {"location": f"/dev/{VG}/volume-v1"}
    assert executor.commands == [LVS_V1]


def test_create_that_loses_a_race_to_another_delivery_succeeds() -> None:
    driver, executor = make_driver(
        {LVCREATE: lvm_failure(f'Logical Volume "volume-v1" already exists in volume group '
                               f'"{VG}"')},
        queued={LVS_V1: [no_lv("volume-v1"), lv_size(2)]},
    )
    assert driver.create_volume(VOL) == {"location": f"/dev/{VG}/volume-v1"}
    assert [cmd[2] for cmd in executor.commands] == ["lvs", "lvcreate", "lvs"]


def test_create_failure_carries_lvms_reason() -> None:
    driver, _ = make_driver({
        LVS_V1: no_lv("volume-v1"),
        LVCREATE: lvm_failure(f'Volume group "{VG}" has insufficient free space '
                              "(10 extents): 512 required."),
    })
    with pytest.raises(VolumeDriverError, match="insufficient free space"):
        driver.create_volume(VOL)


def test_an_existing_smaller_lv_is_not_taken_for_the_volume() -> None:
    driver, executor = make_driver({LVS_V1: lv_size(1)})
    with pytest.raises(VolumeDriverError, match="exists with 1 GiB, less than the 2 GiB"):
        driver.create_volume(VOL)
    assert executor.commands == [LVS_V1]


def test_an_lvs_failure_other_than_a_missing_lv_is_not_taken_for_absence() -> None:
    driver, executor = make_driver({LVS_V1: lvm_failure(f'Volume group "{VG}" not found')})
    with pytest.raises(VolumeDriverError, match=f'Volume group "{VG}" not found'):
        driver.create_volume(VOL)
    assert executor.commands == [LVS_V1]


def test_delete_runs_lvremove_force_on_the_lv() -> None:
    driver, executor = make_driver()
    driver.delete_volume(VOL)
    assert executor.commands == [(*ROOT, "lvremove", "-f", f"{VG}/volume-v1")]


def test_deleting_a_volume_that_is_already_gone_succeeds() -> None:
    driver, executor = make_driver({LVREMOVE: no_lv("volume-v1")})
    driver.delete_volume(VOL)
    driver.delete_volume(VOL)
    assert executor.commands == [(*ROOT, "lvremove", "-f", f"{VG}/volume-v1")] * 2


def test_a_volume_that_cannot_be_removed_is_reported() -> None:
    driver, executor = make_driver({
        LVREMOVE: lvm_failure(f"Logical volume {VG}/volume-v1 in use."),
        LVS_V1: lv_size(2),
    })
    with pytest.raises(VolumeDriverError, match="volume-v1 in use"):
        driver.delete_volume(VOL)
    assert [cmd[2] for cmd in executor.commands] == ["lvremove", "lvs"]


def test_extend_grows_the_lv_with_lvextend() -> None:
    driver, executor = make_driver({LVS_V1: lv_size(2)})
    assert driver.extend_volume(VOL, 5) == {}
    assert executor.commands == [LVS_V1, (*ROOT, "lvextend", "-L", "5G", f"{VG}/volume-v1")]


def test_extend_to_the_size_the_lv_has_already_changes_nothing() -> None:
    # A repeat after a crash: the record still says 2 GiB, the LV has 5.
    driver, executor = make_driver({LVS_V1: lv_size(5)})
    assert driver.extend_volume(VOL, 5) == {}
    assert executor.commands == [LVS_V1]


def test_shrinking_is_refused_without_touching_the_lv() -> None:
    driver, executor = make_driver({LVS_V1: lv_size(5)})
    with pytest.raises(VolumeDriverError, match="is 5 GiB; refusing to shrink it to 3 GiB"):
        driver.extend_volume(VOL, 3)
    assert executor.commands == [LVS_V1]


def test_extending_a_volume_that_does_not_exist_is_refused() -> None:
    driver, _ = make_driver({LVS_V1: no_lv("volume-v1")})
    with pytest.raises(VolumeDriverError, match=f"{VG}/volume-v1 does not exist"):
        driver.extend_volume(VOL, 3)


# -- snapshots -----------------------------------------------------------------


def test_snapshot_is_a_copy_on_write_lv_with_a_name_lvm_does_not_reserve() -> None:
    # LVM refuses LV names starting with "snapshot", hence the underscore.
    driver, executor = make_driver({LVS_S1: no_lv("_snapshot-s1")})
    seen: list[tuple[int, int, str]] = []
    updates = driver.create_snapshot(SNAP, VOL, lambda d, t, m: seen.append((d, t, m)))
    assert updates == {"location": f"/dev/{VG}/_snapshot-s1"}
    assert executor.commands == [
        LVS_S1,
        (*ROOT, "lvcreate", "-s", "-L", "2G", "-n", "_snapshot-s1", f"{VG}/volume-v1"),
    ]
    assert [(d, t) for d, t, _ in seen] == [(0, 1), (1, 1)]


def test_repeating_a_snapshot_that_exists_runs_no_lvcreate() -> None:
    driver, executor = make_driver({LVS_S1: lv_size(2)})
    assert driver.create_snapshot(SNAP, VOL) == {"location": f"/dev/{VG}/_snapshot-s1"}
    assert executor.commands == [LVS_S1]


def test_snapshot_of_a_missing_volume_says_which_lv_is_missing() -> None:
    driver, _ = make_driver({LVS_S1: no_lv("_snapshot-s1"), LVCREATE: no_lv("volume-v1")})
    with pytest.raises(VolumeDriverError, match=f'Failed to find logical volume "{VG}/volume-v1"'):
        driver.create_snapshot(SNAP, VOL)


def test_deleting_a_snapshot_twice_succeeds() -> None:
    driver, executor = make_driver(queued={LVREMOVE: [Result("", "", 0), no_lv("_snapshot-s1")]})
    driver.delete_snapshot(SNAP)
    driver.delete_snapshot(SNAP)
    assert executor.commands == [(*ROOT, "lvremove", "-f", f"{VG}/_snapshot-s1")] * 2


# -- capacity ------------------------------------------------------------------


@pytest.mark.parametrize("stdout", [
    "  100.00  37.50\n",
    "  100,00  37,50\n",  # LVM follows the locale's decimal point
    "  WARNING: something LVM wanted to say.\n  100.00 37.50  \n",
], ids=["plain", "comma", "notice-first"])
def test_capacity_is_read_from_vgs_in_gib(stdout: str) -> None:
    driver, executor = make_driver({VGS_CAPACITY: Result(stdout, "", 0)})
    assert driver.get_volume_stats() == {
        "backend": "lvm", "volume_group": VG,
        "total_gb": 100.0, "free_gb": 37.5, "provisioned_gb": 62.5,
    }
    assert executor.commands == [VGS_CAPACITY]


def test_capacity_output_that_is_not_two_numbers_is_an_error_quoting_it() -> None:
    driver, _ = make_driver({VGS_CAPACITY: Result("  lots  plenty\n", "", 0)})
    with pytest.raises(VolumeDriverError, match=r"cannot read 2 number.*lots  plenty"):
        driver.get_volume_stats()


def test_capacity_of_a_missing_group_is_an_error() -> None:
    driver, _ = make_driver({VGS_CAPACITY: lvm_failure(f'Volume group "{VG}" not found')})
    with pytest.raises(VolumeDriverError, match="reading the group's capacity"):
        driver.get_volume_stats()


# -- ids -----------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[LVMVolumeDriver, str], object]] = {
    "create": lambda d, bad: d.create_volume(VolumeRef(id=bad, size_gb=1)),
    "delete": lambda d, bad: d.delete_volume(VolumeRef(id=bad, size_gb=1)),
    "extend": lambda d, bad: d.extend_volume(VolumeRef(id=bad, size_gb=1), 2),
    "snapshot": lambda d, bad: d.create_snapshot(SnapshotRef(id=bad, volume_id="v1", size_gb=1),
                                                 VOL),
    "snapshot-of": lambda d, bad: d.create_snapshot(SNAP, VolumeRef(id=bad, size_gb=1)),
    "delete-snapshot": lambda d, bad: d.delete_snapshot(
        SnapshotRef(id=bad, volume_id="v1", size_gb=1)),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("bad", ["../x", "a/b", "-x", "vg0/other"])
def test_ids_that_could_name_other_lvs_are_refused_before_any_command(
    operation: str, bad: str
) -> None:
    driver, executor = make_driver()
    with pytest.raises(ValueError, match="cannot name anything on a backend"):
        OPERATIONS[operation](driver, bad)
    assert executor.commands == []


# -- the shared contract, on a volume group in memory ------------------------------


@dataclass
class SimulatedLVM(RecordingExecutor):
    """Just enough of LVM, in memory, to answer the commands the driver runs.

    Thick LVs take their whole size from a group of ``size_gb`` GiB; removing
    an origin takes its snapshots with it, as ``lvremove -f`` does.
    """

    root_helper: tuple[str, ...] = ROOT
    size_gb: int = 100
    #: LV name -> (size in GiB, origin LV for a snapshot).
    table: dict[str, tuple[int, str | None]] = field(default_factory=dict)

    def _run_once(self, argv: tuple[str, ...], ok_codes: frozenset[int] | None,
                  timeout: float | None, input: str | None) -> Result:
        self.commands.append(argv)
        assert argv[: len(ROOT)] == ROOT, f"{argv} was not run as root"
        tool, *args = argv[len(ROOT):]
        return Result(getattr(self, f"_{tool}")(args), "", 0)

    def _used(self) -> int:
        return sum(size for size, _ in self.table.values())

    def _lv(self, path: str) -> str:
        vg, name = path.split("/")
        if vg != VG or name not in self.table:
            raise _failed(f'Failed to find logical volume "{path}"')
        return name

    def _vgs(self, args: list[str]) -> str:
        assert args[-1] == VG
        return f"  {self.size_gb:.2f}  {self.size_gb - self._used():.2f}\n" if args[1:] else ""

    def _lvs(self, args: list[str]) -> str:
        return f"  {self.table[self._lv(args[-1])][0] * GIB}\n"

    def _lvcreate(self, args: list[str]) -> str:
        size = int(args[args.index("-L") + 1].removesuffix("G"))
        name = args[args.index("-n") + 1]
        origin = self._lv(args[-1]) if "-s" in args else None
        if name in self.table:
            raise _failed(f'Logical Volume "{name}" already exists in volume group "{VG}"')
        if self._used() + size > self.size_gb:
            raise _failed(f'Volume group "{VG}" has insufficient free space')
        self.table[name] = (size, origin)
        return ""

    def _lvextend(self, args: list[str]) -> str:
        name = self._lv(args[-1])
        self.table[name] = (int(args[1].removesuffix("G")), self.table[name][1])
        return ""

    def _lvremove(self, args: list[str]) -> str:
        name = self._lv(args[-1])
        for other, (_, origin) in list(self.table.items()):
            if name in (other, origin):
                del self.table[other]
        return ""


def _failed(stderr: str) -> ProcessExecutionError:
    return ProcessExecutionError(stderr, exit_code=5, stderr=f"  {stderr}\n")


CONTRACT = [
    contract.test_create_volume_is_safe_to_repeat_and_uses_capacity,
    contract.test_extend_then_delete_twice,
    contract.test_snapshots_are_copies_that_can_be_deleted_twice,
]


@pytest.mark.parametrize("contract_test", CONTRACT,
                         ids=[t.__name__.removeprefix("test_") for t in CONTRACT])
def test_the_driver_keeps_the_volume_driver_contract_on_a_simulated_group(
    contract_test: Callable[[VolumeDriver], None],
) -> None:
    driver = LVMVolumeDriver(volume_group=VG, executor=SimulatedLVM())
    driver.do_setup()
    driver.check_for_setup_error()
    contract_test(driver)


def test_the_simulated_group_refuses_what_does_not_fit() -> None:
    driver = LVMVolumeDriver(volume_group=VG, executor=SimulatedLVM(size_gb=3))
    driver.create_volume(VolumeRef(id="a", size_gb=2))
    with pytest.raises(VolumeDriverError, match="insufficient free space"):
        driver.create_volume(VolumeRef(id="b", size_gb=2))
