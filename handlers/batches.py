"""A batch of events, applied in one PostgreSQL transaction.

A consumer's handler takes an EventBatch: the events delivered for the first time (the inbox has
dropped those already applied), in stream order. It reads what it needs with a few set-based
queries, decides each event in order in memory, and writes the outcome with a few more; what it
emits goes to the outbox in the same transaction. So a batch costs a handful of round trips
whatever its size, and a crash leaves all of it or none.

An event that came before the one it follows (events of one order overtake each other across
sets and replicas) is handed back with `retry_later`: it leaves no effect and no inbox mark, and
is redelivered after a delay. runtime.consumers runs the batches: it fetches, applies, publishes
what was emitted, acks, and isolates a failing event by applying the batch one event at a time.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, get_args, get_type_hints

import asyncpg
from faststream.context import ContextRepo
from pydantic import TypeAdapter

from contracts.events import Event
from storage import inbox, outbox
from storage.outbox import OutboxRow
from storage.postgres import Write

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Delivery(Generic[E]):
    event: E
    event_id: str  # the inbox key: the event's own eventId
    attempt: int = 1  # 1 on the first delivery, 2 on the first redelivery...
    trace: str | None = None  # the traceparent what it causes goes on in (None: the batch's)


@dataclass
class EventBatch(Generic[E]):
    db: asyncpg.Connection  # inside the batch's transaction
    deliveries: list[Delivery[E]]
    context: ContextRepo
    emitted: list[Event] = field(default_factory=list)
    retries: dict[str, str] = field(default_factory=dict)  # event id -> why it must wait
    hooks: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    written: Write | None = None
    _traces: dict[str, str] | None = field(default=None, repr=False)  # order id -> traceparent

    @property
    def events(self) -> list[E]:
        return [d.event for d in self.deliveries]

    def emit(self, *events: Event) -> None:
        """Queues events for the outbox; they are written with the batch and published after."""
        self.emitted.extend(events)

    def write(self, changes: Write) -> None:
        """The batch's changes, as one statement: it runs once the handler returns, with the
        inbox marks and the outbox rows, in the same round trip."""
        if self.written is not None:
            raise RuntimeError("a batch has one write: gather its changes into it")
        self.written = changes

    def retry_later(self, event: Event, reason: str) -> None:
        """This event comes too early: undo nothing (apply nothing of it) and redeliver it."""
        self.retries[event.event_id] = reason

    def after_commit(self, hook: Callable[[], Awaitable[object]]) -> None:
        """Work outside the database (a cache invalidation) once the batch is committed."""
        self.hooks.append(hook)

    def trace_of(self, emitted: Event) -> str | None:
        """The trace an emitted event goes on in: that of the delivered event about the same
        order (one order, one trace), else the batch's span's."""
        if self._traces is None:
            self._traces = {order_id: d.trace for d in self.deliveries if d.trace and (
                order_id := getattr(d.event, "order_id", None))}
        return self._traces.get(getattr(emitted, "order_id", None)) or outbox.traceparent()


BatchHandler = Callable[[EventBatch[Any]], Awaitable[None]]


def event_type(handler: BatchHandler) -> TypeAdapter[Any]:
    """What the handler's events are, read off its `EventBatch[...]` annotation."""
    hints = get_type_hints(handler, include_extras=True)
    batch = next(hint for name, hint in hints.items() if name != "return")
    (event,) = get_args(batch)
    return TypeAdapter(event)


@dataclass(frozen=True)
class Applied:
    """What a committed batch leaves to do: publish its outbox rows, redeliver its early events
    (event id -> reason) and run its after-commit hooks."""

    published: list[OutboxRow]
    retries: dict[str, str]
    hooks: list[Callable[[], Awaitable[object]]]


async def apply(pool: asyncpg.Pool, schema: str | None, durable: str, handler: BatchHandler,
                deliveries: Sequence[Delivery[Any]], context: ContextRepo) -> Applied:
    """Applies a batch in one transaction: the handler's changes, the inbox marks and the
    outbox rows. Raises what the handler raises, with nothing committed. A set without a schema
    keeps no inbox: its handler must be idempotent on its own.

    The inbox is checked when the marks are written, at the end: a redelivery is rare, so the
    batch is applied as new, and if some of its events turn out to be marked already, it is
    rolled back and applied again without them."""
    todo = list({d.event_id: d for d in deliveries}.values())  # a redelivery in the same batch
    while True:
        async with pool.acquire() as db:
            try:
                async with db.transaction():
                    batch = EventBatch(db, todo, context)
                    await handler(batch)
                    if not schema:
                        if batch.written:
                            await batch.written.run(db)
                        return Applied([], batch.retries, batch.hooks)
                    done = [d.event_id for d in todo if d.event_id not in batch.retries]
                    seen, rows, answer = await inbox.record_batch(
                        db, schema, durable, done, batch.emitted, batch.written,
                        trace_of=batch.trace_of)
                    if seen:
                        raise _SeenBefore(seen)
                    if batch.written:
                        batch.written.check(answer)
                    return Applied(rows, batch.retries, batch.hooks)
            except _SeenBefore as redelivered:
                todo = [d for d in todo if d.event_id not in redelivered.event_ids]
                if not todo:
                    return Applied([], {}, [])


class _SeenBefore(Exception):
    """Some of the batch's events were applied before: roll back, apply the rest again."""

    def __init__(self, event_ids: set[str]):
        self.event_ids = event_ids
