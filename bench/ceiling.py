"""The ceiling: raw redis-py LPUSH and BRPOP between two processes, no framework at all.

A consumer process pops ``n`` entries with one ``BRPOP`` each while this
process pushes them with one ``LPUSH`` each, entries as large as a taskyard
no-op message. No framework sending one message per round trip can beat it.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection

import redis

from bench.harness import Stats
from bench.lab import Lab, elapsed_since
from bench.noop import SERVICE
from bench.report import Figure
from workers.core.keys import host_queue

#: List the ceiling's entries go through.
QUEUE = "bench:ceiling"
#: Seconds the consumer may take to start, or a run to finish.
TIMEOUT_S = 120.0


def message_size(lab: Lab) -> int:
    """Bytes of the Redis list entry a taskyard no-op cast produces."""
    queue = host_queue(SERVICE, "bench-size")
    lab.client(host="bench-size").cast("noop")
    entry = lab.redis.lindex(queue, 0)
    lab.redis.delete(queue)
    if entry is None:
        raise RuntimeError(f"the no-op cast did not land in {queue}")
    return len(entry)


def _consume(url: str, conn: Connection) -> None:
    """In the child: pop as many entries as each request asks for, then say so."""
    client = redis.Redis.from_url(url)
    client.ping()
    conn.send("ready")
    while True:
        count = conn.recv()
        if count is None:
            return
        for _ in range(count):
            if client.brpop([QUEUE], timeout=TIMEOUT_S) is None:
                conn.send("timeout")
                break
        else:
            conn.send("done")


def ceiling(lab: Lab, n: int, reps: int) -> Figure:
    """Entries per second through one list, pushed and popped one at a time."""
    size = message_size(lab)
    payload = b"x" * size
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    consumer = context.Process(target=_consume, args=(lab.config.broker_url, child),
                               daemon=True)
    consumer.start()
    client = redis.Redis.from_url(lab.config.broker_url)
    try:
        if not parent.poll(TIMEOUT_S) or parent.recv() != "ready":
            raise RuntimeError("the ceiling's consumer did not start")

        def run(count: int = n) -> float:
            parent.send(count)
            start = time.perf_counter()
            for _ in range(count):
                client.lpush(QUEUE, payload)
            if not parent.poll(TIMEOUT_S) or parent.recv() != "done":
                raise RuntimeError("the ceiling's consumer did not receive every entry")
            return count / elapsed_since(start)

        run(max(100, n // 10))
        samples = [run() for _ in range(reps)]
    finally:
        if consumer.is_alive():
            parent.send(None)
        consumer.join(10)
        if consumer.is_alive():
            consumer.kill()
            consumer.join()
        client.delete(QUEUE)
        client.close()
    return Figure("ceiling", "ceiling: redis-py LPUSH+BRPOP, 2 processes", "msg/s",
                  Stats.of(samples), None, None,
                  f"{n} entries of {size} bytes (a taskyard no-op message) per repetition, "
                  "one command each; no results, no acks, no events")
