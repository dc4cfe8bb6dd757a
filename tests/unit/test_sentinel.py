"""Sentinel lists in the settings, and durable publishing (``publish_wait_replicas``).

The failover itself, with real ``redis-server`` processes and sentinels, is
``tests/integration/test_failover.py``.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import REPO_ROOT, make_config
from workers.cli.embedded import RedisServer
from workers.core.addresses import SentinelList, canonical, is_redis_address, parse_sentinels
from workers.core.application import SENTINEL_TRANSPORT, TRANSPORT, Taskyard, celery_settings
from workers.core.config import effective, load_config
from workers.core.connections import FollowingConnection, RedisClients, connect
from workers.core.masking import MASK
from workers.exceptions import ConfigError, Unavailable
from workers.extensions.transport import Channel, SentinelChannel, _WaitingPipeline

LIST = "sentinel://:s3cret@10.0.0.1:26379;sentinel://10.0.0.2;sentinel://10.0.0.3:26380/2"


@pytest.fixture
def sentinel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKYARD_REDIS_URL", LIST)
    monkeypatch.setenv("TASKYARD_SENTINEL__MASTER_NAME", "mymaster")
    monkeypatch.setenv("TASKYARD_SENTINEL__PASSWORD", "sentinel-pass")


# -- the address --------------------------------------------------------------------------


def test_a_sentinel_list_gives_every_sentinel_the_database_and_the_password() -> None:
    parsed = parse_sentinels(LIST)
    assert parsed == SentinelList(
        (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380)), 2, None, "s3cret")


def test_the_canonical_list_writes_database_and_password_on_every_part() -> None:
    """kombu reads them from the first part only, Celery from the first too: every part
    carries them, so all clients agree wherever the user wrote them."""
    assert canonical(LIST) == ("sentinel://:s3cret@10.0.0.1:26379/2;"
                               "sentinel://:s3cret@10.0.0.2:26379/2;"
                               "sentinel://:s3cret@10.0.0.3:26380/2")
    assert canonical("redis://h:6379/1") == "redis://h:6379/1"


@pytest.mark.parametrize(("url", "says"), [
    ("sentinel://h1/1;sentinel://h2/2", "different databases"),
    ("sentinel://h1;redis://h2", "is not sentinel://HOST:PORT"),
    ("sentinel://h1/x", "expected a number"),
    ("sentinel://h1:notaport", "is not a URL"),
])
def test_a_malformed_sentinel_list_is_refused_saying_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_sentinels(url)
    assert not is_redis_address(url)


def test_redis_urls_and_sentinel_lists_are_redis_addresses() -> None:
    assert all(is_redis_address(u) for u in (LIST, "redis://h", "rediss://h", "unix:///s"))
    assert not any(is_redis_address(u) for u in ("http://h", "memory://", 3))


# -- the settings --------------------------------------------------------------------------


@pytest.mark.usefixtures("sentinel_env")
def test_one_sentinel_list_drives_broker_results_and_records() -> None:
    config = make_config()
    assert config.broker_url == config.result_backend == config.records_url == canonical(LIST)
    assert config.sentinel.master_name == "mymaster"


def test_a_sentinel_list_without_master_name_is_refused_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKYARD_RECORDS_URL", LIST)
    with pytest.raises(ConfigError) as info:
        make_config()
    message = str(info.value)
    assert "'sentinel.master_name' is empty, and records_url is a Sentinel list" in message
    assert "master_name = \"mymaster\"" in message


def test_a_malformed_sentinel_list_is_a_config_error_with_the_password_masked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKYARD_REDIS_URL", "sentinel://:s3cret@h1/1;sentinel://h2/2")
    monkeypatch.setenv("TASKYARD_SENTINEL__MASTER_NAME", "mymaster")
    with pytest.raises(ConfigError) as info:
        make_config()
    message = str(info.value)
    assert "settings key 'redis_url'" in message and "different databases" in message
    assert "s3cret" not in message and MASK in message


@pytest.mark.usefixtures("sentinel_env")
def test_taskyard_config_masks_every_password_of_a_sentinel_list() -> None:
    shown = effective(make_config())
    for key in ("redis_url", "broker_url", "result_backend", "records_url"):
        assert "s3cret" not in shown[key] and shown[key].count(MASK) == 3
    assert shown["sentinel"]["password"] == MASK


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("TASKYARD_PUBLISH_WAIT_REPLICAS", "-1", "a whole number of replicas, 0 to not wait"),
    ("TASKYARD_PUBLISH_WAIT_TIMEOUT", "0", "a number of seconds greater than 0"),
    ("TASKYARD_SENTINEL__SOCKET_TIMEOUT", "0", "a number of seconds greater than 0"),
])
def test_bad_durability_and_sentinel_settings_are_refused(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=expected):
        make_config()


# -- what the clients get -----------------------------------------------------------------


@pytest.mark.usefixtures("sentinel_env")
def test_kombu_gets_one_part_and_every_sentinel_in_the_transport_options() -> None:
    """Several parts would be kombu failover alternates, and a switch would leave
    taskyard's channel for kombu's own; one part, and the channel asks every sentinel."""
    config = make_config()
    settings = celery_settings(config)
    assert settings["broker_transport"] == SENTINEL_TRANSPORT
    assert ";" not in settings["broker_url"]
    options = settings["broker_transport_options"]
    assert options["taskyard_sentinels"] == [["10.0.0.1", 26379], ["10.0.0.2", 26379],
                                             ["10.0.0.3", 26380]]
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"] == {"socket_timeout": 1.0, "socket_connect_timeout": 1.0,
                                          "password": "sentinel-pass"}
    assert settings["result_backend_transport_options"]["master_name"] == "mymaster"
    assert settings["result_backend"] == canonical(LIST)


def test_a_plain_redis_url_keeps_the_plain_transport() -> None:
    settings = celery_settings(make_config())
    assert settings["broker_transport"] == TRANSPORT
    assert "master_name" not in settings["broker_transport_options"]


@pytest.mark.usefixtures("sentinel_env")
def test_records_and_registry_clients_follow_the_master_the_sentinels_name() -> None:
    config = make_config()
    client = connect(config, config.records_url)
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "s3cret"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26379,
                                                                                 26380]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sentinel-pass"
    clients = RedisClients(config)
    assert clients(config.records_url) is clients(config.records_url)
    clients.close()


@pytest.mark.usefixtures("sentinel_env")
def test_the_app_uses_taskyards_sentinel_channel_and_its_options() -> None:
    app = Taskyard(make_config())
    try:
        with app.connection_for_write() as connection:
            channel_class = connection.transport.Channel
            assert channel_class is SentinelChannel
            for option in ("taskyard_sentinels", "master_name", "taskyard_wait_replicas"):
                assert option in channel_class.from_transport_options
    finally:
        app.close()


# -- durable publishing ---------------------------------------------------------------


class FakePipeline:
    """Records commands; answers WAIT with ``replicas``."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.commands: list[tuple[Any, ...]] = []

    def lpush(self, *args: Any) -> None:
        self.commands.append(("LPUSH", *args))

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    def execute(self) -> list[Any]:
        return [1 if c[0] == "LPUSH" else self.replicas for c in self.commands]


