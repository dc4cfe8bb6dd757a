"""taskyard as users get it: a wheel in fresh virtualenvs, far from this checkout.

One run of the whole story, as the tutorial's "Your own project"
(``docs/tutorial/your-own-project.md``) writes it (its ``<!-- readme: outside -->``
blocks, run word for word): build the wheel; install it (with the testing kit) into a fresh venv;
``taskyard init demo`` in an empty directory; ``pip install -e '.[test]'``
there and run the project's own tests; start its node with ``taskyard up``
(on a private Redis, since nothing answers where the settings point); then,
from a second fresh venv that has only the wheel — no project package, no
settings — describe the service and call it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.test_readme import blocks, lines, matches, sessions
from workers.cli.embedded import free_port
from workers.testing import wait_for

#: Seconds pip may take for one install (the packages come from the index or pip's cache).
PIP_TIMEOUT_S = 600


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300,
        ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    return done


def venv(path: Path, *requirements: str, env: dict[str, str]) -> Path:
    """A fresh virtualenv at ``path`` with ``requirements``; its bin directory."""
    run([sys.executable, "-m", "venv", str(path)], cwd=path.parent, env=env)
    if requirements:
        run([str(path / "bin" / "pip"), "install", "--quiet", *requirements], cwd=path.parent,
            env=env, timeout=PIP_TIMEOUT_S)
    return path / "bin"


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The wheel, two venvs (one with the testing kit), and an empty place to work."""
    root = tmp_path_factory.mktemp("outside")
    assert REPO_ROOT not in root.parents
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TASKYARD_", "DYNACONF_", "PYTHON", "VIRTUAL_ENV"))}
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(root / "dist"),
         str(REPO_ROOT)], cwd=root, env=env, timeout=PIP_TIMEOUT_S)
    (wheel,) = (root / "dist").glob("taskyard-*.whl")
    assert not list(REPO_ROOT.glob("*.egg-info")) and not (REPO_ROOT / "build").exists()
    user = venv(root / "user-venv", env=env)
    caller = venv(root / "caller-venv", str(wheel), env=env)
    yield {"root": root, "env": env, "user": user, "caller": caller}


def with_bin(env: dict[str, str], bin_dir: Path, **extra: str) -> dict[str, str]:
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
            "VIRTUAL_ENV": str(bin_dir.parent), **extra}


def test_the_readme_story_of_a_project_of_your_own_runs_as_written(
    outside: dict[str, object],
) -> None:
    root, env = Path(str(outside["root"])), dict(outside["env"])  # type: ignore[call-overload]
    user, caller = Path(str(outside["user"])), Path(str(outside["caller"]))
    story, call, describe = [b for b in blocks() if b.kind == "outside"]
    install, *steps, up_command = lines(story)
    assert up_command == "taskyard up"
    user_env = with_bin(env, user)

    # The wheel was built into root/dist: the tutorial's install line works there as written.
    run(["bash", "-e", "-c", install], cwd=root, env=user_env, timeout=PIP_TIMEOUT_S)
    work = root / "work"
    work.mkdir()
    made = run(["bash", "-e", "-c", "\n".join(steps)], cwd=work, env=user_env,
               timeout=PIP_TIMEOUT_S)
    assert "made 8 files" in made.stdout
    assert "5 passed" in made.stdout, made.stdout[-2000:]
    project = work / "demo"

    config = json.loads(run([str(user / "taskyard"), "config"], cwd=project,
                            env=user_env).stdout)
    assert config["settings_files"][1] == str(project / "settings.toml")
    assert config["state_dir"] == str(project / ".taskyard")
    assert list(config["services"]) == ["demo"]

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing answers: `up` starts a private Redis
    node_env = with_bin(user_env, user, TASKYARD_REDIS_URL=url, TASKYARD_HOST="demo-node")
    log = root / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(["bash", "-c", f"exec {up_command}"], cwd=project, env=node_env,
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: "demo ready on demo-node" in log.read_text(), 60,
                 "the demo node to be ready")
        elsewhere = root / "elsewhere"
        elsewhere.mkdir()
        caller_env = with_bin(env, caller, TASKYARD_REDIS_URL=url)
        importable = subprocess.run([str(caller / "python"), "-c", "import demo"], cwd=elsewhere,
                                    env=caller_env, capture_output=True, text=True)
        assert importable.returncode != 0 and "No module named 'demo'" in importable.stderr

        for command, expected in sessions(describe):
            shown = run(["bash", "-c", command], cwd=elsewhere, env=caller_env)
            assert matches(expected, shown.stdout), shown.stdout
        called = run([str(caller / "python"), "-c", call.body], cwd=elsewhere, env=caller_env)
        assert called.stdout.splitlines() == [
            "demo-node",
            "refused: demo.digest: argument 'text' must be str, got int 5",
            "['demo-node']",
        ]
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        code = up.wait(60)
    assert code == 0, log.read_text()[-3000:]
