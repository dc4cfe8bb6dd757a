"""A request's life after it is sent: deadlines, delays, cancellation, retries, where it runs.

Real node processes on a private ``redis-server``, the product's defaults
with the documented settings of every integration test (heartbeats every
0.5 s, down after 3 s). The ``life`` service (tests/integration/faults.py)
leaves a line in a file outside Redis for every run, so a test counts runs
whatever happens to Redis.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from tests.integration import faults
from tests.integration.conftest import Node, life_env, run_cli
from workers.cli.embedded import RedisServer
from workers.client.handle import REMOVED, REVOKED, RUNNING, STOPPING
from workers.client.rpc import Client, Handle
from workers.core.application import Taskyard
from workers.core.delays import DelayedRequests
from workers.core.keys import (
    DELAYED_KEY,
    INFLIGHT_TASKS_KEY,
    LIFECYCLE_COUNTS_KEY,
    MOVER_LEASE_KEY,
)
from workers.core.registry import Registry
from workers.exceptions import (
    Cancelled,
    Expired,
    InvalidRequest,
    RemoteError,
    Timeout,
    Unavailable,
)
from workers.testing import wait_for

LIFE = faults.LIFE_SERVICE


@pytest.fixture(scope="module")
def life_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("life")


@pytest.fixture(scope="module")
def cluster_env(redis_server: RedisServer, state_dir: Path, life_root: Path) -> dict[str, str]:
    return life_env(redis_server.url, state_dir, life_root)


@pytest.fixture(scope="module")
def files(life_root: Path) -> faults.LifeDriver:
    """The life service's files, as its nodes write them."""
    return faults.LifeDriver(str(life_root / "files"))


@pytest.fixture(scope="module")
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def life(start_node: Callable[..., Node]) -> Callable[..., Node]:
    """Start a node of the life service."""
    def start(host: str, **kwargs: object) -> Node:
        return start_node(host, services=[LIFE], **kwargs)
    return start


def runs_of(files: faults.LifeDriver, name: str, tag: str) -> list[str]:
    return [line for line in files.lines(name) if line.split()[0] == tag]


def revoked_reason(handle_or_result: object) -> str:
    result = getattr(handle_or_result, "result", handle_or_result)
    assert isinstance(result, AsyncResult)
    return str(result.result)


# -- deadlines -------------------------------------------------------------------------


def test_a_call_that_timed_out_before_any_node_took_it_never_runs(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
    store: redis.Redis,
) -> None:
    client = Client(LIFE, app=client_app).prepare(host="late", timeout=1)
    started = time.monotonic()
    with pytest.raises(Timeout, match="did not start within 1 s and its deadline") as caught:
        client.call("count", key="too-late")
    assert time.monotonic() - started < 5
    assert caught.value.details["stage"] == "expired" and "will never run" in str(caught.value)
    task_id = caught.value.details["task_id"]
    before = int(store.hget(LIFECYCLE_COUNTS_KEY, f"expired:{LIFE}") or 0)
    life("late")  # the node that would have taken it comes up after the caller gave up
    handle = Client(LIFE, app=client_app).handle(task_id)
    wait_for(lambda: handle.state == "REVOKED", 30, "the late node to settle the request")
    with pytest.raises(Expired, match=r"expired at .* before it ran \(node late took it"):
        handle.wait(5)
    assert runs_of(files, "runs", "too-late") == []
    assert int(store.hget(LIFECYCLE_COUNTS_KEY, f"expired:{LIFE}") or 0) == before + 1


def test_a_timeout_while_the_request_runs_names_the_node_and_it_may_still_finish(
    life: Callable[..., Node], client_app: Taskyard,
) -> None:
    node = life("runner", pool="solo")
    client = Client(LIFE, app=client_app).prepare(host="runner", timeout=1)
    with pytest.raises(Timeout, match=r"started on node runner \(pid \d+\)") as caught:
        client.call("nap", tag="slow-call", seconds=3, steps=3)
    assert caught.value.details == {**caught.value.details, "stage": "running",
                                    "host": "runner"}
    assert "may still finish" in str(caught.value)
    finished = Client(LIFE, app=client_app).handle(caught.value.details["task_id"]).wait(30)
    assert finished == {"tag": "slow-call", "host": "runner"}
    assert node.alive()


