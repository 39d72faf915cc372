"""The analytics ingest: every event on the stream into ClickHouse, in batches.

A hand-rolled pull loop on a durable pull consumer rather than a FastStream batch subscriber,
because the batch must be handled as a whole: parse each message (a malformed one is
dead-lettered and acked, the rest flow), drop eventIds already stored, insert, and only then ack.
A failed insert naks the whole batch with a delay; since the insert skips stored eventIds, a
redelivered batch never counts anything twice. Memory is bounded: one batch being stored while
the next gathers, and the consumer's max_ack_pending (twice the batch size) stops the server
handing out more while ClickHouse is slow.

A batch is paid for, not its events: every insert runs each materialized view and writes a part
to every table it reaches, tens of milliseconds in chDB whether it holds ten events or a
thousand, and each part is merged again later. So a batch closes at batch_size events or when
its oldest event, counted from its publication, has waited batch_seconds less the time storing
a batch has lately taken, whichever comes first. The wait adapts to the rate: a quiet shop
stores each event within about batch_seconds in one insert for all of them, not one insert per
few events; a busy one's bigger inserts take longer, so its batches close sooner; a backlog (or a
redelivery) is already late and goes as fast as it is fetched. Rows are parsed as messages
arrive, so closing a batch leaves only the dedupe query, the insert and the acks.

An insert is not atomic across the views it feeds, and a crash inside one can leave either side
without the other. Events stored without a view's rows: the redelivered batch skips them as
stored, so before it consumes, the ingest derives the newest events' rows again (only the last
insert before a crash can be partial). A view's rows without the events: the redelivered batch
writes them again, which the derived tables absorb (storage.analytics.schema).

Each stored batch is counted (its size, and how long its oldest event waited since publication)
and, when tracing is on, stored inside one span for the batch with a link to each event's
writer (handlers.telemetry.batch_scope): an order's trace ends with its events counted here.
"""

import asyncio
import collections
import contextlib
import json
import logging
import time
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Histogram

from contracts.events import ALL_EVENTS, STREAM
from handlers import telemetry
from storage import deadletters
from storage.analytics import AnalyticsStore
from storage.analytics.rows import Malformed, row

log = logging.getLogger("atlantic.analytics.ingest")

RETRY_DELAY_SECONDS = 2.0  # a failed insert: the batch comes back after this
REPAIR_WINDOW_SECONDS = 60.0  # the newest events derived again at start (the last insert's)
IDLE_PULL_SECONDS = 5.0  # how long one pull request waits while nothing comes
STORE_WEIGHT = 0.2  # the newest store's weight in the running estimate of a store's time

BATCH_SIZE = Histogram("atlantic_ingest_batch_size", "Events stored in one analytics insert",
                       buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000))
LAG_SECONDS = Histogram(
    "atlantic_ingest_lag_seconds", "How long the oldest event of a stored batch waited from its"
    " publication until it was counted", buckets=(.05, .1, .25, .5, .75, 1, 2, 5, 10, 30, 60,
                                                  300))


class Batch:
    """Messages with their rows, parsed as they arrive, and when the batch should close."""

    def __init__(self, batch_seconds: float, store_seconds: float):
        self.messages: list[Msg] = []
        self.rows: list[dict[str, Any]] = []
        self.malformed: list[tuple[Msg, str]] = []
        self._batch_seconds, self._store_seconds = batch_seconds, store_seconds
        self.close_at = float("inf")  # epoch seconds
        self.oldest = float("inf")  # epoch seconds: when its oldest event was published

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, messages: list[Msg]) -> None:
        if not messages:
            return
        now = time.time()
        if not self.messages:  # never longer than batch_seconds from here, whatever the clocks
            self.close_at = now + self._batch_seconds
        for msg in messages:
            meta = msg.metadata
            published = meta.timestamp.timestamp()
            self.oldest = min(self.oldest, published)
            # Already late (a backlog, a redelivery): closes at once, with what is there.
            self.close_at = min(self.close_at, max(
                now, published + self._batch_seconds - self._store_seconds))
            self.messages.append(msg)
            try:
                self.rows.append(row(msg.data, subject=msg.subject,
                                     stream_seq=meta.sequence.stream, published_at=meta.timestamp))
            except Malformed as exc:
                self.malformed.append((msg, str(exc)))


