"""Watching a fleet: Flower, progress, request tracing, logs and `taskyard status`.

A private Redis, a volume node, a scheduler node and Flower, all real processes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.integration import browser, faults
from tests.integration.conftest import Node, life_env, node_environment, run_cli
from workers.cli.embedded import free_port
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.registry import Registry
from workers.exceptions import NotFound
from workers.testing import wait_for

AUTH = "watcher:correct-horse"
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def cluster_env(redis_server: Any, state_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The reference fleet with the file volume driver, and the ``life`` service."""
    return life_env(redis_server.url, state_dir, tmp_path_factory.mktemp("life"),
                    TASKYARD_SERVICES__VOLUME__DRIVER="file")


@pytest.fixture(scope="module")
def flower_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def watched_env(cluster_env: dict[str, str], flower_port: int) -> dict[str, str]:
    return {**cluster_env, "TASKYARD_FLOWER__PORT": str(flower_port),
            "TASKYARD_FLOWER__BASIC_AUTH": json.dumps([AUTH])}


def http_get(url: str, auth: str | None = AUTH, timeout: float = 5) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization",
                           "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


@pytest.fixture(scope="module")
def flower(watched_env: dict[str, str], flower_port: int, state_dir: Path
           ) -> Iterator[str]:
    log = (state_dir / "flower.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "flower"], env=watched_env,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{flower_port}"
    wait_for(lambda: http_get(f"{base}/healthcheck", auth=None)[0] == 200, 30,
             "Flower to answer /healthcheck")
    yield base
    process.terminate()
    process.wait(15)
    log.close()


@pytest.fixture(scope="module")
def nodes(start_node: Callable[..., Node], flower: str, watched_env: dict[str, str]
          ) -> dict[str, Node]:
    # Flower is up first: task events sent before it listens are not kept anywhere.
    volume_env = {
        "TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__PREALLOCATE": "true",
        "TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__CHUNK_MB": "16",
    }
    return {
        "vol-w": start_node("vol-w", services=["volume"], env=volume_env),
        "sched-w": start_node("sched-w", services=["scheduler"]),
    }


@pytest.fixture(scope="module", autouse=True)
def _no_images_left(client_app: Taskyard, nodes: dict[str, Node]) -> Iterator[None]:
    """The volumes here are written out in full: remove them so no disk is left used."""
    yield
    volume = Client("volume", app=client_app)
    for record in volume.call("list_volumes"):
        volume.call("delete_volume", volume_id=record["id"])


@pytest.fixture(scope="module")
def calls(client_app: Taskyard, nodes: dict[str, Node]) -> dict[str, Any]:
    """One call that succeeds, one that fails with NotFound, one cast."""
    volume = Client("volume", app=client_app)
    created = volume.call("create_volume", size_gb=1, name="watched")
    with pytest.raises(NotFound) as missing:
        volume.call("get_volume", volume_id="not-there")
    cast = volume.cast("list_volumes")
    cast.wait()
    return {"created": created, "missing": missing.value, "cast_id": cast.id}


def flower_tasks(base: str) -> dict[str, dict[str, Any]]:
    status, body = http_get(f"{base}/api/tasks")
    return json.loads(body) if status == 200 else {}


def test_flower_shows_the_worker_under_its_node_name(flower: str, calls: dict) -> None:
    def worker_listed() -> bool:
        status, body = http_get(f"{flower}/api/workers?refresh=1")
        return status == 200 and "taskyard@vol-w" in json.loads(body)

    wait_for(worker_listed, 30, "Flower to list taskyard@vol-w", interval=0.5)


def test_flower_shows_each_call_with_its_name_state_and_arguments(
    flower: str, calls: dict
) -> None:
    def seen() -> dict[str, dict[str, Any]] | None:
        tasks = flower_tasks(flower)
        by_name: dict[str, dict[str, Any]] = {}
        for task in tasks.values():
            by_name.setdefault(task["name"], task)
        wanted = {"volume.create_volume": "SUCCESS", "volume.get_volume": "FAILURE",
                  "volume.list_volumes": "SUCCESS"}
        if all(by_name.get(n, {}).get("state") == s for n, s in wanted.items()):
            return by_name
        return None

    by_name = wait_for(seen, 30, "Flower to show the three requests", interval=0.25)
    assert "'size_gb': 1" in by_name["volume.create_volume"]["kwargs"]
    assert "not-there" in by_name["volume.get_volume"]["kwargs"]
    assert "NotFound" in by_name["volume.get_volume"]["exception"]
    assert by_name["volume.list_volumes"]["uuid"] == calls["cast_id"]
    assert by_name["volume.create_volume"]["worker"] == "taskyard@vol-w"


def test_flowers_metrics_count_the_same_events(flower: str, calls: dict) -> None:
    def counted() -> bool:
        status, text = http_get(f"{flower}/metrics", auth=None)
        return status == 200 and all(
            re.search(rf'flower_events_total{{task="{task}",type="{kind}",'
                      rf'worker="taskyard@vol-w"}} 1\.0', text)
            for task, kind in (("volume.create_volume", "task-succeeded"),
                               ("volume.get_volume", "task-failed"),
                               ("volume.list_volumes", "task-succeeded")))

    wait_for(counted, 30, "Flower's /metrics to count the three requests", interval=0.25)


def test_the_api_needs_the_credentials(flower: str) -> None:
    assert http_get(f"{flower}/api/tasks", auth=None)[0] == 401
    assert http_get(f"{flower}/api/tasks", auth="watcher:wrong")[0] == 401


def test_without_credentials_configured_the_api_refusal_names_taskyards_setting(
    watched_env: dict[str, str], state_dir: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in watched_env.items() if not k.startswith("TASKYARD_FLOWER__")}
    env["TASKYARD_FLOWER__PORT"] = str(port)
    with (state_dir / "flower-open.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "workers.cli", "flower"], env=env,
                                   cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(f"{base}/healthcheck", auth=None)[0] == 200, 30,
                 "Flower to answer /healthcheck")
        status, body = http_get(f"{base}/api/tasks", auth=None)
        assert status == 401
        assert "flower.unauthenticated_api = true" in body and "FLOWER_UNAUTH" not in body
    finally:
        process.terminate()
        process.wait(15)


def test_flower_shows_retries_and_requests_cancelled_stopped_or_expired(
    flower: str, client_app: Taskyard, start_node: Callable[..., Node],
) -> None:
    start_node("life-w", services=[faults.LIFE_SERVICE], pool="solo")
    life = Client(faults.LIFE_SERVICE, app=client_app).prepare(host="life-w")
    retried = life.cast("flaky", key="flower-retry", failures=1)
    assert retried.wait(30)["attempt"] == 2
    # The node's one process is busy: what waits behind it expires.
    blocker = life.cast("nap", tag="flower-block", seconds=1.5, steps=3)
    wait_for(lambda: blocker.node == "life-w", 30, "the blocker to start")
    expired = life.prepare(expires=0.3).cast("count", key="flower-expired")
    blocker.wait(30)
    stopped = life.cast("nap", tag="flower-stop", seconds=60, steps=600)
    wait_for(stopped.progress, 30, "the long request to report progress")
    stopped.cancel(terminate=True)
    queued = life.prepare(host="nobody-here").cast("count", key="flower-cancelled")
    queued.cancel()
    wanted = {retried.id: "SUCCESS", expired.id: "REVOKED", stopped.id: "REVOKED",
              queued.id: "REVOKED"}

    def shown() -> dict[str, dict[str, Any]] | None:
        tasks = flower_tasks(flower)
        if all(tasks.get(task_id, {}).get("state") == state
               for task_id, state in wanted.items()):
            return tasks
        return None

    tasks = wait_for(shown, 30, "Flower to show the retry and the three revoked requests",
                     interval=0.25)
    assert tasks[retried.id]["retries"] == 1  # its second run, as Celery counts retries
    assert tasks[stopped.id]["name"] == f"{faults.LIFE_SERVICE}.nap"


def test_fanout_messages_are_recognisable_in_flower(
    flower: str, client_app: Taskyard, nodes: dict[str, Node]
) -> None:
    Client("volume", app=client_app).fanout("ping", wait=True)
    wait_for(lambda: any(t["name"] == "volume.ping (fanout)" for t in
                         flower_tasks(flower).values()), 30, "the fanout message in Flower")


@pytest.mark.skipif(browser.chromium() is None,
                    reason="Chromium is not installed (apt install chromium; .ci/run does)")
def test_flowers_tasks_page_shows_the_task_names_in_a_real_browser(
    flower: str, calls: dict, tmp_path: Path
) -> None:
    binary = browser.chromium()
    assert binary is not None
    page = f"http://{AUTH}@{flower.removeprefix('http://')}/tasks"

    def rendered() -> str | None:
        dom = browser.rendered_dom(binary, page, tmp_path / "profile-dom")
        names = ("volume.create_volume", "volume.get_volume", "volume.list_volumes")
        return dom if all(name in dom for name in names) else None

    dom = wait_for(rendered, 60, "the tasks page to list the requests", interval=1)
    assert "taskyard@vol-w" in dom
    shot = browser.screenshot(binary, page, tmp_path / "flower-tasks.png",
                              tmp_path / "profile-shot")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_DOCS"):
        shutil.copy(shot, DOCS / "flower-tasks.png")


def test_one_request_is_followed_through_two_services_by_its_id(
    client_app: Taskyard, nodes: dict[str, Node]
) -> None:
    placed = Client("scheduler", app=client_app).call("schedule_create_volume", size_gb=1)
    # The volume is written out in full here (preallocate): 1 GiB, a while on a busy disk.
    Client("volume", app=client_app).handle(placed["task_id"]).wait(timeout=120)
    scheduler_line = wait_for(
        lambda: re.search(r"scheduler\.schedule_create_volume host=sched-w request=(\w+) "
                          r".*outcome=ok", nodes["sched-w"].log()), 10, "the scheduler's line")
    request_id = scheduler_line.group(1)
    volume_lines = wait_for(
        lambda: [line for line in nodes["vol-w"].log().splitlines()
                 if f"req={request_id}" in line], 10, "the volume node's lines")
    assert any(f"volume.create_volume host=vol-w request={request_id}" in line
               and "outcome=ok" in line for line in volume_lines)
    assert all(f"[req={request_id}]" in line for line in volume_lines)


def test_worker_logs_are_one_line_per_request_with_duration_and_outcome(
    nodes: dict[str, Node], calls: dict
) -> None:
    log = nodes["vol-w"].log()
    line = next(line for line in log.splitlines() if "volume.get_volume host=vol-w" in line)
    assert re.search(r"\[req=\w+\] taskyard\.requests: volume\.get_volume host=vol-w "
                     r"request=\w+ task=[\w-]+ duration=[\d.]+ms outcome=error NotFound", line)
    assert "Task volume.get_volume[" not in log  # Celery's own per-task lines are replaced


def test_taskyard_call_shows_progress_on_stderr(
    watched_env: dict[str, str], nodes: dict[str, Node]
) -> None:
    # 2 GiB in 128 chunks: long enough to outlast the 0.3 s before progress shows
    done = run_cli(watched_env, "call", "volume", "create_volume", "size_gb=2",
                   "--timeout", "120", timeout=150)
    assert done.returncode == 0, done.stderr
    steps = [int(done) for done in re.findall(r"progress (\d+)/128 wrote \d+ MiB", done.stderr)]
    assert len(steps) >= 2 and steps == sorted(set(steps)), done.stderr
    assert json.loads(done.stdout)["status"] == "available"


def test_status_shows_nodes_queues_and_running_requests_with_progress(
    watched_env: dict[str, str], client_app: Taskyard, nodes: dict[str, Node]
) -> None:
    handle = Client("volume", app=client_app).cast("create_volume", size_gb=2)

    def shown() -> str | None:
        done = run_cli(watched_env, "status", "--timeout", "2")
        text = done.stdout
        running = re.search(r"volume\.create_volume\s+taskyard@vol-w\s+\w+\s+\d+/128 wrote",
                            text)
        return text if running else None

    text = wait_for(shown, 60, "status to show the running request's progress", interval=0.2)
    assert re.search(r"volume\s+1 up\s+vol-w\(up\)", text)
    assert re.search(r"scheduler\s+1 up\s+sched-w\(up\)", text)
    assert re.search(r"volume\.vol-w\s+\d+ waiting", text)
    handle.wait(120)


def test_flower_refuses_to_listen_beyond_loopback_without_credentials(
    cluster_env: dict[str, str]
) -> None:
    done = run_cli({**cluster_env, "TASKYARD_FLOWER__ADDRESS": "0.0.0.0"}, "flower")
    assert done.returncode == 2
    assert "settings key 'flower.basic_auth' is empty, but Flower would listen on 0.0.0.0" in (
        done.stderr)


def test_config_masks_flowers_credentials(watched_env: dict[str, str]) -> None:
    done = run_cli(watched_env, "config")
    assert "correct-horse" not in done.stdout
    assert json.loads(done.stdout)["flower"]["basic_auth"] == "****"


def test_up_with_flower_starts_flower_beside_the_node(tmp_path: Path, redis_server: Any,
                                                      registry: Registry) -> None:
    port = free_port()
    env = node_environment(redis_server.url, tmp_path / "state", TASKYARD_HOST="up-flower",
                           TASKYARD_FLOWER__PORT=str(port))
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "workers.cli", "up", "--flower", "--pool",
                           "solo"], env=env, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthcheck", auth=None)[0] == 200,
                 30, "Flower started by taskyard up --flower")
        wait_for(lambda: registry.is_up("volume", "up-flower"), 30, "the node of taskyard up")
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
        log.close()
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthcheck", auth=None)[0] == 0, 15,
             "Flower to stop with the node")
