"""The analytics ingest: every event on the stream into ClickHouse, in batches.

A hand-rolled fetch loop on a durable pull consumer rather than a FastStream batch subscriber,
because the batch must be handled as a whole: parse each message (a malformed one is
dead-lettered and acked, the rest flow), drop eventIds already stored, insert, and only then ack.
A failed insert naks the whole batch with a delay; since the insert skips stored eventIds, a
redelivered batch never counts anything twice. Memory is bounded: one batch in hand, and the
consumer's max_ack_pending stops the server handing out more while ClickHouse is slow.

An insert is not atomic across the views it feeds, and a crash inside one can leave either side
without the other. Events stored without a view's rows: the redelivered batch skips them as
stored, so before it consumes, the ingest derives the newest events' rows again (only the last
insert before a crash can be partial). A view's rows without the events: the redelivered batch
writes them again, which the derived tables absorb (storage.analytics.schema).
"""

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.events import ALL_EVENTS, STREAM
from storage import deadletters
from storage.analytics import AnalyticsStore
from storage.analytics.rows import Malformed, row

log = logging.getLogger("atlantic.analytics.ingest")

RETRY_DELAY_SECONDS = 2.0  # a failed insert: the batch comes back after this
REPAIR_WINDOW_SECONDS = 60.0  # the newest events derived again at start (the last insert's)


class Ingest:
    def __init__(self, js: JetStreamContext, store: AnalyticsStore, pool: asyncpg.Pool, *,
                 durable: str, batch_size: int, batch_seconds: float, ack_wait: float = 60.0):
        self.js, self.store, self.pool, self.durable = js, store, pool, durable
        self.batch_size, self.batch_seconds, self.ack_wait = batch_size, batch_seconds, ack_wait
        self.inserted = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.repair_derived(REPAIR_WINDOW_SECONDS)
        self._subscription = await self.js.pull_subscribe(
            ALL_EVENTS, durable=self.durable, stream=STREAM, config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait,  # longer than any insert
                max_deliver=-1,  # never give up on a good event while ClickHouse is away
                max_ack_pending=2 * self.batch_size))
        self._task = asyncio.create_task(self._run(), name=f"analytics-ingest-{self.durable}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def pending(self) -> int | None:
        """Messages on the stream this consumer has not finished with."""
        try:
            info = await self.js.consumer_info(STREAM, self.durable)
        except Exception:  # NATS away: the lag figure says "unknown", the query still answers
            return None
        return info.num_pending + info.num_ack_pending

    async def _run(self) -> None:
        while True:
            try:
                if batch := await self._next_batch():
                    await self._ingest(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # NATS reconnecting and the like: the messages come back
                log.exception("analytics ingest failed; retrying")
                await asyncio.sleep(1.0)

    async def _next_batch(self) -> list[Msg]:
        """Up to batch_size messages, closed batch_seconds after the first one arrived."""
        batch: list[Msg] = []
        deadline: float | None = None
        while len(batch) < self.batch_size:
            wait = 5.0 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                batch += await self._subscription.fetch(self.batch_size - len(batch),
                                                        timeout=max(wait, 0.01))
            except (NatsTimeout, TimeoutError):
                if batch:
                    break
                continue
            if deadline is None:
                deadline = time.monotonic() + self.batch_seconds
        return batch

    async def _ingest(self, batch: list[Msg]) -> None:
        rows: list[dict[str, Any]] = []
        malformed: list[tuple[Msg, str]] = []
        for msg in batch:
            meta = msg.metadata
            try:
                rows.append(row(msg.data, subject=msg.subject, stream_seq=meta.sequence.stream,
                                published_at=meta.timestamp))
            except Malformed as exc:
                malformed.append((msg, str(exc)))
        try:
            for msg, reason in malformed:
                await self._dead_letter(msg, reason)
            self.inserted += await self.store.insert_new_events(rows)
        except Exception:
            log.exception("analytics insert of %d events failed; the batch will be retried",
                          len(batch))
            await asyncio.gather(*(m.nak(delay=RETRY_DELAY_SECONDS) for m in batch))
            return
        await asyncio.gather(*(m.ack() for m in batch))

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        meta = msg.metadata
        log.error("%s dead-lettered stream message %d (%s): %s",
                  self.durable, meta.sequence.stream, msg.subject, reason)
        await deadletters.add(
            self.pool, consumer=self.durable, subject=msg.subject,
            stream_seq=meta.sequence.stream,
            event_id=(msg.headers or {}).get("Nats-Msg-Id"),
            deliveries=meta.num_delivered, error=f"Malformed: {reason}"[:2000], payload=msg.data)
