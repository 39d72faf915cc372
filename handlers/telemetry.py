"""Traces across the bus: the spans Atlantic makes around the messages it serves, and the W3C
`traceparent` header that carries a trace from one process to the next.

The tracer is None unless runtime.telemetry set one up (OTEL_* variables, or a test's own
provider); the code that serves messages reads it once and, when it is None, makes no span at
all, so a process without telemetry pays a comparison per message. Spans follow OpenTelemetry's
messaging conventions: named `<subject> <operation>` ("atlantic.orders.create process",
"atlantic.events.order.created process"), with `messaging.*` attributes. A trace crosses the
outbox because the outbox row keeps the `traceparent` of the span that wrote it
(storage.outbox), the relay sends it as a header, and a consumer's span for the event is that
span's child, or, for a batch of several orders' events, links to it (batch_scope). (No span is
made for the relay's publish: it would be one more span an event for a hop whose wait already
shows as the gap between the writer's span and the consumer's.)

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
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from storage.outbox import traceparent

TRACEPARENT = "traceparent"
# The SDK keeps 128 links a span (OTEL_SPAN_LINK_COUNT_LIMIT) and drops the rest after making
# them: an analytics batch of hundreds of events links its first 128 and makes no more.
MAX_LINKS = 128
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


def messaging(subject: str | None, operation: str, **more: Any) -> dict[str, Any]:
    """The messaging semantic-convention attributes of a span over NATS messages (of a batch
    of several subjects: no destination)."""
    attributes = {"messaging.system": "nats", "messaging.operation.type": operation}
    if subject is not None:
        attributes["messaging.destination.name"] = subject
    attributes.update((f"messaging.{k}", v) for k, v in more.items() if v is not None)
    return attributes


@contextmanager
def batch_scope(tracer: Tracer, consumer: str, msgs: Sequence[Msg]) -> Iterator[list[str | None]]:
    """One span for a batch of events, current while the batch is applied; yields, for each
    event, the traceparent that what the batch emits about it goes on in (None: the batch's).

    OpenTelemetry's messaging conventions for a batch: one span, with a link to the context each
    message carries (up to MAX_LINKS), not a span a message (spans cost about 20 us each to make
    and as much to export, and a busy consumer's batches hold many events). Where it sits:
    - a batch of one is that event's span, named after its subject, a child of the span that
      wrote it;
    - a larger batch whose events all carry one trace (one order's events, as in a quiet shop)
      is a span in that trace, a child of the first event's writer;
    - a larger batch of several traces starts a trace of its own.
    What the batch emits about an order goes on in that order's trace: from the batch's span when
    it is in that trace, else from the span that wrote the event it answers (so one order stays
    one trace; the batch is reached from it through its link). The attributes and links are made
    only for a span that records (a sampled one): an unsampled batch costs one span and its
    context."""
    if not msgs:  # nothing taken (a consumer stopping): nothing to trace
        yield []
        return
    parents = [(m.headers or {}).get(TRACEPARENT) for m in msgs]
    first = parents[0]
    if len(msgs) == 1:
        span = tracer.start_span(f"{msgs[0].subject} process", kind=SpanKind.CONSUMER,
                                 context=extract(msgs[0].headers))
        if span.is_recording():
            span.set_attributes(messaging(
                msgs[0].subject, "process", **{"consumer.group.name": consumer},
                message_id=(msgs[0].headers or {}).get("Nats-Msg-Id")))
        shared = True
    else:
        shared = first is not None and all(
            p is not None and p[3:35] == first[3:35] for p in parents)
        span = tracer.start_span(
            f"{consumer} process", kind=SpanKind.CONSUMER,
            context=extract(msgs[0].headers) if shared else Context())
        if span.is_recording():
            subjects = {m.subject for m in msgs}
            span.set_attributes(messaging(
                subjects.pop() if len(subjects) == 1 else None, "process",
                **{"consumer.group.name": consumer, "batch.message_count": len(msgs)}))
            links = 0
            for msg, parent in zip(msgs, parents, strict=True):
                if parent is not None and (linked := span_context(parent)) is not None:
                    span.add_link(linked, {"messaging.destination.name": msg.subject})
                    if (links := links + 1) == MAX_LINKS:
                        break
    with trace.use_span(span, end_on_exit=True):
        if shared:
            yield [None] * len(msgs)
        else:
            yield parents


def span_context(parent: str) -> SpanContext | None:
    """The span context of a W3C traceparent (version 00), or None when it is not one. Read
    here rather than through the propagator's extract (a Context per call), since a batch
    makes one for each event it links."""
    parts = parent.split("-")
    if len(parts) != 4 or parts[0] == "ff" or [len(p) for p in parts[1:]] != [32, 16, 2]:
        return None
    try:
        context = SpanContext(int(parts[1], 16), int(parts[2], 16), is_remote=True,
                              trace_flags=TraceFlags(int(parts[3], 16)))
    except ValueError:
        return None
    return context if context.is_valid else None
