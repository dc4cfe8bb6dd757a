"""``taskyard placement``: what hosts offer, what claims hold, why a resource is where it is.

Read from Redis, as the scheduler sees it: per host of a service, its
inventory per resource class (total, reserved, allocation ratio, capacity),
the usage its claims add up to, the number of claims, and what its last
reconciliation fixed; with ``--host``, that host's allocations (resource ->
amounts); with a resource id, its last placement (the candidates, what each
filter removed, the weights, the alternates and every attempt).
``taskyard status`` shows the hosts whose claims and reported inventory
disagree (:func:`disagreements`).
"""

from __future__ import annotations

import datetime
from typing import Any

from managers.claims import ClaimStore, placed_services
from managers.placement import Placements
from workers.core.registry import Registry


def services_with_inventory(registry: Registry) -> list[str]:
    """The services whose hosts report inventory, or that the scheduler placed for."""
    found = set(placed_services(registry.redis))
    for service in registry.services():
        if registry.redis.exists(ClaimStore(registry.redis, service).key("inventory")):
            found.add(service)
    return sorted(found)


def hosts(registry: Registry, service: str) -> list[dict[str, Any]]:
    """Every host of ``service`` that reported inventory or holds claims, as data."""
    store = ClaimStore(registry.redis, service)
    inventories = store.inventories()
    usages = store.usages()
    reconciled = store.reconciliations()
    names = sorted(set(inventories) | set(usages))
    states = registry.states(service, names)
    pipe = registry.redis.pipeline(transaction=False)
    for host in names:
        pipe.scard(store.key("claims", host))
    counts = dict(zip(names, pipe.execute(), strict=True))
    rows = []
    for host in names:
        inventory = inventories.get(host, {})
        classes = inventory.get("classes") or {}
        usage = usages.get(host, {})
        claims = int(counts[host])
        per_class = {}
        for rc in sorted(set(classes) | set(usage)):
            offered = classes.get(rc) or {}
            capacity = offered.get("capacity")
            used = usage.get(rc, 0)
            per_class[rc] = {**offered, "used": used,
                             "free": None if capacity is None else capacity - used}
        rows.append({"service": service, "host": host, "zone": inventory.get("zone") or "",
                     "state": states[host]["state"], "classes": per_class, "claims": claims,
                     "reconciled": reconciled.get(host),
                     "disagrees": _disagreement(per_class, reconciled.get(host))})
    return rows


def _disagreement(per_class: dict[str, dict[str, Any]],
                  reconciled: dict[str, Any] | None) -> list[str]:
    """Why a host's claims and its reported inventory disagree (empty: they agree)."""
    found = []
    for rc, entry in per_class.items():
        capacity = entry.get("capacity")
        if capacity is None and entry["used"]:
            found.append(f"{rc}: claims hold {entry['used']}, the host reports no {rc}")
        elif capacity is not None and entry["used"] > capacity:
            found.append(f"{rc}: claims hold {entry['used']} > capacity {capacity}")
    fixed = _fixed(reconciled)
    if fixed:
        found.append(f"its last reconciliation fixed {fixed}")
    return found


def _fixed(reconciled: dict[str, Any] | None) -> str:
    if not reconciled:
        return ""
    parts = [f"{what} {', '.join(map(str, reconciled[what]))}"
             for what in ("released", "claimed", "resized", "elsewhere") if reconciled.get(what)]
    parts += [f"usage of {rc} {before} -> {after}"
              for rc, (before, after) in (reconciled.get("usage") or {}).items()]
    return "; ".join(parts)


def disagreements(registry: Registry) -> list[dict[str, Any]]:
    """Hosts whose claims and reported inventory disagree, with why (``taskyard status``).

    Reads each class's capacity and usage, and the reconciliations, whole:
    a few hashes per service, whatever the number of hosts.
    """
    found = []
    for service in services_with_inventory(registry):
        store = ClaimStore(registry.redis, service)
        per_host: dict[str, dict[str, dict[str, Any]]] = {}
        for rc in store.resource_classes():
            pipe = registry.redis.pipeline(transaction=False)
            pipe.hgetall(store.key("capacity", rc))
            pipe.hgetall(store.key("usage", rc))
            capacities, usages = pipe.execute()
            for raw, used in usages.items():
                if int(used) <= 0:
                    continue
                host = raw.decode() if isinstance(raw, bytes) else raw
                capacity = capacities.get(raw)
                per_host.setdefault(host, {})[rc] = {
                    "used": int(used), "capacity": None if capacity is None else int(capacity)}
        reconciled = store.reconciliations()
        for host in sorted(set(per_host) | set(reconciled)):
            why = _disagreement(per_host.get(host, {}), reconciled.get(host))
            if why:
                found.append({"service": service, "host": host, "why": why})
    return found


