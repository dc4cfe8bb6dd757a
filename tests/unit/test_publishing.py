"""Celery's publish signals on every send path, through an in-process node that checks signatures.

A receiver of ``before_task_publish`` writes a header into each message,
as a tracing tool writes its trace context; the node (signing on) serves
a message only when that header was signed with the rest, and a
``task_prerun`` receiver on the node records the header it received. The
same receivers see Celery's own ``send_task``, so the arguments the client
passes are compared with Celery's. The OpenTelemetry instrumentation over
real node processes is ``tests/integration/test_tracing.py``.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import fakeredis
import pytest
from celery import signals

from managers.base import Manager, endpoint, periodic_task
from tests.conftest import in_process_worker, make_app, make_config, memory_config
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.core.config import Config, ServiceConfig
from workers.extensions.publishing import announce, listened
from workers.extensions.signing import SIGNATURE_HEADER
from workers.node.periodic import PeriodicScheduler
from workers.testing import wait_for

KEY = "publishing-key-0123456789"
HOST = "node-pub"
#: The header the test's receiver writes, as a tracing tool writes ``traceparent``.
PROBE = "probe"


class RelayManager(Manager):
    @endpoint
    def echo(self, text: str) -> str:
        return text

    @endpoint(autoretry_for=(RuntimeError,), max_retries=1, default_retry_delay=0.1)
    def flaky(self, key: str) -> int:
        """Fails its first run (a retry is sent), succeeds its second."""
        runs = int(self.redis.incr(f"relay:flaky:{key}"))
        if runs == 1:
            raise RuntimeError("first run fails")
        return runs

    @endpoint
    def relay(self, text: str) -> str:
        """Hand the request on (a request made inside an endpoint); the handed-on task id."""
        return self.fleet.cast("relay", "echo", text=text)

    @periodic_task(spacing=3600)
    def tidy(self) -> None:
        self.redis.rpush("relay:tidied", 1)


class Recorder:
    """Receivers of both publish signals (writing the probe header) and of ``task_prerun``."""

    def __init__(self) -> None:
        self.before: list[dict[str, Any]] = []
        self.after: list[dict[str, Any]] = []
        #: Task id -> the probe header the node's task saw, run after run.
        self.received: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def on_before(self, **kwargs: Any) -> None:
        kwargs["headers"][PROBE] = probe(kwargs["headers"])
        with self._lock:
            self.before.append({**kwargs, "headers": dict(kwargs["headers"])})

    def on_after(self, **kwargs: Any) -> None:
        with self._lock:
            self.after.append(kwargs)

    def on_prerun(self, task_id: str, task: Any, **_: Any) -> None:
        with self._lock:
            self.received.setdefault(task_id, []).append(task.request.get(PROBE))

    def of(self, task_id: str, retries: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        """The before and after arguments of ``task_id``'s message (of that run)."""
        (before,) = [b for b in self.before if b["headers"]["id"] == task_id
                     and b["headers"]["retries"] == retries]
        (after,) = [a for a in self.after if a["headers"]["id"] == task_id
                    and a["headers"]["retries"] == retries]
        return before, after

    def served(self, task_ids: list[str]) -> bool:
        """Whether the node ran each task with the probe the receiver wrote into it."""
        return all(self.received.get(t) == [f"probe-{t}-0"] for t in task_ids)


def probe(headers: dict[str, Any]) -> str:
    """What the receiver writes into a message: its task id and run."""
    return f"probe-{headers['id']}-{headers['retries']}"


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    signals.before_task_publish.connect(recorder.on_before, weak=False)
    signals.after_task_publish.connect(recorder.on_after, weak=False)
    signals.task_prerun.connect(recorder.on_prerun, weak=False)
    yield recorder
    signals.before_task_publish.disconnect(recorder.on_before)
    signals.after_task_publish.disconnect(recorder.on_after)
    signals.task_prerun.disconnect(recorder.on_prerun)


@pytest.fixture(scope="module")
def module_redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture(scope="module")
def config() -> Config:
    base = make_config(env={"TASKYARD_ENV": "testing"})
    relay = ServiceConfig(name="relay", manager=f"{__name__}:RelayManager", driver="os.path")
    return memory_config(base, host=HOST, services={"relay": relay}, rpc_timeout=10.0,
                         security=replace(base.security, signing_key=KEY))


