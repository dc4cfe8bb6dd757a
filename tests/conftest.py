"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest

from workers import config as config_mod
from workers import connections, services
from workers.config import Config, load_config

#: Environment variables a test run must not inherit from the shell.
_ISOLATED = ("TASKYARD_",)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test starts from settings.toml's testing environment and a private state dir."""
    for key in list(os.environ):
        if key.startswith(_ISOLATED) or key.startswith("DYNACONF_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TASKYARD_ENV", "testing")
    monkeypatch.setenv("TASKYARD_STATE_DIR", str(tmp_path / "state"))
    config_mod.set_config(None)
    services.reset_managers()
    yield
    config_mod.set_config(None)
    services.reset_managers()
    connections.forget_clients()
    from workers.app import set_app

    set_app(None)


def make_config(env: dict[str, str] | None = None, **overrides: object) -> Config:
    """A configuration read from the real settings files with ``env`` (TASKYARD_* values) set.

    ``env`` is set in ``os.environ`` only while the settings are read.
    """
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        config = load_config()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return config.with_overrides(**overrides) if overrides else config


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    """An in-process Redis (with Lua) for records and the registry."""
    return fakeredis.FakeRedis()


@pytest.fixture
def unit_config(fake_redis: fakeredis.FakeRedis, tmp_path: Path) -> Config:
    """Testing settings with records on fakeredis, installed as the process's configuration."""
    config = make_config(
        host="node-a",
        records_url="redis://fakeredis.invalid:6379/0",
        broker_url="memory://",
        result_backend="cache+memory://",
    )
    connections.set_client(config.records_url, fake_redis)
    config_mod.set_config(config)
    return config
