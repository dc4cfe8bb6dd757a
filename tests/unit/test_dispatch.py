"""The dispatch path through an in-process Celery worker on the memory:// transport."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from managers.base import Manager, endpoint
from tests.conftest import in_process_worker, make_app, make_config, memory_config
from workers.client.rpc import Client, Handle
from workers.core.application import Taskyard
from workers.core.config import Config, ServiceConfig
from workers.exceptions import (
    Cancelled,
    InvalidRequest,
    NotFound,
    RemoteError,
    TaskyardError,
    Timeout,
    UnknownEndpoint,
    UnknownService,
    wire_error,
)
from workers.testing.kit import manager_of


@wire_error
class OutOfEchoes(TaskyardError):
    """Raised when the echo service is asked for too many echoes."""


class EchoDriver(ABC):
    @abstractmethod
    def echo(self, text: str) -> str: ...


class LoudEcho(EchoDriver):
    def echo(self, text: str) -> str:
        return text.upper()


#: Lets a test hold an endpoint mid-run (the worker runs in this process).
gate = threading.Event()
reached = threading.Event()
#: The runs of ``wobbly``, by attempt.
attempts: list[int] = []


class EchoManager(Manager):
    driver_interface = EchoDriver

    @endpoint
    def echo(self, text: str, times: int = 1) -> str:
        if times > 3:
            raise OutOfEchoes(f"only 3 echoes, not {times}")
        return " ".join([self.driver.echo(text)] * times)

    @endpoint
    def explode(self) -> None:
        raise ValueError("boom")

    @endpoint
    def slow(self, steps: int) -> dict[str, Any]:
        for done in range(1, steps + 1):
            self.report_progress(done, steps, f"step {done}")
            reached.set()
            gate.wait(10)
        return {"request_id": self.context.request_id if self.context else None}

    @endpoint(autoretry_for=(OSError,), max_retries=2, retry_backoff=0.05, retry_jitter=False)
    def wobbly(self, fail_times: int) -> dict[str, Any]:
        """Fail with OSError on the first ``fail_times`` runs."""
        attempt = self.context.attempt if self.context else 1
        attempts.append(attempt)
        if attempt <= fail_times:
            raise OSError(f"backend busy on run {attempt}")
        return {"attempt": attempt}

    @endpoint
    def whoami(self) -> dict[str, Any]:
        ctx = self.context
        assert ctx is not None
        return {"request_id": ctx.request_id, "caller": ctx.caller_host, "user": ctx.user}

    def helper(self) -> str:
        """Public but not an endpoint: unreachable by messages."""
        return "secret"


@pytest.fixture(scope="module")
def module_redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture(scope="module")
def config(module_redis: fakeredis.FakeRedis) -> Config:
    """One configuration for the module: the volume service plus an echo service."""
    base = make_config(env={"TASKYARD_ENV": "testing"})
    services = dict(base.services)
    services["echo"] = ServiceConfig(
        name="echo", manager=f"{__name__}:EchoManager", driver=f"{__name__}:LoudEcho",
    )
    return memory_config(base, host="node-a", services=services, rpc_timeout=10.0)


@pytest.fixture(autouse=True)
def _gates() -> Iterator[None]:
    yield
    gate.clear()
    reached.clear()


@pytest.fixture(scope="module")
def app(config: Config, module_redis: fakeredis.FakeRedis) -> Iterator[Taskyard]:
    """One in-process worker for the module."""
    queues = ["volume", "volume.node-a", "echo", "echo.node-a", "volume.node-b"]
    with in_process_worker(make_app(config, module_redis), queues) as app:
        yield app


def test_call_returns_the_endpoints_result(app: Taskyard) -> None:
    assert Client("echo", app=app).call("echo", text="hi", times=2) == "HI HI"


def test_volume_service_round_trip(app: Taskyard) -> None:
    volume = Client("volume", app=app)
    vol = volume.call("create_volume", size_gb=1, name="data")
    assert vol["status"] == "available" and vol["host"] == "node-a"
    handle = volume.cast("delete_volume", volume_id=vol["id"])
    assert isinstance(handle, Handle) and handle.id
    assert handle.wait()["status"] == "deleted"


def test_declared_errors_cross_the_wire_as_themselves_with_the_host(app: Taskyard) -> None:
    with pytest.raises(OutOfEchoes, match="only 3 echoes") as caught:
        Client("echo", app=app).call("echo", text="x", times=9)
    assert caught.value.host == "node-a"
    with pytest.raises(NotFound) as missing:
        Client("volume", app=app).call("get_volume", volume_id="nope")
    assert missing.value.host == "node-a"


def test_unexpected_errors_arrive_as_remote_error_with_type_traceback_and_host(
    app: Taskyard,
) -> None:
    with pytest.raises(RemoteError) as caught:
        Client("echo", app=app).call("explode")
    error = caught.value
    assert error.remote_type == "ValueError"
    assert error.remote_message == "boom"
    assert "raise ValueError" in error.traceback
    assert error.host == "node-a"


def _raw(app: Taskyard, name: str, *args: Any, **kwargs: Any) -> Handle:
    """Send a message as a hostile or outdated client would: no client-side checks."""
    result = app.send_task(name, args=args, kwargs=kwargs, queue=name.split(".")[0])
    return Handle(result, name.split(".")[0], name, None, 10)


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((), {}, "missing argument 'text'"),
        ((), {"text": "x", "loud": True}, "unexpected argument 'loud'"),
        ((), {"text": 5}, "argument 'text' must be str, got int 5"),
        ((), {"text": "x", "times": True}, "argument 'times' must be int, got bool"),
        (("x",), {}, "keyword arguments only"),
    ],
)
def test_bad_arguments_are_refused_on_the_node_with_invalid_request(
    app: Taskyard, args: tuple[Any, ...], kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidRequest, match=fragment) as caught:
        _raw(app, "echo.echo", *args, **kwargs).wait()
    assert caught.value.host == "node-a"


@pytest.mark.parametrize("name", ["echo.helper", "echo.init_host", "echo._private",
                                  "echo.__class__", "echo.driver", "echo.nosuch.thing"])
def test_names_that_are_not_endpoints_are_unknown_on_the_node(app: Taskyard, name: str) -> None:
    with pytest.raises(UnknownEndpoint, match="no endpoint"):
        _raw(app, name).wait()
    assert Client("echo", app=app).call("echo", text="still serving") == "STILL SERVING"


@pytest.fixture
def caller(app: Taskyard, config: Config, module_redis: fakeredis.FakeRedis) -> Taskyard:
    """Another process's app, without the echo service's code: only what the node published."""
    services = {name: svc for name, svc in config.services.items() if name != "echo"}
    return make_app(config.with_overrides(host="caller", services=services), module_redis)


@pytest.mark.parametrize("method", ["helper", "init_host", "_private", "__class__", "driver"])
def test_the_client_refuses_unknown_endpoints_before_sending(caller: Taskyard, method: str
                                                             ) -> None:
    with pytest.raises(UnknownEndpoint, match="endpoints: echo, explode, ping, slow, whoami"):
        Client("echo", app=caller).cast(method)


def test_the_client_refuses_an_unknown_service_at_once(caller: Taskyard) -> None:
    with pytest.raises(UnknownService, match="no node of it has published its endpoints"):
        Client("nope", app=caller)


def test_the_client_checks_arguments_before_sending(caller: Taskyard) -> None:
    client = Client("echo", app=caller)
    assert client.version == "1.0"
    with pytest.raises(InvalidRequest, match="missing argument 'text'"):
        client.cast("echo")


def test_progress_is_visible_while_the_endpoint_runs(app: Taskyard) -> None:
    handle = Client("echo", app=app).cast("slow", steps=2)
    assert reached.wait(10)
    deadline = threading.Event()
    progress = None
    for _ in range(100):
        progress = handle.progress()
        if progress:
            break
        deadline.wait(0.05)
    assert progress == {"done": 1, "total": 2, "message": "step 1"}
    gate.set()
    assert handle.wait()["request_id"]


def test_call_times_out_with_a_message_that_says_it_may_still_run(app: Taskyard) -> None:
    with pytest.raises(Timeout, match="may still run") as caught:
        Client("echo", app=app).prepare(timeout=0.3).call("slow", steps=1)
    assert caught.value.details["task_id"]
    gate.set()


def test_every_request_carries_a_context_from_the_caller(app: Taskyard, config: Config) -> None:
    seen = Client("echo", app=app, user="alice").call("whoami")
    assert len(seen["request_id"]) == 32
    assert seen["caller"] == config.host and seen["user"] == "alice"
    again = Client("echo", app=app).call("whoami")
    assert again["request_id"] != seen["request_id"]


def test_a_request_forwarded_in_circles_stops_with_an_error(app: Taskyard) -> None:
    volume = Client("volume", app=app)
    vol = volume.call("create_volume", size_gb=1)
    manager = manager_of(app, "volume")
    manager.volumes.transition(vol["id"], ("available",), {"host": "node-b"}, action="test")
    # node-b's queue is consumed here by a manager whose host is node-a: each
    # delivery forwards again, until the hop limit stops it.
    with pytest.raises(RemoteError, match="forwarded"):
        volume.call("delete_volume", volume_id=vol["id"])


def test_the_node_keeps_one_manager_per_service(app: Taskyard) -> None:
    manager = manager_of(app, "echo")
    assert manager_of(app, "echo") is manager
    assert Client("echo", app=app).call("ping")["host"] == "node-a"


def test_cast_many_sends_every_request_and_each_is_served(app: Taskyard) -> None:
    handles = Client("echo", app=app).cast_many("echo", [{"text": f"n{i}"} for i in range(20)])
    assert len({h.id for h in handles}) == 20
    assert [h.wait() for h in handles] == [f"N{i}" for i in range(20)]


def test_cast_many_refuses_every_call_when_one_is_bad(caller: Taskyard) -> None:
    client = Client("echo", app=caller)
    with pytest.raises(InvalidRequest,
                       match=r"call 2 of 3: echo\.echo: argument 'text' must be str"):
        client.cast_many("echo", [{"text": "a"}, {"text": "b"}, {"text": 3}])
    assert client.cast_many("echo", []) == []


# -- a request's life on the in-process node (the testing kit's second level) ------------


def test_a_failure_the_endpoint_retries_runs_again_and_reports_its_attempt(app: Taskyard) -> None:
    attempts.clear()
    assert Client("echo", app=app).call("wobbly", fail_times=2) == {"attempt": 3}
    assert attempts == [1, 2, 3]
    attempts.clear()
    with pytest.raises(RemoteError, match="backend busy on run 3"):
        Client("echo", app=app).call("wobbly", fail_times=5)
    assert attempts == [1, 2, 3]  # max_retries=2 after the first run


def test_a_delayed_request_runs_once_due_on_the_in_process_node(app: Taskyard) -> None:
    started = time.monotonic()
    handle = Client("echo", app=app).prepare(countdown=0.5).cast("echo", text="later")
    assert handle.wait(10) == "LATER"
    assert time.monotonic() - started >= 0.45


def test_a_queued_request_cancelled_on_the_in_process_node_never_runs(app: Taskyard) -> None:
    client = Client("echo", app=app)
    handle = client.prepare(host="node-z").cast("echo", text="never")  # nobody consumes it
    outcome = client.cancel(handle.id)
    assert outcome.changed and handle.state == "REVOKED"
    with pytest.raises(Cancelled):
        handle.wait(1)
