"""workers/backend.py: only registered wire errors are rebuilt from a stored failure."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from workers.exceptions import (
    ConfigError,
    Conflict,
    InvalidRequest,
    NotFound,
    RemoteError,
    TaskyardError,
    UnknownEndpoint,
)
from workers.extensions.backend import (
    CacheBackend,
    RedisBackend,
    SafeExceptionsMixin,
    SentinelBackend,
    rebuild_exception,
)


class UnregisteredError(TaskyardError):
    """A TaskyardError subclass never passed to wire_error."""


def record(exc_type: Any, exc_module: Any, exc_message: Any) -> dict[str, Any]:
    """A failure as Celery stores it with the JSON serializer (after a JSON round trip)."""
    return json.loads(
        json.dumps({"exc_type": exc_type, "exc_module": exc_module, "exc_message": exc_message})
    )


def record_of(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    return record(cls.__qualname__, cls.__module__, list(exc.args))


# -- registered wire errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "message", "details"),
    [
        (NotFound, "no volume with id 'v1'", {"id": "v1"}),
        (Conflict, "volume v1 is 'in-use'; delete needs it to be available",
         {"id": "v1", "status": "in-use"}),
        (InvalidRequest, "volume.create: missing argument 'size_gb'", {"argument": "size_gb"}),
        (UnknownEndpoint, "no endpoint 'volume.nope'", {"task": "volume.nope"}),
        (RemoteError, "KeyError: 'x'", {"type": "KeyError", "host": "node-a"}),
        (NotFound, "gone", {}),
    ],
)
def test_registered_wire_error_comes_back_as_its_class(
    cls: type[TaskyardError], message: str, details: dict[str, Any]
) -> None:
    rebuilt = rebuild_exception(record_of(cls(message, details)))
    assert type(rebuilt) is cls
    assert str(rebuilt) == message
    assert rebuilt.details == details


def test_record_with_a_bare_string_message_is_rebuilt() -> None:
    rebuilt = rebuild_exception(record("NotFound", "managers.exceptions", "no such volume"))
    assert type(rebuilt) is NotFound
    assert str(rebuilt) == "no such volume"


# -- anything else becomes RemoteError --------------------------------------------------


@pytest.mark.parametrize(
    ("exc_type", "exc_module", "message"),
    [
        ("ValueError", "builtins", "bad size"),
        ("UnregisteredError", __name__, "not declared"),
        ("ConfigError", "drivers.exceptions", "settings key 'x'"),
        ("UnknownService", "workers.exceptions", "unknown service 'x'"),
        ("NotFound", "some.other.module", "lookalike"),
        ("NotFound", None, "no module given"),
    ],
)
def test_unregistered_class_comes_back_as_remote_error(
    exc_type: str, exc_module: str | None, message: str
) -> None:
    rebuilt = rebuild_exception(record(exc_type, exc_module, [message]))
    assert type(rebuilt) is RemoteError
    assert str(rebuilt) == f"{exc_type}: {message}"
    assert rebuilt.remote_type == exc_type
    assert rebuilt.remote_message == message
    assert rebuilt.details["module"] == exc_module


@pytest.mark.parametrize(
    ("exc_module", "exc_type"),
    [("os", "system"), ("builtins", "exec"), ("subprocess", "call"), ("builtins", "eval")],
)
def test_hostile_callable_named_as_exception_is_never_called(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exc_module: str, exc_type: str
) -> None:
    called: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    marker = tmp_path / "pwned"
    command = f"touch {marker}"

    rebuilt = rebuild_exception(record(exc_type, exc_module, [command]))

    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_type == exc_type
    assert rebuilt.remote_message == command
    assert called == []
    assert not marker.exists()


# -- unknown task -----------------------------------------------------------------------


@pytest.mark.parametrize("stored", ["volume.nope", "'volume.nope'"])
def test_not_registered_becomes_unknown_endpoint(stored: str) -> None:
    rebuilt = rebuild_exception(record("NotRegistered", "celery.exceptions", [stored]))
    assert type(rebuilt) is UnknownEndpoint
    assert str(rebuilt) == "no endpoint 'volume.nope': the node does not serve that task"
    assert rebuilt.details == {"task": "volume.nope"}


# -- garbage never raises ---------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        "boom",
        42,
        ["exc_type", "NotFound"],
        {"exc_message": ["no type"]},
        {"exc_type": None, "exc_module": None, "exc_message": None},
        {"exc_type": ["x"], "exc_module": {"a": 1}, "exc_message": {"k": "v"}},
        record("NotFound", "managers.exceptions", ["m", {"id": 1}, "extra", "more"]),
        record("NotFound", "managers.exceptions", ["m", "not a mapping"]),
        record("NotFound", "managers.exceptions", ["m", 5]),
        record("Conflict", "managers.exceptions", [["not", "text"], [1, 2, 3]]),
        record("NotRegistered", "celery.exceptions", []),
    ],
)
def test_garbage_comes_back_as_an_error_and_never_raises(garbage: Any) -> None:
    rebuilt = rebuild_exception(garbage)
    assert isinstance(rebuilt, (RemoteError, UnknownEndpoint))


@pytest.mark.parametrize("garbage", ["boom", 42, ["exc_type", "NotFound"]])
def test_record_that_is_not_a_mapping_is_reported_as_unreadable(garbage: Any) -> None:
    rebuilt = rebuild_exception(garbage)
    assert type(rebuilt) is RemoteError
    assert str(rebuilt) == f"unreadable error record: {garbage!r}"
    assert rebuilt.remote_type == "unknown"


def test_registered_class_whose_constructor_refuses_the_args_is_remote_error() -> None:
    rebuilt = rebuild_exception(
        record("NotFound", "managers.exceptions", ["m", {"id": 1}, "extra", "more"])
    )
    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_type == "NotFound"
    assert rebuilt.remote_message == "m"


def test_record_without_exc_type_is_a_remote_exception() -> None:
    rebuilt = rebuild_exception({"exc_message": ["no type"]})
    assert type(rebuilt) is RemoteError
    assert str(rebuilt) == "Exception: no type"


def test_empty_record_means_no_exception() -> None:
    assert rebuild_exception(None) is None
    assert rebuild_exception({}) is None


def test_exception_objects_pass_through_or_are_wrapped() -> None:
    own = Conflict("busy", {"id": "v1"})
    assert rebuild_exception(own) is own
    foreign = rebuild_exception(KeyError("k"))
    assert type(foreign) is RemoteError
    assert foreign.remote_type == "KeyError"


# -- round trip -------------------------------------------------------------------------


def test_remote_error_round_trip_keeps_type_traceback_and_host() -> None:
    try:
        raise ValueError("x")
    except ValueError as exc:
        original = RemoteError.from_exception(exc, host="h")
    assert "Traceback (most recent call last)" in original.traceback

    stored = record_of(original)
    assert stored["exc_type"] == "RemoteError"
    assert stored["exc_module"] == "workers.exceptions"

    rebuilt = rebuild_exception(stored)

    assert type(rebuilt) is RemoteError
    assert str(rebuilt) == "ValueError: x"
    assert rebuilt.remote_type == "ValueError"
    assert rebuilt.remote_message == "x"
    assert rebuilt.traceback == original.traceback
    assert rebuilt.traceback.endswith("ValueError: x\n")
    assert rebuilt.host == "h"


@pytest.mark.parametrize("backend", [RedisBackend, SentinelBackend, CacheBackend])
def test_every_backend_rebuilds_with_rebuild_exception(backend: type) -> None:
    assert issubclass(backend, SafeExceptionsMixin)
    assert backend.exception_to_python is SafeExceptionsMixin.exception_to_python


@pytest.fixture
def cache_backend() -> CacheBackend:
    app = Celery("taskyard-test", set_as_current=False)
    app.conf.result_serializer = "json"
    app.conf.accept_content = ["json"]
    app.conf.result_accept_content = ["json"]
    return CacheBackend(app=app, url="memory://")


@pytest.mark.parametrize(
    ("raised", "expected_type", "expected_message"),
    [
        (NotFound("no volume", {"id": "v1"}), NotFound, "no volume"),
        (ValueError("bad"), RemoteError, "ValueError: bad"),
        (UnregisteredError("hidden"), RemoteError, "UnregisteredError: hidden"),
        (ConfigError("cfg"), RemoteError, "ConfigError: cfg"),
    ],
)
def test_failure_stored_by_celery_is_read_back_safely(
    cache_backend: CacheBackend,
    raised: BaseException,
    expected_type: type,
    expected_message: str,
) -> None:
    task_id = str(uuid.uuid4())
    cache_backend.mark_as_failure(task_id, raised)

    result = cache_backend.get_result(task_id)

    assert type(result) is expected_type
    assert str(result) == expected_message
