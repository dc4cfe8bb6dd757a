"""A collector on loopback for the traced nodes: OTLP/HTTP spans and Sentry envelopes.

The nodes of ``test_tracing.py`` run the recipe of ``docs/tracing.md`` as
written, with its real exporters: OpenTelemetry's OTLP/HTTP span exporter
(``OTEL_EXPORTER_OTLP_ENDPOINT``) and sentry-sdk's HTTP transport
(``SENTRY_DSN``). This server stands where a collector and Sentry would,
decodes what they send (OTLP protobuf, Sentry's envelope format) and keeps
it for the tests to read.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from workers.testing import wait_for


@dataclass(frozen=True)
class Span:
    """A span as the tests compare them, from a node (OTLP) or from the test's own exporter."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str
    #: The resource's ``service.name`` (a node's host, by OTEL_SERVICE_NAME) or "caller".
    process: str
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def message_id(self) -> str | None:
        """The task id the Celery instrumentation records on its spans."""
        value = self.attributes.get("messaging.message.id")
        return str(value) if value is not None else None


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # sentry-sdk compresses with it only where it is installed

        return bytes(brotli.decompress(body))
    return body


class Collector:
    """``http://127.0.0.1:<port>``: ``/v1/traces`` takes spans, ``/api/<id>/envelope/`` events."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = _decoded(body, self.headers.get("Content-Encoding", ""))
                if self.path.endswith("/v1/traces"):
                    collector._take_spans(body)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-protobuf")
                elif self.path.endswith("/envelope/"):
                    collector._take_envelope(body)
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Collector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sentry_dsn(self) -> str:
        return f"http://public@{self.url.removeprefix('http://')}/1"

    def _take_spans(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    spans.append(Span(
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        kind={4: "PRODUCER", 5: "CONSUMER"}.get(span.kind, str(span.kind)),
                        process=str(resource.get("service.name")),
                        attributes={a.key: _value(a.value) for a in span.attributes}))
        with self._lock:
            self.spans += spans

    def _take_envelope(self, body: bytes) -> None:
        # An envelope: a header line, then per item a header line and its payload.
        lines = body.split(b"\n")
        with self._lock:
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    self.events.append(json.loads(payload))

    def wait_span(self, name: str, message_id: str, process: str | None = None,
                  timeout: float = 20) -> Span:
        """The span ``name`` of the task ``message_id`` from a node (``process``, when given).

        A forwarded request keeps its task id: each node it crossed has its spans.
        """

        def found() -> Span | None:
            with self._lock:
                matching = [s for s in self.spans if s.name == name and
                            s.message_id == message_id and process in (None, s.process)]
            return matching[-1] if matching else None

        span: Span = wait_for(found, timeout, f"the span {name} of task {message_id}")
        return span

    def spans_of(self, message_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.message_id == message_id]

    def wait_event(self, task_id: str, timeout: float = 20) -> dict[str, Any]:
        """The Sentry event of the request ``task_id`` (Sentry tags it ``celery_task_id``)."""

        def found() -> dict[str, Any] | None:
            with self._lock:
                matching = [e for e in self.events
                            if (e.get("tags") or {}).get("celery_task_id") == task_id]
            return matching[0] if matching else None

        event: dict[str, Any] = wait_for(found, timeout, f"a Sentry event for task {task_id}")
        return event
