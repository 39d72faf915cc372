"""The dead-letter table: events a consumer gave up on, with the reason, for operators."""

from datetime import datetime

import asyncpg
from prometheus_client import Counter
from pydantic import BaseModel

DEAD_LETTERS = Counter("atlantic_dead_letters", "Events a consumer gave up on (dead-lettered)",
                       ["consumer"])


class DeadLetter(BaseModel):
    consumer: str
    subject: str
    stream_seq: int
    event_id: str | None
    deliveries: int
    error: str
    payload: bytes
    created_at: datetime


async def add(db: asyncpg.Connection | asyncpg.Pool, *, consumer: str, subject: str,
              stream_seq: int, event_id: str | None, deliveries: int, error: str,
              payload: bytes) -> None:
    """Records the message once per consumer, however often it is dead-lettered."""
    await db.execute(
        "INSERT INTO ops.dead_letters"
        " (consumer, subject, stream_seq, event_id, deliveries, error, payload)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (consumer, stream_seq) DO NOTHING",
        consumer, subject, stream_seq, event_id, deliveries, error, payload)
    DEAD_LETTERS.labels(consumer).inc()


async def recent(db: asyncpg.Connection | asyncpg.Pool, consumer: str | None = None,
                 limit: int = 100) -> list[DeadLetter]:
    rows = await db.fetch(
        "SELECT consumer, subject, stream_seq, event_id, deliveries, error, payload, created_at"
        " FROM ops.dead_letters WHERE $1::text IS NULL OR consumer = $1"
        " ORDER BY id DESC LIMIT $2",
        consumer, limit)
    return [DeadLetter(**dict(row)) for row in rows]


async def count_by_consumer(db: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT consumer, count(*) AS n FROM ops.dead_letters GROUP BY consumer ORDER BY consumer")
    return {r["consumer"]: r["n"] for r in rows}