def allocations(registry: Registry, service: str, host: str) -> list[dict[str, Any]]:
    """The claims on ``host``: resource id, amounts, when, and its placement's state."""
    store = ClaimStore(registry.redis, service)
    placements = Placements(registry.redis, service)
    found = []
    for resource_id, claim in sorted(store.host_claim_details(host).items()):
        record = placements.get(resource_id)
        found.append({"id": resource_id, "amounts": claim["amounts"], "at": claim["at"],
                      "placement": record.state if record else "not placed by the scheduler"})
    return found


def placement(registry: Registry, service: str, resource_id: str) -> dict[str, Any] | None:
    """The last placement of ``resource_id``, with where its claim is now."""
    record = Placements(registry.redis, service).get(resource_id)
    claim = ClaimStore(registry.redis, service).claim_of(resource_id)
    if record is None and claim is None:
        return None
    return {"service": service, "id": resource_id, "claim": claim,
            "placement": record.as_dict() if record else None}


# -- text ---------------------------------------------------------------------------------


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_hosts(rows: list[dict[str, Any]]) -> str:
    table = [("SERVICE", "HOST", "STATE", "ZONE", "CLASS", "TOTAL", "RESERVED", "RATIO",
              "CAPACITY", "USED", "FREE", "CLAIMS")]
    notes = []
    for row in rows:
        for rc, entry in row["classes"].items() or [("-", {})]:
            table.append((row["service"], row["host"], row["state"], row["zone"] or "-", rc,
                          *(_number(entry.get(k)) for k in ("total", "reserved",
                                                             "allocation_ratio", "capacity",
                                                             "used", "free")),
                          str(row["claims"])))
        notes += [f"  {row['service']} {row['host']}: {why}" for why in row["disagrees"]]
    if len(table) == 1:
        return "(no host reports inventory; start a node of a service that declares placement)"
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in table]
    if notes:
        lines += ["CLAIMS AND INVENTORY DISAGREE", *notes]
    return "\n".join(lines)


def render_allocations(service: str, host: str, found: list[dict[str, Any]]) -> str:
    if not found:
        return f"no claims on {service} host {host}"
    lines = [f"{service} on {host}: {len(found)} claims"]
    for entry in found:
        amounts = ", ".join(f"{rc} {n}" for rc, n in sorted(entry["amounts"].items()))
        lines.append(f"  {entry['id']:<40} {amounts:<20} since {_when(entry['at'])}  "
                     f"({entry['placement']})")
    return "\n".join(lines)


def render_placement(found: dict[str, Any]) -> str:
    service, resource_id = found["service"], found["id"]
    claim, record = found["claim"], found["placement"]
    held = (f"claimed on {claim['host']} ("
            + ", ".join(f"{rc} {n}" for rc, n in sorted(claim["amounts"].items())) + ")"
            if claim else "holds no claim")
    lines = [f"{service} {resource_id}: {held}"]
    if record is None:
        lines.append("  not placed by the scheduler (created on its node directly)")
        return "\n".join(lines)
    decision = record["decision"]
    lines.append(f"  placement: {record['state']} on {record['host']}, placed "
                 f"{_when(record['at'])}, max_attempts {record['max_attempts']}")
    needs = ", ".join(f"{rc} {n}" for rc, n in (decision.get("needs") or {}).items())
    hints = ", ".join(f"{k}={v}" for k, v in (decision.get("hints") or {}).items()) or "none"
    lines.append(f"  needs {needs or '-'}; hints {hints}")
    lines.append(f"  first choice {decision.get('chosen')}: {decision.get('considered', 0)} "
                 f"candidates, {decision.get('passed', 0)} passed every filter")
    weights = decision.get("weights") or {}
    if weights:
        lines.append("  weights (best first): "
                     + ", ".join(f"{h} {w:g}" for h, w in weights.items()))
    counts = decision.get("removed_counts") or {}
    for name, removed in (decision.get("removed") or {}).items():
        shown = ", ".join(f"{h} ({why})" for h, why in removed.items())
        more = counts.get(name, len(removed)) - len(removed)
        lines.append(f"  {name} removed {shown}" + (f" and {more} more" if more > 0 else ""))
    for host, why in (decision.get("taken_meanwhile") or {}).items():
        lines.append(f"  passed over {host}: {why} (another placement claimed it first)")
    if record["attempts"]:
        lines.append("  attempts that failed:")
        lines += [f"    {n}. {a.get('host')}: {a.get('error')} ({_when(a.get('at'))})"
                  for n, a in enumerate(record["attempts"], 1)]
    lines.append("  alternates left: " + (", ".join(record["alternates"]) or "none"))
    return "\n".join(lines)
