"""10,000 requests across two prefork nodes: all done, none twice, memory flat.

Two nodes (prefork, two processes each) run the volume service with the
fake driver and room for a million GiB. The work comes in phases whose
outcome is known in advance, all sent to the shared queue (a request about
another node's volume is forwarded to its owner):

1. warm-up, 1,000: 400 ``create_volume`` (1 GiB, explicit ids), then 200
   ``extend_volume`` to 2 GiB on half of them and 200 ``delete_volume`` on
   the other half, each sent to the node that does *not* own the volume
   (so all 400 are forwarded), and 200 ``ping``; then each node's memory
   is measured;
2. create, 3,600: more volumes;
3. mixed, 5,400: 1,800 each of extend (first half), delete (second half)
   and ping, interleaved, on the shared queue (about half are forwarded).

In all 4,000 creates, 2,000 extends, 2,000 deletes and 2,000 pings: 2,000
live volumes of 2 GiB and 2,000 deleted. The warm-up holds every kind of
request, forwarding included, so that the baseline has seen each code path:
a pool process that forwards requests grows by ~90 MiB over its first few
hundred forwards (garbage Celery's ``Task.replace`` leaves in reference
cycles, freed only by full collections) and then stays flat.

Throughput per phase and each node's memory are printed in a labelled
block and recorded as test properties.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import ResultSet

from managers.records import RecordStore
from tests.integration.conftest import Node, node_environment
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client, Handle
from workers.core.application import Taskyard
from workers.core.config import Config

#: Volumes made in the warm-up and in the create phase.
WARM_CREATES, CREATES = 400, 3_600
#: Requests of each kind (extend, delete, ping) in the warm-up and in the mixed phase.
WARM_EACH, EACH = 200, 1_800
TOTAL = WARM_CREATES + 3 * WARM_EACH + CREATES + 3 * EACH
#: Seconds a phase may take before the test gives up waiting.
PHASE_TIMEOUT_S = 150
#: Largest growth of a node's memory (all its processes) from the end of the
#: warm-up to the end. Generous on purpose: caches, allocator arenas and the
#: garbage of forwarding keep growing for a while after the first thousand
#: messages, but a leak that keeps ~10 kilobytes per message (a request, a
#: result, a traceback) over the 9,000 that follow the baseline grows a node of
#: ~300 MiB by more than half.
MAX_RSS_GROWTH = 0.5
TASK_OK = re.compile(r"taskyard\.requests: (volume\.\w+) .* task=(\S+) duration=\S+ outcome=ok")


@pytest.fixture(scope="module")
def cluster_env(redis_server: RedisServer, state_dir: Path) -> dict[str, str]:
    return node_environment(
        redis_server.url, state_dir, TASKYARD_SERVICES__VOLUME__DRIVER="fake",
        TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__TOTAL_GB="1000000",
    )


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MiB (VmRSS of each)."""
    total_kb = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total_kb += int(match.group(1)) if match else 0
    return total_kb / 1024


#: Sends one step of a phase, given the results of the step before (empty at first).
Sender = Callable[[list[Any]], list[Handle]]


def run_phase(name: str, steps: list[Sender], figures: dict[str, float]) -> list[Any]:
    """Send each step, wait until all its requests succeeded; record figures; last results."""
    began = time.perf_counter()
    count = 0
    sending = 0.0
    results: list[Any] = []
    for step in steps:
        step_began = time.perf_counter()
        handles = step(results)
        sending += time.perf_counter() - step_began
        results = ResultSet([h.result for h in handles]).join_native(
            timeout=PHASE_TIMEOUT_S, propagate=True)
        count += len(handles)
    took = time.perf_counter() - began
    figures[f"{name}_messages"] = count
    figures[f"{name}_send_s"] = round(sending, 2)
    figures[f"{name}_total_s"] = round(took, 2)
    figures[f"{name}_msgs_per_s"] = round(count / took, 1)
    return results


