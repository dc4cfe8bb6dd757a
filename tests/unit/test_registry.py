"""workers/registry.py: heartbeats, up/down/disabled, on fakeredis."""

from __future__ import annotations

import json

import fakeredis
import pytest

from workers.core.application import Taskyard
from workers.core.config import Config
from workers.core.registry import DISABLED, DOWN, UNREADABLE, UP, HostsView, Registry

DOWN_TIME = 60.0


@pytest.fixture
def registry(fake_redis: fakeredis.FakeRedis) -> Registry:
    return Registry(fake_redis, service_down_time=DOWN_TIME)


def server_now(fake_redis: fakeredis.FakeRedis) -> float:
    seconds, micros = fake_redis.time()
    return float(seconds) + float(micros) / 1e6


def age_report(fake_redis: fakeredis.FakeRedis, service: str, host: str, seconds: float) -> None:
    """Pretend the last report of ``service`` on ``host`` is ``seconds`` old."""
    stamp = server_now(fake_redis) - seconds
    fake_redis.hset(f"taskyard:registry:{service}:seen", host, f"{stamp:.6f}")


def test_report_then_list_shows_the_service_up_with_its_info(
    fake_redis: fakeredis.FakeRedis, registry: Registry
) -> None:
    info = {"capabilities": {"free_gb": 10}, "pid": 42}

    stamp = registry.report("volume", "node-a", info)

    assert abs(stamp - server_now(fake_redis)) < 5
    [record] = registry.list()
    assert (record.service, record.host, record.state) == ("volume", "node-a", UP)
    assert record.is_up
    assert record.info == info
    assert record.capabilities == {"free_gb": 10}
    assert record.updated_at == stamp
    assert 0 <= record.age < 5
    assert record.disabled_reason is None


def test_report_stores_the_documented_keys(
    fake_redis: fakeredis.FakeRedis, registry: Registry
) -> None:
    registry.report("volume", "node-a", {"pid": 1})
    assert fake_redis.smembers("taskyard:registry:services") == {b"volume"}
    assert json.loads(fake_redis.hget("taskyard:registry:volume", "node-a")) == {"pid": 1}
    assert fake_redis.hexists("taskyard:registry:volume:seen", "node-a")


def test_later_report_replaces_the_info(registry: Registry) -> None:
    registry.report("volume", "node-a", {"pid": 1})
    registry.report("volume", "node-a", {"pid": 2})
    [record] = registry.list("volume")
    assert record.info == {"pid": 2}


def test_report_older_than_service_down_time_is_down(
    fake_redis: fakeredis.FakeRedis, registry: Registry
) -> None:
    registry.report("volume", "node-a", {})
    registry.report("volume", "node-b", {})
    age_report(fake_redis, "volume", "node-b", DOWN_TIME + 30)

    states = {r.host: r.state for r in registry.list("volume")}

    assert states == {"node-a": UP, "node-b": DOWN}
    old = registry.get("volume", "node-b")
    assert old is not None
    assert DOWN_TIME + 30 <= old.age < DOWN_TIME + 35
    assert not registry.is_up("volume", "node-b")
    assert registry.is_up("volume", "node-a")


def test_report_just_within_service_down_time_is_up(
    fake_redis: fakeredis.FakeRedis, registry: Registry
) -> None:
    registry.report("volume", "node-a", {})
    age_report(fake_redis, "volume", "node-a", DOWN_TIME - 10)
    assert registry.get("volume", "node-a").state == UP


def test_down_time_comes_from_the_registry_setting(fake_redis: fakeredis.FakeRedis) -> None:
    strict = Registry(fake_redis, service_down_time=5)
    strict.report("volume", "node-a", {})
    age_report(fake_redis, "volume", "node-a", 10)
    assert strict.get("volume", "node-a").state == DOWN
    assert Registry(fake_redis, service_down_time=60).get("volume", "node-a").state == UP


def test_disable_excludes_the_host_and_keeps_the_reason(registry: Registry) -> None:
    registry.report("volume", "node-a", {})
    registry.report("volume", "node-b", {})

    registry.disable("volume", "node-a", "disk replacement")

    record = registry.get("volume", "node-a")
    assert record.state == DISABLED
    assert record.disabled_reason == "disk replacement"
    assert not record.is_up
    assert registry.hosts("volume") == ["node-b"]
    assert registry.hosts("volume", only_up=False) == ["node-a", "node-b"]
    assert record.as_dict()["disabled_reason"] == "disk replacement"


