"""taskyard as users get it: a wheel in fresh virtualenvs, far from this checkout.

One run of the whole story: build the wheel; install it (with the testing
kit) into a fresh venv; ``taskyard init demo`` in an empty directory;
``pip install -e .`` there and run the project's own tests; start its node
with ``taskyard up`` (on a private Redis, since nothing answers where the
settings point); then, from a second fresh venv that has only the wheel —
no project package, no settings — describe the service and call it.
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
    user = venv(root / "user-venv", f"{wheel}[testing]", env=env)
    caller = venv(root / "caller-venv", str(wheel), env=env)
    yield {"root": root, "env": env, "user": user, "caller": caller}


def with_bin(env: dict[str, str], bin_dir: Path, **extra: str) -> dict[str, str]:
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
            "VIRTUAL_ENV": str(bin_dir.parent), **extra}


def test_a_project_made_by_init_installs_tests_runs_and_is_called_without_its_code(
    outside: dict[str, object],
) -> None:
    root, env = Path(str(outside["root"])), dict(outside["env"])  # type: ignore[call-overload]
    user, caller = Path(str(outside["user"])), Path(str(outside["caller"]))
    work = root / "work"
    work.mkdir()
    user_env = with_bin(env, user)

    made = run([str(user / "taskyard"), "init", "demo"], cwd=work, env=user_env)
    assert "made 8 files" in made.stdout
    project = work / "demo"
    run([str(user / "pip"), "install", "--quiet", "-e", "."], cwd=project, env=user_env,
        timeout=PIP_TIMEOUT_S)
    tests = run([str(user / "pytest"), "-q", "-p", "no:cacheprovider"], cwd=project,
                env=user_env)
    assert "5 passed" in tests.stdout, tests.stdout

    config = json.loads(run([str(user / "taskyard"), "config"], cwd=project,
                            env=user_env).stdout)
    assert config["settings_files"][1] == str(project / "settings.toml")
    assert config["state_dir"] == str(project / ".taskyard")
    assert list(config["services"]) == ["demo"]

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing answers: `up` starts a private Redis
    node_env = with_bin(user_env, user, TASKYARD_REDIS_URL=url, TASKYARD_HOST="demo-node")
    log = root / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen([str(user / "taskyard"), "up", "--pool", "solo"], cwd=project,
                              env=node_env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: "demo ready on demo-node" in log.read_text(), 60,
                 "the demo node to be ready")
        elsewhere = root / "elsewhere"
        elsewhere.mkdir()
        caller_env = with_bin(env, caller, TASKYARD_REDIS_URL=url)
        importable = subprocess.run([str(caller / "python"), "-c", "import demo"], cwd=elsewhere,
                                    env=caller_env, capture_output=True, text=True)
        assert importable.returncode != 0 and "No module named 'demo'" in importable.stderr

        described = run([str(caller / "taskyard"), "describe", "demo"], cwd=elsewhere,
                        env=caller_env)
        assert "demo  API 1.0  (served now)" in described.stdout
        assert "  digest(text: str)" in described.stdout
        call = ("from workers import Client, InvalidRequest\n"
                "demo = Client('demo')\n"
                "print(demo.call('digest', text='hello')['host'])\n"
                "try:\n    demo.cast('digest', text=5)\n"
                "except InvalidRequest as exc:\n    print('refused:', exc)\n"
                "print(demo.fanout('ping'))\n")
        called = run([str(caller / "python"), "-c", call], cwd=elsewhere, env=caller_env)
        assert called.stdout.splitlines() == [
            "demo-node",
            "refused: demo.digest: argument 'text' must be str, got int 5",
            "['demo-node']",
        ]
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        code = up.wait(60)
    assert code == 0, log.read_text()[-3000:]