@pytest.mark.timeout(300)
def test_ten_thousand_mixed_requests_are_each_done_once_with_the_records_right_and_memory_flat(
    start_node: Callable[..., Node], client_app: Taskyard, client_config: Config,
    record_property: Callable[[str, object], None], capsys: pytest.CaptureFixture[str],
) -> None:
    began = time.perf_counter()
    nodes = [start_node(host, services=["volume"], pool="prefork", concurrency=2)
             for host in ("load-a", "load-b")]
    volume = Client("volume", app=client_app)
    ids = [f"load-{i:05d}" for i in range(WARM_CREATES + CREATES)]
    warm, rest = ids[:WARM_CREATES], ids[WARM_CREATES:]
    extended = warm[:WARM_EACH] + rest[:EACH]
    deleted = warm[WARM_EACH:] + rest[EACH:]
    figures: dict[str, float] = {}

    def creates(chunk: list[str]) -> Sender:
        return lambda _: [volume.cast("create_volume", size_gb=1, volume_id=v) for v in chunk]

    def mixed(grown: list[str], dropped: list[str], via: dict[str, str] | None = None
              ) -> Sender:
        """Extend ``grown``, delete ``dropped``, ping; through ``via[volume id]``'s queue."""
        def send(_: list[Any]) -> list[Handle]:
            def to(vid: str) -> Client:
                return volume.prepare(host=via[vid]) if via else volume

            handles = []
            for grow, drop in zip(grown, dropped, strict=True):
                handles.append(to(grow).cast("extend_volume", volume_id=grow, new_size_gb=2))
                handles.append(to(drop).cast("delete_volume", volume_id=drop))
                handles.append(volume.cast("ping"))
            return handles
        return send

    def forwarded(made: list[Any]) -> list[Handle]:
        """The warm-up's mix, each volume request sent to the node that does not own it."""
        other = {"load-a": "load-b", "load-b": "load-a"}
        via = {v["id"]: other[v["host"]] for v in made}
        return mixed(warm[:WARM_EACH], warm[WARM_EACH:], via)(made)

    run_phase("warm_up", [creates(warm), forwarded], figures)
    rss_before = {node.host: rss_mb(node.pid) for node in nodes}
    run_phase("create", [creates(rest)], figures)
    rss_middle = {node.host: rss_mb(node.pid) for node in nodes}
    run_phase("mixed", [mixed(rest[:EACH], rest[EACH:])], figures)
    rss_after = {node.host: rss_mb(node.pid) for node in nodes}

    # Each request done exactly once: one outcome=ok line per task id across the nodes.
    done = Counter(task for node in nodes for _, task in TASK_OK.findall(node.log()))
    by_endpoint = Counter(name for node in nodes for name, _ in TASK_OK.findall(node.log()))
    by_node = {node.host: len(TASK_OK.findall(node.log())) for node in nodes}
    assert len(done) == TOTAL, (len(done), TOTAL)
    assert set(done.values()) == {1}, Counter(done.values())
    assert by_endpoint == {"volume.create_volume": 4_000, "volume.extend_volume": 2_000,
                           "volume.delete_volume": 2_000, "volume.ping": 2_000}

    # The records say what was asked: 2,000 live volumes of 2 GiB, 2,000 deleted.
    store = RecordStore(redis.Redis.from_url(client_config.records_url), "volume", "volume")
    live = [v for v in volume.call("list_volumes") if v["id"].startswith("load-")]
    assert sorted(v["id"] for v in live) == sorted(extended)
    assert {(v["status"], v["size_gb"]) for v in live} == {("available", 2)}
    assert sum(v["size_gb"] for v in live) == 4_000
    assert {(store.get(vid) or {}).get("status") for vid in deleted} == {"deleted"}

    for node in nodes:
        assert node.alive()
        growth = rss_after[node.host] / rss_before[node.host] - 1
        assert growth < MAX_RSS_GROWTH, (node.host, rss_before, rss_after)

    figures["test_s"] = round(time.perf_counter() - began, 1)
    for host in rss_before:
        figures[f"{host}_rss_before_mb"] = round(rss_before[host], 1)
        figures[f"{host}_rss_middle_mb"] = round(rss_middle[host], 1)
        figures[f"{host}_rss_after_mb"] = round(rss_after[host], 1)
        figures[f"{host}_requests"] = by_node[host]
    for key, value in figures.items():
        record_property(key, value)
    with capsys.disabled():
        print("\n---- load figures (test_load.py) ----")
        for phase in ("warm_up", "create", "mixed"):
            print(f"  {phase:8s} {int(figures[f'{phase}_messages']):6d} msgs  "
                  f"sent in {figures[f'{phase}_send_s']:6.2f} s  "
                  f"done in {figures[f'{phase}_total_s']:6.2f} s  "
                  f"{figures[f'{phase}_msgs_per_s']:7.1f} msgs/s")
        for host in rss_before:
            print(f"  {host}: {by_node[host]} requests; RSS (main + pool) after warm-up "
                  f"{rss_before[host]:.1f} MiB, after create {rss_middle[host]:.1f} MiB, "
                  f"at the end {rss_after[host]:.1f} MiB "
                  f"({(rss_after[host] / rss_before[host] - 1) * 100:+.1f}%)")
        print(f"  whole test {figures['test_s']:.1f} s")
        print("-------------------------------------")
