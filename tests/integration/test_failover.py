"""A Redis failover under Sentinel, mid-stream: the fleet follows the promoted replica.

A private master with two replicas and three sentinels (``redis-server
--sentinel``, ``down-after-milliseconds`` 1000: a Sentinel setting, not
taskyard's); two nodes serving the ``effects`` service (each request makes
a file, outside Redis, so the effect survives whatever Redis loses); a
caller casting steadily; the master SIGKILLed mid-stream. The product's
defaults throughout, with heartbeats every 0.5 s and ``service_down_time``
3 s (documented settings), the default ``visibility_timeout`` (3600 s),
and ``publish_wait_replicas`` as each test says.

Each test prints its figures (run with ``-s`` to see them): the failover
time (kill to a promoted master that takes writes), the casts refused
during the switch, and how long after the kill every accepted cast had run.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import make_app, make_config
from tests.integration import faults
from tests.integration.conftest import Node, node_environment
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.connections import connect
from workers.core.keys import inflight_key
from workers.core.registry import Registry
from workers.exceptions import Unavailable
from workers.testing import SentinelRedis, wait_for

HOSTS = ("failover-a", "failover-b")
#: Seconds the caller casts before the master is killed, and after the promotion.
BEFORE_KILL_S = 2.0
AFTER_PROMOTION_S = 4.0
#: Master kills in the soak (``pytest -m soak``; ``TASKYARD_FAILOVER_RUNS`` changes it).
SOAK_RUNS = int(os.environ.get("TASKYARD_FAILOVER_RUNS", "20"))
#: Seconds every accepted cast has to run, counted from the kill; and seconds without a
#: new effect, with nothing queued or held, after which what is missing counts as lost.
DRAIN_DEADLINE_S = 60.0
SETTLED_S = 5.0


class Caster(threading.Thread):
    """Casts ``effects.record`` with a new key steadily; remembers what was accepted."""

    def __init__(self, client: Client, batch: int = 1, pause_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.batch = batch
        self.pause_s = pause_s
        self.accepted: list[tuple[float, str]] = []
        self.refused: list[tuple[float, str, str]] = []
        self.stopping = threading.Event()
        self.sent = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            keys = [f"k{self.sent + i:06d}" for i in range(self.batch)]
            self.sent += self.batch
            try:
                if self.batch == 1:
                    self.client.cast("record", key=keys[0])
                else:
                    self.client.cast_many("record", [{"key": key} for key in keys])
            except Unavailable as exc:
                self.refused += [(time.monotonic(), key, str(exc)) for key in keys]
            else:
                self.accepted += [(time.monotonic(), key) for key in keys]
            time.sleep(self.pause_s)

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


@pytest.fixture
def sentinel_redis(tmp_path: Path) -> Iterator[SentinelRedis]:
    """A master, two replicas (one is left to confirm writes after the failover), three
    sentinels; new for each test, since each kills its master."""
    with SentinelRedis(tmp_path / "ha", replicas=2) as servers:
        yield servers


@pytest.fixture
def fleet(sentinel_redis: SentinelRedis, tmp_path: Path) -> Iterator[Callable[[int], Fleet]]:
    """Start the fleet (with ``publish_wait_replicas``); it is stopped after the test."""
    fleets: list[Fleet] = []

    def start(wait_replicas: int) -> Fleet:
        fleet = Fleet(sentinel_redis, tmp_path, wait_replicas)
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()


class Fleet:
    """Two nodes of the ``effects`` service and a caller's app, on the Sentinel list."""

    def __init__(self, servers: SentinelRedis, base: Path, wait_replicas: int) -> None:
        self.servers = servers
        self.effects = base / "effects"
        self.env = node_environment(
            servers.url, base / "state", **faults.node_env(),
            TASKYARD_SENTINEL__MASTER_NAME=servers.master_name,
            TASKYARD_PUBLISH_WAIT_REPLICAS=str(wait_replicas),
            TASKYARD_SERVICES__EFFECTS__MANAGER=faults.EFFECTS_MANAGER_PATH,
            TASKYARD_SERVICES__EFFECTS__DRIVER=faults.EFFECTS_DRIVER_PATH,
            TASKYARD_SERVICES__EFFECTS__DRIVER_OPTIONS__ROOT=str(self.effects),
        )
        self.config = make_config(env={k: v for k, v in self.env.items()
                                       if k.startswith("TASKYARD_")}, host="failover-caller")
        self.app: Taskyard = make_app(self.config)
        self.broker = connect(self.config, self.config.broker_url)
        registry = Registry(connect(self.config, self.config.records_url),
                            service_down_time=self.config.service_down_time)
        self.nodes = [Node(host, self.env, base / f"{host}.log", services=["effects"]).start()
                      for host in HOSTS]
        for node in self.nodes:
            node.wait_up(registry, ["effects"])

    def done(self, key: str) -> bool:
        return (self.effects / "done" / key).exists()

    def ran_at(self, key: str) -> float:
        return (self.effects / "done" / key).stat().st_mtime

    def idle(self) -> bool:
        """Nothing queued for the service and nothing held by a node (nothing left to run)."""
        return self.broker.llen("effects") == 0 and self.broker.hlen("unacked") == 0

    def runs(self) -> collections.Counter[str]:
        log = self.effects / "runs.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return collections.Counter(line.split()[0] for line in lines if line)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            node.kill()
        self.app.close()


