"""The compute manager called directly: fake driver, records on fakeredis, no Celery."""

from __future__ import annotations

import fakeredis
import pytest

from drivers.compute.fake import FakeComputeDriver
from managers.base import Forward
from managers.compute import ComputeManager
from workers.exceptions import Conflict, InvalidRequest, NotFound


def make_manager(redis: fakeredis.FakeRedis, host: str = "node-a", **options: object
                 ) -> ComputeManager:
    manager = ComputeManager(service="compute", host=host,
                             driver=FakeComputeDriver(**options), redis=redis)
    manager.init_host()
    return manager


@pytest.fixture
def compute(fake_redis: fakeredis.FakeRedis) -> ComputeManager:
    return make_manager(fake_redis, images={"sleeper": "sleep 600", "web": "httpd"})


def test_run_instance_records_a_running_instance_on_this_host(compute: ComputeManager) -> None:
    inst = compute.run_instance(image="sleeper", name="one")
    assert inst["status"] == "running" and inst["power_state"] == "running"
    assert inst["host"] == "node-a" and inst["image"] == "sleeper"
    assert compute.driver.power_state(inst["id"]) == "running"
    assert [i["id"] for i in compute.list_instances()] == [inst["id"]]


def test_run_instance_twice_with_the_same_id_returns_the_running_one(
    compute: ComputeManager,
) -> None:
    first = compute.run_instance(image="sleeper", instance_id="i-1")
    assert compute.run_instance(image="sleeper", instance_id="i-1") == first
    assert compute.driver.list_instances() == {"i-1": "running"}
    with pytest.raises(Conflict, match="exists with image 'sleeper'"):
        compute.run_instance(image="web", instance_id="i-1")


def test_an_unknown_image_is_an_invalid_request_listing_the_images(
    compute: ComputeManager,
) -> None:
    with pytest.raises(InvalidRequest, match="no image 'nginx' on node-a; images: sleeper, web"):
        compute.run_instance(image="nginx")


def test_terminate_removes_the_instance_and_terminating_again_succeeds(
    compute: ComputeManager,
) -> None:
    inst = compute.run_instance(image="sleeper")
    assert compute.terminate_instance(instance_id=inst["id"])["status"] == "deleted"
    assert compute.terminate_instance(instance_id=inst["id"])["status"] == "deleted"
    assert compute.list_instances() == []
    assert compute.driver.power_state(inst["id"]) == "missing"


def test_reboot_restarts_a_stopped_instance(compute: ComputeManager) -> None:
    inst = compute.run_instance(image="sleeper")
    compute.driver.crash(inst["id"])
    compute.reconcile_instances()
    assert compute.get_instance(instance_id=inst["id"])["status"] == "stopped"
    rebooted = compute.reboot_instance(instance_id=inst["id"])
    assert rebooted["status"] == "running"
    assert compute.driver.power_state(inst["id"]) == "running"


def test_console_output_is_read_on_the_instances_node(compute: ComputeManager) -> None:
    inst = compute.run_instance(image="sleeper")
    out = compute.get_console_output(instance_id=inst["id"], lines=5)
    assert f"[{inst['id']}] started from sleeper" in out["output"]
    with pytest.raises(InvalidRequest, match="lines = 0"):
        compute.get_console_output(instance_id=inst["id"], lines=0)


def test_reconcile_reports_a_dead_process_as_stopped_and_a_vanished_one_as_error(
    compute: ComputeManager,
) -> None:
    alive = compute.run_instance(image="sleeper", instance_id="alive")
    compute.run_instance(image="sleeper", instance_id="died")
    gone = compute.run_instance(image="sleeper", instance_id="gone")
    compute.driver.crash("died")
    compute.driver.destroy(compute._ref(gone))
    changed = compute.reconcile_instances()
    assert changed == {"checked": 3, "stopped": ["died"], "error": ["gone"], "running": []}
    assert compute.get_instance(instance_id="alive")["status"] == "running"
    assert compute.get_instance(instance_id="died")["power_state"] == "stopped"
    assert "no longer knows" in compute.get_instance(instance_id="gone")["error"]
    assert compute.reconcile_instances()["stopped"] == []
    assert alive["status"] == "running"


def test_reconcile_leaves_other_nodes_instances_alone(fake_redis: fakeredis.FakeRedis) -> None:
    a = make_manager(fake_redis, host="node-a")
    b = make_manager(fake_redis, host="node-b")
    a.run_instance(image="sleeper", instance_id="on-a")
    assert b.reconcile_instances()["checked"] == 0
    assert a.get_instance(instance_id="on-a")["status"] == "running"


def test_requests_about_another_nodes_instance_are_forwarded(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    a = make_manager(fake_redis, host="node-a")
    b = make_manager(fake_redis, host="node-b")
    inst = a.run_instance(image="sleeper")
    for call in (
        lambda: b.terminate_instance(instance_id=inst["id"]),
        lambda: b.reboot_instance(instance_id=inst["id"]),
        lambda: b.get_console_output(instance_id=inst["id"]),
    ):
        with pytest.raises(Forward) as forward:
            call()
        assert forward.value.host == "node-a"


def test_a_failing_spawn_leaves_the_instance_in_error(fake_redis: fakeredis.FakeRedis) -> None:
    compute = make_manager(fake_redis, fail=["spawn"])
    with pytest.raises(Exception, match="spawn"):
        compute.run_instance(image="sleeper", instance_id="bad")
    assert compute.get_instance(instance_id="bad")["status"] == "error"


def test_unknown_instances_are_not_found(compute: ComputeManager) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        compute.terminate_instance(instance_id="nope")


def test_capabilities_count_free_slots(fake_redis: fakeredis.FakeRedis) -> None:
    compute = make_manager(fake_redis, max_instances=2)
    compute.run_instance(image="sleeper")
    caps = compute.capabilities()
    assert caps["max_instances"] == 2 and caps["instances"] == 1 and caps["free_slots"] == 1


def test_reconciliation_is_a_periodic_task_that_runs_at_start() -> None:
    spec = ComputeManager.periodic_tasks()["reconcile_instances"]
    assert spec.run_immediately and spec.spacing == 10.0