def test_expires_holds_for_cast_many_and_fanout(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
    store: redis.Redis,
) -> None:
    life("busy-one", pool="solo")
    client = Client(LIFE, app=client_app)
    # The node's one process is busy for 2 s: what waits behind it expires first.
    blocker = client.prepare(host="busy-one").cast("nap", tag="blocker", seconds=2, steps=2)
    wait_for(lambda: blocker.node == "busy-one", 30, "the blocker to start")
    before = int(store.hget(LIFECYCLE_COUNTS_KEY, f"expired:{LIFE}") or 0)
    late = client.prepare(host="busy-one", expires=0.5)
    many = late.cast_many("count", [{"key": f"many-{i}"} for i in range(3)])
    assert "busy-one" in late.fanout("count", key="fanned")
    blocker.wait(30)
    for handle in many:
        with pytest.raises(Expired):
            handle.wait(30)
    wait_for(lambda: int(store.hget(LIFECYCLE_COUNTS_KEY, f"expired:{LIFE}") or 0)
             >= before + 4, 30, "the fanout's message to expire too")
    assert all(runs_of(files, "runs", f"many-{i}") == [] for i in range(3))
    # The other live nodes of the service ran theirs at once; busy-one's expired.
    assert "busy-one" not in [line.split()[1] for line in runs_of(files, "runs", "fanned")]


# -- delayed requests ------------------------------------------------------------------


def test_a_delayed_cast_waits_in_redis_and_runs_once_when_due(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
    store: redis.Redis, cluster_env: dict[str, str],
) -> None:
    life("patient")
    client = Client(LIFE, app=client_app).prepare(host="patient", countdown=2)
    sent = time.time()
    handle = client.cast("count", key="later")
    assert handle.due is not None and abs(handle.due - (sent + 2)) < 0.5
    assert store.zscore(DELAYED_KEY, handle.id) is not None
    assert not store.hexists(INFLIGHT_TASKS_KEY, handle.id)  # no node holds it while it waits
    far = client.prepare(countdown=600).cast("count", key="far-later")
    assert handle.wait(30) == {"key": "later", "host": "patient"}
    status = json.loads(run_cli(cluster_env, "status", "--json").stdout)
    assert status["delayed"]["count"] >= 1
    assert status["delayed"]["next_due"] == pytest.approx(far.due, abs=0.01)
    shown = run_cli(cluster_env, "status").stdout
    assert re.search(r"DELAYED  \d+ waiting, next due in 59\d\.\d s", shown), shown
    far.cancel()
    ran_at = time.time()
    assert ran_at - sent >= 2
    assert runs_of(files, "runs", "later") and len(runs_of(files, "runs", "later")) == 1
    assert store.zscore(DELAYED_KEY, handle.id) is None


def test_an_eta_in_the_future_is_honoured(
    life: Callable[..., Node], client_app: Taskyard,
) -> None:
    life("eta-node")
    eta = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    handle = Client(LIFE, app=client_app).prepare(host="eta-node", eta=eta).cast(
        "count", key="eta")
    assert handle.wait(30)["key"] == "eta"
    assert time.time() >= eta.timestamp()


def test_a_plain_celery_callers_countdown_waits_in_redis_not_in_the_node(
    life: Callable[..., Node], client_config: object, files: faults.LifeDriver,
    store: redis.Redis, redis_server: RedisServer,
) -> None:
    life("plain-target")
    plain = Celery("plain", broker=redis_server.url, backend=redis_server.url)
    plain.conf.update(task_serializer="json", accept_content=["json"])
    try:
        result = plain.send_task(f"{LIFE}.count", kwargs={"key": "plain-later"},
                                 queue=f"{LIFE}.plain-target", countdown=3)
        # The node takes it, sees its eta ahead and hands it to the delayed requests.
        wait_for(lambda: store.zscore(DELAYED_KEY, result.id) is not None, 30,
                 "the node to hand the plain caller's request to the delayed requests")
        assert not store.hexists(INFLIGHT_TASKS_KEY, result.id)
        assert runs_of(files, "runs", "plain-later") == []
        assert result.get(timeout=30) == {"key": "plain-later", "host": "plain-target"}
        assert len(runs_of(files, "runs", "plain-later")) == 1
    finally:
        plain.close()


