"""The outbox relay: publishes committed outbox rows to JetStream with `Nats-Msg-Id`.

It wakes on the NOTIFY that commits send, and on a periodic sweep that picks up whatever a crash
or a NATS outage left behind. Rows are claimed with FOR UPDATE SKIP LOCKED, so any number of
relays share the work; a relay that dies after publishing and before marking leaves the row to
be published again, and JetStream's duplicate window drops the second copy.
"""

import asyncio
import contextlib
import logging
import time

import asyncpg
from nats.js import JetStreamContext

from contracts.events import STREAM
from storage import outbox

log = logging.getLogger("atlantic.relay")

BATCH = 500
CLEANUP_EVERY_SECONDS = 300.0


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, dsn: str, js: JetStreamContext, schema: str, *,
                 sweep_seconds: float, retention_hours: int):
        self._pool = pool
        self._dsn = dsn
        self._js = js
        self.schema = schema
        self._sweep_seconds = sweep_seconds
        self._retention_hours = retention_hours
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None

    async def start(self) -> None:
        await self._listen()
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.schema}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener and not self._listener.is_closed():
            await self._listener.close()

    async def _listen(self) -> None:
        """A dedicated connection for NOTIFY; if it fails, the sweep still publishes everything."""
        try:
            self._listener = await asyncpg.connect(self._dsn)
            await self._listener.add_listener(outbox.CHANNEL, self._on_notify)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("outbox listener unavailable, relying on the sweep: %s", exc)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, schema: str) -> None:
        if schema == self.schema:
            self._wake.set()

    async def _run(self) -> None:
        last_cleanup = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sweep_seconds)
            self._wake.clear()
            try:
                await self.drain()
                if time.monotonic() - last_cleanup > CLEANUP_EVERY_SECONDS:
                    async with self._pool.acquire() as db:
                        await outbox.delete_published(
                            db, self.schema, older_than_hours=self._retention_hours)
                    last_cleanup = time.monotonic()
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception:  # NATS or PostgreSQL away: the rows wait for the next sweep
                log.warning("outbox relay for %s will retry", self.schema, exc_info=True)

    async def drain(self) -> int:
        """Publishes every unpublished row; returns how many it published."""
        total = 0
        while (published := await self.publish_batch()) > 0:
            total += published
            if published < BATCH:
                break
        return total

    async def publish_batch(self) -> int:
        async with self._pool.acquire() as db, db.transaction():
            rows = await outbox.claim_unpublished(db, self.schema, limit=BATCH)
            if not rows:
                return 0
            await asyncio.gather(*(
                self._js.publish(row.subject, row.payload, stream=STREAM,
                                 headers={"Nats-Msg-Id": row.event_id})
                for row in rows
            ))
            await outbox.mark_published(db, self.schema, [row.event_id for row in rows])
        return len(rows)
