"""Contract tests: every compute driver keeps the promises of ComputeDriver.

The process driver runs real, harmless programs (``sleep``, ``sh``) under
``tmp_path``; every test destroys what it started, whatever its outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.compute.base import (
    MISSING,
    RUNNING,
    STOPPED,
    ComputeDriver,
    ComputeDriverError,
    InstanceRef,
)
from drivers.compute.fake import FakeComputeDriver
from drivers.compute.process import ProcessComputeDriver
from drivers.executor import Executor, RecordingExecutor
from drivers.loading import load_driver

IMAGES: dict[str, Any] = {
    "sleeper": ["sleep", "600"],
    "chatty": "sh -c 'for i in 1 2 3 4 5; do echo \"line $i\"; done; exec sleep 600'",
    "brief": "sh -c 'echo hello; echo bye'",
}
MAX = 3
D = TypeVar("D", bound=ComputeDriver)
T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 10.0) -> T:
    """The first truthy value of ``condition()``, polled until ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def proc_fields(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/<pid>/stat, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped does not)."""
    fields = proc_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> int:
    fields = proc_fields(pid)
    assert fields is not None, f"no process {pid}"
    return int(fields[19])


def ref(instance_id: str, image: str = "sleeper") -> InstanceRef:
    return InstanceRef(id=instance_id, image=image)


@pytest.fixture
def cleanup() -> Iterator[Callable[[D], D]]:
    """Register a driver; everything it lists is destroyed when the test ends."""
    made: list[ComputeDriver] = []

    def register(driver: D) -> D:
        made.append(driver)
        return driver

    yield register
    for driver in made:
        for instance_id in driver.list_instances():
            driver.destroy(ref(instance_id))


@pytest.fixture
def make_process(
    tmp_path: Path, cleanup: Callable[[ProcessComputeDriver], ProcessComputeDriver]
) -> Callable[..., ProcessComputeDriver]:
    """Build (and set up) a process driver on ``tmp_path/instances`` with these options."""

    def make(**options: Any) -> ProcessComputeDriver:
        options = {
            "root": str(tmp_path / "instances"), "images": IMAGES, "max_instances": MAX,
            "stop_timeout": 5, **options,
        }
        driver = cleanup(ProcessComputeDriver(**options))
        driver.do_setup()
        return driver

    return make


def _fake(make_process: Callable[..., ProcessComputeDriver]) -> ComputeDriver:
    driver = FakeComputeDriver(images=IMAGES, max_instances=MAX)
    driver.do_setup()
    return driver


def _process(make_process: Callable[..., ProcessComputeDriver]) -> ComputeDriver:
    return make_process()


@pytest.fixture(params=[_fake, _process], ids=["fake", "process"])
def driver(
    request: pytest.FixtureRequest,
    make_process: Callable[..., ProcessComputeDriver],
    cleanup: Callable[[ComputeDriver], ComputeDriver],
) -> ComputeDriver:
    made = cleanup(request.param(make_process))
    made.check_for_setup_error()
    return made


def crash(driver: ComputeDriver, instance_id: str, spawned: dict[str, Any]) -> None:
    """Make an instance die behind the driver's back."""
    if isinstance(driver, FakeComputeDriver):
        driver.crash(instance_id)
    else:
        os.kill(spawned["pid"], signal.SIGKILL)


# -- the contract, for every driver -------------------------------------------


def test_a_spawned_instance_runs_and_takes_a_slot(driver: ComputeDriver) -> None:
    updates = driver.spawn(ref("i1"))
    assert updates["command"] == ["sleep", "600"]
    assert driver.power_state("i1") == RUNNING
    assert driver.list_instances() == {"i1": RUNNING}
    stats = driver.get_host_stats()
    assert (stats["max_instances"], stats["instances"], stats["free_slots"]) == (MAX, 1, MAX - 1)
    assert stats["images"] == driver.images() == ["brief", "chatty", "sleeper"]


def test_spawning_twice_leaves_the_running_instance_alone(driver: ComputeDriver) -> None:
    first = driver.spawn(ref("i1"))
    assert driver.spawn(ref("i1")) == first
    assert driver.get_host_stats()["instances"] == 1


