"""The inbox: a consumer records each event it handled in the same transaction as its effects,
so a redelivered event finds its mark and changes nothing."""

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from contracts.events import Event
from storage import outbox
from storage.outbox import OutboxRow
from storage.postgres import Write


def _table(schema: str) -> str:
    if not schema.isidentifier():
        raise ValueError(f"bad schema name {schema!r}")
    return f"{schema}.inbox"


async def first_time(db: asyncpg.Connection, schema: str, consumer: str, event_id: str) -> bool:
    """True when this consumer has not seen the event; records it. Call inside the transaction."""
    inserted = await db.fetchval(
        f"INSERT INTO {_table(schema)} (consumer, event_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING true", consumer, event_id)
    return bool(inserted)


async def record_batch(db: asyncpg.Connection, schema: str, consumer: str,
                       event_ids: Sequence[str], emitted: Sequence[Event],
                       write: Write | None = None,
                       trace_of: Callable[[Event], str | None] = outbox.current_trace,
                       ) -> tuple[set[str], list[OutboxRow], Any]:
    """Marks a batch's events as handled and queues what it emitted, with the batch's own
    `write` when it has one, in one statement (the caller publishes the rows once committed).
    Returns the events that were marked already (by an earlier delivery, or a replica's
    transaction this one waited for), the rows, and the write's answer, unchecked: when events
    were marked already, the caller must roll back and apply the batch again without them.
    Sorted, so two transactions waiting on each other's marks never form a cycle. `trace_of`
    names the trace each emitted event goes on in (storage.outbox.rows)."""
    rows = outbox.rows(emitted, trace_of)
    n = len(write.args) if write else 0  # the write's parameters come first
    written = await db.fetchrow(
        f"WITH {write.ctes + ', ' if write else ''}"
        f" marked AS (INSERT INTO {_table(schema)} (consumer, event_id)"
        f"  SELECT ${n + 1}, id FROM unnest(${n + 2}::text[]) AS id ORDER BY id"
        "  ON CONFLICT DO NOTHING RETURNING event_id),"
        f" queued AS (INSERT INTO {outbox.table(schema)}"
        "  (event_id, subject, payload, traceparent)"
        f"  SELECT * FROM unnest(${n + 3}::text[], ${n + 4}::text[], ${n + 5}::bytea[],"
        f"   ${n + 6}::text[]))"
        f" SELECT {write.result if write else 'NULL'} AS written,"
        "  (SELECT coalesce(array_agg(event_id), '{}') FROM marked) AS marked",
        *(write.args if write else ()), consumer, sorted(event_ids), *outbox.columns(rows))
    return set(event_ids) - set(written["marked"]), rows, written["written"]


async def adopt(db: asyncpg.Connection, schema: str, consumer: str,
                former: Sequence[str]) -> None:
    """Gives a consumer the marks of the consumers it takes over."""
    await db.execute(
        f"INSERT INTO {_table(schema)} (consumer, event_id)"
        f" SELECT $1, event_id FROM {_table(schema)} WHERE consumer = ANY($2::text[])"
        " ON CONFLICT DO NOTHING", consumer, list(former))
