"""One trace per request across services, and Sentry's errors, with the real packages.

Three nodes run the recipe of ``docs/tracing.md`` as written (its
``tracing_setup.py``, imported through the settings: ``celery.imports``),
one per pool: ``vol-a`` (volume, prefork), ``vol-b`` (volume, threads) and
``sched`` (scheduler, solo). They export their spans with OpenTelemetry's
OTLP exporter and their errors with sentry-sdk's transport to
:class:`~tests.integration.collector.Collector` on loopback. The caller is
this process, with the official Celery instrumentation and an in-memory
span exporter. Messages are signed (``security.signing_key``): every trace
context a receiver adds must be signed for the nodes to serve it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from tests.conftest import REPO_ROOT
from tests.integration.collector import Collector, Span
from tests.integration.conftest import Node, node_environment
from workers.cli.embedded import RedisServer
from workers.client.rpc import Client
from workers.core.application import Taskyard
from workers.exceptions import NotFound, RemoteError

KEY = "tracing-key-0123456789abcdef"
DOC = REPO_ROOT / "docs" / "tracing.md"


def recipe(name: str) -> str:
    """The file ``name`` as ``docs/tracing.md`` writes it (its ``example`` block)."""
    pattern = re.compile(rf"<!-- example: {re.escape(name)} -->\n```\w*\n(.*?)^```$",
                         re.DOTALL | re.MULTILINE)
    found = pattern.search(DOC.read_text())
    assert found, f"docs/tracing.md has no example block {name}"
    return found.group(1)


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    collector = Collector().start()
    yield collector
    collector.stop()


@pytest.fixture(scope="module")
def cluster_env(redis_server: RedisServer, state_dir: Path, collector: Collector,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The nodes' (and, for its ``TASKYARD_*`` part, the caller's) environment."""
    here = tmp_path_factory.mktemp("recipe")
    (here / "tracing_setup.py").write_text(recipe("tracing_setup.py"))
    return node_environment(
        redis_server.url, state_dir,
        TASKYARD_SERVICES__VOLUME__DRIVER="file",
        TASKYARD_SECURITY__SIGNING_KEY=KEY,
        TASKYARD_CELERY__IMPORTS='["tracing_setup"]',
        PYTHONPATH=str(here),
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_BSP_SCHEDULE_DELAY="50",
        SENTRY_DSN=collector.sentry_dsn(),
    )


@pytest.fixture(scope="module")
def nodes(start_node: Callable[..., Node]) -> dict[str, Node]:
    """One node per pool, each named (``OTEL_SERVICE_NAME``) by its host."""
    made = {}
    for host, services, pool, concurrency in (("vol-a", ["volume"], "prefork", 1),
                                              ("vol-b", ["volume"], "threads", 2),
                                              ("sched", ["scheduler"], "solo", 1)):
        made[host] = start_node(host, services=services, pool=pool, concurrency=concurrency,
                                env={"OTEL_SERVICE_NAME": host})
    return made


class CallerTracing:
    """This process traced as a caller: the official instrumentation, spans kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": "caller"}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer(__name__)

    @contextmanager
    def span(self, name: str) -> Iterator[Span]:
        """A span of the caller's own, current while the block runs; the finished span."""
        with self.tracer.start_as_current_span(name) as span:
            context = span.get_span_context()
            yield Span(name, f"{context.trace_id:032x}", f"{context.span_id:016x}", None,
                       "INTERNAL", "caller")

    def children(self, parent: Span) -> list[Span]:
        """The caller's finished spans whose parent is ``parent``, in the order they ended."""
        return [s for s in map(_span, self.exporter.get_finished_spans())
                if s.parent_id == parent.span_id]


def _span(span: ReadableSpan) -> Span:
    context = span.get_span_context()
    assert context is not None
    return Span(span.name, f"{context.trace_id:032x}", f"{context.span_id:016x}",
                f"{span.parent.span_id:016x}" if span.parent else None, span.kind.name,
                "caller", dict(span.attributes or {}))


@pytest.fixture(scope="module")
def tracing() -> Iterator[CallerTracing]:
    tracing = CallerTracing()
    CeleryInstrumentor().instrument(tracer_provider=tracing.provider)
    yield tracing
    CeleryInstrumentor().uninstrument()


@pytest.fixture
def volume(client_app: Taskyard, nodes: dict[str, Node], tracing: CallerTracing) -> Client:
    return Client("volume", app=client_app)


def hop(producer: Span, collector: Collector, process: str | None = None) -> Span:
    """The node's ``run`` span of the message ``producer`` sent: its child, in its trace."""
    assert producer.kind == "PRODUCER" and producer.name.startswith("apply_async/")
    assert producer.message_id, producer
    task = producer.name.removeprefix("apply_async/")
    run = collector.wait_span(f"run/{task}", producer.message_id, process=process)
    assert run.kind == "CONSUMER"
    assert (run.trace_id, run.parent_id) == (producer.trace_id, producer.span_id), run
    return run


