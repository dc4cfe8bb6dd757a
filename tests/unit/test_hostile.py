"""Whatever arrives, the dispatcher answers with a result or a declared error.

The property test throws arbitrary method names and argument dictionaries
at the node's dispatch path (task lookup, service check, version check,
binding, the manager) with records on fakeredis.
"""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.core.application import Taskyard
from workers.core.deadletters import DeadLetters
from workers.exceptions import (
    Conflict,
    InvalidRequest,
    NotFound,
    RemoteError,
    TaskyardError,
    UnknownEndpoint,
    lookup_wire_error,
)
from workers.node.node import register_tasks

#: What a node may answer besides a result. RemoteError would mean a bug.
DECLARED = (InvalidRequest, UnknownEndpoint, NotFound, Conflict)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                              max_size=4),
    max_leaves=12,
)
argument_names = st.sampled_from(
    ["size_gb", "name", "volume_id", "new_size_gb", "snapshot_id", "host", "lines"]
) | st.text(alphabet=string.printable, max_size=12)
method_names = st.sampled_from([
    "create_volume", "delete_volume", "extend_volume", "get_volume", "list_volumes",
    "create_snapshot", "delete_snapshot", "get_snapshot", "list_snapshots", "ping",
    "init_host", "cleanup_host", "_own", "__class__", "__init__", "driver", "volumes",
    "capabilities", "periodic.reconcile", "",
]) | st.text(max_size=15)


def dispatch(app: Any, service: str, method: str, args: Any, kwargs: Any) -> Any:
    """What a node does with a message: find the task, then run it as the worker would."""
    task = app.tasks.get(f"{service}.{method}")
    if task is None or not hasattr(task, "dispatch"):
        raise UnknownEndpoint(f"no endpoint {service}.{method!r}")
    task.push_request(id="task-under-test", args=args, kwargs=kwargs,
                      delivery_info={"routing_key": service}, headers={})
    try:
        return task.dispatch(args, kwargs)
    finally:
        task.pop_request()


@pytest.fixture
def app(unit_app: Taskyard) -> Any:
    register_tasks(unit_app, frozenset(unit_app.config.services))
    return unit_app


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=method_names,
       kwargs=st.dictionaries(argument_names, json_values, max_size=4),
       args=st.lists(json_values, max_size=2))
def test_any_method_and_arguments_get_a_result_or_a_declared_error(
    app: Any, method: str, kwargs: dict[str, Any], args: list[Any]
) -> None:
    try:
        dispatch(app, "volume", method, args, kwargs)
    except DECLARED:
        pass
    except RemoteError as exc:  # pragma: no cover - the failure this test exists to find
        pytest.fail(f"volume.{method}({args}, {kwargs}) crashed the endpoint: {exc}")


@pytest.mark.parametrize("method", ["init_host", "cleanup_host", "_own", "__class__",
                                    "driver", "volumes", "capabilities", "report_progress"])
def test_names_that_reach_past_endpoints_are_unknown(app: Any, method: str) -> None:
    with pytest.raises(UnknownEndpoint):
        dispatch(app, "volume", method, [], {})


def test_refused_arguments_go_to_the_dead_letter_list(app: Any) -> None:
    with pytest.raises(InvalidRequest, match="argument 'size_gb' must be int"):
        dispatch(app, "volume", "create_volume", [], {"size_gb": "ten"})
    (letter,) = DeadLetters(app.records).list("volume")
    assert letter["task"] == "volume.create_volume" and letter["kwargs"] == {"size_gb": "ten"}
    assert "must be int" in letter["reason"] and letter["requeueable"] is True


def test_every_declared_error_is_a_wire_error() -> None:
    for cls in DECLARED:
        assert issubclass(cls, TaskyardError)
        assert lookup_wire_error(cls.__module__, cls.__qualname__) is cls
