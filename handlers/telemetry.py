"""Traces across the bus: the spans Atlantic makes around the messages it serves, and the W3C
`traceparent` header that carries a trace from one process to the next.

The tracer is None unless runtime.telemetry set one up (OTEL_* variables, or a test's own
provider); the code that serves messages reads it once and, when it is None, makes no span at
all, so a process without telemetry pays a comparison per message. Spans follow OpenTelemetry's
messaging conventions: named `<subject> <operation>` ("atlantic.orders.create process",
"atlantic.events.order.created process"), with `messaging.*` attributes. A trace crosses the
outbox because the outbox row keeps the `traceparent` of the span that wrote it
(storage.outbox), the relay sends it as a header, and a consumer's span for the event is that
span's child. (No span is made for the relay's publish: it would be one more span an event for
a hop whose wait already shows as the gap between the writer's span and the consumer's.)

What the log lines of a message say about it (its subject, its set, its consumer) is kept in a
context variable here too, for runtime.telemetry's JSON log lines.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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


@contextmanager
def batch_scope(tracer: Tracer, consumer: str, msgs: Sequence[Msg]
                ) -> Iterator[list[Span | None]]:
    """The spans of a batch of events, the batch's current while it is applied; yields each
    event's span (None for an event of a larger batch that carries no trace).

    A batch of one is its event's span: a child of the span that wrote the event, so the
    order's trace goes on through this consumer. A larger batch serves many orders, so it gets
    a span of its own, in a trace of its own, and each traced event a span in its own trace,
    linked to the batch's (which holds the transaction). Spans cost CPU (about 20 us each to
    make and as much to export), so a quiet shop's batches of one make one span, not two."""
    if len(msgs) == 1:
        current = _event_span(tracer, msgs[0], consumer, extract(msgs[0].headers), None)
        events: list[Span | None] = [current]
    else:
        current = tracer.start_span(
            f"{consumer} process", kind=SpanKind.CONSUMER, context=Context(),
            attributes={"messaging.system": "nats", "messaging.operation.type": "process",
                        "messaging.consumer.group.name": consumer,
                        "messaging.batch.message_count": len(msgs)})
        link = [Link(current.get_span_context())]
        events = [None if (parent := extract(m.headers)) is None
                  else _event_span(tracer, m, consumer, parent, link) for m in msgs]
    try:
        with trace.use_span(current, end_on_exit=True):
            yield events
    finally:
        for span in events:
            if span is not None and span is not current:
                span.end()


def _event_span(tracer: Tracer, msg: Msg, consumer: str, parent: Context | None,
                links: list[Link] | None) -> Span:
    return tracer.start_span(
        f"{msg.subject} process", context=parent, kind=SpanKind.CONSUMER, links=links,
        attributes=messaging(msg.subject, "process",
                             message_id=(msg.headers or {}).get("Nats-Msg-Id"),
                             **{"consumer.group.name": consumer}))