@pytest.fixture(scope="module")
def app(config: Config, module_redis: fakeredis.FakeRedis, recorder: Recorder
        ) -> Iterator[Taskyard]:
    with in_process_worker(make_app(config, module_redis), ["relay", f"relay.{HOST}"]) as app:
        wait_for(lambda: app.registry.alive_hosts("relay"), 10, "the node's first heartbeat")
        yield app


def test_a_cast_sends_the_publish_signals_with_the_arguments_celery_passes(
        app: Taskyard, recorder: Recorder) -> None:
    celery_id = app.send_task("relay.echo", kwargs={"text": "a"}, queue="relay").id
    client_id = Client("relay", app=app).cast("echo", text="a").id
    wait_for(lambda: recorder.served([celery_id, client_id]), 10, "both requests served")
    (celery, celery_after), (ours, ours_after) = recorder.of(celery_id), recorder.of(client_id)
    assert ours.keys() == celery.keys() == {
        "signal", "sender", "body", "exchange", "routing_key", "declare", "headers",
        "properties", "retry_policy"}
    for key in ("signal", "sender", "exchange", "routing_key", "retry_policy"):
        assert ours[key] == celery[key], key
    assert (ours["exchange"], ours["routing_key"]) == ("", "relay")
    assert [q.name for q in ours["declare"]] == [q.name for q in celery["declare"]] == ["relay"]
    assert ours["body"] == celery["body"] == ((), {"text": "a"}, {
        "callbacks": None, "errbacks": None, "chain": None, "chord": None})
    assert ours["properties"].keys() == celery["properties"].keys()
    # The client's headers are Celery's, plus the request's context and API version.
    assert set(ours["headers"]) - set(celery["headers"]) == {
        "taskyard_request_id", "taskyard_caller", "taskyard_user", "taskyard_version"}
    assert ours_after.keys() == celery_after.keys() == {
        "signal", "sender", "body", "headers", "exchange", "routing_key"}
    assert ours_after["headers"][PROBE] == f"probe-{client_id}-0"


def _cast(app: Taskyard) -> list[str]:
    return [Client("relay", app=app).cast("echo", text="cast").id]


def _call(app: Taskyard) -> list[str]:
    before = len(app.registry.alive_hosts("relay"))
    assert Client("relay", app=app).call("echo", text="call") == "call" and before
    return []  # the call returned: its request was served; its id is checked below


def _cast_many(app: Taskyard) -> list[str]:
    handles = Client("relay", app=app).cast_many("echo", [{"text": str(i)} for i in range(5)],
                                                  batch_size=2)
    return [h.id for h in handles]


def _fanout(app: Taskyard) -> list[str]:
    client = Client("relay", app=app)
    assert client.fanout("echo", text="everyone") == [HOST]
    return []


def _host_queue(app: Taskyard) -> list[str]:
    return [Client("relay", app=app, host=HOST).cast("echo", text="mine").id]


def _celery(app: Taskyard) -> list[str]:
    """Celery's own task sender: what forwarding to an owner and periodic runs go through."""
    return [app.send_task("relay.echo", kwargs={"text": "celery"}, queue=f"relay.{HOST}").id]


def _nested(app: Taskyard) -> list[str]:
    handle = Client("relay", app=app).cast("relay", text="nested")
    return [handle.id, handle.wait()]


def _delayed(app: Taskyard) -> list[str]:
    handle = Client("relay", app=app).prepare(countdown=0.2).cast("echo", text="later")
    assert handle.wait() == "later"
    return [handle.id]


@pytest.mark.parametrize("send", [_cast, _call, _cast_many, _fanout, _host_queue, _celery,
                                  _nested, _delayed])