def test_a_publish_waits_for_the_replicas_on_the_same_pipeline() -> None:
    pipe = FakePipeline(replicas=2)
    waiting = _WaitingPipeline(pipe, 2, 1.5)
    waiting.lpush("q", "m")
    assert waiting.execute() == [1]
    assert pipe.commands == [("LPUSH", "q", "m"), ("WAIT", 2, 1500)]


def test_fewer_replicas_than_asked_is_unavailable_saying_the_message_may_still_run() -> None:
    waiting = _WaitingPipeline(FakePipeline(replicas=0), 1, 1)
    waiting.lpush("q", "m")
    with pytest.raises(Unavailable) as info:
        waiting.execute()
    message = str(info.value)
    assert "only 0 of the 1 replicas publish_wait_replicas asks for" in message
    assert "it may still run" in message


def test_wait_settings_reach_the_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKYARD_PUBLISH_WAIT_REPLICAS", "2")
    monkeypatch.setenv("TASKYARD_PUBLISH_WAIT_TIMEOUT", "0.25")
    options = celery_settings(make_config())["broker_transport_options"]
    assert (options["taskyard_wait_replicas"], options["taskyard_wait_timeout"]) == (2, 0.25)
    assert "taskyard_wait_replicas" in Channel.from_transport_options


@pytest.mark.parametrize("document", ["docs/operations.md"])
def test_the_documented_sentinel_settings_are_read_as_documented(
        document: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO_ROOT / document).read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "sentinel://" in b)
    settings = tmp_path / "production.toml"
    settings.write_text(block)
    monkeypatch.setenv("TASKYARD_SETTINGS", f"{REPO_ROOT / 'settings.toml'},{settings}")
    monkeypatch.setenv("TASKYARD_ENV", "production")
    config = load_config(cwd=tmp_path)
    assert config.broker_url.startswith("sentinel://10.0.0.1:26379/0;")
    assert config.sentinel.master_name == "taskyard"
    assert celery_settings(config)["broker_transport"] == SENTINEL_TRANSPORT