def test_a_delay_longer_than_the_visibility_timeout_runs_once(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
) -> None:
    # visibility_timeout at its smallest (3 x report_interval): Celery would deliver an eta
    # request held that long again and again; here it waits in Redis, held by no node.
    life("vt-a", env={"TASKYARD_VISIBILITY_TIMEOUT": "2"})
    life("vt-b", env={"TASKYARD_VISIBILITY_TIMEOUT": "2"})
    handle = Client(LIFE, app=client_app).prepare(countdown=6).cast("count", key="long-wait")
    handle.wait(40)
    time.sleep(3)  # what a second delivery would need to show up (a sweep every second)
    assert len(runs_of(files, "runs", "long-wait")) == 1


def test_a_delayed_request_survives_the_crash_of_the_node_that_moves_them(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
    store: redis.Redis, registry: Registry,
) -> None:
    life("mover-a")
    life("mover-b")  # whichever node holds the lease dies: another takes over
    lease = wait_for(lambda: store.get(MOVER_LEASE_KEY), 30, "a node to hold the lease")
    holder = lease.decode().split(":")[0]
    handle = Client(LIFE, app=client_app).prepare(countdown=2).cast("count", key="orphan")
    record = registry.get(LIFE, holder)
    assert record is not None
    os.killpg(int(record.info["pid"]), signal.SIGKILL)  # it gives nothing up: its lease lapses
    assert handle.wait(40)["key"] == "orphan"
    assert len(runs_of(files, "runs", "orphan")) == 1
    successor = (store.get(MOVER_LEASE_KEY) or b"").decode().split(":")[0]
    assert successor and successor != holder


def test_a_delayed_request_survives_a_redis_restart_and_runs_once(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
    redis_server: RedisServer,
) -> None:
    life("restart-proof")
    handle = Client(LIFE, app=client_app).prepare(host="restart-proof", countdown=3).cast(
        "count", key="across-restart")
    redis_server.restart()  # the append-only file keeps what it accepted
    answer = wait_for(lambda: _answer(handle), 60, "the delayed request to run")
    assert answer == {"key": "across-restart", "host": "restart-proof"}
    assert len(runs_of(files, "runs", "across-restart")) == 1


def _answer(handle: Handle) -> object:
    try:
        return handle.wait(timeout=5)
    except (Unavailable, Timeout):  # the caller's connections come back too
        return None


def test_a_delayed_request_is_cancelled_while_it_waits(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
    store: redis.Redis,
) -> None:
    life("canceller")
    handle = Client(LIFE, app=client_app).prepare(host="canceller", countdown=2).cast(
        "count", key="never")
    outcome = handle.cancel()
    assert outcome.outcome == REMOVED and "removed, it will never run" in str(outcome)
    assert store.zscore(DELAYED_KEY, handle.id) is None
    with pytest.raises(Cancelled, match="cancelled while it waited"):
        handle.wait(5)
    time.sleep(3)  # past its due time: nothing moved it
    assert runs_of(files, "runs", "never") == []
    assert handle.state == "REVOKED"


def test_a_hundred_thousand_delayed_requests_cost_a_node_no_memory(
    life: Callable[..., Node], client_app: Taskyard, store: redis.Redis,
) -> None:
    node = life("roomy")
    process = psutil.Process(node.pid)

    def rss() -> int:
        return int(process.memory_info().rss + sum(
            child.memory_info().rss for child in process.children(recursive=True)))

    time.sleep(2)  # the node settles after its start
    before = rss()
    client = Client(LIFE, app=client_app).prepare(host="roomy", countdown=3600)
    handles = client.cast_many("count", [{"key": f"far-{i}"} for i in range(100_000)])
    assert len(handles) == 100_000
    assert DelayedRequests(store).waiting().count >= 100_000
    time.sleep(2)  # what the node would take, it would have taken by now
    grew = rss() - before
    assert grew < 5 * 1024 * 1024, f"the node's memory grew by {grew / 1e6:.1f} MB"
    for handle in handles[:10]:
        assert handle.cancel().outcome == REMOVED
    store.delete(DELAYED_KEY, "taskyard:delayed:entries")


