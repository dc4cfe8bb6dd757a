"""Signed messages, key rotation, the size limit and API versions, through an in-process worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import fakeredis
import pytest

from managers.base import Manager, endpoint
from tests.conftest import in_process_worker, make_app, make_config, memory_config
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.config import Config, SecurityConfig, ServiceConfig, effective
from workers.core.deadletters import DeadLetters
from workers.exceptions import InvalidRequest, UnsupportedVersion
from workers.extensions.signing import SIGNATURE_HEADER, sign, verify

KEY = "current-key-0123456789"
OLD_KEY = "retired-key-0123456789"
OTHER_KEY = "someone-elses-key-0123"


class EchoManager(Manager):
    rpc_api_version = "1.2"

    @endpoint
    def echo(self, text: str) -> str:
        return text


def settings_with(base: Config, **security: Any) -> Config:
    echo = ServiceConfig(name="echo", manager=f"{__name__}:EchoManager", driver="os.path")
    return memory_config(base, host="node-s", services={"echo": echo},
                         rpc_timeout=10.0, max_message_bytes=4096,
                         security=replace(base.security, **security))


#: The records (and registry) of the module's node and of every caller.
RECORDS = fakeredis.FakeRedis()


@pytest.fixture(scope="module")
def module_redis() -> fakeredis.FakeRedis:
    return RECORDS


@pytest.fixture(scope="module")
def node_config() -> Config:
    return settings_with(make_config(env={"TASKYARD_ENV": "testing"}), signing_key=KEY,
                         previous_signing_keys=(OLD_KEY,))


@pytest.fixture(autouse=True)
def _no_dead_letters(module_redis: fakeredis.FakeRedis) -> Iterator[None]:
    yield
    module_redis.delete("taskyard:deadletters:echo")


@pytest.fixture(scope="module")
def node(node_config: Config, module_redis: fakeredis.FakeRedis) -> Iterator[Taskyard]:
    app = make_app(node_config, module_redis)
    with in_process_worker(app, ["echo", "echo.node-s"]) as app:
        yield app


def caller(node_config: Config, **security: Any) -> Client:
    config = node_config.with_overrides(security=SecurityConfig(**security))
    return Client("echo", app=make_app(config, RECORDS))


def dead_letters(redis: fakeredis.FakeRedis) -> list[dict[str, Any]]:
    return DeadLetters(redis).list("echo")


def test_a_message_signed_with_the_current_key_is_served(node: Taskyard, node_config: Config
                                                         ) -> None:
    assert caller(node_config, signing_key=KEY).call("echo", text="hi") == "hi"


def test_a_message_signed_with_a_previous_key_is_still_served(node: Taskyard,
                                                              node_config: Config) -> None:
    assert caller(node_config, signing_key=OLD_KEY).call("echo", text="rotating") == "rotating"


@pytest.mark.parametrize(("security", "reason"), [
    ({}, "unsigned message"),
    ({"signing_key": OTHER_KEY}, "bad signature"),
])
def test_unsigned_or_foreign_messages_are_refused_and_dead_lettered(
    node: Taskyard, node_config: Config, module_redis: fakeredis.FakeRedis,
    security: dict[str, str], reason: str,
) -> None:
    with pytest.raises(InvalidRequest, match=f"refused by node node-s: {reason}"):
        caller(node_config, **security).call("echo", text="let me in")
    (letter,) = dead_letters(module_redis)
    assert letter["reason"].startswith(reason)
    assert letter["task"] == "echo.echo" and letter["kwargs"] == {"text": "let me in"}
    assert letter["requeueable"] is False
    assert caller(node_config, signing_key=KEY).call("echo", text="still serving")


def test_an_altered_message_is_refused(node: Taskyard, node_config: Config,
                                       module_redis: fakeredis.FakeRedis) -> None:
    # A signature made for other arguments, attached to this message.
    honest = json.dumps([[], {"text": "pay 1"}, {}]).encode()
    forged = sign(KEY, honest, {"task": "echo.echo"})
    unsigned = caller(node_config)
    result = unsigned.app.send_task("echo.echo", kwargs={"text": "pay 1000"}, queue="echo",
                                    headers={SIGNATURE_HEADER: forged})
    with pytest.raises(InvalidRequest, match="bad signature"):
        Client("echo", app=unsigned.app).handle(result.id).wait(10)
    assert dead_letters(module_redis)[0]["kwargs"] == {"text": "pay 1000"}


def test_signatures_cover_the_body_and_every_header() -> None:
    body, headers = b'[[], {"a": 1}, {}]', {"task": "echo.echo", "id": "1", "eta": None}
    signature = sign(KEY, body, headers)
    signed = {**headers, SIGNATURE_HEADER: signature}
    assert verify([KEY], body, signed) is None
    assert verify([OTHER_KEY, KEY], body, signed) is None
    assert verify([KEY], body.replace(b"1", b"2"), signed).startswith("bad signature")
    assert verify([KEY], body, {**signed, "eta": "2030-01-01"}).startswith("bad signature")
    assert verify([KEY], body, headers).startswith("unsigned")


def test_a_request_larger_than_the_limit_is_refused_before_it_is_sent(
    node: Taskyard, node_config: Config
) -> None:
    with pytest.raises(InvalidRequest, match=r"more than max_message_bytes \(4096\)"):
        caller(node_config, signing_key=KEY).cast("echo", text="x" * 5000)


def test_a_request_for_a_newer_minor_version_is_refused_and_dead_lettered(
    node: Taskyard, node_config: Config, module_redis: fakeredis.FakeRedis
) -> None:
    client = caller(node_config, signing_key=KEY)
    with pytest.raises(UnsupportedVersion, match=r"needs API version 1\.3; this node serves 1\.2"):
        client.prepare(version_cap="1.3").call("echo", text="new")
    assert dead_letters(module_redis)[0]["headers"]["taskyard_version"] == "1.3"
    with pytest.raises(UnsupportedVersion, match=r"needs API version 2\.0"):
        client.prepare(version_cap="2.0").call("echo", text="next major")
    assert client.prepare(version_cap="1.1").call("echo", text="older") == "older"
    assert client.call("echo", text="default") == "default"
    assert client.version == "1.2"


def test_signing_keys_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKYARD_SECURITY__SIGNING_KEY", KEY)
    monkeypatch.setenv("TASKYARD_SECURITY__PREVIOUS_SIGNING_KEYS", json.dumps([OLD_KEY]))
    config = make_config()
    assert config.security.signing_key == KEY
    shown = json.dumps(effective(config)) + repr(config)
    assert KEY not in shown and OLD_KEY not in shown
