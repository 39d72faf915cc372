"""The transactional outbox: an event is written in the same transaction as the state it reports.

Every writing schema has an `outbox` table of the same shape. `add` inserts the rows and, unless
the caller publishes them itself once committed, a NOTIFY that PostgreSQL delivers only on
commit, so the relay wakes exactly when there is something committed to publish.

A row also keeps the W3C `traceparent` of the span that wrote it (None outside a trace), which the
relay sends with the event: the trace goes on past the outbox.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
from opentelemetry import trace

from contracts.events import Event

CHANNEL = "atlantic_outbox"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    event_id: str
    subject: str
    payload: bytes
    traceparent: str | None = None


def traceparent(span: trace.Span | None = None) -> str | None:
    """The W3C traceparent of a span (the current one by default), or None outside a trace."""
    context = (span or trace.get_current_span()).get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def current_trace(_event: Event) -> str | None:
    """Every event in the trace of the code that writes it (outbox.rows' default)."""
    return traceparent()


def table(schema: str) -> str:
    if not schema.isidentifier():
        raise ValueError(f"bad schema name {schema!r}")
    return f"{schema}.outbox"


def rows(events: Sequence[Event],
         trace_of: Callable[[Event], str | None] = current_trace) -> list[OutboxRow]:
    """The events as rows, each in the trace `trace_of` names (by default the current one)."""
    return [OutboxRow(e.event_id, e.subject, e.model_dump_json().encode(), trace_of(e))
            for e in events]


def columns(rows: Sequence[OutboxRow]
            ) -> tuple[list[str], list[str], list[bytes], list[str | None]]:
    """The rows as the four arrays an
    `unnest($n::text[], $n::text[], $n::bytea[], $n::text[])` takes."""
    return ([r.event_id for r in rows], [r.subject for r in rows], [r.payload for r in rows],
            [r.traceparent for r in rows])


async def add(db: asyncpg.Connection, schema: str, *events: Event,
              notify: bool = True) -> list[OutboxRow]:
    """Queues events for publication; call inside the transaction that makes the change.
    One round trip: the rows and the NOTIFY go in one statement. `notify=False` when the caller
    publishes the returned rows itself after the commit (the sweep covers a crash before)."""
    queued = rows(events)
    await db.execute(
        f"WITH queued AS (INSERT INTO {table(schema)} (event_id, subject, payload, traceparent)"
        "  SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[]))"
        " SELECT pg_notify($6, $7) WHERE $5",
        *columns(queued), notify, CHANNEL, schema,
    )
    return queued


async def claim_unpublished(
    db: asyncpg.Connection, schema: str, *, limit: int, older_than_seconds: float = 0
) -> list[OutboxRow]:
    """Locks a batch of unpublished rows for this relay; other relays skip them."""
    rows = await db.fetch(
        f"SELECT event_id, subject, payload, traceparent FROM {table(schema)}"
        " WHERE published_at IS NULL"
        "   AND created_at <= clock_timestamp() - make_interval(secs => $2)"
        " ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
        older_than_seconds,
    )
    return [OutboxRow(r["event_id"], r["subject"], bytes(r["payload"]), r["traceparent"])
            for r in rows]


async def any_waiting(db: asyncpg.Connection | asyncpg.Pool, schema: str,
                      older_than_seconds: float) -> bool:
    """Whether a row older than that waits unpublished: one round trip, no transaction."""
    return await db.fetchval(
        f"SELECT EXISTS (SELECT FROM {table(schema)} WHERE published_at IS NULL"
        "  AND created_at <= clock_timestamp() - make_interval(secs => $1))", older_than_seconds)


async def mark_published(db: asyncpg.Connection, schema: str, event_ids: Sequence[str]) -> None:
    await db.execute(
        f"UPDATE {table(schema)} SET published_at = clock_timestamp()"
        " WHERE event_id = ANY($1::text[])",
        list(event_ids),
    )


async def delete_published(db: asyncpg.Connection, schema: str, *, older_than_hours: int) -> int:
    status = await db.execute(
        f"DELETE FROM {table(schema)} WHERE published_at < now() - make_interval(hours => $1)",
        older_than_hours,
    )
    return int(status.split()[-1])


async def unpublished_count(db: asyncpg.Connection, schema: str) -> int:
    return await db.fetchval(f"SELECT count(*) FROM {table(schema)} WHERE published_at IS NULL")


async def backlog(db: asyncpg.Connection | asyncpg.Pool, schema: str) -> tuple[int, float]:
    """How many rows wait unpublished, and the age in seconds of the oldest (0 when none)."""
    row = await db.fetchrow(
        "SELECT count(*) AS waiting, coalesce(extract(epoch FROM clock_timestamp()"
        f" - min(created_at)), 0) AS oldest FROM {table(schema)} WHERE published_at IS NULL")
    return row["waiting"], float(row["oldest"])
