"""A handler set for the batch tests: numbered pings, applied into a table of their own schema.

A ping can be poison (its handler fails), can presume another ping (applied only after it, as a
saga event presumes the step before), or can kill its process the moment its batch committed.
`python batch_probe.py` serves the set, for the kill -9 test.
"""

import asyncio
import os
import signal

from contracts.base import Wire
from handlers import HANDLER_SETS
from handlers.batches import EventBatch
from handlers.handler_set import HandlerSet
from runtime.app import build_app
from runtime.settings import Settings

SCHEMA = "probe_batches"
SUBJECT = "atlantic.events.probe.batch"
DURABLE = "probe-batches"
TABLES = f"""
    CREATE SCHEMA IF NOT EXISTS {SCHEMA};
    CREATE TABLE IF NOT EXISTS {SCHEMA}.inbox (LIKE orders.inbox INCLUDING ALL);
    CREATE TABLE IF NOT EXISTS {SCHEMA}.outbox (LIKE orders.outbox INCLUDING ALL);
    CREATE TABLE IF NOT EXISTS {SCHEMA}.applied (n int NOT NULL, attempt int NOT NULL);
"""


class Ping(Wire):
    event_id: str
    n: int
    poison: bool = False
    after: int | None = None  # applied only once this ping is
    crash: bool = False  # the process dies right after the ping's batch commits
    hold: bool = False  # its batch waits for `released` before it writes


probe = HandlerSet("probe-batches", "pings for the batch tests", outbox_schema=SCHEMA)
batches: list[list[int]] = []  # the pings of every batch handed to the handler, in order
handed: list[float] = []  # when each of them was handed over (the event loop's clock)
released = asyncio.Event()  # lets a batch holding a `hold` ping go on


@probe.event(SUBJECT, durable=DURABLE, max_deliver=3, backoff=(0.1, 0.1))
async def apply_pings(batch: EventBatch[Ping]) -> None:
    batches.append([p.n for p in batch.events])
    handed.append(asyncio.get_running_loop().time())
    if any(p.hold for p in batch.events):
        await released.wait()
    applied = {r["n"] for r in await batch.db.fetch(
        f"SELECT n FROM {SCHEMA}.applied WHERE n = ANY($1::int[])",
        [p.after for p in batch.events if p.after is not None])}
    rows = []
    for delivery in batch.deliveries:
        ping = delivery.event
        if ping.poison:
            raise RuntimeError(f"ping {ping.n} is poison")
        if ping.after is not None and ping.after not in applied:
            batch.retry_later(ping, f"ping {ping.n} presumes ping {ping.after}")
            continue
        applied.add(ping.n)
        rows.append((ping.n, delivery.attempt))
        if ping.crash:
            batch.after_commit(_die)
    await batch.db.executemany(f"INSERT INTO {SCHEMA}.applied (n, attempt) VALUES ($1, $2)",
                               rows)


async def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # committed, not yet acked: the worst moment


if __name__ == "__main__":
    HANDLER_SETS[probe.name] = probe
    asyncio.run(build_app(Settings(), [probe.name]).run())
