"""drivers/executor.py with real commands: output, exit codes, no shell, root helper, retries."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from drivers import executor as executor_mod
from drivers.executor import (
    Executor,
    ProcessExecutionError,
    RecordingExecutor,
    Result,
)
from workers.exceptions import TaskyardError

ROOT_HELPER = ("env", "TASKYARD_ROOT_HELPER=1")

#: Prints "out" and "err" and exits with the code given as its first argument.
OUT_ERR_EXIT = 'echo out; echo err >&2; exit "$1"'

#: Counts its runs in the file named by $1; fails until run number $2, then succeeds.
FLAKY = """
n=$(cat "$1" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$1"
if [ "$n" -ge "$2" ]; then echo "ok on run $n"; exit 0; fi
echo "failed run $n" >&2
exit 1
"""


@pytest.fixture
def run() -> Executor:
    return Executor()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Delays between attempts, recorded instead of slept."""
    delays: list[float] = []
    monkeypatch.setattr(executor_mod, "time", types.SimpleNamespace(sleep=delays.append))
    return delays


@pytest.fixture
def flaky(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "flaky.sh"
    script.write_text(FLAKY)
    return script, tmp_path / "runs"


# -- output and exit codes ------------------------------------------------------------


def test_result_carries_stdout_stderr_and_exit_code(run: Executor) -> None:
    result = run("sh", "-c", OUT_ERR_EXIT, "sh", "0")
    assert result == Result(stdout="out\n", stderr="err\n", exit_code=0)


def test_echo_output_is_returned_as_text(run: Executor) -> None:
    assert run("echo", "hello", "world").stdout == "hello world\n"


def test_non_zero_exit_raises_with_command_code_and_output(run: Executor) -> None:
    with pytest.raises(ProcessExecutionError) as info:
        run("sh", "-c", OUT_ERR_EXIT, "sh", "3")
    error = info.value
    assert isinstance(error, TaskyardError)
    assert error.cmd == ("sh", "-c", OUT_ERR_EXIT, "sh", "3")
    assert error.exit_code == 3
    assert error.stdout == "out\n"
    assert error.stderr == "err\n"
    assert "exited with 3: err" in str(error)


def test_false_fails_with_exit_code_one(run: Executor) -> None:
    with pytest.raises(ProcessExecutionError) as info:
        run("false")
    assert info.value.cmd == ("false",)
    assert info.value.exit_code == 1


@pytest.mark.parametrize("code", ["0", "3"])
def test_listed_exit_codes_count_as_success(run: Executor, code: str) -> None:
    result = run("sh", "-c", OUT_ERR_EXIT, "sh", code, check_exit_code=(0, 3))
    assert result.exit_code == int(code)
    assert result.stdout == "out\n"


def test_exit_code_outside_the_listed_ones_still_fails(run: Executor) -> None:
    with pytest.raises(ProcessExecutionError) as info:
        run("sh", "-c", OUT_ERR_EXIT, "sh", "4", check_exit_code=(0, 3))
    assert info.value.exit_code == 4


@pytest.mark.parametrize("code", ["0", "1", "77"])
def test_check_exit_code_false_accepts_any_exit_code(run: Executor, code: str) -> None:
    assert run("sh", "-c", OUT_ERR_EXIT, "sh", code, check_exit_code=False).exit_code == int(code)


def test_check_exit_code_true_means_only_zero(run: Executor) -> None:
    assert run("true", check_exit_code=True).exit_code == 0
    with pytest.raises(ProcessExecutionError):
        run("false", check_exit_code=True)


def test_empty_command_is_refused(run: Executor) -> None:
    with pytest.raises(ValueError, match="needs a command"):
        run()


# -- stdin, timeouts, programs that cannot start ---------------------------------------


def test_input_reaches_stdin(run: Executor) -> None:
    assert run("cat", input="line one\nline two\n").stdout == "line one\nline two\n"


def test_without_input_stdin_is_empty_rather_than_inherited(run: Executor) -> None:
    assert run("cat", timeout=10).stdout == ""


def test_a_command_is_out_of_reach_of_the_terminals_ctrl_c_but_in_the_nodes_session(
    run: Executor,
) -> None:
    ids = run(sys.executable, "-c",
              "import os; print(os.getpid(), os.getpgrp(), os.getsid(0))").stdout.split()
    pid, group, session = map(int, ids)
    assert group == pid != os.getpgrp()  # a group of its own: the terminal's SIGINT misses it
    if sys.version_info >= (3, 11):
        assert session == os.getsid(0)  # still the node's session (and terminal)


def test_timeout_raises_mentioning_the_timeout(run: Executor) -> None:
    with pytest.raises(ProcessExecutionError) as info:
        run("sleep", "30", timeout=0.2)
    error = info.value
    assert str(error) == "sleep 30 did not finish within 0.2 s"
    assert error.cmd == ("sleep", "30")
    assert error.exit_code is None


def test_program_that_does_not_exist_raises_process_execution_error(
    run: Executor, tmp_path: Path
) -> None:
    program = str(tmp_path / "no-such-program")
    with pytest.raises(ProcessExecutionError) as info:
        run(program, "--help")
    error = info.value
    assert str(error).startswith(f"cannot run {program} --help: ")
    assert "No such file or directory" in str(error)
    assert error.cmd == (program, "--help")
    assert error.exit_code is None
    assert isinstance(error.__cause__, FileNotFoundError)


def test_program_that_is_not_executable_raises_process_execution_error(
    run: Executor, tmp_path: Path
) -> None:
    program = tmp_path / "not-executable.sh"
    program.write_text("echo hi\n")
    program.chmod(0o644)
    with pytest.raises(ProcessExecutionError) as info:
        run(str(program))
    assert info.value.cmd == (str(program),)


# -- no shell -------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["; touch {x}", "$(touch {x})", "`touch {x}`", "&& touch {x}"])
def test_arguments_are_never_interpreted_by_a_shell(
    run: Executor, tmp_path: Path, template: str
) -> None:
    marker = tmp_path / "x"
    argument = template.format(x=marker)

    result = run("echo", argument)

    assert result.stdout == argument + "\n"
    assert not marker.exists()


def test_glob_characters_reach_the_program_unexpanded(run: Executor, tmp_path: Path) -> None:
    (tmp_path / "a.img").write_text("")
    assert run("echo", str(tmp_path / "*.img")).stdout == f"{tmp_path}/*.img\n"


def test_non_string_arguments_are_passed_as_text(run: Executor, tmp_path: Path) -> None:
    assert run("echo", tmp_path, 5).stdout == f"{tmp_path} 5\n"  # type: ignore[arg-type]


# -- root helper ----------------------------------------------------------------------


def test_run_as_root_prefixes_the_root_helper() -> None:
    run = Executor(root_helper=ROOT_HELPER)
    lines = run("env", run_as_root=True).stdout.splitlines()
    assert "TASKYARD_ROOT_HELPER=1" in lines


def test_without_run_as_root_there_is_no_prefix() -> None:
    run = Executor(root_helper=ROOT_HELPER)
    lines = run("env").stdout.splitlines()
    assert not any(line.startswith("TASKYARD_ROOT_HELPER=") for line in lines)


def test_failing_root_command_reports_the_prefixed_command() -> None:
    run = Executor(root_helper=ROOT_HELPER)
    with pytest.raises(ProcessExecutionError) as info:
        run("false", run_as_root=True)
    assert info.value.cmd == (*ROOT_HELPER, "false")


# -- attempts -------------------------------------------------------------------------


def test_attempts_retry_a_command_until_it_succeeds(
    run: Executor, flaky: tuple[Path, Path], sleeps: list[float]
) -> None:
    script, counter = flaky

    result = run("sh", str(script), str(counter), "3", attempts=3)

    assert result.stdout == "ok on run 3\n"
    assert counter.read_text() == "3\n"
    assert sleeps == [executor_mod.RETRY_DELAY_S] * 2


def test_attempts_give_up_after_the_last_attempt(
    run: Executor, flaky: tuple[Path, Path], sleeps: list[float]
) -> None:
    script, counter = flaky

    with pytest.raises(ProcessExecutionError) as info:
        run("sh", str(script), str(counter), "4", attempts=3)

    assert counter.read_text() == "3\n"
    assert info.value.exit_code == 1
    assert info.value.stderr == "failed run 3\n"
    assert sleeps == [executor_mod.RETRY_DELAY_S] * 2


def test_a_single_attempt_does_not_retry(
    run: Executor, flaky: tuple[Path, Path], sleeps: list[float]
) -> None:
    script, counter = flaky
    with pytest.raises(ProcessExecutionError):
        run("sh", str(script), str(counter), "2")
    assert counter.read_text() == "1\n"
    assert sleeps == []


# -- RecordingExecutor ----------------------------------------------------------------


def test_recording_executor_records_commands_and_answers_unmatched_with_success() -> None:
    recorder = RecordingExecutor()

    result = recorder("truncate", "-s", "1G", "/v/volume-1.img")

    assert result == Result("", "", 0)
    assert recorder.commands == [("truncate", "-s", "1G", "/v/volume-1.img")]


def test_recording_executor_answers_the_longest_matching_prefix() -> None:
    recorder = RecordingExecutor(
        responses={
            ("lvs",): Result("all\n", "", 0),
            ("lvs", "--noheadings"): Result("some\n", "", 0),
        }
    )
    assert recorder("lvs", "--noheadings", "vg0").stdout == "some\n"
    assert recorder("lvs", "vg0").stdout == "all\n"
    assert recorder("vgs").stdout == ""
    assert recorder.commands == [("lvs", "--noheadings", "vg0"), ("lvs", "vg0"), ("vgs",)]


def test_recording_executor_raises_a_scripted_error() -> None:
    failure = ProcessExecutionError("lvcreate failed", cmd=("lvcreate",), exit_code=5)
    recorder = RecordingExecutor(responses={("lvcreate",): failure})
    with pytest.raises(ProcessExecutionError) as info:
        recorder("lvcreate", "-L", "1G")
    assert info.value is failure
    assert recorder.commands == [("lvcreate", "-L", "1G")]


def test_recording_executor_records_the_root_helper_prefix() -> None:
    recorder = RecordingExecutor(root_helper=("sudo", "-n"))
    recorder("lvremove", "-f", "vg0/v1", run_as_root=True)
    recorder("ls")
    assert recorder.commands == [("sudo", "-n", "lvremove", "-f", "vg0/v1"), ("ls",)]


def test_recording_executor_retries_a_scripted_error(sleeps: list[float]) -> None:
    failure = ProcessExecutionError("busy", cmd=("dd",), exit_code=1)
    recorder = RecordingExecutor(responses={("dd",): failure})
    with pytest.raises(ProcessExecutionError):
        recorder("dd", "if=/dev/zero", attempts=2)
    assert recorder.commands == [("dd", "if=/dev/zero")] * 2
    assert len(sleeps) == 1


def test_recording_executor_checks_the_exit_code_of_a_scripted_result() -> None:
    recorder = RecordingExecutor(responses={("false",): Result("", "no", 1)})
    with pytest.raises(ProcessExecutionError):
        recorder("false")