# -- cancellation ----------------------------------------------------------------------


def test_a_request_cancelled_while_queued_never_runs_even_on_a_node_started_later(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
    store: redis.Redis,
) -> None:
    client = Client(LIFE, app=client_app).prepare(host="newcomer")
    handle = client.cast("count", key="cancelled-early")
    outcome = client.cancel(handle.id)
    assert outcome.outcome == REVOKED and "had not started" in str(outcome)
    with pytest.raises(Cancelled):
        handle.wait(5)
    before = int(store.hget(LIFECYCLE_COUNTS_KEY, f"cancelled:{LIFE}") or 0)
    life("newcomer")  # a node that did not exist when it was cancelled
    wait_for(lambda: store.llen(f"{LIFE}.newcomer") == 0, 30, "the node to take it")
    wait_for(lambda: int(store.hget(LIFECYCLE_COUNTS_KEY, f"cancelled:{LIFE}") or 0)
             == before + 1, 30, "the node to settle it as cancelled")
    assert runs_of(files, "runs", "cancelled-early") == []
    assert handle.state == "REVOKED"


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_terminate_stops_a_running_request_on_every_pool_and_the_node_keeps_serving(
    pool: str, life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
) -> None:
    host = f"stop-{pool}"
    node = life(host, pool=pool)
    client = Client(LIFE, app=client_app).prepare(host=host)

    # A driver's command: its process group is killed.
    command = client.cast("command", tag=f"cmd-{pool}", seconds=120)
    sleeper = wait_for(lambda: next((p for p in psutil.Process(node.pid).children(True)
                                     if p.name() == "sleep"), None), 30, "the sleep command")
    outcome = command.cancel(terminate=True)
    assert outcome.outcome == STOPPING and outcome.host == host
    with pytest.raises(Cancelled, match="terminated"):
        command.wait(30)
    wait_for(lambda: not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE,
             10, "the command to be killed")
    assert runs_of(files, "finished", f"cmd-{pool}") == []

    # Progress reports: the next one raises.
    nap = client.cast("nap", tag=f"nap-{pool}", seconds=60, steps=600)
    wait_for(lambda: nap.progress(), 30, "the nap to report progress")
    nap.cancel(terminate=True)
    with pytest.raises(Cancelled):
        nap.wait(30)
    assert nap.state == "REVOKED"

    # An endpoint looking at self.context.cancelled returns early: REVOKED all the same.
    spin = client.cast("spin", tag=f"spin-{pool}", seconds=60)
    wait_for(lambda: runs_of(files, "started", f"spin-{pool}"), 30, "the spin to start")
    spin.cancel(terminate=True)
    with pytest.raises(Cancelled):
        spin.wait(30)
    assert runs_of(files, "noticed", f"spin-{pool}")

    assert client.call("count", key=f"after-{pool}")["host"] == host
    assert node.alive()


def test_cancelling_without_terminate_lets_a_running_request_finish(
    life: Callable[..., Node], client_app: Taskyard,
) -> None:
    life("gentle")
    client = Client(LIFE, app=client_app).prepare(host="gentle")
    handle = client.cast("nap", tag="gentle", seconds=1.5, steps=3)
    wait_for(lambda: handle.node == "gentle", 30, "the request to start")
    outcome = handle.cancel()
    assert outcome.outcome == RUNNING and "will finish" in str(outcome)
    assert handle.wait(30) == {"tag": "gentle", "host": "gentle"}


def test_cancelling_a_finished_request_says_so_and_changes_nothing(
    life: Callable[..., Node], client_app: Taskyard, cluster_env: dict[str, str],
) -> None:
    life("done-node")
    client = Client(LIFE, app=client_app).prepare(host="done-node")
    handle = client.cast("count", key="finished")
    handle.wait(30)
    outcome = handle.cancel(terminate=True)
    assert not outcome.changed and "already finished (SUCCESS): nothing changed" in str(outcome)
    assert handle.state == "SUCCESS" and handle.wait(5)["key"] == "finished"
    shown = run_cli(cluster_env, "cancel", handle.id)
    assert shown.returncode == 1 and "already finished (SUCCESS)" in shown.stdout + shown.stderr


