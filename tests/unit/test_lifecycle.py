"""A request's life, in one process: timing checks, retry policies, cancel scopes, and the
Redis structures (delayed requests, the mover, cancellations, the one-step take) on fakeredis."""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import types
from datetime import datetime, timedelta, timezone

import fakeredis
import pytest

from drivers.cancellation import CancelScope, current_scope
from drivers.exceptions import Cancelled, DriverError
from drivers.executor import Executor
from managers.base import Manager, endpoint, periodic_task, retry_policy
from managers.exceptions import Conflict, InvalidRequest, NotFound
from managers.retries import RetryPolicy
from workers.client.handle import FINISHED, REMOVED, RUNNING, STOPPING, Cancellation
from workers.client.timing import ETA_PAST_TOLERANCE_S, Timing
from workers.core.delays import Delayed, DelayedRequests, Marker
from workers.core.keys import (
    DELAYED_ENTRIES_KEY,
    DELAYED_KEY,
    INFLIGHT_OWNERS_KEY,
    INFLIGHT_TASKS_KEY,
    MOVER_LEASE_KEY,
    attempts_key,
    bell_key,
    inflight_key,
    revoked_key,
)
from workers.core.revocations import Holder, Revocations
from workers.exceptions import Expired
from workers.extensions.backend import rebuild_exception
from workers.extensions.consumer import _runs_in_the_pool
from workers.extensions.take import TAKE, ring
from workers.extensions.transport import Acknowledgements
from workers.node.cancellation import TERMINATED, Terminations
from workers.node.mover import Mover

# -- when a request may run ------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"countdown": -1}, r"countdown=-1: expected a number of seconds >= 0"),
    ({"countdown": True}, r"countdown=True"),
    ({"countdown": math.nan}, r"countdown=nan"),
    ({"expires": 0}, r"expires=0: expected a number of seconds > 0"),
    ({"eta": "tomorrow"}, r"eta='tomorrow': expected a datetime"),
    ({"countdown": 5, "eta": datetime.now(timezone.utc)}, "give countdown or eta, not both"),
    ({"countdown": 60, "expires": 30}, r"expires \(.*\) is not after its eta: it would never run"),
    ({"eta": datetime.now(timezone.utc) - timedelta(minutes=5)},
     r"is \d+ s in the past \(more than 10 s\)"),
    ({"expires": datetime.now(timezone.utc) - timedelta(seconds=1)},
     r"is not after it is sent"),
])
def test_bad_timing_is_refused_saying_what_was_wrong(options: dict[str, object],
                                                     message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        Timing(**options)  # type: ignore[arg-type]


def test_a_countdown_and_an_expiry_count_from_each_send() -> None:
    timing = Timing(countdown=10, expires=60)
    times = timing.at(1000.0)
    assert (times.due, times.expires) == (1010.0, 1060.0)
    assert timing.at(2000.0).due == 2010.0


def test_an_eta_a_little_in_the_past_runs_now_and_a_naive_one_is_local_time() -> None:
    now = time.time()
    slightly = datetime.fromtimestamp(now - ETA_PAST_TOLERANCE_S / 2, timezone.utc)
    assert Timing(eta=slightly).at(now).due is None
    local = datetime.fromtimestamp(now + 60)  # naive: local time, as Python reads it
    assert Timing(eta=local).at(now).due == pytest.approx(now + 60)


def test_a_call_expires_at_its_timeout_unless_it_says_otherwise() -> None:
    assert Timing().at(100.0, deadline_s=30).expires == 130.0
    assert Timing(expires=5).at(100.0, deadline_s=30).expires == 105.0
    assert Timing().at(100.0).expires is None


def test_a_call_delayed_past_its_timeout_is_refused_naming_the_timeout() -> None:
    with pytest.raises(InvalidRequest, match=r"the call's timeout \(30 s\) ends before its eta"):
        Timing(countdown=60).at(100.0, deadline_s=30)


def test_prepare_replaces_one_delay_with_the_other() -> None:
    timing = Timing(countdown=5, expires=60)
    eta = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert timing.replace(eta=eta) == Timing(eta=eta, expires=60)
    assert timing.replace(expires=90) == Timing(countdown=5, expires=90)


# -- retries ---------------------------------------------------------------------------


def test_retry_countdowns_follow_celerys_autoretry() -> None:
    fixed = RetryPolicy(autoretry_for=(DriverError,))
    assert [fixed.countdown(n) for n in range(3)] == [180.0, 180.0, 180.0]
    doubling = RetryPolicy(autoretry_for=(DriverError,), retry_backoff=True,
                           retry_backoff_max=5, retry_jitter=False)
    assert [doubling.countdown(n) for n in range(5)] == [1, 2, 4, 5, 5]
    jittered = RetryPolicy(autoretry_for=(DriverError,), retry_backoff=2)
    rng = random.Random(7)
    assert all(0 <= jittered.countdown(3, rng) <= 16 for _ in range(50))
    assert fixed.allows(2) and not fixed.allows(3)
    assert RetryPolicy(autoretry_for=(DriverError,), max_retries=None).allows(10_000)


def test_a_requests_own_errors_are_never_retried_whatever_autoretry_for_says() -> None:
    policy = RetryPolicy(autoretry_for=(Exception,))
    assert policy.retries(DriverError("busy"))
    for error in (InvalidRequest("no"), NotFound("gone"), Conflict("busy"), Cancelled("stop")):
        assert not policy.retries(error)


def test_endpoint_takes_celerys_retry_options_and_refuses_others() -> None:
    class Service(Manager):
        @endpoint(autoretry_for=(DriverError,), max_retries=5, retry_backoff=True)
        def work(self) -> None:
            """Work."""

        @endpoint
        def plain(self) -> None:
            """Plain."""

    policy = retry_policy(Service.endpoints()["work"])
    assert policy == RetryPolicy(autoretry_for=(DriverError,), max_retries=5, retry_backoff=True)
    assert retry_policy(Service.endpoints()["plain"]) is None
    with pytest.raises(TypeError, match=r"unknown option\(s\) retries; the retry options are"):
        endpoint(retries=3)(lambda self: None)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="autoretry_for needs exception classes"):
        endpoint(autoretry_for="DriverError")(lambda self: None)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"max_retries=-1: expected a whole number >= 0"):
        endpoint(autoretry_for=(DriverError,), max_retries=-1)(lambda self: None)