def fail_over_under(fleet: Fleet, caster: Caster) -> dict[str, Any]:
    """Cast, kill the master, cast on after the promotion; the figures of the switch."""
    caster.start()
    wait_for(lambda: len(caster.accepted) > 20, 30, "the caster to get going")
    time.sleep(BEFORE_KILL_S)  # a stream under way: the kill lands mid-stream
    old = fleet.servers.kill_master()
    killed, killed_wall = time.monotonic(), time.time()
    fleet.servers.wait_failover(old.port, 60)
    promoted = time.monotonic()
    wait_for(lambda: any(t > promoted for t, _ in caster.accepted), 30,
             "a cast accepted by the new master")
    time.sleep(AFTER_PROMOTION_S)
    caster.stop()
    accepted = [key for _, key in caster.accepted]
    missing = wait_until_run(fleet, accepted, killed)
    accepted_at = {key: t for t, key in caster.accepted}
    held = [key for key in accepted if accepted_at[key] < killed and key not in missing]
    return {
        # When the last request accepted before the kill had run (its effect's mtime).
        "accepted_before_kill_all_run_s": max(fleet.ran_at(key) for key in held) - killed_wall,
        "lost_after_promotion": [key for key in missing if accepted_at[key] > promoted],
        "failover_s": promoted - killed,
        "first_accepted_after_kill_s": min(t for t, _ in caster.accepted if t > killed) - killed,
        "accepted": len(accepted),
        "refused": len(caster.refused),
        "refused_reasons": sorted({reason.split(":")[0] for _, _, reason in caster.refused}),
        "all_run_after_kill_s": time.monotonic() - killed,
        "missing": missing,
        "ran_twice": sum(1 for n in fleet.runs().values() if n > 1),
    }


def wait_until_run(fleet: Fleet, keys: list[str], since: float) -> list[str]:
    """Wait until every key's effect exists; the keys still missing.

    Gives up at the deadline, or once nothing is left to run (no message queued or
    held) and no effect appeared for :data:`SETTLED_S`: what is missing then is lost.
    """
    pending = list(keys)
    deadline = since + DRAIN_DEADLINE_S
    progress = time.monotonic()
    while pending and time.monotonic() < deadline:
        still = [key for key in pending if not fleet.done(key)]
        if len(still) < len(pending):
            progress = time.monotonic()
        pending = still
        if pending and time.monotonic() - progress > SETTLED_S and fleet.idle():
            break
        if pending:
            time.sleep(0.1)
    return pending