class Ingest:
    def __init__(self, nc: NATS, store: AnalyticsStore, pool: asyncpg.Pool, *,
                 durable: str, batch_size: int, batch_seconds: float, ack_wait: float = 60.0):
        self.nc, self.js, self.store, self.pool = nc, nc.jetstream(), store, pool
        self.durable, self.batch_size, self.batch_seconds = durable, batch_size, batch_seconds
        self.ack_wait = ack_wait
        self.tracer = telemetry.tracer()
        self.inserted = 0
        self.store_seconds = 0.0  # how long storing a batch has lately taken (moving average)
        self.pull_requests = 0
        self._arrived: collections.deque[Msg] = collections.deque()
        self._wakeup = asyncio.Event()
        self._open_until = 0.0  # epoch seconds: when the open pull request expires
        self._open_left = 0  # messages it may still bring
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.repair_derived(REPAIR_WINDOW_SECONDS)
        # Created, or updated to these settings (ack wait, in-flight bound) if it exists.
        await self.js.add_consumer(STREAM, ConsumerConfig(
            name=self.durable, durable_name=self.durable, filter_subject=ALL_EVENTS,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,  # longer than any insert
            max_deliver=-1,  # never give up on a good event while ClickHouse is away
            max_ack_pending=2 * self.batch_size))
        self._inbox = self.nc.new_inbox()
        self._subscription = await self.nc.subscribe(self._inbox, cb=self._delivered)
        self._task = asyncio.create_task(self._run(), name=f"analytics-ingest-{self.durable}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._subscription.unsubscribe()

    async def pending(self) -> int | None:
        """Messages on the stream this consumer has not finished with."""
        try:
            info = await self.js.consumer_info(STREAM, self.durable)
        except Exception:  # NATS away: the lag figure says "unknown", the query still answers
            return None
        return info.num_pending + info.num_ack_pending

    async def _run(self) -> None:
        # The next batch gathers (and parses) while the last one is stored: the insert runs in
        # ClickHouse's threads without the GIL, so a busy shop's lag is the longer of the two
        # rather than their sum. One store at a time, so check-then-insert stays exact.
        storing: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    batch = await self._next_batch(storing)
                except Exception:  # NATS reconnecting and the like: the messages come back
                    log.exception("analytics ingest failed; retrying")
                    await asyncio.sleep(1.0)
                    continue
                if storing:
                    await self._stored(storing)
                storing = asyncio.create_task(self._ingest(batch))
                storing.add_done_callback(lambda _: self._wakeup.set())
        finally:
            if storing:
                storing.cancel()

    async def _stored(self, storing: asyncio.Task[None]) -> None:
        try:
            await storing
        except Exception:  # the acks did not go out: the batch comes back after ack_wait
            log.exception("analytics ingest failed to finish a batch; it will be redelivered")

    # Pulling sits below nats-py's fetch, which opens every call with a no-wait request and
    # then a long poll, and ends a poll early on a stale status from the one before: at 50
    # events/s that was about twenty round trips a batch. Here one request is open at a time,
    # for as many messages as a batch lacks and until the batch is due; what arrives after a
    # batch closed waits in _arrived for the next one (still bounded by max_ack_pending).

    async def _delivered(self, msg: Msg) -> None:
        if not msg.data and msg.headers and "Status" in msg.headers:
            return  # 404/408/409: our own clock tells when a request is over
        self._open_left -= 1
        self._arrived.append(msg)
        self._wakeup.set()

    async def _pull(self, count: int, until: float) -> None:
        """Makes sure a pull request is open, for up to count messages, until `until`."""
        now = time.time()
        if self._open_left > 0 and self._open_until > now:
            return
        seconds = max(until - now, 0.01)
        await self.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{self.durable}",
            json.dumps({"batch": count, "expires": int(seconds * 1e9)}).encode(),
            reply=self._inbox)
        self.pull_requests += 1
        self._open_until, self._open_left = now + seconds, count

    async def _arrival(self, until: float, held_by: asyncio.Task[None] | None) -> None:
        """Waits for the next message, until `until`, the open request's end, or the end of
        the store holding the batch back (held_by), whichever comes first."""
        self._wakeup.clear()
        timeout = min(until, self._open_until) - time.time()
        if timeout > 0 and not self._arrived and not (held_by and held_by.done()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _next_batch(self, storing: asyncio.Task[None] | None) -> Batch:
        """Up to batch_size messages, closed when the oldest has waited long enough (Batch)
        and the last batch is stored."""
        batch = Batch(self.batch_seconds, min(self.store_seconds, self.batch_seconds / 2))
        while len(batch) < self.batch_size:
            if self._arrived:
                take = min(self.batch_size - len(batch), len(self._arrived))
                batch.add([self._arrived.popleft() for _ in range(take)])
                continue
            now, held_by = time.time(), None
            if not batch:
                until = now + IDLE_PULL_SECONDS
            elif batch.close_at > now:
                until = batch.close_at
            elif storing and not storing.done():
                # Due, but the last batch is still being stored (an ingest behind): this one
                # takes what arrives until then, one insert rather than a small one now and
                # a big one straight after.
                until, held_by = now + self.batch_seconds, storing
            else:
                break
            await self._pull(self.batch_size - len(batch), until)
            await self._arrival(until, held_by)
        return batch

    async def _ingest(self, batch: Batch) -> None:
        if self.tracer is None:
            await self._store(batch)
            return
        with telemetry.batch_scope(self.tracer, self.durable, batch.messages):
            await self._store(batch)

    async def _store(self, batch: Batch) -> None:
        began = time.monotonic()
        try:
            for msg, reason in batch.malformed:
                await self._dead_letter(msg, reason)
            self.inserted += await self.store.insert_new_events(batch.rows)
        except Exception:
            log.exception("analytics insert of %d events failed; the batch will be retried",
                          len(batch))
            await asyncio.gather(*(m.nak(delay=RETRY_DELAY_SECONDS) for m in batch.messages))
            return
        self._stored_in(time.monotonic() - began)
        for msg in batch.messages:  # each ack only queues a publish: no task per message
            await msg.ack()
        BATCH_SIZE.observe(len(batch))
        if batch.messages:
            LAG_SECONDS.observe(max(time.time() - batch.oldest, 0.0))

    def _stored_in(self, seconds: float) -> None:
        # The next batch closes this much earlier than batch_seconds after its oldest event. A
        # moving average: a store slowed by a busy machine shrinks the batches after it a little
        # and briefly, and _next_batch never lets it take more than half of batch_seconds.
        self.store_seconds += STORE_WEIGHT * (seconds - self.store_seconds)

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        meta = msg.metadata
        log.error("%s dead-lettered stream message %d (%s): %s",
                  self.durable, meta.sequence.stream, msg.subject, reason)
        await deadletters.add(
            self.pool, consumer=self.durable, subject=msg.subject,
            stream_seq=meta.sequence.stream,
            event_id=(msg.headers or {}).get("Nats-Msg-Id"),
            deliveries=meta.num_delivered, error=f"Malformed: {reason}"[:2000], payload=msg.data)