def test_a_retry_option_on_a_periodic_task_is_refused_naming_where_it_belongs() -> None:
    with pytest.raises(TypeError, match=r"periodic_task takes no retry options \(max_retries\)"
                                        r": retries are for endpoints"):
        periodic_task(spacing=10, max_retries=3)


# -- stopping a request in hand ----------------------------------------------------------


def test_a_cancelled_scope_kills_its_running_command_and_the_executor_says_cancelled() -> None:
    scope = CancelScope("task-1")
    token = current_scope.set(scope)
    caught: list[BaseException] = []

    def run() -> None:
        context_token = current_scope.set(scope)
        try:
            Executor()("sleep", "60")
        except BaseException as exc:
            caught.append(exc)
        finally:
            current_scope.reset(context_token)

    try:
        runner = threading.Thread(target=run)
        started = time.monotonic()
        runner.start()
        deadline = time.monotonic() + 10
        while not scope._groups and time.monotonic() < deadline:
            time.sleep(0.01)
        group = next(iter(scope._groups))
        scope.cancel("asked by a test")
        runner.join(10)
        assert time.monotonic() - started < 5
        assert isinstance(caught[0], Cancelled)
        assert "sleep 60 was stopped: its request was cancelled (asked by a test)" in str(caught[0])
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)
        with pytest.raises(Cancelled):  # and nothing more starts for it
            Executor()("true")
    finally:
        current_scope.reset(token)


def test_a_progress_report_after_a_cancellation_raises() -> None:
    class Service(Manager):
        pass

    manager = Service(service="s", host="h", driver=None)
    scope = CancelScope("t")
    token = current_scope.set(scope)
    try:
        manager.report_progress(1, 2)
        scope.cancel(TERMINATED)
        with pytest.raises(Cancelled, match="terminated"):
            manager.report_progress(2, 2)
    finally:
        current_scope.reset(token)


def test_a_termination_reaches_the_running_request_or_waits_for_it_to_start() -> None:
    redis = fakeredis.FakeRedis()
    terminations = Terminations(redis)
    running = CancelScope("running")
    with terminations.watch("running", running):
        assert terminations.terminate("running")
        assert running.cancelled
    early = CancelScope("early")
    assert not terminations.terminate("early")  # announced before it started here
    with terminations.watch("early", early):
        assert early.cancelled
    terminations.stop()


def test_the_watcher_reads_terminations_recorded_before_it_subscribed() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    Revocations(redis).revoke("t-1", terminate=True, keep_s=60)
    terminations = Terminations(fakeredis.FakeRedis(server=server))
    scope = CancelScope("t-1")
    with terminations.watch("t-1", scope):
        assert terminations.listening.wait(10)
        assert scope.wait(10)
    terminations.stop()


