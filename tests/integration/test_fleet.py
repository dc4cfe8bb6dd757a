"""A fleet on one machine: two volume nodes, a compute node and a scheduler, real processes.

vol-small offers 20 GiB and vol-big 50 GiB (file driver, ``capacity_gb``);
the scheduler uses ``least_loaded``; the compute node runs real programs
with the process driver and reconciles every half second.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Node, run_cli
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.registry import Registry
from workers.exceptions import NoValidHost
from workers.testing import wait_for

RECONCILE_S = 0.5


@pytest.fixture(scope="module")
def fleet(start_node: Callable[..., Node], registry: Registry) -> dict[str, Node]:
    capacity = "TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__CAPACITY_GB"
    nodes = {
        "vol-small": start_node("vol-small", services=["volume"], wait=False,
                                env={capacity: "20"}),
        "vol-big": start_node("vol-big", services=["volume"], wait=False, env={capacity: "50"}),
        "sched": start_node("sched", services=["scheduler"], wait=False),
        "comp": start_node("comp", services=["compute"], wait=False, concurrency=2, env={
            "TASKYARD_SERVICES__COMPUTE__DRIVER": "process",
            "TASKYARD_SERVICES__COMPUTE__PERIODIC__RECONCILE_INSTANCES": str(RECONCILE_S),
        }),
    }
    for node in nodes.values():
        node.wait_up(registry, node.services)
    return nodes


@pytest.fixture
def scheduler(client_app: Taskyard, fleet: dict[str, Node]) -> Client:
    return Client("scheduler", app=client_app)


def free_gb(registry: Registry, host: str) -> float:
    record = registry.get("volume", host)
    return float(record.capabilities["free_gb"]) if record else -1.0


def place_volume(client_app: Taskyard, scheduler: Client, size_gb: int, **kw: Any) -> dict:
    placed = scheduler.call("schedule_create_volume", size_gb=size_gb, **kw)
    volume = Client("volume", app=client_app).handle(placed["task_id"], "create_volume").wait()
    assert volume["host"] == placed["host"] and volume["id"] == placed["id"]
    return placed


def test_the_services_table_shows_every_node_up_with_its_capabilities(
    cluster_env: dict[str, str], fleet: dict[str, Node]
) -> None:
    done = run_cli(cluster_env, "services")
    assert done.returncode == 0, done.stderr
    rows = {tuple(line.split()[:3]) for line in done.stdout.splitlines()[1:]}
    assert {("volume", "vol-small", "up"), ("volume", "vol-big", "up"),
            ("compute", "comp", "up"), ("scheduler", "sched", "up")} <= rows
    assert re.search(r"vol-big\s+up\s+[\d.]+s ago\s+.*total_gb=50", done.stdout)
    as_json = json.loads(run_cli(cluster_env, "services", "--json").stdout)
    comp = next(r for r in as_json if r["host"] == "comp")
    assert comp["capabilities"]["free_slots"] == 10 and comp["report_count"] >= 1


def test_the_scheduler_places_volumes_where_most_space_is_free(
    client_app: Taskyard, scheduler: Client, registry: Registry
) -> None:
    first = place_volume(client_app, scheduler, 40, name="big-one")
    assert first["host"] == "vol-big"
    wait_for(lambda: free_gb(registry, "vol-big") <= 10, 10, "vol-big to report 10 GiB free")
    assert place_volume(client_app, scheduler, 5)["host"] == "vol-small"
    Client("volume", app=client_app).call("delete_volume", volume_id=first["id"])


def test_no_valid_host_says_why_each_node_was_refused(scheduler: Client) -> None:
    with pytest.raises(NoValidHost) as caught:
        scheduler.call("schedule_create_volume", size_gb=500)
    reasons = caught.value.details["reasons"]["CapacityFilter"]
    assert set(reasons) == {"vol-small", "vol-big"}
    assert "< 500" in reasons["vol-big"]


def test_bad_arguments_for_the_handed_on_request_are_refused_by_the_scheduler(
    scheduler: Client,
) -> None:
    from workers.exceptions import InvalidRequest

    with pytest.raises(InvalidRequest, match="unexpected argument 'colour'"):
        scheduler.call("schedule_create_volume", size_gb=1, colour="red")


def test_a_disabled_node_is_never_chosen(
    client_app: Taskyard, scheduler: Client, registry: Registry, cluster_env: dict[str, str]
) -> None:
    done = run_cli(cluster_env, "services", "disable", "volume", "vol-big",
                   "--reason", "disk swap")
    assert done.returncode == 0, done.stderr
    try:
        assert registry.get("volume", "vol-big").state == "disabled"  # type: ignore[union-attr]
        hosts = {scheduler.call("schedule_create_volume", size_gb=1)["host"] for _ in range(6)}
        assert hosts == {"vol-small"}
        table = run_cli(cluster_env, "services").stdout
        assert re.search(r"vol-big\s+disabled \(disk swap\)", table)
        # Disabling keeps new work away; messages for every node still reach it.
        assert sorted(Client("volume", app=client_app).fanout("ping")) == ["vol-big",
                                                                             "vol-small"]
    finally:
        assert run_cli(cluster_env, "services", "enable", "volume", "vol-big").returncode == 0
    assert registry.is_up("volume", "vol-big")


def test_an_unreadable_report_shows_as_such_and_the_fleet_still_works(
    client_app: Taskyard, scheduler: Client, registry: Registry, cluster_env: dict[str, str]
) -> None:
    def junk() -> None:
        """A live host whose report is unreadable (fresh each step: down after 3 s here)."""
        registry.report("volume", "vol-junk", {})
        registry.redis.hset("taskyard:registry:volume", "vol-junk", "{written by hand")

    try:
        junk()
        table = run_cli(cluster_env, "services")
        assert table.returncode == 0, table.stderr
        assert re.search(r"vol-junk\s+up\s+[\d.]+s ago\s+\(report unreadable: not a JSON object",
                         table.stdout), table.stdout
        assert re.search(r"vol-big\s+up\s+.*total_gb=50", table.stdout)
        junk()
        status = run_cli(cluster_env, "status", "--timeout", "1")
        assert status.returncode == 0 and "vol-junk(up)" in status.stdout, status.stderr
        # Placement never takes it for a candidate (it reports no inventory), and places
        # among the others.
        junk()
        with pytest.raises(NoValidHost) as caught:
            scheduler.call("schedule_create_volume", size_gb=500)
        assert set(caught.value.details["reasons"]["CapacityFilter"]) == {"vol-small", "vol-big"}
        placed = place_volume(client_app, scheduler, 1)
        assert placed["host"] in {"vol-small", "vol-big"}
        Client("volume", app=client_app).call("delete_volume", volume_id=placed["id"])
    finally:
        registry.forget("volume", "vol-junk")


@pytest.mark.parametrize("host", ["vol-small", "vol-big"])
def test_a_host_targeted_call_reaches_only_that_node(client_app: Taskyard, host: str) -> None:
    target = Client("volume", app=client_app).prepare(host=host)
    assert {target.call("ping")["host"] for _ in range(8)} == {host}


def test_fanout_with_wait_gathers_every_nodes_answer(client_app: Taskyard) -> None:
    answers = Client("volume", app=client_app).fanout("ping", wait=True)
    assert {host: answer["host"] for host, answer in answers.items()} == {
        "vol-small": "vol-small", "vol-big": "vol-big"}


def test_an_instance_runs_reboots_survives_a_node_restart_and_terminates(
    client_app: Taskyard, scheduler: Client, fleet: dict[str, Node], registry: Registry,
    start_node: Callable[..., Node],
) -> None:
    compute = Client("compute", app=client_app)
    placed = scheduler.call("schedule_run_instance", image="ticker", name="clock")
    assert placed["host"] == "comp"
    instance = compute.handle(placed["task_id"]).wait()
    assert instance["status"] == "running" and instance["pid"]

    def printed() -> bool:
        return bool(compute.call("get_console_output", instance_id=instance["id"], lines=3)
                    ["output"].strip())

    wait_for(printed, 10, "the instance to print to its console")

    # Its process dies: the reconciliation on the node reports it stopped.
    os.kill(instance["pid"], signal.SIGKILL)
    wait_for(lambda: compute.call("get_instance", instance_id=instance["id"])["status"]
             == "stopped", 10, "the reconciliation to see the instance stopped")
    rebooted = compute.call("reboot_instance", instance_id=instance["id"])
    assert rebooted["status"] == "running" and rebooted["pid"] != instance["pid"]

    # The node restarts; the instance keeps running and is found again.
    node = fleet["comp"]
    assert node.stop() == 0
    os.kill(rebooted["pid"], 0)  # still alive without its node
    fleet["comp"] = start_node("comp", services=["compute"], env=node.env, concurrency=2)
    again = compute.call("get_instance", instance_id=instance["id"])
    assert again["status"] == "running"
    assert compute.call("terminate_instance", instance_id=instance["id"])["status"] == "deleted"
    wait_for(lambda: not _alive(rebooted["pid"]), 10, "the instance's process to end")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def test_a_prefork_node_runs_one_schedule_not_one_per_child(fleet: dict[str, Node]) -> None:
    node = fleet["comp"]
    pattern = re.compile(r"compute\.periodic\.reconcile_instances host=comp .* outcome=ok")
    start = len(pattern.findall(node.log()))
    began = time.monotonic()
    wait_for(lambda: len(pattern.findall(node.log())) - start >= 6, 30, "six reconciliations")
    elapsed = time.monotonic() - began
    runs = len(pattern.findall(node.log())) - start
    # One schedule at 0.5 s gives at most elapsed/0.5 + 1 runs; one per child would give twice.
    assert runs <= elapsed / RECONCILE_S + 2, (runs, elapsed)


def test_a_killed_node_is_reported_down_and_no_longer_chosen(
    client_app: Taskyard, scheduler: Client, fleet: dict[str, Node], registry: Registry,
    client_config: Any,
) -> None:
    killed_at = time.monotonic()
    fleet["vol-small"].kill()
    wait_for(lambda: registry.get("volume", "vol-small").state == "down",  # type: ignore[union-attr]
             client_config.service_down_time + 5, "vol-small to be reported down")
    assert time.monotonic() - killed_at <= client_config.service_down_time + 2
    hosts = {scheduler.call("schedule_create_volume", size_gb=1)["host"] for _ in range(5)}
    assert hosts == {"vol-big"}
    with pytest.raises(NoValidHost) as caught:
        scheduler.call("schedule_create_volume", size_gb=60)
    assert "vol-small" in caught.value.details["reasons"]["UpFilter"]
    assert "vol-big" in caught.value.details["reasons"]["CapacityFilter"]
    assert sorted(Client("volume", app=client_app).fanout("ping")) == ["vol-big"]