def test_a_script_refused_by_a_demoted_master_drops_the_connection_like_a_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Lua script on a master demoted to a replica (its old port, come back) is refused
    with ``Error running script ... -READONLY``: the connection is dropped and the error is
    a connection error (retried on the promoted master), not one that stops a node."""
    dropped: list[bool] = []

    class Demoted(FollowingConnection):
        def disconnect(self, *args: object, **kwargs: object) -> None:
            dropped.append(True)

    def answer(error: Exception) -> Any:
        def read_response(self: object, *args: object, **kwargs: object) -> None:
            raise error
        return read_response

    pool = redis.sentinel.SentinelConnectionPool("taskyard", sentinel_manager=None,
                                                 connection_class=Demoted)
    connection = pool.make_connection()
    for refusal in ("Error running script (call to f_0): @user_script:2: -READONLY You "
                    "can't write against a read only replica.",
                    "UNBLOCKED force unblock from blocking operation, instance state changed "
                    "(master -> replica?)",
                    "WAIT cannot be used with replica instances. Please also note that ..."):
        monkeypatch.setattr(redis.sentinel.SentinelManagedConnection, "read_response",
                            answer(redis.ResponseError(refusal)))
        with pytest.raises(redis.ConnectionError, match="previous master is now a replica"):
            connection.read_response()
    assert dropped == [True, True, True]
    monkeypatch.setattr(redis.sentinel.SentinelManagedConnection, "read_response",
                        answer(redis.ResponseError("WRONGTYPE Operation against a key")))
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        connection.read_response()
    assert dropped == [True, True, True]


class _Sentinels:
    """The part of redis-py's ``Sentinel`` a sentinel pool asks: where the master is."""

    def __init__(self, port: int) -> None:
        self.port = port

    def discover_master(self, service_name: str) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def discover_slaves(self, service_name: str) -> list[tuple[str, int]]:
        return []


def test_a_node_blocked_on_a_master_that_becomes_a_replica_goes_to_the_promoted_one(
        tmp_path: Path) -> None:
    """A node waits on its bells with ``BLPOP``; when a real ``redis-server`` it waits on is
    made a replica (a killed master that came back and answered before the sentinels
    demoted it), Redis cuts the wait short with ``UNBLOCKED``: a connection error, and the
    next command goes to the master the sentinels name, instead of an error that stops
    the node."""
    old = RedisServer(tmp_path / "old", appendonly=False).start()
    promoted = RedisServer(tmp_path / "promoted", appendonly=False).start()
    try:
        sentinels = _Sentinels(old.port)
        pool = redis.sentinel.SentinelConnectionPool(
            "taskyard", sentinel_manager=sentinels, connection_class=FollowingConnection)
        node = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        assert node.ping()

        def demote() -> None:
            redis.Redis(port=old.port).replicaof("127.0.0.1", promoted.port)
            sentinels.port = promoted.port

        timer = threading.Timer(0.3, demote)
        timer.start()
        try:
            with pytest.raises(redis.ConnectionError, match="previous master is now a replica"):
                node.blpop(["taskyard:bell:effects"], 30)
        finally:
            timer.join()
        node.lpush("taskyard:bell:effects", "1")
        assert redis.Redis(port=promoted.port).llen("taskyard:bell:effects") == 1
        pool.disconnect()
        # A node that asked a sentinel not yet told of the failover, confirming a take with
        # its replicas on the demoted server: refused, and a connection error too.
        stale = redis.sentinel.SentinelConnectionPool(
            "taskyard", sentinel_manager=_Sentinels(old.port),
            connection_class=FollowingConnection)
        with pytest.raises(redis.ConnectionError, match="previous master is now a replica"):
            redis.Redis(connection_pool=stale, retry=Retry(NoBackoff(), 0)).execute_command(
                "WAIT", 1, 100)
        stale.disconnect()
    finally:
        old.stop()
        promoted.stop()