# -- delayed requests and the mover ----------------------------------------------------


def delayed(redis: fakeredis.FakeRedis, task_id: str, due: float, queue: str = "q") -> None:
    with redis.pipeline(transaction=False) as pipe:
        DelayedRequests.schedule(pipe, [Delayed(task_id, queue, json.dumps({"id": task_id}),
                                                due)])
        pipe.execute()


def test_due_requests_move_to_their_queue_in_due_order_and_ring_its_bell() -> None:
    redis = fakeredis.FakeRedis()
    store = DelayedRequests(redis)
    now = time.time()
    delayed(redis, "second", now - 1)
    delayed(redis, "first", now - 2)
    delayed(redis, "later", now + 60)
    assert store.waiting().count == 3
    moved = store.move_due()
    assert moved.moved == 2 and 55 < (moved.next_in or 0) <= 60
    assert [json.loads(item)["id"] for item in reversed(redis.lrange("q", 0, -1))] == [
        "first", "second"]
    assert redis.llen(bell_key("q")) == 2
    assert store.due("later") == pytest.approx(now + 60)
    assert store.due("first") is None
    assert redis.hlen(DELAYED_ENTRIES_KEY) == 1


def test_a_waiting_request_is_cancelled_and_never_moves() -> None:
    redis = fakeredis.FakeRedis()
    store = DelayedRequests(redis)
    delayed(redis, "gone", time.time() - 1)
    assert store.cancel("gone") and not store.cancel("gone")
    assert store.move_due().moved == 0 and redis.llen("q") == 0


def test_a_retry_and_its_record_of_runs_are_written_in_one_step() -> None:
    redis = fakeredis.FakeRedis()
    with redis.pipeline(transaction=False) as pipe:
        DelayedRequests.schedule(pipe, [Delayed("t", "q", "{}", time.time() + 5)],
                                 Marker(attempts_key("t"), 2, "DriverError: busy", 123.0, 60))
        pipe.execute()
    assert redis.hgetall(attempts_key("t")) == {b"attempt": b"2", b"error": b"DriverError: busy",
                                                 b"retry_at": b"123.0"}
    assert 0 < redis.ttl(attempts_key("t")) <= 60
    assert redis.zscore(DELAYED_KEY, "t") is not None


def test_one_mover_at_a_time_holds_the_lease_and_gives_it_up_when_it_stops() -> None:
    server = fakeredis.FakeServer()
    first = Mover(fakeredis.FakeRedis(server=server), "a")
    second = Mover(fakeredis.FakeRedis(server=server), "b")
    redis = fakeredis.FakeRedis(server=server)
    delayed(redis, "due", time.time() - 1)
    assert first.turn() <= 0.05 and first.holding and first.moved == 1
    assert second.turn() >= 1.0 and not second.holding
    first.stop()
    assert redis.get(MOVER_LEASE_KEY) is None
    second.turn()
    assert second.holding


# -- cancellations -----------------------------------------------------------------------


def test_a_cancellation_is_kept_removes_a_waiting_request_and_sees_who_holds_one() -> None:
    redis = fakeredis.FakeRedis()
    revocations = Revocations(redis)
    delayed(redis, "waiting", time.time() + 60, queue="volume.node-a")
    found = revocations.revoke("waiting", terminate=False, keep_s=100)
    assert found.waited_for == "volume.node-a" and found.holder is None
    assert redis.zscore(DELAYED_KEY, "waiting") is None
    assert revocations.mode("waiting") == "revoke" and 0 < redis.ttl(revoked_key("waiting")) <= 100
    redis.hset(INFLIGHT_TASKS_KEY, "held", Holder("node-b", 42, 1.5).encode())
    pubsub = redis.pubsub()
    pubsub.subscribe("taskyard:cancel")
    found = revocations.revoke("held", terminate=True, keep_s=100)
    assert found.holder == Holder("node-b", 42, 1.5) and not found.waited
    announced = [m for m in iter(lambda: pubsub.get_message(timeout=0.1), None)
                 if m["type"] == "message"]
    assert [m["data"] for m in announced] == [b"held"]
    assert revocations.terminating(["held", "waiting", "other"]) == {"held"}


def test_a_ledger_entry_reads_as_its_holder_whatever_its_form() -> None:
    assert Holder.parse(b'{"host":"a","pid":7,"at":1.25}') == Holder("a", 7, 1.25)
    assert Holder.parse(b"old-host") == Holder("old-host")
    assert Holder.parse(None) is None


