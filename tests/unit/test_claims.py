"""Claims never over-commit: on fakeredis and on a real redis-server, from threads and processes.

Every test runs against both Redis (the ``store`` fixture); the property-based
test drives random sequences of inventory reports, claims, resizes and
releases against a model of what each host has left.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from managers.claims import ClaimStore, Inventory
from workers.cli.embedded import RedisServer


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("claims-redis"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture(params=["fakeredis", "redis-server"])
def client(request: pytest.FixtureRequest) -> Any:
    if request.param == "fakeredis":
        return fakeredis.FakeRedis()
    server: RedisServer = request.getfixturevalue("real_redis")
    return redis.Redis.from_url(server.url)


def store_of(client: Any) -> ClaimStore:
    """A store of a service of its own (tests share the real Redis)."""
    return ClaimStore(client, f"svc-{uuid.uuid4().hex[:8]}")


def fleet(store: ClaimStore, **capacities: int) -> None:
    for host, total in capacities.items():
        store.report_inventory(host, {"DISK_GB": Inventory(total)})


def test_a_claim_takes_capacity_and_a_release_gives_it_back_at_once(client: Any) -> None:
    store = store_of(client)
    fleet(store, a=10)
    assert store.claim("v1", "a", {"DISK_GB": 6}).ok
    refused = store.claim("v2", "a", {"DISK_GB": 5})
    assert not refused.ok and refused.reason({"DISK_GB": 5}) == (
        "DISK_GB: 6 used + 5 > capacity 10")
    assert store.usage("a") == {"DISK_GB": 6}
    assert store.release("v1") == "a"
    assert store.claim("v2", "a", {"DISK_GB": 5}).ok
    assert [c.free for c in store.candidates({"DISK_GB": 1}, 10)[0]] == [{"DISK_GB": 5.0}]


def test_a_claim_is_all_or_nothing_across_resource_classes(client: Any) -> None:
    store = store_of(client)
    store.report_inventory("a", {"DISK_GB": Inventory(10), "SLOTS": Inventory(1)})
    assert store.claim("i1", "a", {"DISK_GB": 2, "SLOTS": 1}).ok
    refused = store.claim("i2", "a", {"DISK_GB": 2, "SLOTS": 1})
    assert not refused.ok and refused.resource_class == "SLOTS"
    assert store.usage("a") == {"DISK_GB": 2, "SLOTS": 1}  # DISK_GB was not taken either


def test_claiming_again_on_the_same_host_changes_nothing_and_elsewhere_is_refused(
    client: Any,
) -> None:
    store = store_of(client)
    fleet(store, a=10, b=10)
    assert store.claim("v1", "a", {"DISK_GB": 4}).new
    again = store.claim("v1", "a", {"DISK_GB": 4})
    assert again.ok and not again.new
    elsewhere = store.claim("v1", "b", {"DISK_GB": 4})
    assert not elsewhere.ok and elsewhere.holder == "a"
    assert store.usage("a") == {"DISK_GB": 4} and store.usage("b") == {"DISK_GB": 0}


def test_reserved_units_and_the_allocation_ratio_set_the_capacity(client: Any) -> None:
    store = store_of(client)
    store.report_inventory("a", {"DISK_GB": Inventory(100, reserved=20, allocation_ratio=1.5)})
    assert Inventory(100, 20, 1.5).capacity == 120
    assert store.claim("v1", "a", {"DISK_GB": 120}).ok
    assert not store.claim("v2", "a", {"DISK_GB": 1}).ok


def test_the_index_lists_the_freest_hosts_first_and_per_zone(client: Any) -> None:
    store = store_of(client)
    store.report_inventory("a", {"DISK_GB": Inventory(10)}, zone="az1")
    store.report_inventory("b", {"DISK_GB": Inventory(30)}, zone="az2")
    store.report_inventory("c", {"DISK_GB": Inventory(20)}, zone="az1")
    store.claim("v1", "c", {"DISK_GB": 15})
    assert [c.host for c in store.candidates({"DISK_GB": 1}, 10)[0]] == ["b", "a", "c"]
    assert [(c.host, c.zone) for c in store.candidates({"DISK_GB": 1}, 10, zone="az1")[0]] == [
        ("a", "az1"), ("c", "az1")]
    assert [c.host for c in store.candidates({"DISK_GB": 1}, 1)[0]] == ["b"]
    # A host that moves to another zone leaves the old zone's index.
    store.report_inventory("a", {"DISK_GB": Inventory(10)}, zone="az2")
    assert [c.host for c in store.candidates({"DISK_GB": 1}, 10, zone="az1")[0]] == ["c"]


def test_a_host_that_takes_no_new_work_leaves_the_index_and_returns_with_its_report(
    client: Any,
) -> None:
    store = store_of(client)
    fleet(store, a=10, b=10)
    store.report_inventory("a", {"DISK_GB": Inventory(10)}, listed=False)
    assert [c.host for c in store.candidates({"DISK_GB": 1}, 10)[0]] == ["b"]
    store.claim("v1", "b", {"DISK_GB": 1})  # a claim updates members only: a stays out
    store.unlist("b")
    assert store.candidates({"DISK_GB": 1}, 10)[0] == []
    fleet(store, a=10)
    assert [c.host for c in store.candidates({"DISK_GB": 1}, 10)[0]] == ["a"]


def test_a_resize_grows_only_within_the_capacity_and_shrinks_freely(client: Any) -> None:
    store = store_of(client)
    fleet(store, a=10)
    store.claim("v1", "a", {"DISK_GB": 4})
    store.claim("v2", "a", {"DISK_GB": 4})
    refused = store.resize("v1", "a", {"DISK_GB": 7})
    assert not refused.ok and refused.reason({"DISK_GB": 7}).startswith("DISK_GB: 8 used")
    assert store.resize("v1", "a", {"DISK_GB": 6}).ok
    assert store.usage("a") == {"DISK_GB": 10}
    assert store.resize("v1", "a", {"DISK_GB": 1}).ok and store.usage("a") == {"DISK_GB": 5}
    assert store.resize("nothing", "a", {"DISK_GB": 1}).holder is None


def test_usage_is_counted_again_from_the_claims_when_it_drifted(client: Any) -> None:
    store = store_of(client)
    fleet(store, a=10)
    store.claim("v1", "a", {"DISK_GB": 3})
    client.hset(store.key("usage", "DISK_GB"), "a", 9)  # bookkeeping gone wrong
    assert store.recount("a") == {"DISK_GB": (9, 3)}
    assert store.usage("a") == {"DISK_GB": 3}
    assert store.candidates({"DISK_GB": 1}, 1)[0][0].free == {"DISK_GB": 7.0}
    assert store.recount("a") == {}


def test_a_burst_of_threads_exactly_fills_the_fleet_and_never_over_commits(
    client: Any,
) -> None:
    store = store_of(client)
    fleet(store, a=10, b=10, c=10)
    placed: list[str] = []
    lock = threading.Lock()

    def place(n: int) -> None:
        for host in ("a", "b", "c"):
            if store.claim(f"v{n}", host, {"DISK_GB": 2}).ok:
                with lock:
                    placed.append(host)
                return

    threads = [threading.Thread(target=place, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(placed) == 15
    assert {h: placed.count(h) for h in "abc"} == {"a": 5, "b": 5, "c": 5}
    assert all(store.usage(h) == {"DISK_GB": 10} for h in "abc")


def _claim_in_a_process(url: str, service: str, worker: int, results: Any) -> None:
    store = ClaimStore(redis.Redis.from_url(url), service)
    won = 0
    for n in range(40):
        for host in ("a", "b", "c", "d"):
            if store.claim(f"w{worker}-{n}", host, {"DISK_GB": 3}).ok:
                won += 3
                break
    results.put(won)


def test_processes_racing_for_the_same_hosts_never_over_commit(
    real_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(real_redis.url)
    store = store_of(client)
    capacities = {"a": 99, "b": 99, "c": 99, "d": 102}  # 399 units: 133 claims of 3 fill it
    fleet(store, **capacities)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_claim_in_a_process,
                               args=(real_redis.url, store.service, w, results))
               for w in range(6)]
    for process in workers:
        process.start()
    taken = sum(results.get(timeout=60) for _ in workers)
    for process in workers:
        process.join(30)
    usage = {h: store.usage(h)["DISK_GB"] for h in "abcd"}
    assert taken == sum(usage.values()) == 3 * 133
    assert usage == capacities
    claims = [amounts for h in "abcd" for amounts in store.host_claims(h).values()]
    assert len(claims) == 133


# -- property: any sequence of operations, checked against a model ----------------------

HOSTS = ("a", "b", "c")
operation = st.one_of(
    st.tuples(st.just("inventory"), st.sampled_from(HOSTS), st.integers(0, 12),
              st.integers(0, 4), st.sampled_from([1.0, 1.5, 2.0])),
    st.tuples(st.just("claim"), st.integers(0, 9), st.sampled_from(HOSTS),
              st.integers(0, 6), st.integers(0, 2)),
    st.tuples(st.just("resize"), st.integers(0, 9), st.sampled_from(HOSTS),
              st.integers(0, 6), st.integers(0, 2)),
    st.tuples(st.just("release"), st.integers(0, 9)),
)


def _replay(client: Any, operations: list[tuple[Any, ...]]) -> None:
    """Apply ``operations``; after each, the store must agree with the model of it."""
    store = store_of(client)
    capacity: dict[str, dict[str, int]] = {}
    claims: dict[str, tuple[str, dict[str, int]]] = {}

    def used(host: str, rc: str) -> int:
        return sum(a.get(rc, 0) for h, a in claims.values() if h == host)

    def fits(host: str, amounts: dict[str, int], already: dict[str, int]) -> bool:
        return all(rc in capacity.get(host, {}) and
                   used(host, rc) - already.get(rc, 0) + n <= capacity[host][rc]
                   for rc, n in amounts.items() if n > already.get(rc, 0))

    for op in operations:
        if op[0] == "inventory":
            _, host, total, reserved, ratio = op
            inventory = Inventory(total, reserved, ratio)
            store.report_inventory(host, {"DISK_GB": inventory, "SLOTS": Inventory(2)})
            capacity[host] = {"DISK_GB": inventory.capacity, "SLOTS": 2}
        elif op[0] in ("claim", "resize"):
            _, n, host, disk, slots = op
            rid, amounts = f"r{n}", {"DISK_GB": disk, "SLOTS": slots}
            if op[0] == "claim":
                result = store.claim(rid, host, amounts)
                if rid in claims:
                    assert result.ok == (claims[rid][0] == host)
                else:
                    assert result.ok == fits(host, amounts, {}), (op, capacity, claims)
                    if result.ok:
                        claims[rid] = (host, amounts)
            else:
                result = store.resize(rid, host, amounts)
                expected = rid in claims and claims[rid][0] == host and \
                    fits(host, amounts, claims[rid][1])
                assert result.ok == expected, (op, capacity, claims)
                if result.ok:
                    claims[rid] = (host, amounts)
        else:
            rid = f"r{op[1]}"
            assert store.release(rid) == (claims.pop(rid)[0] if rid in claims else None)
        for host in HOSTS:
            usage = store.usage(host)
            for rc in ("DISK_GB", "SLOTS"):
                assert usage.get(rc, 0) == used(host, rc)
        for candidate in store.candidates({"DISK_GB": 0, "SLOTS": 0}, 10)[0]:
            for rc, free in candidate.free.items():
                assert free == capacity[candidate.host][rc] - used(candidate.host, rc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40))
def test_any_sequence_of_claims_agrees_with_the_model_on_fakeredis(
    operations: list[tuple[Any, ...]],
) -> None:
    _replay(fakeredis.FakeRedis(), operations)


def test_any_sequence_of_claims_agrees_with_the_model_on_redis_server(
    real_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(real_redis.url)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(operation, max_size=40))
    def replay(operations: list[tuple[Any, ...]]) -> None:
        _replay(client, operations)

    replay()
