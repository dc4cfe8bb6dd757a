"""``taskyard status``: the fleet on one screen, read from Redis.

Nodes per service and their state (from the registry), the length of every
queue (shared and per host), and the requests running now with their
progress (asked of the nodes through Celery's remote control, which is
best effort: a node too busy to answer within the timeout is left out and
named as such).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from workers.core.application import Taskyard
from workers.core.keys import PROGRESS, host_queue


def queue_lengths(app: Taskyard, hosts: dict[str, list[str]]) -> dict[str, int]:
    """Messages waiting in each queue of each configured service (Redis lists)."""
    config = app.config
    names = []
    for service in config.services:
        names.append(service)
        names += [host_queue(service, host) for host in hosts.get(service, [])]
    if not config.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return {}
    pipe = app.redis(config.broker_url).pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    return dict(zip(names, pipe.execute(), strict=True))


def running(app: Celery, timeout: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Requests running on the nodes that answered, with their progress; and who answered."""
    replies = app.control.inspect(timeout=timeout).active() or {}
    found = []
    for worker, tasks in sorted(replies.items()):
        for task in tasks or ():
            result = AsyncResult(task["id"], app=app)
            progress = result.info if result.state == PROGRESS else None
            found.append({
                "worker": worker, "id": task["id"], "name": task.get("name"),
                "kwargs": task.get("kwargs"), "state": result.state,
                "progress": progress if isinstance(progress, dict) else None,
            })
    return found, sorted(replies)


def gather(app: Taskyard, inspect_timeout: float = 1.0) -> dict[str, Any]:
    """Everything ``taskyard status`` shows, as data."""
    records = app.registry.list()
    services: dict[str, dict[str, Any]] = {}
    hosts: dict[str, list[str]] = {}
    for record in records:
        entry = services.setdefault(record.service, {"states": Counter(), "hosts": []})
        entry["states"][record.state] += 1
        entry["hosts"].append({"host": record.host, "state": record.state,
                               "age": None if record.age == float("inf") else record.age})
        hosts.setdefault(record.service, []).append(record.host)
    for entry in services.values():
        entry["states"] = dict(entry["states"])
    tasks, answered = running(app, inspect_timeout)
    return {"services": services, "queues": queue_lengths(app, hosts),
            "running": tasks, "answered": answered}


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
    for name, length in sorted(status["queues"].items()):
        lines.append(f"  {name:<30} {length:>6} waiting")
    lines.append(f"RUNNING  (nodes answering: {len(status['answered'])})")
    if not status["running"]:
        lines.append("  (nothing running)")
    for task in status["running"]:
        progress = task["progress"]
        shown = (f"{progress.get('done')}/{progress.get('total')} {progress.get('message', '')}"
                 if progress else task["state"])
        lines.append(f"  {task['name']:<28} {task['worker']:<22} {task['id'][:8]}  {shown}")
    return "\n".join(lines)