@pytest.mark.parametrize(("reason", "error"), [
    ("expired at 2026-12-03T10:00:00+00:00 before it ran (node a took it at ...)", Expired),
    ("cancelled before it ran (node a took it at ...)", Cancelled),
    ("terminated: cancelled with terminate while it ran", Cancelled),
    ("revoked", Cancelled),
])
def test_a_revoked_result_reaches_the_caller_as_cancelled_or_expired(
        reason: str, error: type[Exception]) -> None:
    rebuilt = rebuild_exception({"exc_module": "celery.exceptions",
                                 "exc_type": "TaskRevokedError", "exc_message": [reason]})
    assert type(rebuilt) is error and reason in str(rebuilt)


def test_what_cancelling_did_reads_as_a_sentence() -> None:
    assert str(Cancellation("t", FINISHED, state="SUCCESS")) == \
        "t had already finished (SUCCESS): nothing changed"
    assert not Cancellation("t", FINISHED, state="SUCCESS").changed
    assert "removed, it will never run" in str(Cancellation("t", REMOVED))
    assert str(Cancellation("t", STOPPING, host="h")) == \
        "t runs on h: asked to stop; it ends REVOKED"
    assert "will finish (terminate stops it)" in str(Cancellation("t", RUNNING, host="h"))


# -- the one-step take -------------------------------------------------------------------


def envelope(task_id: str, tag: str, redelivered: bool = False) -> str:
    return json.dumps({
        "body": "e30=", "content-type": "application/json", "content-encoding": "utf-8",
        "headers": {"id": task_id, "task": "volume.ping", "stamped_headers": []},
        "properties": {"delivery_tag": tag, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": "volume",
                                         "redelivered": redelivered}},
    })


def take(redis: fakeredis.FakeRedis, *lists: str, result_prefix: str = "meta-",
         max_bytes: int = 1_000_000) -> list[object] | None:
    return redis.eval(  # type: ignore[no-any-return]
        TAKE, 5, "unacked", "unacked_index", INFLIGHT_OWNERS_KEY, INFLIGHT_TASKS_KEY,
        "taskyard:inflight-hosts", "node-a", 4242, inflight_key(""), bell_key(""),
        revoked_key(""), attempts_key(""), result_prefix, max_bytes, len(lists), *lists)


def test_the_take_records_the_message_where_it_takes_it_in_one_step() -> None:
    redis = fakeredis.FakeRedis()
    redis.lpush("volume", envelope("task-1", "tag-1"))
    with redis.pipeline() as pipe:
        ring(pipe, "volume")
        pipe.execute()
    reply = take(redis, "volume.high", "volume")
    assert reply is not None
    assert reply[0] == b"volume" and json.loads(reply[1])["headers"]["id"] == "task-1"  # type: ignore[arg-type]
    assert reply[2] == 1  # recorded
    assert json.loads(redis.hget("unacked", "tag-1"))[0]["headers"]["id"] == "task-1"
    assert json.loads(redis.hget("unacked", "tag-1"))[1:] == ["", "volume"]
    assert redis.zscore("unacked_index", "tag-1") is not None
    assert redis.hget(INFLIGHT_OWNERS_KEY, "tag-1") == b"node-a"
    assert redis.hget(inflight_key("node-a"), "tag-1") == b"task-1"
    holder = Holder.parse(redis.hget(INFLIGHT_TASKS_KEY, "task-1"))
    assert holder is not None and (holder.host, holder.pid) == ("node-a", 4242)
    assert redis.llen(bell_key("volume")) == 0  # its token went with it
    assert reply[3:] == [None, 0, None, None]
    assert take(redis, "volume") is None


def test_the_take_reads_a_cancellation_and_for_a_redelivery_its_runs_and_result() -> None:
    redis = fakeredis.FakeRedis()
    redis.set(revoked_key("task-2"), "terminate")
    redis.hset(attempts_key("task-2"), "attempt", 3)
    redis.set("meta-task-2", '{"status": "SUCCESS"}')
    redis.lpush("volume", envelope("task-2", "tag-2", redelivered=True))
    reply = take(redis, "volume")
    assert reply is not None and reply[3:] == [b"terminate", 1, b"3", b'{"status": "SUCCESS"}']


