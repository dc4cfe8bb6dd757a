"""``taskyard status``: the fleet on one screen, read from Redis.

Nodes per service and their state (from the registry), the length of every
queue (shared and per host, and any non-empty queue, marked when no live node
consumes it: a host that is gone, or never was), the delayed requests (how many, when the
next is due), the requests settled without running (expired, cancelled), and the requests
running now with their progress (asked of the nodes through Celery's remote control, which is
best effort: a node too busy to answer within the timeout is left out and
named as such).
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from kombu.utils.encoding import bytes_to_str

from workers.cli.placement import disagreements
from workers.core.addresses import is_redis_address
from workers.core.application import Taskyard
from workers.core.delays import DelayedRequests
from workers.core.keys import LIFECYCLE_COUNTS_KEY, PROGRESS, host_queue
from workers.core.registry import ServiceRecord


def queue_lengths(app: Taskyard, records: list[ServiceRecord]) -> dict[str, int]:
    """Messages waiting in each queue (Redis lists) of every service known here or registered.

    The shared queue and each registered host's queue of every service, and
    any other non-empty ``<service>.<host>`` queue: one for a host that is
    gone, or that never existed, is listed too.
    """
    config = app.config
    if not is_redis_address(config.broker_url):
        return {}
    services = set(config.services) | {r.service for r in records}
    names = services | {host_queue(r.service, r.host) for r in records}
    client = app.redis(config.broker_url)
    for service in services:
        names.update(bytes_to_str(key) for key in client.scan_iter(
            match=f"{service}.*", count=1000, _type="list"))
    ordered = sorted(names)
    pipe = client.pipeline(transaction=False)
    for name in ordered:
        pipe.llen(name)
    return dict(zip(ordered, pipe.execute(), strict=True))


def orphans(queues: dict[str, int], records: list[ServiceRecord]) -> list[str]:
    """The non-empty queues no live node consumes (their messages wait for a node to come)."""
    alive = {(r.service, r.host) for r in records if r.alive}
    served = {service for service, _ in alive}
    found = []
    for name, length in sorted(queues.items()):
        service, _, host = name.partition(".")
        consumed = (service, host) in alive if host else service in served
        if length and not consumed:
            found.append(name)
    return found


def running(app: Celery, timeout: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Requests running on the nodes that answered, with their progress; and who answered."""
    replies = app.control.inspect(timeout=timeout).active() or {}
    found = []
    for worker, tasks in sorted(replies.items()):
        for task in tasks or ():
            result = AsyncResult(task["id"], app=app)
            state = result.state
            progress = result.info if state == PROGRESS else None
            found.append({
                "worker": worker, "id": task["id"], "name": task.get("name"),
                # A node says it runs it: STARTED (nodes write no STARTED to the backend).
                "kwargs": task.get("kwargs"), "state": "STARTED" if state == "PENDING" else state,
                "progress": progress if isinstance(progress, dict) else None,
            })
    return found, sorted(replies)


def gather(app: Taskyard, inspect_timeout: float = 1.0) -> dict[str, Any]:
    """Everything ``taskyard status`` shows, as data."""
    records = app.registry.list()
    services: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = services.setdefault(record.service, {"states": Counter(), "hosts": []})
        entry["states"][record.state] += 1
        entry["hosts"].append({"host": record.host, "state": record.state,
                               "age": None if record.age == float("inf") else record.age})
    for entry in services.values():
        entry["states"] = dict(entry["states"])
    queues = queue_lengths(app, records)
    tasks, answered = running(app, inspect_timeout)
    return {"services": services, "queues": queues, "orphans": orphans(queues, records),
            "delayed": delayed(app), "not_run": not_run(app),
            "running": tasks, "answered": answered,
            "placement": disagreements(app.registry)}


def delayed(app: Taskyard) -> dict[str, Any]:
    """The delayed requests: how many wait, and when the next is due (epoch seconds)."""
    if not is_redis_address(app.config.broker_url):
        return {"count": 0, "next_due": None}
    waiting = DelayedRequests(app.redis(app.config.broker_url)).waiting()
    return {"count": waiting.count, "next_due": waiting.next_due}


def not_run(app: Taskyard) -> dict[str, dict[str, int]]:
    """Requests settled without running, by service: ``{service: {expired, cancelled}}``."""
    if not is_redis_address(app.config.broker_url):
        return {}
    found: dict[str, dict[str, int]] = {}
    counts = app.redis(app.config.broker_url).hgetall(LIFECYCLE_COUNTS_KEY)
    for field, value in counts.items():
        what, _, service = bytes_to_str(field).partition(":")
        found.setdefault(service, {})[what] = int(value)
    return found


def render(status: dict[str, Any]) -> str:
    """The one-screen text view of :func:`gather`'s data."""
    lines = ["SERVICES"]
    if not status["services"]:
        lines.append("  (no node has reported; start one with `taskyard up`)")
    for service, entry in sorted(status["services"].items()):
        counts = ", ".join(f"{n} {state}" for state, n in sorted(entry["states"].items()))
        hosts = " ".join(f"{h['host']}({h['state']})" for h in entry["hosts"])
        lines.append(f"  {service:<12} {counts:<24} {hosts}")
    lines.append("QUEUES")
    orphaned = set(status.get("orphans", ()))
    for name, length in sorted(status["queues"].items()):
        mark = "  (no live node consumes it)" if name in orphaned else ""
        lines.append(f"  {name:<30} {length:>6} waiting{mark}")
    waiting = status.get("delayed") or {"count": 0, "next_due": None}
    due = waiting["next_due"]
    soon = (f", next due in {max(0.0, due - time.time()):.1f} s "
            f"({datetime.fromtimestamp(due, timezone.utc):%Y-%m-%d %H:%M:%S} UTC)" if due else "")
    lines.append(f"DELAYED  {waiting['count']} waiting{soon}")
    if status.get("not_run"):
        lines.append("NOT RUN  (expired before they ran, or cancelled)")
        for service, counts in sorted(status["not_run"].items()):
            shown = ", ".join(f"{what} {n}" for what, n in sorted(counts.items()))
            lines.append(f"  {service:<12} {shown}")
    lines.append(f"RUNNING  (nodes answering: {len(status['answered'])})")
    if not status["running"]:
        lines.append("  (nothing running)")
    for task in status["running"]:
        progress = task["progress"]
        shown = (f"{progress.get('done')}/{progress.get('total')} {progress.get('message', '')}"
                 if progress else task["state"])
        lines.append(f"  {task['name']:<28} {task['worker']:<22} {task['id'][:8]}  {shown}")
    if status.get("placement"):
        lines.append("PLACEMENT  (hosts whose claims and reported inventory disagree: "
                     "taskyard placement SERVICE)")
        for entry in status["placement"]:
            lines.append(f"  {entry['service']:<12} {entry['host']:<22} "
                         + "; ".join(entry["why"]))
    return "\n".join(lines)
