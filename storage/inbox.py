"""The inbox: a consumer records each event it handled in the same transaction as its effects,
so a redelivered event finds its mark and changes nothing."""

import asyncpg


async def first_time(db: asyncpg.Connection, schema: str, consumer: str, event_id: str) -> bool:
    """True when this consumer has not seen the event; records it. Call inside the transaction."""
    if not schema.isidentifier():
        raise ValueError(f"bad schema name {schema!r}")
    inserted = await db.fetchval(
        f"INSERT INTO {schema}.inbox (consumer, event_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        event_id,
    )
    return bool(inserted)