def test_taskyard_cancel_stops_a_running_request(
    life: Callable[..., Node], client_app: Taskyard, cluster_env: dict[str, str],
) -> None:
    life("cli-node", pool="threads")
    handle = Client(LIFE, app=client_app).prepare(host="cli-node").cast(
        "nap", tag="cli", seconds=60, steps=600)
    wait_for(lambda: handle.progress(), 30, "the request to run")
    done = run_cli(cluster_env, "cancel", handle.id, "--terminate")
    assert done.returncode == 0, done.stderr
    assert "runs on cli-node: asked to stop" in done.stdout
    with pytest.raises(Cancelled):
        handle.wait(30)


# -- retries ---------------------------------------------------------------------------


def test_a_transient_failure_is_retried_with_celerys_names_and_the_handle_shows_it(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
) -> None:
    life("retrier")
    client = Client(LIFE, app=client_app).prepare(host="retrier")
    handle = client.cast("flaky", key="twice", failures=2)
    assert handle.wait(30) == {"key": "twice", "attempt": 3}
    assert runs_of(files, "attempts", "twice") == ["twice 1", "twice 2", "twice 3"]
    assert handle.attempts == 3
    assert handle.last_error is not None and "backend busy (run 2)" in handle.last_error

    exhausted = client.cast("flaky", key="always", failures=99)
    with pytest.raises(RemoteError, match=r"backend busy \(run 4\)"):
        exhausted.wait(30)
    assert len(runs_of(files, "attempts", "always")) == 4  # max_retries=3 after the first
    assert exhausted.attempts == 4


def test_a_requests_own_error_is_never_retried(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
) -> None:
    life("strict")
    handle = Client(LIFE, app=client_app).prepare(host="strict").cast("picky", key="bad")
    with pytest.raises(InvalidRequest, match="bad is not acceptable"):
        handle.wait(30)
    time.sleep(0.5)  # a retry (backoff 0.1 s) would have run by now
    assert runs_of(files, "attempts", "bad") == ["bad 1"]


def test_a_retry_waiting_in_redis_survives_its_nodes_crash_and_runs_once(
    life: Callable[..., Node], client_app: Taskyard, files: faults.LifeDriver,
    store: redis.Redis,
) -> None:
    first = life("crashy")
    handle = Client(LIFE, app=client_app).prepare(countdown=0).cast(
        "flaky", key="crash-retry", failures=1)
    wait_for(lambda: runs_of(files, "attempts", "crash-retry"), 30, "the first run")
    first.kill()  # the retry waits in Redis, not in the dead node
    life("crashy-heir")
    assert handle.wait(40) == {"key": "crash-retry", "attempt": 2}
    assert runs_of(files, "attempts", "crash-retry") == ["crash-retry 1", "crash-retry 2"]


# -- which node runs it ----------------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_while_a_request_runs_the_handle_and_celerys_started_info_name_its_node(
    pool: str, life: Callable[..., Node], client_app: Taskyard,
) -> None:
    host = f"where-{pool}"
    node = life(host, pool=pool)
    # Its first progress report (which replaces STARTED) comes after 3 s.
    handle = Client(LIFE, app=client_app).prepare(host=host).cast(
        "nap", tag=f"where-{pool}", seconds=6, steps=2)
    wait_for(lambda: handle.node == host, 30, "the request to be held")
    pids = {node.pid} | {child.pid for child in psutil.Process(node.pid).children(True)}

    def started() -> dict[str, object] | None:
        result = AsyncResult(handle.id, app=client_app)  # as code written for Celery reads it
        info = result.info
        if result.state != "STARTED" or not isinstance(info, dict):
            return None
        # A prefork node's main process takes the request; its pool process then says so.
        return info if pool != "prefork" or info.get("pid") != node.pid else None

    info = wait_for(started, 3, "STARTED with Celery's info")
    assert info["hostname"] == f"taskyard@{host}"
    assert info["pid"] in pids
    holder = handle.holder()
    assert holder is not None and holder.host == host and holder.pid == info["pid"]
    handle.wait(30)
    # Its result is stored, then its message acknowledged: then no node holds it.
    wait_for(lambda: handle.node is None, 10, "the request to be let go")