def evidence(fleet: Fleet, keys: list[str]) -> dict[str, list[str]]:
    """Each run of ``keys`` and what the nodes logged of its task (for a failure's message)."""
    log = fleet.effects / "runs.log"
    runs = [line.split() for line in (log.read_text().splitlines() if log.exists() else [])]
    found: dict[str, list[str]] = {}
    for key in keys[:5]:
        tasks = {run[2] for run in runs if run[0] == key and len(run) > 2}
        found[key] = [" ".join(run) for run in runs if run[0] == key] + [
            f"{node.host}: {line}" for node in fleet.nodes for line in node.log().splitlines()
            if any(task in line for task in tasks)]
    return found


def broker_state(fleet: Fleet) -> dict[str, object]:
    """What the master holds of the fleet's work: queue lengths, bells, held messages."""
    broker = fleet.broker
    found: dict[str, object] = {}
    for key in sorted(k.decode() for k in broker.scan_iter(count=1000)):
        kind = broker.type(key).decode()
        if kind == "list":
            found[key] = broker.llen(key)
        elif kind == "hash":
            found[key] = broker.hlen(key)
        elif kind == "zset":
            found[key] = broker.zcard(key)
    return found


def assert_the_fleet_works_after(fleet: Fleet) -> None:
    """No node exited, each answers a call, and no host holds a message any more.

    The calls wait for a replica in sync with the new master first: until one has
    resynchronised, a durable send is refused (``publish_wait_replicas``)."""
    assert [node.host for node in fleet.nodes if not node.alive()] == []
    fleet.servers.wait_replicas_online(1)
    for node in fleet.nodes:
        assert Client("effects", app=fleet.app, host=node.host).call(
            "record", key=f"after-{node.host}") == node.host
    for host in HOSTS:
        wait_for(lambda host=host: fleet.broker.hlen(inflight_key(host)) == 0, 30,
                 f"{host}'s in-flight ledger to empty")
    wait_for(fleet.idle, 30, "no message left queued or held")


def test_with_publish_wait_replicas_every_accepted_cast_runs_after_a_failover(
        fleet: Callable[[int], Fleet]) -> None:
    durable = fleet(1)
    figures = fail_over_under(durable, Caster(Client("effects", app=durable.app)))
    print(f"\nfailover with publish_wait_replicas = 1: {figures}")
    # Every cast that returned runs, and once: a message is taken and recorded in one
    # replicated step (workers.extensions.take), so none is lost as the master dies.
    assert figures["missing"] == [], figures
    assert figures["ran_twice"] == 0, figures
    assert figures["accepted"] > 100, figures
    assert_the_fleet_works_after(durable)


@pytest.mark.soak
# Each failover takes a few seconds, and each killed master a few more to come back in sync.
@pytest.mark.timeout(60 + SOAK_RUNS * 45)
def test_many_master_kills_under_a_steady_caster_lose_nothing_and_run_nothing_twice(
        fleet: Callable[[int], Fleet]) -> None:
    """The same fleet through ``SOAK_RUNS`` failovers in a row (each killed master comes
    back as a replica): every accepted cast runs exactly once, no node restarts."""
    durable = fleet(1)
    pids = [node.pid for node in durable.nodes]
    caster = Caster(Client("effects", app=durable.app))
    caster.start()
    failovers = []
    try:
        for run in range(SOAK_RUNS):
            before = len(caster.accepted)
            wait_for(lambda before=before: len(caster.accepted) > before + 50, 60,
                     f"casts accepted before kill {run + 1}")
            old = durable.servers.kill_master()
            killed = time.monotonic()
            durable.servers.wait_failover(old.port, 60)
            failovers.append(time.monotonic() - killed)
            old.start()  # the sentinels make it a replica of the new master
            durable.servers.wait_replicas_online(2, 120)
    finally:
        caster.stop()
    accepted = [key for _, key in caster.accepted]
    missing = wait_until_run(durable, accepted, time.monotonic())
    runs = durable.runs()
    twice = sorted(key for key, n in runs.items() if n > 1 and not key.startswith("after-"))
    print(f"\nsoak: {SOAK_RUNS} master kills, {len(accepted)} casts accepted, "
          f"{len(caster.refused)} refused, {len(missing)} lost, {len(twice)} run twice; "
          f"failover {min(failovers):.1f}-{max(failovers):.1f} s")
    if missing or twice or not all(node.alive() for node in durable.nodes):
        # The whole story, beyond what an assertion's message shows.
        print(broker_state(durable))
        for node in durable.nodes:
            print(f"--- {node.host} (alive: {node.alive()}) ---\n{node.log()[-20000:]}")
    assert missing == [] and twice == [], (
        missing[:20], twice[:20], evidence(durable, missing[:3] + twice[:3]),
        {node.host: node.log()[-3000:] for node in durable.nodes})
    assert [node.pid for node in durable.nodes] == pids and all(n.alive() for n in durable.nodes)
    assert_the_fleet_works_after(durable)


