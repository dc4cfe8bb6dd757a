"""Each figure of the suite: taskyard and plain Celery measured the same way, interleaved.

Each function warms both sides up untimed (the bulk figure relies on the
enqueue figure's), then runs ``reps`` repetitions alternating which side
goes first, and returns
:class:`~bench.report.Figure` objects. Work counts are fixed (so many
messages, so many calls); time is what is measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from bench.harness import Stats, interleaved, percentile, wait_for
from bench.lab import Lab, Pair, elapsed_since
from bench.noop import SERVICE
from bench.plain import VOLUME_SERVICE
from bench.report import Figure, Target
from workers.core.keys import host_queue

#: Host whose queues nobody consumes: enqueue rates are measured without a consumer.
SINK = "bench-sink"
#: Seconds to wait for a result or for a queue to drain before the run fails.
RESULT_TIMEOUT_S = 300.0

#: The targets of the issue: ratios of medians against plain Celery in the same run.
THROUGHPUT_TARGET = Target(">=", 0.95)
LATENCY_TARGET = Target("<=", 1.10)
ENQUEUE_TARGET = Target(">=", 0.95)
CAST_MANY_TARGET = Target(">=", 5.0)


def _compare(reps: int, taskyard: Callable[[], float], plain: Callable[[], float],
             warm: Callable[[], object] | None = None) -> tuple[Stats, Stats]:
    if warm is not None:
        warm()
    ty, pl = interleaved(reps, taskyard, plain)
    return Stats.of(ty), Stats.of(pl)


def enqueue_rate(lab: Lab, n: int, reps: int) -> list[Figure]:
    """Casts per second from this process into a queue nobody consumes (then emptied).

    Also this process's CPU time per cast.
    """
    client = lab.client(host=SINK)
    noop = lab.plain_task("noop")
    pl_queue = lab.plain_queue(SINK)
    cpu: dict[str, list[float]] = {"taskyard": [], "apply_async": [], "send_task": []}

    def enqueue(side: str, send: Callable[[], object], queue: str, count: int) -> float:
        cpu_before = time.process_time()
        start = time.perf_counter()
        handles = [send() for _ in range(count)]
        rate = count / elapsed_since(start)
        cpu[side].append((time.process_time() - cpu_before) / count * 1e6)
        del handles
        lab.redis.delete(queue)
        return rate

    def taskyard(count: int = n) -> float:
        return enqueue("taskyard", lambda: client.cast("noop"), host_queue(SERVICE, SINK), count)

    def apply_async(count: int = n) -> float:
        return enqueue("apply_async", lambda: noop.apply_async(queue=pl_queue), pl_queue, count)

    def send_task(count: int = n) -> float:
        return enqueue("send_task", lambda: lab.plain.send_task(noop.name, queue=pl_queue),
                       pl_queue, count)

    for warm in (taskyard, apply_async, send_task):
        warm(max(10, n // 10))
    for samples in cpu.values():
        samples.clear()
    ty, pl_apply, pl_send = interleaved(reps, taskyard, apply_async, send_task)
    return [
        Figure("enqueue_rate", "enqueue rate: Client.cast vs apply_async", "msg/s",
               Stats.of(ty), Stats.of(pl_apply), ENQUEUE_TARGET,
               f"{n} casts from one process into an unconsumed queue, per repetition; "
               "handles kept (as the caller would)"),
        Figure("enqueue_rate_send_task", "enqueue rate: Client.cast vs send_task", "msg/s",
               Stats.of(ty), Stats.of(pl_send)),
        Figure("client_cpu_cast", "caller CPU per cast vs apply_async", "us/msg",
               Stats.of(cpu["taskyard"]), Stats.of(cpu["apply_async"]), None,
               "CPU time of the sending process per message during the enqueue runs"),
    ]


def bulk_enqueue(lab: Lab, host: str, n: int, reps: int) -> tuple[Figure, list[str], list[str]]:
    """``Client.cast_many`` vs a loop of ``apply_async``, both of ``mark``, to ``host``'s queues.

    Nothing consumes those queues yet; the batches are counted later with
    :func:`bulk_delivery`. Returns the figure and both sides' batch names.
    """
    client = lab.client(host=host)
    mark = lab.plain_task("mark")
    queue = lab.plain_queue(host)
    ty_batches: list[str] = []
    pl_batches: list[str] = []

    def taskyard() -> float:
        batch = f"taskyard-{len(ty_batches)}"
        ty_batches.append(batch)
        calls = [{"batch": batch, "index": i} for i in range(n)]
        start = time.perf_counter()
        handles = client.cast_many("mark", calls)
        rate = n / elapsed_since(start)
        del handles
        return rate

    def plain() -> float:
        batch = f"plain-{len(pl_batches)}"
        pl_batches.append(batch)
        calls = [{"batch": batch, "index": i} for i in range(n)]
        start = time.perf_counter()
        results = [mark.apply_async(kwargs=kwargs, queue=queue) for kwargs in calls]
        rate = n / elapsed_since(start)
        del results
        return rate

    ty, pl = _compare(reps, taskyard, plain)
    figure = Figure("cast_many_rate", "bulk enqueue: cast_many vs apply_async loop", "msg/s",
                    ty, pl, CAST_MANY_TARGET,
                    f"{n} mark messages per repetition, default batch_size")
    return figure, ty_batches, pl_batches


def bulk_delivery(lab: Lab, pair: Pair, n: int, ty_batches: Sequence[str],
                  pl_batches: Sequence[str]) -> Figure:
    """Once ``pair`` drained the bulk batches: how many messages of each ran exactly once."""

    def drained() -> bool:
        pair.node.check_alive()
        pair.plain.check_alive()
        return all(len(lab.tally(b)) >= n for b in (*ty_batches, *pl_batches))

    wait_for(drained, RESULT_TIMEOUT_S, f"{pair.host} to drain the bulk batches", 0.05)
    pair.sent["taskyard"] += n * len(ty_batches)
    pair.sent["plain"] += n * len(pl_batches)

    def once(batch: str) -> float:
        counts = lab.tally(batch)
        return sum(1 for c in counts if c == 1) if len(counts) == n else -1

    return Figure(
        "bulk_processed_once", "bulk: messages run exactly once", "msgs",
        Stats.of([once(b) for b in ty_batches]), Stats.of([once(b) for b in pl_batches]),
        Target("==", n),
        f"each bulk batch drained by the {pair.pool} pair; counted per message index in Redis",
    )


def throughput(lab: Lab, pair: Pair, n: int, reps: int) -> list[Figure]:
    """``n`` no-op casts drained by one worker: first cast to last result.

    Also the CPU time the worker's processes used per message, which other
    load on the machine hardly changes.
    """
    client = lab.client(host=pair.host)
    noop = lab.plain_task("noop")
    queue = lab.plain_queue(pair.host)
    cpu: dict[str, list[float]] = {"taskyard": [], "plain": []}

    def drain(side: str, send: Callable[[], Callable[[], object]], count: int) -> float:
        worker = pair.node if side == "taskyard" else pair.plain
        cpu_before = worker.cpu_seconds()
        start = time.perf_counter()
        waits = [send() for _ in range(count)]
        for wait in waits:
            wait()
        rate = count / elapsed_since(start)
        cpu[side].append((worker.cpu_seconds() - cpu_before) / count * 1e6)
        pair.sent[side] += count
        return rate

    def taskyard(count: int = n) -> float:
        return drain("taskyard", lambda: client.cast("noop").wait, count)

    def plain(count: int = n) -> float:
        return drain("plain", lambda: noop.apply_async(queue=queue).get, count)

    def warm() -> None:
        taskyard(max(10, n // 5))
        plain(max(10, n // 5))
        for samples in cpu.values():
            samples.clear()

    ty, pl = _compare(reps, taskyard, plain, warm)
    label = pair.pool + (f" x{pair.concurrency}" if pair.pool != "solo" else "")
    return [
        Figure(f"throughput_{pair.pool}", f"no-op throughput, {label}", "msg/s",
               ty, pl, THROUGHPUT_TARGET,
               f"{n} casts then waiting for every result, per repetition" if pair.pool == "solo"
               else ""),
        Figure(f"worker_cpu_{pair.pool}", f"worker CPU per no-op message, {label}", "us/msg",
               Stats.of(cpu["taskyard"]), Stats.of(cpu["plain"]), None,
               "user+system CPU of the worker's processes during the throughput runs, "
               "per message (hardly moved by other load on the machine)"
               if pair.pool == "solo" else ""),
    ]


def latency(lab: Lab, pair: Pair, n: int, reps: int) -> list[Figure]:
    """Sequential round trips: ``Client.call`` vs ``delay().get()``; p50, p90, p99 per rep."""
    client = lab.client()
    noop = lab.plain_task("noop")

    def measure(call: Callable[[], object], side: str, count: int = n) -> tuple[float, ...]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000)
        pair.sent[side] += count
        return tuple(percentile(times, q) for q in (0.50, 0.90, 0.99))

    def taskyard(count: int = n) -> tuple[float, ...]:
        return measure(lambda: client.call("noop"), "taskyard", count)

    def plain(count: int = n) -> tuple[float, ...]:
        return measure(lambda: noop.delay().get(timeout=RESULT_TIMEOUT_S), "plain", count)

    taskyard(max(5, n // 10))
    plain(max(5, n // 10))
    ty, pl = interleaved(reps, taskyard, plain)
    figures = []
    for i, name in enumerate(("p50", "p90", "p99")):
        figures.append(Figure(
            f"call_latency_{name}", f"call latency {name}", "ms",
            Stats.of([r[i] for r in ty]), Stats.of([r[i] for r in pl]),
            LATENCY_TARGET if name == "p50" else None,
            f"{n} sequential calls per repetition through the shared queue, "
            f"{pair.pool} pool x{pair.concurrency}" if name == "p50" else "",
        ))
    return figures


def volume_pairs(lab: Lab, pair: Pair, n: int, reps: int) -> Figure:
    """``create_volume`` + ``delete_volume`` pairs per second on the fake driver.

    Plain Celery runs two tasks doing the same Redis round trips (2 to create,
    3 to delete) without taskyard's state checks, scripts or driver.
    """
    volume = lab.client("volume", host=pair.host)
    create = lab.plain_task("create_record", VOLUME_SERVICE)
    delete = lab.plain_task("delete_record", VOLUME_SERVICE)
    queue = lab.plain_queue(pair.host, VOLUME_SERVICE)

    def taskyard(count: int = n) -> float:
        start = time.perf_counter()
        creates = [volume.cast("create_volume", size_gb=1) for _ in range(count)]
        ids = [h.wait(RESULT_TIMEOUT_S)["id"] for h in creates]
        deletes = [volume.cast("delete_volume", volume_id=i) for i in ids]
        for handle in deletes:
            if handle.wait(RESULT_TIMEOUT_S)["status"] != "deleted":
                raise RuntimeError(f"delete_volume did not delete: {handle}")
        pair.sent["taskyard"] += 2 * count
        return count / elapsed_since(start)

    def plain(count: int = n) -> float:
        start = time.perf_counter()
        creates = [create.apply_async(kwargs={"size_gb": 1}, queue=queue) for _ in range(count)]
        ids = [r.get(timeout=RESULT_TIMEOUT_S)["id"] for r in creates]
        deletes = [delete.apply_async(args=(i,), queue=queue) for i in ids]
        for result in deletes:
            result.get(timeout=RESULT_TIMEOUT_S)
        pair.sent["plain"] += 2 * count
        return count / elapsed_since(start)

    def warm() -> None:
        taskyard(max(5, n // 10))
        plain(max(5, n // 10))

    ty, pl = _compare(reps, taskyard, plain, warm)
    return Figure("volume_pairs", "create+delete volume pairs (fake driver)", "pairs/s", ty, pl,
                  None, f"{n} creates then {n} deletes per repetition, {pair.pool} pool "
                  f"x{pair.concurrency}; plain: two tasks doing the same 5 Redis round trips "
                  "per pair, without state checks, Lua scripts or a driver")


def rss_samples(pair: Pair, reps: int) -> tuple[Stats, Stats]:
    """Resident memory (MB) of the node's and the plain worker's process trees."""
    ty, pl = interleaved(reps, lambda: pair.node.rss_bytes() / 1e6,
                         lambda: pair.plain.rss_bytes() / 1e6)
    return Stats.of(ty), Stats.of(pl)


def memory_after(lab: Lab, pair: Pair, total: int, reps: int) -> tuple[Stats, Stats, int]:
    """Top both workers up to ``total`` messages (``mark``), wait for the drain, sample RSS.

    Returns the RSS stats and the number of messages each had been sent.
    """
    batches = []
    ty_more = max(0, total - pair.sent["taskyard"])
    pl_more = max(0, total - pair.sent["plain"])
    if ty_more:
        calls = [{"batch": "memory-taskyard", "index": i} for i in range(ty_more)]
        lab.client(host=pair.host).cast_many("mark", calls)
        batches.append(("memory-taskyard", ty_more))
    if pl_more:
        mark = lab.plain_task("mark")
        queue = lab.plain_queue(pair.host)
        results = [mark.apply_async(kwargs={"batch": "memory-plain", "index": i}, queue=queue)
                   for i in range(pl_more)]
        del results
        batches.append(("memory-plain", pl_more))

    def drained() -> bool:
        pair.node.check_alive()
        pair.plain.check_alive()
        return all(len(lab.tally(batch)) >= count for batch, count in batches)

    wait_for(drained, RESULT_TIMEOUT_S, f"{pair.host} to drain the memory top-up", 0.05)
    pair.sent["taskyard"] += ty_more
    pair.sent["plain"] += pl_more
    ty, pl = rss_samples(pair, reps)
    return ty, pl, min(pair.sent.values())


def forget_other_hosts(lab: Lab, hosts: Sequence[str]) -> None:
    """Drop registry entries of bench hosts that are not ``hosts`` (earlier, stopped nodes).

    A stopped node leaves the registry itself; one that had to be killed
    would stay alive there for ``service_down_time`` and receive fanouts.
    """
    stale: set[str] = set(lab.registry.alive_hosts(SERVICE)) - set(hosts)
    for host in stale:
        lab.registry.remove(SERVICE, host)


def fanout(lab: Lab, hosts: Sequence[str], n: int, reps: int) -> Figure:
    """Time until every one of ``hosts`` ran a fanout no-op (median of ``n`` per rep).

    Plain Celery: one ``apply_async`` per host's own queue, then waiting for
    every result (broadcast queues deliver nothing on Redis in Celery 5.7).
    """
    client = lab.client()
    noop = lab.plain_task("noop")
    queues = [lab.plain_queue(h) for h in hosts]
    expected = set(hosts)

    def taskyard_once() -> None:
        outcome = client.fanout("noop", wait=True)
        if set(outcome) != expected or any(isinstance(v, Exception) for v in outcome.values()):
            raise RuntimeError(f"fanout reached {outcome!r}, expected {sorted(expected)}")

    def plain_once() -> None:
        for result in [noop.apply_async(queue=q) for q in queues]:
            result.get(timeout=RESULT_TIMEOUT_S)

    def timed(once: Callable[[], None], count: int = n) -> float:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            once()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    ty, pl = _compare(reps, lambda: timed(taskyard_once), lambda: timed(plain_once),
                      lambda: (timed(taskyard_once, 3), timed(plain_once, 3)))
    return Figure("fanout", f"fanout to {len(hosts)} nodes, all ran", "ms", ty, pl, None,
                  f"median of {n} fanouts per repetition, solo nodes; taskyard "
                  "fanout(wait=True) (registry lookup included) vs plain: apply_async to "
                  "each node's own queue and waiting for all")