def test_destroying_twice_is_safe_and_forgets_the_instance(driver: ComputeDriver) -> None:
    driver.spawn(ref("i1"))
    driver.destroy(ref("i1"))
    driver.destroy(ref("i1"))
    driver.destroy(ref("never-spawned"))
    assert driver.power_state("i1") == MISSING
    assert driver.list_instances() == {}
    assert driver.get_host_stats()["free_slots"] == MAX


def test_reboot_gives_a_running_instance_again(driver: ComputeDriver) -> None:
    first = driver.spawn(ref("i1"))
    again = driver.reboot(ref("i1"))
    assert again["pid"] != first["pid"]
    assert again["command"] == first["command"]
    assert driver.power_state("i1") == RUNNING
    assert driver.get_host_stats()["instances"] == 1


def test_reboot_of_an_unknown_instance_starts_it(driver: ComputeDriver) -> None:
    driver.reboot(ref("i1"))
    assert driver.power_state("i1") == RUNNING


def test_an_instance_that_dies_is_stopped_and_can_be_spawned_again(
    driver: ComputeDriver,
) -> None:
    spawned = driver.spawn(ref("i1"))
    crash(driver, "i1", spawned)
    wait_for(lambda: driver.power_state("i1") == STOPPED, "the instance to be stopped")
    assert driver.list_instances() == {"i1": STOPPED}
    assert driver.get_host_stats()["instances"] == 0
    driver.spawn(ref("i1"))
    assert driver.power_state("i1") == RUNNING


def test_console_output_is_the_last_lines_asked_for(driver: ComputeDriver) -> None:
    chatty = ref("i1", "chatty")
    assert driver.get_console_output(chatty) == ""
    driver.spawn(chatty)
    everything = wait_for(lambda: driver.get_console_output(chatty), "console output")
    last = driver.get_console_output(chatty, lines=1)
    assert last.count("\n") == 1
    assert everything.endswith(last)
    assert driver.get_console_output(chatty, lines=0) == ""


def test_an_unknown_image_is_refused_naming_the_images_there_are(
    driver: ComputeDriver,
) -> None:
    with pytest.raises(ComputeDriverError, match=r"unknown image 'nope'.*brief, chatty, sleeper"):
        driver.spawn(ref("i1", "nope"))
    assert driver.power_state("i1") == MISSING


def test_more_than_max_instances_are_refused_until_one_is_destroyed(
    driver: ComputeDriver,
) -> None:
    for n in range(MAX):
        driver.spawn(ref(f"i{n}"))
    with pytest.raises(ComputeDriverError, match=f"{MAX} instances run and max_instances is {MAX}"):
        driver.spawn(ref("one-too-many"))
    driver.destroy(ref("i0"))
    driver.spawn(ref("one-too-many"))
    assert driver.get_host_stats()["free_slots"] == 0


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden"])
def test_ids_that_could_name_other_files_are_refused(driver: ComputeDriver, bad: str) -> None:
    with pytest.raises(ValueError, match="cannot name"):
        driver.spawn(ref(bad))


# -- the process driver ---------------------------------------------------------


def test_a_program_that_exits_on_its_own_becomes_stopped(
    make_process: Callable[..., ProcessComputeDriver],
) -> None:
    driver = make_process()
    brief = ref("i1", "brief")
    driver.spawn(brief)
    wait_for(lambda: driver.power_state("i1") == STOPPED, "the program to exit")
    assert driver.get_console_output(brief) == "hello\nbye\n"


def test_console_output_holds_the_last_lines_the_program_printed(
    make_process: Callable[..., ProcessComputeDriver],
) -> None:
    driver = make_process()
    chatty = ref("i1", "chatty")
    driver.spawn(chatty)
    wait_for(lambda: "line 5" in driver.get_console_output(chatty), "five lines")
    assert driver.get_console_output(chatty, lines=3) == "line 3\nline 4\nline 5\n"


def test_console_output_of_a_long_log_reads_only_its_end(
    make_process: Callable[..., ProcessComputeDriver],
) -> None:
    driver = make_process()
    (driver.root / "i1").mkdir()
    (driver.root / "i1" / "console.log").write_text(
        "".join(f"line {n} {'x' * 50}\n" for n in range(1000)) + "no newline at the end"
    )
    tail = driver.get_console_output(ref("i1"), lines=3)
    assert tail == f"line 998 {'x' * 50}\nline 999 {'x' * 50}\nno newline at the end"