def test_without_publish_wait_replicas_the_fleet_rides_through_and_says_what_was_lost(
        fleet: Callable[[int], Fleet]) -> None:
    """Bulk casts as fast as they go: what the master acknowledged and had not replicated
    when it died is lost (counted and printed: Redis replication is asynchronous), and
    nothing else — no message is left queued or held, nothing the new master took."""
    fast = fleet(0)
    figures = fail_over_under(fast, Caster(Client("effects", app=fast.app), batch=200,
                                           pause_s=0))
    shown = dict(figures, missing=len(figures["missing"]),
                 lost_after_promotion=len(figures["lost_after_promotion"]))
    print(f"\nfailover with publish_wait_replicas = 0: {shown}")
    assert figures["accepted"] > 1000, figures
    # Only what the dead master acknowledged can be lost; the new master loses nothing.
    assert figures["lost_after_promotion"] == [], figures
    assert_the_fleet_works_after(fast)


# -- durable publishing against a real replica ------------------------------------------


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and one replica in sync (plain URLs: WAIT does not need Sentinel)."""
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(tmp_path / "replica",
                          extra_args=("--replicaof", "127.0.0.1", str(master.port))).start()
    wait_for(lambda: redis.Redis(port=replica.port).info("replication")["master_link_status"]
             == "up", 30, "the replica to sync")
    yield master, replica
    replica.stop()
    master.stop()


def durable_client(master: RedisServer, tmp_path: Path, replicas: int) -> Client:
    env = node_environment(master.url, tmp_path / "state",
                           TASKYARD_PUBLISH_WAIT_REPLICAS=str(replicas),
                           TASKYARD_PUBLISH_WAIT_TIMEOUT="0.3")
    app = make_app(make_config(env={k: v for k, v in env.items() if k.startswith("TASKYARD_")},
                               host="durable-caller"))
    return Client("volume", app=app)


def test_a_cast_returns_once_the_replica_has_it(
        replicated: tuple[RedisServer, RedisServer], tmp_path: Path) -> None:
    master, replica = replicated
    client = durable_client(master, tmp_path, 1)
    try:
        handle = client.cast("ping")
        handles = client.cast_many("ping", [{}, {}])
        # Already on the replica when cast returned: no polling needed.
        queued = redis.Redis(port=replica.port).lrange("volume", 0, -1)
        ids = {json.loads(entry)["headers"]["id"] for entry in queued}
        assert {handle.id, *(h.id for h in handles)} <= ids
    finally:
        client.app.close()


def test_a_cast_the_replicas_did_not_confirm_is_unavailable_saying_so(
        replicated: tuple[RedisServer, RedisServer], tmp_path: Path) -> None:
    master, _ = replicated
    client = durable_client(master, tmp_path, 2)  # one replica exists
    try:
        with pytest.raises(Unavailable, match="only 1 of the 2 replicas"):
            client.cast("ping")
        with pytest.raises(Unavailable, match=r"3 volume\.ping requests.*only 1 of the 2"):
            client.cast_many("ping", [{}, {}, {}])
    finally:
        client.app.close()
