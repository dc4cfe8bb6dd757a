"""Watching pieces without processes: progress display, Flower settings, log lines, status."""

from __future__ import annotations

import io
import logging
import re
import time
import types
from dataclasses import replace
from typing import Any

import pytest

from managers.base import RequestContext, current_context
from tests.conftest import make_config
from workers.cli.flower import check_exposure, flower_argv, flower_environment
from workers.cli.status import render as render_status
from workers.client.progress import render, wait_with_progress
from workers.core.application import Taskyard
from workers.core.config import FlowerConfig
from workers.exceptions import ConfigError, Timeout
from workers.extensions.consumer import EVENTS_TIMER_SLACK_S, Consumer
from workers.extensions.events import BATCH_LIMIT, EventDispatcher
from workers.node.logs import LOG_FORMAT, RequestIdFilter


class ScriptedHandle:
    """A handle whose progress follows a script, one step per poll (per look at ``ready``)."""

    service, method, id = "volume", "create_volume", "task-1"

    def __init__(self, steps: list[dict[str, Any] | None], result: Any) -> None:
        self.steps = list(steps)
        self.result = result
        self.looks = 0

    def ready(self) -> bool:
        self.looks += 1
        return self.looks > len(self.steps)

    def progress(self) -> dict[str, Any] | None:
        return self.steps[self.looks - 1]

    def wait(self, timeout: float | None = None) -> Any:
        return self.result


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def step(done: int, total: int, message: str) -> dict[str, Any]:
    return {"done": done, "total": total, "message": message}


@pytest.fixture(autouse=True)
def _fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workers.client.progress.POLL_INTERVAL_S", 0)
    monkeypatch.setattr("workers.client.progress.SHOW_AFTER_S", 0)


def test_the_bar_shows_how_far_the_work_has_come() -> None:
    assert render(step(3, 10, "copying"), width=10) == "[###.......] 3/10 copying"
    assert render(step(0, 0, ""), width=4) == "[....] 0/0"


def test_progress_goes_to_a_pipe_as_one_plain_line_per_step() -> None:
    handle = ScriptedHandle([step(1, 4, "a"), step(1, 4, "a"), None, step(2, 4, "b")], "done")
    out = io.StringIO()
    assert wait_with_progress(handle, 10, out) == "done"  # type: ignore[arg-type]
    assert out.getvalue() == "progress 1/4 a\nprogress 2/4 b\n"


def test_progress_on_a_terminal_is_one_bar_redrawn_in_place() -> None:
    handle = ScriptedHandle([step(1, 2, "half"), step(2, 2, "all")], {"ok": True})
    out = FakeTerminal()
    wait_with_progress(handle, 10, out)  # type: ignore[arg-type]
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and "2/2 all" in text


def test_a_call_without_progress_prints_nothing_on_stderr() -> None:
    out = io.StringIO()
    wait_with_progress(ScriptedHandle([None, None], 1), 10, out)  # type: ignore[arg-type]
    assert out.getvalue() == ""


def test_a_request_done_within_the_grace_prints_its_result_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.client.progress.SHOW_AFTER_S", 60)
    handle = ScriptedHandle([step(1, 1, "allocated"), step(1, 1, "allocated")], "done")
    out = FakeTerminal()
    assert wait_with_progress(handle, 10, out) == "done"  # type: ignore[arg-type]
    assert out.getvalue() == "" and handle.looks == 3  # it ran two polls, then was ready