def test_reboot_runs_the_same_command_appending_to_the_console_after_a_marker(
    make_process: Callable[..., ProcessComputeDriver],
) -> None:
    driver = make_process()
    chatty = ref("i1", "chatty")
    first = driver.spawn(chatty)
    wait_for(lambda: "line 5" in driver.get_console_output(chatty), "the first boot's lines")
    again = driver.reboot(chatty)
    assert not alive(first["pid"])
    assert again["console"] == first["console"]
    wait_for(lambda: driver.get_console_output(chatty).count("line 5") == 2, "a second boot")
    log = driver.get_console_output(chatty, lines=100).splitlines()
    assert log[5].startswith("--- rebooted at ") and log[5].endswith(" ---")
    assert log[:5] == log[6:] == [f"line {n}" for n in range(1, 6)]


def test_a_new_driver_on_the_same_root_finds_the_running_instances_again(
    make_process: Callable[..., ProcessComputeDriver],
) -> None:
    before = make_process()
    spawned = before.spawn(ref("i1"))
    before.spawn(ref("i2", "brief"))
    wait_for(lambda: before.power_state("i2") == STOPPED, "the brief program to exit")

    after = make_process()  # what a restarted worker builds
    assert after.list_instances() == {"i1": RUNNING, "i2": STOPPED}
    assert after.spawn(ref("i1")) == spawned
    assert after.get_host_stats()["instances"] == 1
    after.destroy(ref("i1"))
    assert not alive(spawned["pid"])
    assert before.power_state("i1") == MISSING


def test_the_pid_file_records_pid_start_time_argv_and_image(
    make_process: Callable[..., ProcessComputeDriver],
) -> None:
    driver = make_process()
    spawned = driver.spawn(ref("i1"))
    record = json.loads((driver.root / "i1" / "instance.json").read_text())
    assert record["pid"] == spawned["pid"]
    assert record["start_time"] == start_time(spawned["pid"])
    assert (record["argv"], record["image"]) == (["sleep", "600"], "sleeper")
    assert spawned["console"] == str(driver.root / "i1" / "console.log")


def test_a_pid_file_whose_start_time_differs_is_not_taken_for_the_instance(
    make_process: Callable[..., ProcessComputeDriver],
) -> None:
    driver = make_process()
    # Someone else's process that now holds the pid the file names.
    stranger = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        (driver.root / "ghost").mkdir()
        pid_file = driver.root / "ghost" / "instance.json"
        record: dict[str, Any] = {
            "id": "ghost", "image": "sleeper", "argv": ["sleep", "600"], "pid": stranger.pid,
            "start_time": start_time(stranger.pid), "started_at": "2024-01-01T00:00:00+00:00",
        }
        pid_file.write_text(json.dumps(record))
        assert driver.power_state("ghost") == RUNNING  # the same start time: it is ours

        pid_file.write_text(json.dumps({**record, "start_time": record["start_time"] - 1}))
        assert driver.power_state("ghost") == STOPPED
        assert driver.list_instances() == {"ghost": STOPPED}
        driver.destroy(ref("ghost"))
        assert driver.power_state("ghost") == MISSING
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_destroy_stops_everything_the_program_started(
    make_process: Callable[..., ProcessComputeDriver],
) -> None:
    driver = make_process(images={"parent": "sh -c 'sleep 600 & echo \"child $!\"; wait'"})
    parent = ref("i1", "parent")
    spawned = driver.spawn(parent)
    line = wait_for(lambda: driver.get_console_output(parent), "the child's pid")
    child = int(line.split()[1])
    assert alive(child)
    driver.destroy(parent)
    wait_for(lambda: not alive(child), "the child to die")
    assert not alive(spawned["pid"])


def test_destroy_stops_what_a_program_left_running_when_it_exited(
    make_process: Callable[..., ProcessComputeDriver],
) -> None:
    driver = make_process(images={"daemon": "sh -c 'sleep 600 & echo \"child $!\"'"})
    daemon = ref("i1", "daemon")
    driver.spawn(daemon)
    line = wait_for(lambda: driver.get_console_output(daemon), "the child's pid")
    child = int(line.split()[1])
    wait_for(lambda: driver.power_state("i1") == STOPPED, "the program to exit")
    assert alive(child)
    driver.destroy(daemon)
    wait_for(lambda: not alive(child), "the child to die")


