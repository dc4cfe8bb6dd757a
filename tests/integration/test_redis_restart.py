"""Redis goes away under a busy fleet, or is not there when a node starts.

The private ``redis-server`` keeps an append-only file, so a restart loses
nothing it accepted. Nodes must ride it out by themselves: same processes,
no restart, every accepted request done once, within 15 s of Redis's return.
The restart is ``redis_server.stop()`` then ``start()`` on the same port and
data (what ``restart()`` does), with a client call made in between. The
product's defaults (the default ``visibility_timeout``, no transport options)
with ``broker_connection_timeout`` 2 s (a documented setting): the requests
running when Redis stops finish, and are settled once it is back; none runs
twice.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from managers.records import RecordStore
from tests.conftest import make_app, make_config
from tests.integration import faults
from tests.integration.conftest import Node, node_environment
from workers.cli.embedded import RedisServer, free_port
from workers.client.rpc import Client, Handle
from workers.core.application import Taskyard
from workers.core.config import Config
from workers.core.registry import Registry
from workers.exceptions import TaskyardError, Timeout, Unavailable
from workers.testing import wait_for

CASTS = 100
#: Seconds each create takes on the nodes: long enough that all four pool processes
#: are always in the middle of one when Redis stops (the backlog is 5 s of work).
CREATE_DELAY_S = 0.2
#: The promise: every request done within this many seconds of Redis's return.
PROMISE_AFTER_RETURN_S = 15.0
#: How long the test waits at most (a failure then says by how much the promise missed).
DRAIN_DEADLINE_S = 90

CONNECTION = {"TASKYARD_BROKER_CONNECTION_TIMEOUT": "2"}
SLOW_FAKE = {
    "TASKYARD_SERVICES__VOLUME__DRIVER": "tests.integration.faults:SlowFakeVolumeDriver",
    "TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__DELAY_S": str(CREATE_DELAY_S),
    "TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__TOTAL_GB": "1000000",
}
TASK_OK = re.compile(r"taskyard\.requests: volume\.\w+ .* task=(\S+) duration=\S+ outcome=ok")


@dataclass
class RestartOutcome:
    """What a Redis restart under load left behind, for the tests to judge."""

    ids: list[str]
    handles: dict[str, Handle]
    #: volume id -> "ok", or the error the caller got.
    answers: dict[str, str]
    records: dict[str, dict[str, Any] | None]
    error_while_down: BaseException
    seconds_to_refuse: float
    in_flight: int
    done_ok: Counter[str]
    nodes: list[Node]
    pids: dict[str, int]
    started_at: dict[str, float]
    #: Wall-clock times Redis stopped and came back; seconds until every request was done.
    stopped_at: float
    returned_at: float
    done_after_return: float
    #: Task id -> the times some node logged it done with ``outcome=ok``.
    done_at: dict[str, list[float]]


@pytest.fixture(scope="module")
def cluster_env(redis_server: RedisServer, state_dir: Path) -> dict[str, str]:
    return node_environment(redis_server.url, state_dir, **CONNECTION, **SLOW_FAKE,
                            **faults.node_env())


def completed_ok(nodes: list[Node]) -> Counter[str]:
    """Task id -> how many times some node logged it done with ``outcome=ok``."""
    return Counter(task for node in nodes for task in TASK_OK.findall(node.log()))


_LOGGED_AT = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): ", re.MULTILINE)


def completed_at(nodes: list[Node]) -> dict[str, list[float]]:
    """Task id -> when (epoch seconds) each ``outcome=ok`` line of it was written."""
    found: dict[str, list[float]] = {}
    for node in nodes:
        for line in node.log().splitlines():
            done, stamp = TASK_OK.search(line), _LOGGED_AT.match(line)
            if done and stamp:
                at = time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S"))
                found.setdefault(done.group(1), []).append(at + int(stamp.group(2)) / 1000)
    return found


def answer_of(handle: Handle) -> str:
    try:
        handle.wait(timeout=DRAIN_DEADLINE_S)
    except TaskyardError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


@pytest.fixture(scope="module")
def restart_under_load(
    redis_server: RedisServer, start_node: Callable[..., Node], client_app: Taskyard,
    client_config: Config, registry: Registry,
) -> RestartOutcome:
    """200 creates cast to two busy nodes, then Redis stopped, called, and started again."""
    nodes = [start_node(host, services=["volume"], concurrency=2) for host in ("rr-a", "rr-b")]
    volume = Client("volume", app=client_app)
    broker = redis.Redis.from_url(client_config.broker_url)
    store = RecordStore(redis.Redis.from_url(client_config.records_url), "volume", "volume")
    pids = {node.host: node.pid for node in nodes}
    started_at = {node.host: registry.get("volume", node.host).info["started_at"]  # type: ignore[union-attr]
                  for node in nodes}

    ids = [f"restart-{i:03d}" for i in range(CASTS)]
    handles = {vid: volume.cast("create_volume", size_gb=1, volume_id=vid) for vid in ids}
    in_flight = broker.llen("volume")

    stopped_at = time.time()
    redis_server.stop()
    began = time.monotonic()
    try:
        volume.prepare(timeout=5).call("ping")
    except (Unavailable, Timeout) as exc:
        error_while_down: BaseException = exc
    else:
        raise AssertionError("a call succeeded while Redis was down")
    seconds_to_refuse = time.monotonic() - began
    redis_server.start()
    returned_at, back = time.time(), time.monotonic()

    answers = {vid: answer_of(handle) for vid, handle in handles.items()}
    done_after_return = time.monotonic() - back
    return RestartOutcome(
        ids=ids, handles=handles, answers=answers,
        records={vid: store.get(vid) for vid in ids},
        error_while_down=error_while_down, seconds_to_refuse=seconds_to_refuse,
        in_flight=in_flight, done_ok=completed_ok(nodes), nodes=nodes, pids=pids,
        started_at=started_at, stopped_at=stopped_at, returned_at=returned_at,
        done_after_return=done_after_return, done_at=completed_at(nodes),
    )


def test_a_call_while_redis_is_down_is_refused_at_once_as_unavailable_saying_why(
    restart_under_load: RestartOutcome,
) -> None:
    error = restart_under_load.error_while_down
    # Sending needs Redis (the broker, and the registry for the endpoints): the request
    # was not sent, and the message says so.
    assert isinstance(error, Unavailable), repr(error)
    assert re.search(r"cannot reach (the broker to send volume\.ping|Redis at records_url "
                     r"\S+ to look up the endpoints of volume)", str(error)), str(error)
    assert "the request was not sent" in str(error)
    assert restart_under_load.seconds_to_refuse < 15, restart_under_load.seconds_to_refuse


def test_nodes_reconnect_to_a_restarted_redis_by_themselves_and_serve_again(
    restart_under_load: RestartOutcome, registry: Registry, client_app: Taskyard,
) -> None:
    assert restart_under_load.in_flight > 0, "the nodes were idle when Redis stopped"
    volume = Client("volume", app=client_app)
    for node in restart_under_load.nodes:
        assert node.alive() and node.pid == restart_under_load.pids[node.host]
        wait_for(lambda node=node: registry.is_up("volume", node.host), 30,
                 f"{node.host} to report again")
        record = registry.get("volume", node.host)
        assert record is not None
        assert record.info["started_at"] == restart_under_load.started_at[node.host]
        assert volume.prepare(host=node.host).call("ping")["host"] == node.host
        assert "Connection to broker lost" in node.log()


def test_every_request_sent_before_a_redis_restart_gets_an_answer_and_one_record(
    restart_under_load: RestartOutcome, client_app: Taskyard,
) -> None:
    outcome = restart_under_load
    listed = Counter(v["id"] for v in Client("volume", app=client_app).call("list_volumes"))
    # Exactly one record per id (never two volumes for one request) ...
    assert {vid: listed[vid] for vid in outcome.ids} == dict.fromkeys(outcome.ids, 1)
    # ... available wherever the caller was told it worked.
    for vid in outcome.ids:
        if outcome.answers[vid] == "ok":
            assert outcome.records[vid]["status"] == "available"  # type: ignore[index]
    twice = [h.id for h in outcome.handles.values() if outcome.done_ok[h.id] > 1]
    failed = {vid: a for vid, a in outcome.answers.items() if a != "ok"}
    print(f"redis restart: {outcome.in_flight} of {CASTS} still queued at the stop; call "
          f"while down -> {type(outcome.error_while_down).__name__} after "
          f"{outcome.seconds_to_refuse:.2f} s; {len(twice)} requests ran twice; "
          f"{len(failed)} answered with an error: {sorted(failed.items())[:4]}")


def test_requests_running_when_redis_stops_are_done_within_15_s_of_its_return(
    restart_under_load: RestartOutcome,
) -> None:
    outcome = restart_under_load
    assert {vid: a for vid, a in outcome.answers.items() if a != "ok"} == {}
    assert {vid: (r or {}).get("status") for vid, r in outcome.records.items()} == dict.fromkeys(
        outcome.ids, "available")
    assert outcome.done_after_return <= PROMISE_AFTER_RETURN_S, outcome.done_after_return
    print(f"redis restart: every request done {outcome.done_after_return:.1f} s after Redis "
          "came back")


def test_no_request_runs_twice_across_the_restart(restart_under_load: RestartOutcome) -> None:
    # Requests running when Redis stopped finished, had their results stored once it was
    # back and their acknowledgements made then; none was put back to run again.
    outcome = restart_under_load
    twice = {vid: outcome.done_at.get(outcome.handles[vid].id) for vid in outcome.ids
             if outcome.done_ok[outcome.handles[vid].id] > 1}
    never = [vid for vid in outcome.ids if not outcome.done_ok[outcome.handles[vid].id]]
    assert twice == {} and never == [], (twice, never, outcome.stopped_at,
                                         outcome.returned_at)


@pytest.fixture
def late_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server on a free port, started by the test when it chooses."""
    server = RedisServer(tmp_path / "late-redis", port=free_port())
    yield server
    server.stop()