def test_the_take_leaves_a_poison_entry_unrecorded_for_the_channel_to_refuse() -> None:
    redis = fakeredis.FakeRedis()
    redis.lpush("volume", envelope("big", "tag-big"))  # taken first: larger than the limit
    redis.lpush("volume", "{not json")
    redis.lpush("volume", json.dumps({"body": "x"}))
    assert take(redis, "volume", max_bytes=100)[2:3] == [0]  # type: ignore[index]
    assert take(redis, "volume")[2:3] == [0]  # type: ignore[index]
    assert take(redis, "volume")[2:3] == [0]  # type: ignore[index]
    assert redis.hlen("unacked") == 0 and redis.hlen(INFLIGHT_OWNERS_KEY) == 0



# -- acknowledgements a failed-over master may have lost -------------------------------


def held(redis: fakeredis.FakeRedis, tag: str, task_id: str) -> None:
    redis.zadd("unacked_index", {tag: 1.0})
    redis.hset("unacked", tag, "[]")
    redis.hset(INFLIGHT_OWNERS_KEY, tag, "node-a")
    redis.hset(inflight_key("node-a"), tag, task_id)
    redis.hset(INFLIGHT_TASKS_KEY, task_id, "node-a")


def test_acknowledgements_made_before_a_lost_connection_are_made_again_at_the_reconnection(
) -> None:
    acks = Acknowledgements()
    acks.made("tag-1", "unacked", "unacked_index")
    acks.connection_lost()
    assert acks.holds("tag-1")  # recovery does not put its message back
    promoted = fakeredis.FakeRedis()  # the promoted replica never got the acknowledgement
    held(promoted, "tag-1", "task-1")
    assert acks.remake(promoted) == 1
    assert promoted.hlen("unacked") == 0 and promoted.zcard("unacked_index") == 0
    assert promoted.hlen(INFLIGHT_OWNERS_KEY) == 0 and promoted.hlen(INFLIGHT_TASKS_KEY) == 0
    assert not acks.holds("tag-1") and acks.remake(promoted) == 0


def test_an_acknowledgement_a_lost_connection_refused_is_made_at_the_next_heartbeat() -> None:
    acks = Acknowledgements()
    acks.refused("tag-2", "unacked", "unacked_index")
    assert len(acks) == 1 and acks.holds("tag-2")
    redis = fakeredis.FakeRedis()
    held(redis, "tag-2", "task-2")
    assert acks.settle(redis) == 1
    assert redis.hlen("unacked") == 0 and len(acks) == 0


def test_a_request_handed_to_the_pool_as_the_connection_is_lost_stays_held_until_it_ends(
) -> None:
    """Celery forgets a request a pool process has not yet said it took; it runs there all
    the same, so its message is not put back, and is settled once its result is stored."""
    acks = Acknowledgements()
    acks.handed("tag-3", "task-3")
    assert acks.holds("tag-3") and acks.handed_count == 1  # recovery leaves it held
    redis = fakeredis.FakeRedis()
    held(redis, "tag-3", "task-3")
    finished: set[str] = set()
    assert acks.settle_handed(redis, finished.__contains__) == 0  # still running
    assert redis.hlen("unacked") == 1
    finished.add("task-3")
    assert acks.settle_handed(redis, finished.__contains__) == 1
    assert redis.hlen("unacked") == 0 and redis.hlen(INFLIGHT_OWNERS_KEY) == 0
    assert not acks.holds("tag-3") and acks.handed_count == 0


class _Job:
    """billiard's ApplyResult, as far as the check reads it."""

    def __init__(self, write_to: object, ready: bool = False) -> None:
        self._write_to = write_to
        self._ready = ready

    def ready(self) -> bool:
        return self._ready


class _Future:
    def __init__(self, done: bool) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


class _Threaded:
    """Celery's threads pool's ApplyResult: its future."""

    def __init__(self, done: bool) -> None:
        self.f = _Future(done)


@pytest.mark.parametrize(("job", "runs"), [
    (_Job(write_to=object()), True),  # being written to a pool process
    (_Job(write_to=None), False),  # still in the pool's outgoing buffer: dropped
    (_Job(write_to=object(), ready=True), False),  # done already
    (_Threaded(done=False), True),  # a threads pool's queued request
    (_Threaded(done=True), False),
    (None, False),  # never handed to the pool
])
def test_which_requests_celery_forgets_at_a_lost_connection_still_run_in_the_pool(
        job: object, runs: bool) -> None:
    request = types.SimpleNamespace(_apply_result=(lambda: job) if job is not None else None)
    assert _runs_in_the_pool(request) is runs