def test_destroy_kills_a_program_that_ignores_sigterm_after_stop_timeout(
    make_process: Callable[..., ProcessComputeDriver],
) -> None:
    driver = make_process(
        images={"stubborn": "sh -c 'trap \"\" TERM; echo ready; exec sleep 600'"},
        stop_timeout=0.3,
    )
    stubborn = ref("i1", "stubborn")
    spawned = driver.spawn(stubborn)
    wait_for(lambda: "ready" in driver.get_console_output(stubborn), "the trap to be set")
    started = time.monotonic()
    driver.destroy(stubborn)
    assert time.monotonic() - started >= 0.3
    assert not alive(spawned["pid"])
    assert driver.power_state("i1") == MISSING


def test_check_for_setup_error_names_the_image_and_the_missing_program(
    make_process: Callable[..., ProcessComputeDriver], tmp_path: Path
) -> None:
    driver = make_process(images={
        **IMAGES,
        "ghost": "no-such-program-anywhere --flag",
        "lost": [str(tmp_path / "bin" / "server")],
        "nearby": "./bin/server",
    })
    with pytest.raises(ComputeDriverError) as raised:
        driver.check_for_setup_error()
    message = str(raised.value)
    assert "image 'ghost': program 'no-such-program-anywhere' is not on PATH" in message
    assert f"image 'lost': {tmp_path / 'bin' / 'server'} is not an executable file" in message
    assert "image 'nearby': ./bin/server is a relative path" in message
    assert "sleeper" not in message


def test_check_for_setup_error_says_the_root_is_not_a_directory(tmp_path: Path) -> None:
    driver = ProcessComputeDriver(root=str(tmp_path / "missing"), images=IMAGES)
    with pytest.raises(ComputeDriverError, match="is not a directory"):
        driver.check_for_setup_error()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"root": "", "images": IMAGES}, "needs driver_options.root"),
        ({"root": "x", "images": {}}, "needs driver_options.images"),
        ({"root": "x", "images": {"empty": ""}}, "images.empty is empty"),
        ({"root": "x", "images": IMAGES, "max_instances": -1}, "cannot be negative"),
    ],
)
def test_the_process_driver_refuses_bad_options_at_once(
    options: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        ProcessComputeDriver(**options)


def test_spawn_starts_the_catalogue_argv_through_the_executor(tmp_path: Path) -> None:
    # Not registered for cleanup: the recording executor starts nothing, and
    # its made-up pids must never be signalled.
    executor = RecordingExecutor()
    driver = ProcessComputeDriver(root=str(tmp_path), images=IMAGES, executor=executor)
    driver.do_setup()
    driver.spawn(ref("i1", "chatty"))
    driver.spawn(ref("i2", "sleeper"))
    assert executor.spawned == [
        ("sh", "-c", 'for i in 1 2 3 4 5; do echo "line $i"; done; exec sleep 600'),
        ("sleep", "600"),
    ]
    assert executor.commands == []


# -- the fake driver --------------------------------------------------------------


def test_the_fake_console_tells_what_happened_to_the_instance() -> None:
    driver = FakeComputeDriver()
    sleeper = ref("i1")
    driver.spawn(sleeper)
    driver.reboot(sleeper)
    driver.crash("i1")
    assert driver.get_console_output(sleeper).splitlines() == [
        "[i1] started from sleeper",
        "[i1] stopped for a reboot",
        "[i1] started from sleeper",
        "[i1] exited with 1",
    ]


def test_the_fake_fails_the_operations_it_is_told_to() -> None:
    driver = FakeComputeDriver(fail=["spawn"])
    with pytest.raises(ComputeDriverError, match="told to fail spawn"):
        driver.spawn(ref("i1"))
    with pytest.raises(ValueError, match="'spwan'"):
        FakeComputeDriver(fail=["spwan"])


@pytest.mark.parametrize("name", ["drivers.compute.fake:FakeComputeDriver",
                                  "drivers.compute.process:ProcessComputeDriver"])
def test_either_driver_loads_from_the_same_driver_options(
    name: str, tmp_path: Path, cleanup: Callable[[ComputeDriver], ComputeDriver]
) -> None:
    options = {"root": str(tmp_path / "instances"), "images": IMAGES, "stop_timeout": 5}
    driver = cleanup(load_driver("compute", name, ComputeDriver, options,
                                 inject={"executor": Executor()}))
    driver.do_setup()
    driver.check_for_setup_error()
    driver.spawn(ref("i1"))
    assert driver.list_instances() == {"i1": RUNNING}
