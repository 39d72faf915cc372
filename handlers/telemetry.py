"""Traces across the bus: the spans Atlantic makes around the messages it serves, and the W3C
`traceparent` header that carries a trace from one process to the next.

The tracer is None unless runtime.telemetry set one up (OTEL_* variables, or a test's own
provider): then every helper here returns at its first line, so a process without telemetry pays
an attribute read per message. Spans follow OpenTelemetry's messaging conventions: named
`<subject> <operation>` ("atlantic.orders.create process", "atlantic.events.order.created
publish"), with `messaging.*` attributes. A trace crosses the outbox because the outbox row
keeps the `traceparent` of the span that wrote it (storage.outbox), the relay sends it as a
header, and a consumer's span for the event continues it.

What the log lines of a message say about it (its subject, its set, its consumer) is kept in a
context variable here too, for runtime.telemetry's JSON log lines.
"""

from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from storage.outbox import traceparent

TRACEPARENT = "traceparent"
_propagator = TraceContextTextMapPropagator()
_tracer: Tracer | None = None

# What a log line written while serving a message can say about it (subject, set, consumer).
log_scope: ContextVar[Mapping[str, str] | None] = ContextVar("atlantic_log_scope", default=None)


def use(tracer: Tracer | None) -> None:
    """Sets the tracer of this process (None: no spans). runtime.telemetry and tests call it."""
    global _tracer
    _tracer = tracer


def tracer() -> Tracer | None:
    return _tracer


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The trace context a message carries, or None when it carries none."""
    if not headers or TRACEPARENT not in headers:
        return None
    return _propagator.extract(headers)


def outgoing(headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """Headers for a request to another set, with the current trace added when there is one."""
    if (parent := traceparent()) is None:
        return headers
    return {**(headers or {}), TRACEPARENT: parent}


def messaging(subject: str, operation: str, **more: Any) -> dict[str, Any]:
    """The messaging semantic-convention attributes of a span over a NATS message."""
    attributes = {"messaging.system": "nats", "messaging.destination.name": subject,
                  "messaging.operation.type": operation}
    attributes.update((f"messaging.{k}", v) for k, v in more.items() if v is not None)
    return attributes


def publish(subject: str, parent: str | None, event_id: str) -> str | None:
    """A span for publishing an outbox row, in the trace of the code that wrote it, and the
    traceparent to send with the event. The relay publishes asynchronously: the span marks the
    hand-over, its distance from the writer's span is the time the row waited in the outbox."""
    if _tracer is None or parent is None:
        return parent
    span = _tracer.start_span(f"{subject} publish", context=extract({TRACEPARENT: parent}),
                              kind=SpanKind.PRODUCER,
                              attributes=messaging(subject, "publish", message_id=event_id))
    span.end()
    return traceparent(span)


def batch_spans(tracer: Tracer, consumer: str, msgs: Sequence[Msg]
                ) -> tuple[Span, list[Span | None]]:
    """The spans of a batch of events: the batch's own, and one for each event (None for an
    event that carries no trace). End them with `end`."""
    batch = batch_span(tracer, consumer, (m.headers for m in msgs), len(msgs))
    return batch, process_spans(tracer, msgs, consumer, batch)


def end(spans: Iterable[Span | None]) -> None:
    for span in spans:
        if span is not None:
            span.end()


def process_spans(tracer: Tracer, msgs: Iterable[Msg], consumer: str, batch: Span
                  ) -> list[Span | None]:
    """A span for each event of a batch that carries a trace: a child of the span that
    published it, so the event's trace goes on through this consumer, linked to the batch's
    span (which holds the transaction). Events without a trace get None."""
    link = [Link(batch.get_span_context())]
    spans: list[Span | None] = []
    for msg in msgs:
        subject, headers = msg.subject, msg.headers
        event_id = (headers or {}).get("Nats-Msg-Id")
        parent = extract(headers)
        spans.append(None if parent is None else tracer.start_span(
            f"{subject} process", context=parent, kind=SpanKind.CONSUMER, links=link,
            attributes=messaging(subject, "process", message_id=event_id,
                                 **{"consumer.group.name": consumer})))
    return spans


def batch_span(tracer: Tracer, consumer: str, parents: Iterable[Mapping[str, str] | None],
               size: int) -> Span:
    """The span of one batch of a consumer: a trace of its own (a batch serves many orders),
    linked to the context of each event it holds, as the messaging conventions say."""
    links = [Link(trace.get_current_span(c).get_span_context())
             for h in parents if (c := extract(h)) is not None]
    return tracer.start_span(
        f"{consumer} process", kind=SpanKind.CONSUMER, links=links, context=Context(),
        attributes={"messaging.system": "nats", "messaging.operation.type": "process",
                    "messaging.consumer.group.name": consumer,
                    "messaging.batch.message_count": size})