def test_disabling_a_host_that_never_reported_lists_it_as_disabled(registry: Registry) -> None:
    registry.disable("volume", "node-z", "not racked yet")
    [record] = registry.list()
    assert (record.host, record.state, record.disabled_reason) == (
        "node-z", DISABLED, "not racked yet"
    )
    assert registry.services() == ["volume"]
    assert registry.hosts("volume") == []


def test_enable_brings_the_host_back(registry: Registry) -> None:
    registry.report("volume", "node-a", {})
    registry.disable("volume", "node-a", "maintenance")

    assert registry.enable("volume", "node-a") is True

    record = registry.get("volume", "node-a")
    assert record.state == UP
    assert record.disabled_reason is None
    assert registry.hosts("volume") == ["node-a"]
    assert registry.enable("volume", "node-a") is False


def test_remove_forgets_the_host_at_once(registry: Registry) -> None:
    registry.report("volume", "node-a", {})
    registry.report("volume", "node-b", {})

    registry.remove("volume", "node-a")

    assert registry.get("volume", "node-a") is None
    assert [r.host for r in registry.list("volume")] == ["node-b"]
    assert registry.hosts("volume", only_up=False) == ["node-b"]


def test_hosts_only_up_false_includes_down_hosts(
    fake_redis: fakeredis.FakeRedis, registry: Registry
) -> None:
    for host in ("node-c", "node-a", "node-b"):
        registry.report("volume", host, {})
    age_report(fake_redis, "volume", "node-b", DOWN_TIME * 10)

    assert registry.hosts("volume") == ["node-a", "node-c"]
    assert registry.hosts("volume", only_up=False) == ["node-a", "node-b", "node-c"]


def test_services_lists_service_names_sorted(registry: Registry) -> None:
    assert registry.services() == []
    registry.report("volume", "node-a", {})
    registry.report("echo", "node-a", {})
    registry.report("volume", "node-b", {})

    assert registry.services() == ["echo", "volume"]
    assert [(r.service, r.host) for r in registry.list()] == [
        ("echo", "node-a"), ("volume", "node-a"), ("volume", "node-b"),
    ]
    assert [r.host for r in registry.list("echo")] == ["node-a"]


def test_unknown_service_has_no_hosts(registry: Registry) -> None:
    registry.report("volume", "node-a", {})
    assert registry.list("nope") == []
    assert registry.hosts("nope", only_up=False) == []
    assert registry.get("nope", "node-a") is None


def test_registry_from_config_connects_to_the_records_url_with_the_down_time(
    unit_config: Config,
) -> None:
    config = unit_config.with_overrides(records_url="redis://records.example:6390/4")
    registry = Registry.from_config(config)
    kwargs = registry.redis.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("records.example", 6390, 4)
    assert registry.service_down_time == config.service_down_time


def test_the_apps_registry_uses_the_apps_records_client(
    unit_app: Taskyard, fake_redis: fakeredis.FakeRedis
) -> None:
    registry = unit_app.registry
    assert registry.redis is fake_redis
    registry.report("volume", unit_app.config.host, {})
    assert registry.hosts("volume") == ["node-a"]


def test_forget_removes_every_trace_of_a_host(registry: Registry) -> None:
    registry.report("volume", "gone", {})
    registry.disable("volume", "gone", "dead disk")
    assert registry.forget("volume", "gone") is True
    assert registry.get("volume", "gone") is None
    assert registry.forget("volume", "gone") is False


def test_hosts_down_longer_than_the_limit_are_forgotten_and_the_others_kept(
    registry: Registry,
) -> None:
    registry.report("volume", "old", {})
    registry.report("volume", "recent", {})
    registry.report("compute", "old", {})
    seconds, _ = registry.redis.time()
    registry.redis.hset("taskyard:registry:volume:seen", "old", seconds - 90_000)
    registry.redis.hset("taskyard:registry:compute:seen", "old", seconds - 10)
    assert registry.forget_down(86_400) == [("volume", "old")]
    assert [r.host for r in registry.list("volume")] == ["recent"]
    assert [r.host for r in registry.list("compute")] == ["old"]


