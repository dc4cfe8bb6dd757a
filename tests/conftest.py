"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fakeredis
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from workers import config as config_mod
from workers import connections, services
from workers.app import create_app
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


def memory_config(base: Config, records_url: str, **overrides: object) -> Config:
    """``base`` on the in-process transport (memory broker and results), records at a URL."""
    return base.with_overrides(
        records_url=records_url, broker_url="memory://", result_backend="cache+memory://",
        raw={**base.raw, "broker_transport_options": {"polling_interval": 0.01}},
        **overrides,
    )


def install(config: Config, records_url: str, redis: fakeredis.FakeRedis) -> None:
    """Make ``config`` and ``redis`` (for ``records_url``) the process's own."""
    config_mod.set_config(config)
    connections.set_client(records_url, redis)


@contextmanager
def in_process_worker(config: Config, redis: fakeredis.FakeRedis, queues: list[str],
                      concurrency: int = 2) -> Iterator[Celery]:
    """A node of ``config`` in this process (threads pool), consuming ``queues``.

    Starting and stopping one takes seconds, so modules share one. Each test's
    isolation resets the process's configuration; it is installed again before
    the worker stops, for what it still runs.
    """
    install(config, config.records_url, redis)
    app = create_app(config, set_as_current=False)
    with start_worker(app, pool="threads", concurrency=concurrency, perform_ping_check=False,
                      queues=queues, shutdown_timeout=10):
        yield app
        install(config, config.records_url, redis)