def test_what_a_receiver_adds_to_the_headers_is_signed_and_reaches_the_node(
        app: Taskyard, recorder: Recorder, send: Any) -> None:
    """Every send path: the node (signing on) verified the probe and its task received it."""
    announced = len(recorder.before)
    task_ids = send(app)
    new = recorder.before[announced:]
    assert new, "no before_task_publish"
    task_ids = task_ids or [b["headers"]["id"] for b in new]
    wait_for(lambda: recorder.served(task_ids), 10, "each request served with its probe")
    for task_id in task_ids:
        before, after = recorder.of(task_id)
        # Signed again once the receivers had written into the headers.
        assert after["headers"][PROBE] == f"probe-{task_id}-0"
        assert after["headers"][SIGNATURE_HEADER] != before["headers"][SIGNATURE_HEADER]


def test_a_retry_is_announced_signed_and_run_with_what_the_receiver_wrote(
        app: Taskyard, recorder: Recorder) -> None:
    """A failed run's retry is sent by the node (the same task id, one more run)."""
    handle = Client("relay", app=app).cast("flaky", key="retried")
    assert handle.wait() == 2
    first, retry = recorder.of(handle.id, 0), recorder.of(handle.id, 1)
    assert first[0]["sender"] == retry[0]["sender"] == "relay.flaky"
    assert retry[0]["routing_key"] == "relay" and retry[0]["headers"]["eta"]
    wait_for(lambda: len(recorder.received.get(handle.id, ())) == 2, 10, "both runs")
    assert recorder.received[handle.id] == [f"probe-{handle.id}-0", f"probe-{handle.id}-1"]


def test_a_periodic_run_is_announced_signed_and_run(
        app: Taskyard, recorder: Recorder, module_redis: fakeredis.FakeRedis) -> None:
    spec = app.spec("relay").periodic["tidy"]
    scheduler = PeriodicScheduler(app, HOST, app.records, [("relay", spec)], pending_ttl=60)
    announced = len(recorder.before)
    assert scheduler.fire("relay", spec)
    (before,) = recorder.before[announced:]
    assert before["sender"] == "relay.periodic.tidy"
    wait_for(lambda: module_redis.llen("relay:tidied") == 1, 10, "the periodic run")
    assert recorder.served([before["headers"]["id"]])


def test_with_no_receiver_nothing_is_done(app: Taskyard, recorder: Recorder) -> None:
    signals.before_task_publish.disconnect(recorder.on_before)
    signals.after_task_publish.disconnect(recorder.on_after)
    try:
        assert not listened()
        # Nothing of the app or the messages is touched: the check is the first thing done.
        assert announce(object(), [object()]) is None  # type: ignore[list-item]
        assert Client("relay", app=app).call("echo", text="unheard") == "unheard"
    finally:
        signals.before_task_publish.connect(recorder.on_before, weak=False)
        signals.after_task_publish.connect(recorder.on_after, weak=False)


#: Set by a receiver in before_task_publish, read back in after_task_publish.
current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="sender's")


def test_each_message_is_announced_in_the_senders_context_and_confirmed_in_its_own(
        app: Taskyard, recorder: Recorder) -> None:
    """A receiver that makes something current in ``before`` (a span) and ends it in ``after``
    sees, for every message of a batch, the sender's context first and its own after."""
    seen: list[tuple[str, str, str]] = []

    def before(headers: dict[str, Any], **_: Any) -> None:
        seen.append(("before", headers["id"], current.get()))
        current.set(headers["id"])

    def after(headers: dict[str, Any], **_: Any) -> None:
        seen.append(("after", headers["id"], current.get()))

    signals.before_task_publish.connect(before, weak=False)
    signals.after_task_publish.connect(after, weak=False)
    try:
        handles = Client("relay", app=app).cast_many("echo", [{"text": "x"}] * 3)
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)
    ids = [h.id for h in handles]
    assert seen == [("before", i, "sender's") for i in ids] + [("after", i, i) for i in ids]
    assert current.get() == "sender's"


def test_a_receiver_that_fails_is_logged_and_the_request_still_goes(
        app: Taskyard, caplog: pytest.LogCaptureFixture) -> None:
    def broken(**_: Any) -> None:
        raise RuntimeError("a broken tracing tool")

    signals.before_task_publish.connect(broken, weak=False)
    try:
        assert Client("relay", app=app).call("echo", text="still") == "still"
    finally:
        signals.before_task_publish.disconnect(broken)
    assert "a broken tracing tool" in caplog.text
