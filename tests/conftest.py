"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from workers.core.application import Taskyard, set_default_app
from workers.core.config import Config, load_config
from workers.testing import InProcessNode, in_memory
from workers.testing.kit import environment_set

#: The repository: its settings.toml is the reference fleet the tests run.
REPO_ROOT = Path(__file__).resolve().parents[1]

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
    with environment_set(env or {}):
        config = load_config(cwd=REPO_ROOT)
    return config.with_overrides(**overrides) if overrides else config


def memory_config(base: Config, **overrides: Any) -> Config:
    """``base`` on the in-process transport, records at the fake URL (the kit's ``in_memory``)."""
    return in_memory(base, **overrides)


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


@contextmanager
def in_process_worker(app: Taskyard, queues: list[str],
                      concurrency: int = 2) -> Iterator[Taskyard]:
    """A node of ``app`` in this process (the kit's ``InProcessNode``), consuming ``queues``.

    Starting and stopping one takes seconds, so modules share one.
    """
    with InProcessNode(app=app, queues=queues, concurrency=concurrency):
        yield app
