"""Done once across Redis restarts: no request that finished runs again, none is lost.

300 casts of an endpoint that is *not* idempotent (each run adds a line to
a file outside Redis), then Redis stopped and started again while two nodes
work through them, run after run. Every request must run exactly once.

Before: a node re-ran requests whose results it had stored (the
acknowledgement was lost with the connection), stopped requests half done
and ran them again, and lost a message it was taking as Redis went away.
Now: requests running when Redis goes away finish and are settled once it
is back; a message delivered again whose request finished is acknowledged
without running; taking a message and recording it are one step.

The product's defaults, with the documented settings of every integration
test and ``broker_connection_timeout`` 2 s. ``TASKYARD_DONE_ONCE_RUNS``
changes the number of restarts: 20 by default with the prefork pool, and a
quarter of that with threads and with solo.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration import faults
from tests.integration.conftest import Node, life_env
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.exceptions import Unavailable

RUNS = int(os.environ.get("TASKYARD_DONE_ONCE_RUNS", "20"))
CASTS = 300
#: Seconds after the last cast before Redis stops: the nodes are in the middle of them.
STOP_AFTER_S = 0.1
#: Seconds Redis stays away.
AWAY_S = 0.5


@pytest.fixture(scope="module")
def life_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("done-once")


@pytest.fixture(scope="module")
def cluster_env(redis_server: RedisServer, state_dir: Path, life_root: Path) -> dict[str, str]:
    return life_env(redis_server.url, state_dir, life_root,
                    TASKYARD_BROKER_CONNECTION_TIMEOUT="2")


@pytest.mark.parametrize(("pool", "runs"), [("prefork", RUNS), ("threads", max(1, RUNS // 4)),
                                            ("solo", max(1, RUNS // 4))])
def test_every_request_runs_exactly_once_across_redis_restarts(
    pool: str, runs: int, redis_server: RedisServer, start_node: Callable[..., Node],
    client_app: Taskyard, life_root: Path,
) -> None:
    for host in (f"once-{pool}-a", f"once-{pool}-b"):
        start_node(host, services=[faults.LIFE_SERVICE], pool=pool)
    files = faults.LifeDriver(str(life_root / "files"))
    client = Client(faults.LIFE_SERVICE, app=client_app)
    seen: list[str] = []
    for run in range(runs):
        keys = [f"{pool}-{run}-{i}" for i in range(CASTS)]
        handles = [client.cast("count", key=key) for key in keys]
        time.sleep(STOP_AFTER_S)
        redis_server.stop()
        time.sleep(AWAY_S)
        redis_server.start()
        for handle in handles:
            answered = False
            while not answered:
                try:
                    handle.wait(timeout=60)
                    answered = True
                except Unavailable:  # the result backend still reconnecting
                    time.sleep(0.2)
        counts = Counter(line.split()[0] for line in files.lines("runs")
                         if line.startswith(f"{pool}-{run}-"))
        again = {key: n for key, n in counts.items() if n > 1}
        missing = [key for key in keys if key not in counts]
        seen.append(f"run {run}: {sum(counts.values())} runs of {CASTS}")
        assert not again and not missing, (
            f"{pool}, run {run} of {runs}: ran twice {again}, never ran {missing}; "
            f"earlier: {seen}")
    print(f"\n{pool}: {runs} restarts, {runs * CASTS} requests, each run exactly once")
