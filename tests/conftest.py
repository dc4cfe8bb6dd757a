"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from celery.contrib.testing.worker import start_worker

from managers.base import Manager
from workers.core.application import Taskyard, set_default_app
from workers.core.config import Config, load_config

#: The repository: its settings.toml is the reference fleet the tests run.
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Where unit tests keep records: a URL nothing listens on, served by fakeredis.
FAKE_RECORDS_URL = "redis://fakeredis.invalid:6379/0"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test starts from the repository's testing settings and a private state dir."""
    for key in list(os.environ):
        if key.startswith(("TASKYARD_", "DYNACONF_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TASKYARD_ENV", "testing")
    monkeypatch.setenv("TASKYARD_STATE_DIR", str(tmp_path / "state"))
    set_default_app(None)
    yield
    set_default_app(None)


def make_config(env: dict[str, str] | None = None, **overrides: Any) -> Config:
    """A configuration read from the repository's settings with ``env`` (TASKYARD_*) set.

    ``env`` is set in ``os.environ`` only while the settings are read.
    """
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        config = load_config(cwd=REPO_ROOT)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return config.with_overrides(**overrides) if overrides else config


def memory_config(base: Config, records_url: str = FAKE_RECORDS_URL, **overrides: Any) -> Config:
    """``base`` on the in-process transport (memory broker and results), records at a URL.

    The memory transport is polled; polling every 10 ms keeps unit tests quick.
    """
    return base.with_overrides(
        records_url=records_url, broker_url="memory://", result_backend="cache+memory://",
        broker_transport_options={"polling_interval": 0.01}, **overrides,
    )


def make_app(config: Config, redis: Any = None) -> Taskyard:
    """An app of ``config`` whose records (and registry) live in ``redis`` when given."""
    given = {config.records_url: redis} if redis is not None else None
    return Taskyard(config, redis_clients=given)


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    """An in-process Redis (with Lua) for records and the registry."""
    return fakeredis.FakeRedis()


@pytest.fixture
def unit_config() -> Config:
    """Testing settings for node-a, with records on fakeredis and the memory transport."""
    return memory_config(make_config(), host="node-a")


@pytest.fixture
def unit_app(unit_config: Config, fake_redis: fakeredis.FakeRedis) -> Iterator[Taskyard]:
    """An app of :func:`unit_config`, the process's default for the test."""
    app = make_app(unit_config, fake_redis)
    set_default_app(app)
    yield app
    app.close()


def manager_of(app: Taskyard, service: str) -> Manager:
    """The manager of ``service`` in this process of an in-process node of ``app``."""
    return app.tasks[f"{service}.ping"].managers.get(service)  # type: ignore[attr-defined, no-any-return]


@contextmanager
def in_process_worker(app: Taskyard, queues: list[str],
                      concurrency: int = 2) -> Iterator[Taskyard]:
    """A node of ``app`` in this process (threads pool), consuming ``queues``.

    Starting and stopping one takes seconds, so modules share one.
    """
    with start_worker(app, pool="threads", concurrency=concurrency, perform_ping_check=False,
                      queues=queues, shutdown_timeout=10):
        yield app