def test_a_node_started_before_redis_retries_and_comes_up_when_redis_does(
    start_node: Callable[..., Node], late_redis: RedisServer, state_dir: Path,
) -> None:
    env = node_environment(late_redis.url, state_dir, **CONNECTION, **SLOW_FAKE,
                           **faults.node_env())
    node = start_node("early-bird", wait=False, env=env, services=["volume"])

    # The node's first step, claiming its host name, waits for Redis: "cannot reach Redis
    # at redis://127.0.0.1:PORT/0 to claim host name early-bird (Error 111 connecting ...
    # Connection refused.); trying again in 2 s".
    retry = re.compile(rf"cannot reach Redis at redis://127\.0\.0\.1:{late_redis.port}/0 to "
                       r"claim host name early-bird \(.*\); trying again in [\d.]+ s")
    wait_for(lambda: retry.search(node.log()), 60, "the node to log that it retries")
    assert node.alive()
    pid = node.pid

    late_redis.start()
    registry = Registry(redis.Redis.from_url(late_redis.url), service_down_time=3)
    node.wait_up(registry)
    assert node.pid == pid and node.alive()

    config = make_config(env={k: v for k, v in env.items() if k.startswith("TASKYARD_")},
                         host="test-client-late")
    app = make_app(config)
    try:
        answer = Client("volume", app=app).prepare(host="early-bird").call("ping")
    finally:
        app.close()
    assert answer["host"] == "early-bird"
