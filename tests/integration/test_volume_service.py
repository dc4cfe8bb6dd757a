"""The volume service with real worker processes on a private redis-server.

Two nodes (node-a, node-b) run the volume service with the file driver,
each with its own directory of image files.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.integration.conftest import Node, run_cli
from workers.client.rpc import Client, Handle
from workers.core.application import Taskyard
from workers.core.registry import Registry
from workers.exceptions import (
    Conflict,
    InvalidRequest,
    NotFound,
    RemoteError,
    Timeout,
    UnknownEndpoint,
    UnknownService,
)
from workers.testing import wait_for


@pytest.fixture(scope="module")
def nodes(start_node: Callable[..., Node]) -> dict[str, Node]:
    return {host: start_node(host) for host in ("node-a", "node-b")}


@pytest.fixture
def volume(client_app: Celery, nodes: dict[str, Node]) -> Client:
    return Client("volume", app=client_app)


def image_dir(state_dir: Path, host: str) -> Path:
    return state_dir / "volumes" / host


def test_the_user_story(volume: Client, state_dir: Path) -> None:
    vol = volume.call("create_volume", size_gb=1, name="data")
    assert vol["status"] == "available" and vol["host"] in ("node-a", "node-b")
    image = image_dir(state_dir, vol["host"]) / f"volume-{vol['id']}.img"
    assert image.stat().st_size == 1024**3
    handle = volume.cast("delete_volume", volume_id=vol["id"])
    assert isinstance(handle, Handle)
    assert handle.wait()["status"] == "deleted"
    assert not image.exists()
    listed = volume.prepare(host="node-a", timeout=5).call("list_volumes")
    assert vol["id"] not in [v["id"] for v in listed]


@pytest.mark.parametrize("host", ["node-a", "node-b"])
def test_a_host_targeted_call_is_answered_by_that_node_only(volume: Client, host: str) -> None:
    target = volume.prepare(host=host, timeout=10)
    assert {target.call("ping")["host"] for _ in range(10)} == {host}
    vol = target.call("create_volume", size_gb=1)
    assert vol["host"] == host


def test_requests_about_a_volume_reach_its_owner_wherever_they_are_sent(
    volume: Client, state_dir: Path
) -> None:
    vol = volume.prepare(host="node-a").call("create_volume", size_gb=1)
    image = image_dir(state_dir, "node-a") / f"volume-{vol['id']}.img"
    assert image.exists()
    grown = volume.prepare(host="node-b").call("extend_volume", volume_id=vol["id"],
                                               new_size_gb=2)
    assert grown["size_gb"] == 2 and image.stat().st_size == 2 * 1024**3
    deleted = volume.prepare(host="node-b").call("delete_volume", volume_id=vol["id"])
    assert deleted["status"] == "deleted" and not image.exists()


def test_the_shared_queue_spreads_work_over_both_nodes(volume: Client) -> None:
    hosts = {volume.call("ping")["host"] for _ in range(30)}
    assert hosts == {"node-a", "node-b"}


def test_declared_errors_reach_the_caller_as_themselves(volume: Client) -> None:
    with pytest.raises(NotFound, match="no volume with id 'nope'") as missing:
        volume.call("get_volume", volume_id="nope")
    assert missing.value.host in ("node-a", "node-b")
    vol = volume.call("create_volume", size_gb=2)
    with pytest.raises(InvalidRequest, match="shrinking"):
        volume.call("extend_volume", volume_id=vol["id"], new_size_gb=1)
    snap = volume.call("create_snapshot", volume_id=vol["id"])
    with pytest.raises(Conflict, match="snapshot"):
        volume.call("delete_volume", volume_id=vol["id"])
    volume.call("delete_snapshot", snapshot_id=snap["id"])
    assert volume.call("delete_volume", volume_id=vol["id"])["status"] == "deleted"
    assert volume.call("delete_volume", volume_id=vol["id"])["status"] == "deleted"


def test_an_unexpected_failure_arrives_as_remote_error_with_where_and_why(
    volume: Client, state_dir: Path
) -> None:
    vol = volume.prepare(host="node-a").call("create_volume", size_gb=1)
    (image_dir(state_dir, "node-a") / f"volume-{vol['id']}.img").unlink()
    with pytest.raises(RemoteError) as caught:
        volume.call("create_snapshot", volume_id=vol["id"])
    error = caught.value
    assert error.remote_type == "VolumeDriverError"
    assert "does not exist" in error.remote_message
    assert "Traceback" in error.traceback
    assert error.host == "node-a"


def test_a_call_to_a_host_nobody_serves_times_out_saying_it_will_never_run(
    volume: Client,
) -> None:
    # The call's request expires at its timeout: whoever takes it later will not run it.
    with pytest.raises(Timeout, match=r"did not start within 0\.5 s and its deadline") as caught:
        volume.prepare(host="nobody", timeout=0.5).call("ping")
    assert caught.value.details["stage"] == "expired"
    assert "it will never run" in str(caught.value)


def test_a_cast_to_a_host_nobody_serves_times_out_saying_it_may_still_run(
    volume: Client,
) -> None:
    handle = volume.prepare(host="nobody").cast("ping")
    with pytest.raises(Timeout, match="it is still queued and may still run") as caught:
        handle.wait(timeout=0.5)
    assert caught.value.details["stage"] == "queued"


def _raw(app: Celery, name: str, *args: Any, **kwargs: Any) -> Handle:
    result = app.send_task(name, args=args, kwargs=kwargs, queue="volume")
    return Handle(result, "volume", name, None, 20)


BAD_REQUESTS = [
    ("volume.nope", (), {}, UnknownEndpoint),
    ("volume.init_host", (), {}, UnknownEndpoint),
    ("volume._own", (), {}, UnknownEndpoint),
    ("volume.__init__", (), {}, UnknownEndpoint),
    ("volume.create_volume", (), {}, InvalidRequest),
    ("volume.create_volume", (), {"size_gb": "1"}, InvalidRequest),
    ("volume.create_volume", (), {"size_gb": 1, "colour": "red"}, InvalidRequest),
    ("volume.create_volume", (1,), {}, InvalidRequest),
    ("volume.create_volume", (), {"size_gb": 1, "volume_id": "../../etc"}, InvalidRequest),
    ("volume.get_volume", (), {"volume_id": ["a"]}, InvalidRequest),
]


@pytest.mark.parametrize(("name", "args", "kwargs", "error"), BAD_REQUESTS,
                         ids=[f"{n}{a}{sorted(k)}" for n, a, k, _ in BAD_REQUESTS])
def test_a_bad_request_is_refused_and_the_node_keeps_serving(
    client_app: Celery, volume: Client, nodes: dict[str, Node], name: str,
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception],
) -> None:
    with pytest.raises(error):
        _raw(client_app, name, *args, **kwargs).wait()
    assert all(node.alive() for node in nodes.values())
    for host in nodes:
        assert volume.prepare(host=host).call("ping")["host"] == host


def test_the_client_refuses_unknown_services_and_endpoints_at_once(client_app: Celery) -> None:
    with pytest.raises(UnknownService):
        Client("nosuch", app=client_app)
    with pytest.raises(UnknownEndpoint):
        Client("volume", app=client_app).cast("init_host")


def test_fanout_reaches_every_live_node(volume: Client) -> None:
    assert sorted(volume.fanout("ping")) == ["node-a", "node-b"]
    answers = volume.fanout("ping", wait=True)
    assert {host: a["host"] for host, a in answers.items()} == {
        "node-a": "node-a", "node-b": "node-b"}


def test_the_cli_calls_and_casts(cluster_env: dict[str, str], nodes: dict[str, Node],
                                 client_app: Taskyard) -> None:
    created = run_cli(cluster_env, "call", "volume", "create_volume", "size_gb=1", "name=cli")
    assert created.returncode == 0, created.stderr
    vol = json.loads(created.stdout)
    assert vol["name"] == "cli" and vol["status"] == "available"
    cast = run_cli(cluster_env, "cast", "volume", "delete_volume", f"volume_id={vol['id']}")
    assert cast.returncode == 0, cast.stderr
    task_id = cast.stdout.strip()  # the task id alone, for scripts
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id), cast.stdout
    assert Client("volume", app=client_app).handle(task_id).wait()["status"] == "deleted"
    missing = run_cli(cluster_env, "call", "volume", "get_volume", "volume_id=nope")
    assert missing.returncode == 1
    assert "NotFound: no volume with id 'nope'" in missing.stderr
    targeted = run_cli(cluster_env, "call", "volume", "ping", "--host", "node-b")
    assert json.loads(targeted.stdout)["host"] == "node-b"


def test_warm_shutdown_leaves_the_registry_and_exits_zero(
    start_node: Callable[..., Node], registry: Registry
) -> None:
    node = start_node("node-leaving")
    assert registry.is_up("volume", "node-leaving")
    assert node.stop(signal.SIGTERM) == 0
    assert registry.get("volume", "node-leaving") is None


def test_a_node_whose_driver_cannot_start_exits_with_the_reason(
    start_node: Callable[..., Node],
) -> None:
    node = start_node("node-broken", wait=False, env={
        "TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__ROOT": "/proc/no/such/place"})
    assert node.process is not None
    assert node.process.wait(60) == 1
    assert "taskyard node node-broken cannot start: volume: init_host failed" in node.log()


def test_a_node_with_a_misnamed_driver_exits_naming_the_setting(
    start_node: Callable[..., Node],
) -> None:
    node = start_node("node-misnamed", wait=False,
                      env={"TASKYARD_SERVICES__VOLUME__DRIVER": "fiel"})
    assert node.process is not None
    assert node.process.wait(60) == 1
    assert "settings key 'services.volume.driver' = 'fiel'" in node.log()
    assert "known: fake, file" in node.log()


def test_plain_celery_runs_the_same_app(
    start_node: Callable[..., Node], client_app: Celery, registry: Registry
) -> None:
    import sys

    node = start_node("node-celery", wait=False, env={"TASKYARD_HOST": "node-celery"},
                      command=[sys.executable, "-m", "celery", "-A", "workers", "worker",
                               "--pool", "solo", "--without-mingle", "--without-gossip"])
    node.wait_up(registry)
    answer = Client("volume", app=client_app).prepare(host="node-celery").call("ping")
    assert answer["host"] == "node-celery"
    assert node.stop() == 0
    wait_for(lambda: registry.get("volume", "node-celery") is None, 10, "node-celery to leave")


def test_cast_many_pipelines_requests_and_each_is_done_once(volume: Client) -> None:
    ids = [f"bulk-{i}" for i in range(300)]
    handles = volume.cast_many("create_volume", [{"size_gb": 1, "volume_id": v} for v in ids])
    assert {h.wait()["id"] for h in handles} == set(ids)
    listed = [v["id"] for v in volume.call("list_volumes") if v["id"].startswith("bulk-")]
    assert sorted(listed) == sorted(ids)
    for handle in volume.cast_many("delete_volume", [{"volume_id": v} for v in ids]):
        assert handle.wait()["status"] == "deleted"