def test_progress_shows_once_the_request_has_run_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]  # one second passes between two polls

    def sleep(_: float) -> None:
        now[0] += 1

    monkeypatch.setattr("workers.client.progress.SHOW_AFTER_S", 1.5)
    monkeypatch.setattr("workers.client.progress.time",
                        types.SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    steps = [step(1, 4, "a"), step(2, 4, "b"), step(3, 4, "c"), step(4, 4, "d")]
    out = io.StringIO()
    assert wait_with_progress(ScriptedHandle(steps, "done"), 60, out) == "done"  # type: ignore[arg-type]
    assert out.getvalue() == "progress 3/4 c\nprogress 4/4 d\n"  # polled at 2 s and 3 s


def test_waiting_with_progress_still_times_out_saying_it_may_still_run() -> None:
    class Never(ScriptedHandle):
        def ready(self) -> bool:
            return False

        def progress(self) -> None:
            return None

    with pytest.raises(Timeout, match="may still run"):
        wait_with_progress(Never([], None), 0.01, io.StringIO())  # type: ignore[arg-type]


def test_flower_listens_on_loopback_without_credentials_by_default() -> None:
    config = make_config()
    assert config.flower == FlowerConfig("127.0.0.1", 5555, (), False)
    check_exposure(config)
    assert flower_argv(config)[:3] == ["flower", "--address=127.0.0.1", "--port=5555"]
    assert flower_environment(config) == {}


@pytest.mark.parametrize("address", ["0.0.0.0", "", "10.1.2.3"])
def test_flower_off_loopback_needs_credentials(address: str) -> None:
    config = make_config()
    exposed = config.with_overrides(flower=replace(config.flower, address=address))
    with pytest.raises(ConfigError, match=r"flower\.basic_auth"):
        check_exposure(exposed)
    guarded = exposed.with_overrides(
        flower=replace(exposed.flower, basic_auth=("a:b", "c:d"), unauthenticated_api=True))
    check_exposure(guarded)
    assert flower_environment(guarded) == {"FLOWER_BASIC_AUTH": "a:b,c:d",
                                           "FLOWER_UNAUTHENTICATED_API": "true"}


def test_flower_credentials_must_be_user_colon_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKYARD_FLOWER__BASIC_AUTH", '["nopassword"]')
    with pytest.raises(ConfigError, match='expected a list of "user:password" strings'):
        make_config()


def test_every_log_line_carries_the_request_in_hand() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("taskyard.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside")
        token = current_context.set(RequestContext(request_id="abc123"))
        try:
            logger.info("inside")
        finally:
            current_context.reset(token)
    finally:
        logger.removeHandler(handler)
    outside, inside = stream.getvalue().splitlines()
    assert "[req=-] taskyard.test.logs: outside" in outside
    assert "[req=abc123] taskyard.test.logs: inside" in inside


def test_status_renders_nodes_queues_and_progress() -> None:
    text = render_status({
        "services": {"volume": {"states": {"up": 1, "down": 1},
                                "hosts": [{"host": "a", "state": "up", "age": 1.0},
                                          {"host": "b", "state": "down", "age": 99.0}]}},
        "queues": {"volume": 3, "volume.a": 0},
        "delayed": {"count": 12, "next_due": time.time() + 30},
        "not_run": {"volume": {"expired": 2, "cancelled": 1}},
        "running": [{"name": "volume.create_volume", "worker": "taskyard@a", "id": "0123456789",
                     "state": "PROGRESS", "progress": step(2, 8, "wrote 128 MiB")}],
        "answered": ["taskyard@a"],
    })
    assert "volume       1 down, 1 up" in text and "a(up) b(down)" in text
    assert "volume                              3 waiting" in text
    assert re.search(r"DELAYED  12 waiting, next due in (29|30)\.\d s \(\d{4}-", text), text
    assert "NOT RUN  (expired before they ran, or cancelled)" in text
    assert "  volume       cancelled 1, expired 2" in text
    assert "volume.create_volume" in text and "01234567  2/8 wrote 128 MiB" in text
    assert "RUNNING  (nodes answering: 1)" in text


# -- a node's task events ---------------------------------------------------------------------


class LoopHub:
    """The calls a consumer makes on its event loop, run when the test says."""

    def __init__(self) -> None:
        self.soon: list[Any] = []
        self.later: list[tuple[float, Any]] = []

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.soon.append(lambda: callback(*args))

    def call_later(self, delay: float, callback: Any) -> None:
        self.later.append((delay, callback))

    def turn(self) -> None:
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()


class Flushes:
    def __init__(self) -> None:
        self.count = 0

    def flush(self) -> None:
        self.count += 1


def gathering_consumer(interval: float) -> tuple[Any, LoopHub, Flushes]:
    consumer: Any = object.__new__(Consumer)  # the event hooks only: no broker, no pool
    consumer.app = type("App", (), {"config": make_config().with_overrides(
        task_events_interval=interval)})()
    consumer.hub, consumer.event_dispatcher = LoopHub(), Flushes()
    return consumer, consumer.hub, consumer.event_dispatcher


def test_a_node_publishes_what_it_gathered_once_per_interval() -> None:
    consumer, hub, dispatcher = gathering_consumer(0.25)
    for _ in range(30):  # ten requests' events within one interval
        consumer.on_send_event_buffered()
    hub.turn()
    assert [delay for delay, _ in hub.later] == [0.25] and dispatcher.count == 0
    hub.later.pop()[1]()
    assert dispatcher.count == 1
    consumer.on_send_event_buffered()  # the next interval's first event arms the timer again
    hub.turn()
    assert len(hub.later) == 1


def test_a_timer_lost_with_its_loop_is_armed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer, hub, _ = gathering_consumer(0.25)
    clock = [100.0]
    monkeypatch.setattr("workers.extensions.consumer.time.monotonic", lambda: clock[0])
    consumer.on_send_event_buffered()
    hub.turn()
    hub.later.clear()  # the loop went away with the timer (a reconnection)
    consumer.on_send_event_buffered()
    hub.turn()
    assert hub.later == []
    clock[0] += 0.25 + EVENTS_TIMER_SLACK_S
    consumer.on_send_event_buffered()
    hub.turn()
    assert len(hub.later) == 1


def test_a_stopping_node_publishes_what_it_gathered() -> None:
    consumer, _, dispatcher = gathering_consumer(10)
    consumer.on_send_event_buffered()
    consumer._publish_due_events()  # what stop() and shutdown() do before Celery's steps close
    assert dispatcher.count == 1 and consumer._events_due_by == 0


def test_an_interval_of_zero_publishes_at_the_next_turn_as_celery_does() -> None:
    consumer, hub, dispatcher = gathering_consumer(0)
    consumer._flush_events_promise = consumer._flush_events
    consumer.on_send_event_buffered()
    hub.turn()
    assert dispatcher.count == 1 and hub.later == []


def node_dispatcher(app: Any) -> tuple[Any, list[Any]]:
    dispatcher = app.events.Dispatcher(app.connection_for_write(), hostname="n@h",
                                       buffer_group=["task"], enabled=True)
    published: list[Any] = []
    dispatcher._publish = lambda event, producer, routing_key, **kw: published.append(
        (routing_key, event))
    return dispatcher, published


def test_a_nodes_events_go_out_in_messages_of_up_to_the_batch_limit() -> None:
    app = Taskyard(make_config().with_overrides(broker_url="memory://",
                                                result_backend="cache+memory://"))
    dispatcher, published = node_dispatcher(app)
    assert isinstance(dispatcher, EventDispatcher) and dispatcher.buffer_limit == BATCH_LIMIT
    for index in range(BATCH_LIMIT + 5):
        dispatcher.send("task-received", uuid=str(index))
    assert [(key, len(events)) for key, events in published] == [("task.multi", BATCH_LIMIT)]
    dispatcher.flush()
    assert [len(events) for _, events in published] == [BATCH_LIMIT, 5]
    app.close()


def test_a_reconnected_node_keeps_the_events_it_had_gathered() -> None:
    """Celery's worker carries over only failed sends; gathered task events come along too."""
    app = Taskyard(make_config().with_overrides(broker_url="memory://",
                                                result_backend="cache+memory://"))
    lost, _ = node_dispatcher(app)
    lost.send("task-received", uuid="a")
    lost.send("task-started", uuid="a")
    fresh, published = node_dispatcher(app)
    fresh.extend_buffer(lost)  # what Celery's events step does with the old dispatcher
    fresh.flush()
    assert [[(e["type"], e["uuid"]) for e in events] for _, events in published] == [
        [("task-received", "a"), ("task-started", "a")]]
    assert not any(lost._group_buffer.values())
    app.close()