def test_the_placement_view_sees_every_report_disable_and_departure_at_once(
    registry: Registry, fake_redis: fakeredis.FakeRedis,
) -> None:
    view = HostsView("volume")
    registry.report("volume", "a", {"capabilities": {"free_gb": 5}})
    registry.report("volume", "b", {"capabilities": {"free_gb": 9}})

    def states() -> dict[str, tuple[str, object]]:
        return {e["host"]: (e["state"], e["capabilities"].get("free_gb"))
                for e in view.read(fake_redis, DOWN_TIME)}

    assert states() == {"a": ("up", 5), "b": ("up", 9)}
    registry.report("volume", "a", {"capabilities": {"free_gb": 1}})  # a new report
    registry.disable("volume", "b", "disk swap")
    registry.disable("volume", "c", "never came")  # disabled, never reported
    assert states() == {"a": ("up", 1), "b": ("disabled", 9), "c": ("disabled", None)}
    registry.enable("volume", "b")
    registry.remove("volume", "a")
    assert states() == {"b": ("up", 9), "c": ("disabled", None)}
    fake_redis.hset("taskyard:registry:volume:seen", "b", server_now(fake_redis) - DOWN_TIME - 1)
    assert states()["b"] == ("down", 9)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b"[" * 200_000,
                                 b'{"capabilities": [5]}'])
def test_an_unreadable_report_never_hides_the_rest_of_the_fleet(
    registry: Registry, fake_redis: fakeredis.FakeRedis, raw: bytes,
) -> None:
    registry.report("volume", "good", {"capabilities": {"free_gb": 5}})
    registry.report("volume", "bad", {"capabilities": {"free_gb": 9}})
    fake_redis.hset("taskyard:registry:volume", "bad", raw)  # written by something else

    bad, good = registry.list("volume")  # sorted by host
    assert (good.host, good.capabilities) == ("good", {"free_gb": 5})
    assert (bad.host, bad.state, bad.capabilities) == ("bad", UP, {})
    if raw.startswith(b"{\""):  # an object, only its capabilities are not a mapping
        assert UNREADABLE not in bad.info
    else:
        assert bad.info[UNREADABLE].startswith("not a JSON object")
    entries = {e["host"]: e for e in HostsView("volume").read(fake_redis, DOWN_TIME)}
    assert entries["good"]["capabilities"] == {"free_gb": 5}
    assert entries["bad"]["capabilities"] == {}
    registry.report("volume", "bad", {"capabilities": {"free_gb": 9}})  # its next heartbeat
    assert registry.get("volume", "bad").capabilities == {"free_gb": 9}  # type: ignore[union-attr]


@pytest.mark.parametrize("stamp", ["yesterday", "inf", "-inf", "nan", "1e999"])
def test_unreadable_heartbeat_times_and_disables_are_read_as_never_seen_and_disabled(
    registry: Registry, fake_redis: fakeredis.FakeRedis, stamp: str,
) -> None:
    registry.report("volume", "good", {})
    registry.report("volume", "stamp", {})
    fake_redis.hset("taskyard:registry:volume:seen", "stamp", stamp)
    fake_redis.hset("taskyard:registry:volume:disabled", "good", "{broken")

    good, unread = registry.list("volume")
    assert (good.state, good.disabled_reason) == (DISABLED, "(unreadable entry: '{broken')")
    assert (unread.state, unread.age) == (DOWN, float("inf"))
    assert registry.alive_hosts("volume") == ["good"]
    entries = {e["host"]: e for e in HostsView("volume").read(fake_redis, DOWN_TIME)}
    assert {host: e["state"] for host, e in entries.items()} == {"good": DISABLED,
                                                                  "stamp": DOWN}
    assert entries["stamp"]["age"] is None  # placement says "never seen"
    assert registry.forget_down(86_400) == [("volume", "stamp")]  # when it was seen is unknown
    assert [r.host for r in registry.list("volume")] == ["good"]


def test_a_report_with_leading_whitespace_is_read(
    registry: Registry, fake_redis: fakeredis.FakeRedis,
) -> None:
    registry.report("volume", "a", {})
    fake_redis.hset("taskyard:registry:volume", "a", ' \n{"capabilities": {"free_gb": 3}}')
    assert registry.get("volume", "a").capabilities == {"free_gb": 3}  # type: ignore[union-attr]
