"""The outbox relay: publishes committed outbox rows to JetStream with `Nats-Msg-Id`.

Three ways a row gets out:
- `send`: the code that committed it hands the rows over at once (the event consumers do);
  they are published asynchronously and marked in one statement when their acks are in;
- a NOTIFY that commits send (request handlers): the relay claims what is waiting;
- a periodic sweep of rows older than `stale_seconds`, for whatever a crash or a NATS outage
  left behind.
Claims use FOR UPDATE SKIP LOCKED, so any number of relays share the work. A row published and
not yet marked may be published again by a claim; JetStream's duplicate window drops the copy.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import asyncpg
from nats.js import JetStreamContext

from contracts.events import STREAM
from handlers import telemetry
from storage import outbox
from storage.outbox import OutboxRow

log = logging.getLogger("atlantic.relay")

BATCH = 500
CLEANUP_EVERY_SECONDS = 300.0
# A publish not acked by then is left to the sweep. It also bounds nats-py's known defect
# (nats-io/nats.py#985): an error ack (a 503, or "duplicate message id is in process" during a
# leader election) escapes publish_async's reply handler, is logged as "Connection broken with
# APIError()", and leaves the ack's future pending; it is given up on here instead.
ACK_TIMEOUT_SECONDS = 5.0
MARK_EVERY_SECONDS = 0.25  # sent rows are marked published together, at most this late


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, dsn: str, js: JetStreamContext, schema: str, *,
                 sweep_seconds: float, retention_hours: int, stale_seconds: float = 1.0):
        self._pool = pool
        self._dsn = dsn
        self._js = js
        self.schema = schema
        self._sweep_seconds = sweep_seconds
        self._stale_seconds = stale_seconds
        self._retention_hours = retention_hours
        self._wake = asyncio.Event()
        self._claim_waiting = False  # a NOTIFY came: claim everything unpublished
        self._acked: list[str] = []  # sent and acked, not yet marked
        self._mark_due: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None

    async def start(self) -> None:
        await self._listen()
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.schema}")

    async def stop(self) -> None:
        if self._sending:
            await asyncio.wait(self._sending, timeout=ACK_TIMEOUT_SECONDS)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):  # the sweep of the next start covers a failure
            await self._mark_acked()
        if self._listener and not self._listener.is_closed():
            await self._listener.close()

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        """Publishes rows the caller has just committed; marks them once JetStream acked them."""
        try:
            acks = [await self._publish(row) for row in rows]
        except Exception:  # NATS away: the sweep publishes them later
            log.warning("outbox %s: publishing %d rows failed; the sweep will retry",
                        self.schema, len(rows), exc_info=True)
            return
        task = asyncio.create_task(self._confirm(rows, acks))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, row: OutboxRow) -> asyncio.Future:
        headers = {"Nats-Msg-Id": row.event_id}
        if row.traceparent:  # the trace of the code that wrote the row goes on with the event
            headers[telemetry.TRACEPARENT] = row.traceparent
        return await self._js.publish_async(row.subject, row.payload, stream=STREAM,
                                            headers=headers)

    async def _confirm(self, rows: Sequence[OutboxRow], acks: list[asyncio.Future]) -> None:
        self._acked += await _acked(rows, acks)
        if self._mark_due is None:  # one UPDATE for whatever is acked meanwhile
            self._mark_due = asyncio.get_running_loop().call_later(MARK_EVERY_SECONDS,
                                                                  self._wake.set)

    async def _listen(self) -> None:
        """A dedicated connection for NOTIFY; if it fails, the sweep still publishes everything."""
        try:
            self._listener = await asyncpg.connect(self._dsn)
            await self._listener.add_listener(outbox.CHANNEL, self._on_notify)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("outbox listener unavailable, relying on the sweep: %s", exc)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, schema: str) -> None:
        if schema == self.schema:
            self._claim_waiting = True
            self._wake.set()

    async def _run(self) -> None:
        last_cleanup = last_sweep = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sweep_seconds)
            self._wake.clear()
            try:
                await self._mark_acked()
                if self._claim_waiting:
                    self._claim_waiting = False
                    await self.drain()
                if time.monotonic() - last_sweep >= self._sweep_seconds:
                    last_sweep = time.monotonic()
                    if await outbox.any_waiting(self._pool, self.schema, self._stale_seconds):
                        await self.drain(older_than_seconds=self._stale_seconds)
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

    async def _mark_acked(self) -> None:
        if self._mark_due is not None:
            self._mark_due.cancel()
            self._mark_due = None
        if self._acked:
            marked, self._acked = self._acked, []
            try:
                async with self._pool.acquire() as db:
                    await outbox.mark_published(db, self.schema, marked)
            except Exception:
                self._acked += marked
                raise

    async def drain(self, older_than_seconds: float = 0) -> int:
        """Publishes every unpublished row (older than that); returns how many it published."""
        total = 0
        while (published := await self.publish_batch(older_than_seconds)) > 0:
            total += published
            if published < BATCH:
                break
        return total

    async def publish_batch(self, older_than_seconds: float = 0) -> int:
        async with self._pool.acquire() as db, db.transaction():
            rows = await outbox.claim_unpublished(db, self.schema, limit=BATCH,
                                                  older_than_seconds=older_than_seconds)
            if not rows:
                return 0
            acked = await _acked(rows, [await self._publish(row) for row in rows])
            await outbox.mark_published(db, self.schema, acked)
        return len(acked)


async def _acked(rows: Sequence[OutboxRow], acks: list[asyncio.Future]) -> list[str]:
    """The event ids JetStream acknowledged within the timeout; the others are given up on."""
    _, late = await asyncio.wait(acks, timeout=ACK_TIMEOUT_SECONDS)
    for ack in late:
        ack.cancel()  # frees nats-py's slot for in-flight publishes
    return [row.event_id for row, ack in zip(rows, acks, strict=True)
            if not ack.cancelled() and ack.exception() is None]