@pytest.mark.parametrize("host", ["vol-a", "vol-b"])
def test_a_call_is_one_trace_from_the_caller_to_the_node(
        volume: Client, tracing: CallerTracing, collector: Collector, host: str) -> None:
    """A prefork node (vol-a) and a threads node (vol-b): each runs the recipe's branch."""
    with tracing.span("caller") as root:
        assert volume.prepare(host=host).call("ping")["host"] == host
    (producer,) = tracing.children(root)
    assert producer.name == "apply_async/volume.ping" and producer.trace_id == root.trace_id
    assert hop(producer, collector).process == host


def test_each_request_of_a_cast_many_continues_the_callers_trace(
        volume: Client, tracing: CallerTracing, collector: Collector) -> None:
    with tracing.span("caller") as root:
        handles = volume.cast_many("ping", [{}] * 3)
    for handle in handles:
        handle.wait()
    producers = tracing.children(root)
    assert sorted(p.message_id or "" for p in producers) == sorted(h.id for h in handles)
    for producer in producers:
        assert hop(producer, collector).process in ("vol-a", "vol-b")


def test_a_fanout_reaches_every_node_in_the_callers_trace(
        volume: Client, tracing: CallerTracing, collector: Collector) -> None:
    with tracing.span("caller") as root:
        answers = volume.fanout("ping", wait=True)
    assert set(answers) == {"vol-a", "vol-b"}
    producers = tracing.children(root)
    assert len(producers) == 2
    assert {hop(p, collector).process for p in producers} == {"vol-a", "vol-b"}


def test_a_delayed_request_runs_in_the_trace_of_the_caller_that_sent_it(
        volume: Client, tracing: CallerTracing, collector: Collector) -> None:
    """It waits in Redis (countdown) until a node's mover hands it to its queue."""
    with tracing.span("caller") as root:
        handle = volume.prepare(host="vol-b", countdown=0.5).cast("ping")
    assert handle.wait()["host"] == "vol-b"
    (producer,) = tracing.children(root)
    assert producer.message_id == handle.id
    assert hop(producer, collector).process == "vol-b"


def test_a_request_forwarded_to_the_owner_of_its_volume_stays_in_the_trace(
        volume: Client, tracing: CallerTracing, collector: Collector) -> None:
    """Sent to vol-b, forwarded by it (Celery's task sender) to vol-a, which owns the volume."""
    vol = volume.prepare(host="vol-a").call("create_volume", size_gb=1)
    with tracing.span("caller") as root:
        grown = volume.prepare(host="vol-b").call("extend_volume", volume_id=vol["id"],
                                                  new_size_gb=2)
    assert grown["size_gb"] == 2 and grown["host"] == "vol-a"
    (sent,) = tracing.children(root)
    reached = hop(sent, collector, process="vol-b")
    forwarded = collector.wait_span("apply_async/volume.extend_volume", sent.message_id or "",
                                    process="vol-b")
    assert forwarded.parent_id == reached.span_id and forwarded.trace_id == root.trace_id
    assert hop(forwarded, collector, process="vol-a")


def test_the_schedulers_hand_on_continues_the_trace_on_the_chosen_node(
        client_app: Taskyard, volume: Client, tracing: CallerTracing,
        collector: Collector) -> None:
    """A request made inside an endpoint: the scheduler (solo) casts to a volume node."""
    with tracing.span("caller") as root:
        placed = Client("scheduler", app=client_app).call("schedule_create_volume", size_gb=1)
    assert volume.handle(placed["task_id"]).wait()["host"] == placed["host"]
    (sent,) = tracing.children(root)
    scheduled = hop(sent, collector, process="sched")
    handed_on = collector.wait_span("apply_async/volume.create_volume", placed["task_id"],
                                    process="sched")
    assert handed_on.parent_id == scheduled.span_id and handed_on.trace_id == root.trace_id
    assert hop(handed_on, collector).process == placed["host"]


def test_an_endpoints_unexpected_error_reaches_sentry_tagged_with_its_task_and_service(
        volume: Client, collector: Collector, state_dir: Path) -> None:
    """A driver's error is one Sentry event; a declared error (NotFound) none.

    vol-a runs one pool process, which reports its events in order: the
    declared error's would have come before the driver error's.
    """
    on_a = volume.prepare(host="vol-a")
    vol = on_a.call("create_volume", size_gb=1)
    declared = on_a.cast("get_volume", volume_id="nope")
    with pytest.raises(NotFound):
        declared.wait()
    (state_dir / "volumes" / "vol-a" / f"volume-{vol['id']}.img").unlink()
    failing = on_a.cast("create_snapshot", volume_id=vol["id"])
    with pytest.raises(RemoteError, match="does not exist"):
        failing.wait()
    event = collector.wait_event(failing.id)
    tags = event["tags"]
    assert (tags["taskyard.service"], tags["taskyard.host"]) == ("volume", "vol-a")
    assert re.fullmatch(r"[0-9a-f]{32}", tags["taskyard.request_id"])
    assert event["exception"]["values"][-1]["type"] == "VolumeDriverError"
    assert event["extra"]["celery-job"]["task_name"] == "volume.create_snapshot"
    assert not [e for e in collector.events
                if (e.get("tags") or {}).get("celery_task_id") == declared.id]

