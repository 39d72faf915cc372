"""An OTLP/HTTP trace receiver in a thread: the other end of a process's span exporter, for the
tests (it keeps what it gets) and the bench (it counts and drops, so exported traces cost the
served processes what a collector would, and nothing more)."""

import gzip
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root
    name: str
    service: str
    attributes: dict[str, object]
    links: tuple[tuple[str, str, str], ...]  # (trace id, span id, subject of the linked message)


class OtlpSink:
    """Receives POST /v1/traces on 127.0.0.1; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT
    takes. With keep=False it only counts spans."""

    def __init__(self, keep: bool = True):
        self.keep = keep
        self.spans: list[ReceivedSpan] = []
        self.received = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                sink._take(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", PROTOBUF)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="otlp-sink")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> "OtlpSink":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take(self, request: ExportTraceServiceRequest) -> None:
        if not self.keep:
            with self._lock:
                self.received += sum(len(scope.spans) for resource in request.resource_spans
                                     for scope in resource.scope_spans)
            return
        spans = []
        for resource in request.resource_spans:
            service = next((a.value.string_value for a in resource.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(ReceivedSpan(
                        span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                        span.name, service,
                        {a.key: _value(a.value) for a in span.attributes},
                        tuple((link.trace_id.hex(), link.span_id.hex(), str(next(
                            (_value(a.value) for a in link.attributes
                             if a.key == "messaging.destination.name"), "")))
                              for link in span.links)))
        with self._lock:
            self.received += len(spans)
            self.spans.extend(spans)


def _value(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(value, kind) if kind else None
