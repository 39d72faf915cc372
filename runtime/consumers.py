"""The event consumers: each durable consumer's events handled in batches, one transaction each.

Below FastStream on purpose. Measured here (BENCHMARKS.md, 2026-12-02): FastStream 0.7.8's batch
pull subscriber counts its timeout from the start of each fetch round, so eight idle consumers
with a 20 ms timeout spent 300 ms of CPU a second polling, and with 0.5 s every event waited up to
half a second per hop; its per-message subscriber pays a pipeline pass and a fetch round trip per
event (the fetch alone ~280 µs of CPU). nats-py 2.14 has no continuous pull either. So this
module keeps pull requests open on each consumer (JetStream's pull protocol, ADR-13): the server
sends events as they come, an idle consumer costs one request every few seconds, and a batch is
what arrived while the previous one was applied, taken once its oldest event has lingered a
short while (24 µs of CPU an event to receive and ack, against 282 µs fetched one at a time).

What a batch guarantees (handlers.batches applies it):
- each event is applied once: its inbox mark commits with its effects, and it is acked only
  after the commit; a crash in between redelivers it, and the mark makes it a no-op;
- per-order order: a batch is applied in stream order, one batch at a time per consumer;
  an event that came too early is redelivered after a delay, never applied out of order;
- a bad event is isolated: a malformed one is dead-lettered at once; when a batch fails, it is
  applied again one event at a time, so the failing event is retried with backoff and then
  dead-lettered alone while the others commit;
- an outage is not the event's fault: while PostgreSQL is unreachable, events are retried
  without ever being dead-lettered for it.

Telemetry is made here too, since no event passes through FastStream's middlewares: events and
batches are counted per consumer (Prometheus), and, when tracing is on, each batch gets one span
(OpenTelemetry's messaging conventions for a batch: a link to each event's `traceparent`; a batch
of one is a child of its event's writer: handlers.telemetry.batch_scope); what the batch emits
for an order goes on in that order's trace (handlers.batches, EventBatch.trace_of).
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from faststream.context import ContextRepo
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Histogram
from pydantic import TypeAdapter, ValidationError

from contracts.errors import AtlanticError
from contracts.events import STREAM
from handlers import telemetry
from handlers.batches import Applied, Delivery, apply, event_type
from handlers.handler_set import EventConsumer
from runtime.relay import OutboxRelay
from storage import deadletters, inbox

log = logging.getLogger("atlantic.consumers")

PERMANENT = (AtlanticError, ValidationError)  # failures no redelivery can cure
# Failures of the servers, not of the event: retried at the longest backoff, never given up on.
OUTAGE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
          asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)
MAX_BATCH = 200  # events applied in one transaction
PULL_BATCH = 256  # events one pull request may bring
PULL_EXPIRES = 2.0  # an open request lasts this long; an idle consumer renews it this often
MAX_ACK_PENDING = 1_000  # events handed out and not yet acked, per consumer
RATE_WEIGHT = 0.2  # how much the latest batch moves the estimate of the event rate

EVENTS = Counter("atlantic_events", "Events a consumer is done with for now, by outcome:"
                 " applied (acked after its commit), retried (handed back for later),"
                 " dead_lettered", ["consumer", "outcome"])
BATCH_SIZE = Histogram("atlantic_event_batch_size", "Events taken into one batch",
                       ["consumer"], buckets=(1, 2, 5, 10, 20, 50, 100, 200))
BATCH_SECONDS = Histogram(
    "atlantic_event_batch_duration_seconds", "Time to apply, publish and ack one batch",
    ["consumer"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))


class Pull:
    """Open pull requests on one durable consumer, renewed as they are used up or expire.

    Events arrive under their own subjects, so what is still asked for is counted as a whole:
    each event takes one off, each expired request (408) what it had left. The server answers an
    idle request every `expires` seconds; when it has said nothing for longer, its requests were
    lost (a restart) and are asked again."""

    def __init__(self, nc: NATS, durable: str, *, batch: int = PULL_BATCH,
                 expires: float = PULL_EXPIRES, recover: Callable[[], Awaitable[object]]):
        self._nc, self._durable, self._recover = nc, durable, recover
        self._batch, self._expires = batch, expires
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable}"
        self._asked = 0  # events requested and not yet received
        self._heard = time.monotonic()
        self._troubled: str | None = None  # why the server ended a request, until we recover
        self.buffer: list[Msg] = []
        self.arrived = asyncio.Event()
        self.waiting_since = 0.0  # when the oldest event in the buffer arrived (monotonic)
        self._sub: Any = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        await self._renew()
        self._watch = asyncio.create_task(self._watchdog(), name=f"pull-{self._durable}")

    async def stop(self) -> None:
        if self._watch:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._sub.unsubscribe()

    def take(self, limit: int) -> list[Msg]:
        batch, self.buffer = self.buffer[:limit], self.buffer[limit:]
        if not self.buffer:
            self.arrived.clear()
        return batch

    async def _on_message(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        headers = msg.headers or {}
        status = headers.get("Status") if not msg.data else None
        if status is None:
            self._asked -= 1
            if not self.buffer:
                self.waiting_since = self._heard
            self.buffer.append(msg)
            self.arrived.set()
        elif status == "408":  # a request expired with this many events not sent
            self._asked -= int(headers.get("Nats-Pending-Messages", self._batch))
        elif status != "100":  # ended by the server (404, 409, 503): the watchdog recovers
            self._asked = 0
            self._troubled = f"{status} {headers.get('Description', '')}"
            return
        await self._renew()

    async def _renew(self) -> None:
        """Keeps at least half a batch asked for, so events never wait for a request."""
        if self._asked >= self._batch // 2:
            return
        request = {"batch": self._batch, "expires": int(self._expires * 1e9)}
        try:
            await self._nc.publish(self._subject, json.dumps(request).encode(),
                                   reply=self._inbox)
            self._asked = max(self._asked, 0) + self._batch
        except Exception:  # NATS away: the watchdog asks again
            pass

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self._expires)
            if time.monotonic() - self._heard > self._expires + 1.0:
                self._asked = 0  # not even an expiry came back: the requests were lost
            if self._troubled:  # a deleted consumer, a leader election: declare it again
                log.warning("%s: pull requests ended by the server (%s); declaring the consumer"
                            " again", self._durable, self._troubled)
                try:
                    await self._recover()
                    self._troubled = None
                except Exception as exc:  # NATS away: next round
                    log.warning("%s: not recovered yet: %r", self._durable, exc)
                    continue
            await self._renew()


class BatchConsumer:
    """Runs one EventConsumer: pulls its events, applies them in batches, acks after commit."""

    def __init__(self, consumer: EventConsumer, schema: str | None, *, nc: NATS,
                 js: JetStreamContext, pool: asyncpg.Pool, relay: OutboxRelay | None,
                 context: ContextRepo, linger: float, ack_wait: float, set_name: str = ""):
        self.consumer, self.schema = consumer, schema
        self._tracer = telemetry.tracer()
        self._scope = {"consumer": consumer.durable, "set": set_name}
        self._applied, self._retried, self._dead = (
            EVENTS.labels(consumer.durable, outcome)
            for outcome in ("applied", "retried", "dead_lettered"))
        self._batch_size = BATCH_SIZE.labels(consumer.durable)
        self._batch_seconds = BATCH_SECONDS.labels(consumer.durable)
        self._nc, self._js, self._pool, self._relay = nc, js, pool, relay
        self._context, self._linger, self._ack_wait = context, linger, ack_wait
        self._events: TypeAdapter[Any] = event_type(consumer.handler)
        self._pull = Pull(nc, consumer.durable, recover=self._declare)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.batches = self.events = 0  # handled since start
        # Events a second, as lately taken. It starts where lingering pays, so a consumer that
        # starts with a backlog takes what the server sends in one batch rather than a first event
        # alone; a quiet consumer's estimate falls below that with its next batch.
        self._rate = 1 / linger if linger > 0 else 0.0
        self._taken_at = time.monotonic()

    @property
    def durable(self) -> str:
        return self.consumer.durable

    async def start(self) -> None:
        await self._declare()
        await self._pull.start()
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.durable}")

    async def _declare(self) -> None:
        """Creates the consumer, or updates the one there (its start position stays). A new
        consumer that takes over others starts where the slowest of them stopped; they are
        removed and their inbox marks become its own before it takes an event, so none is
        skipped or applied twice."""
        config = consumer_config(self.consumer, self._ack_wait)
        existing = await self._info(self.durable)
        formers = [i for f in self.consumer.replaces if (i := await self._info(f)) is not None]
        if existing is not None:
            config.deliver_policy = existing.config.deliver_policy
            config.opt_start_seq = existing.config.opt_start_seq
        elif formers:
            last = (await self._js.stream_info(STREAM)).state.last_seq
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = min(
                last + 1 if f.num_pending + f.num_ack_pending == 0 else f.ack_floor.stream_seq + 1
                for f in formers)
            log.warning("%s takes over from %s at stream sequence %d", self.durable,
                        ", ".join(f.name for f in formers), config.opt_start_seq)
        await self._js.add_consumer(STREAM, config)
        for former in formers:
            await self._js.delete_consumer(STREAM, former.name)
        if formers and self.schema:  # after the deletes: whatever they applied is marked
            async with self._pool.acquire() as db:
                await inbox.adopt(db, self.schema, self.durable, self.consumer.replaces)

    async def _info(self, durable: str) -> ConsumerInfo | None:
        try:
            return await self._js.consumer_info(STREAM, durable)
        except NotFoundError:
            return None

    async def stop(self, timeout: float) -> None:
        """Stops taking events; the batch in hand is finished and acked, the rest handed back."""
        self._stopping = True
        await self._pull.stop()
        self._pull.arrived.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.warning("%s: the batch in hand did not finish within %.0f s; its events"
                            " come back after the ack wait", self.durable, timeout)
        for msg in self._pull.take(len(self._pull.buffer)):
            with contextlib.suppress(Exception):  # not acked either way: redelivered
                await msg.nak()
        log.info("%s handled %d events in %d batches", self.durable, self.events, self.batches)

    async def _run(self) -> None:
        telemetry.log_scope.set(self._scope)
        while not self._stopping:
            await self._pull.arrived.wait()
            if self._worth_lingering():  # let the next events join this batch: the linger runs
                # from the oldest event's arrival, so events that came in while the last batch
                # was applied have waited their part of it already
                await asyncio.sleep(self._pull.waiting_since + self._linger - time.monotonic())
            if self._stopping:
                return
            batch = self._pull.take(MAX_BATCH)
            self.batches, self.events = self.batches + 1, self.events + len(batch)
            now = time.monotonic()
            self._rate += RATE_WEIGHT * (len(batch) / max(now - self._taken_at, 1e-3) - self._rate)
            self._taken_at = now
            self._batch_size.observe(len(batch))
            try:
                with self._batch_seconds.time():
                    await self._traced(batch)
            except Exception:  # NATS or PostgreSQL away: the unacked events come back
                log.exception("%s: a batch of %d events failed", self.durable, len(batch))

    def _worth_lingering(self) -> bool:
        """A small batch waits for company only when events come often enough that some will
        join it: a quiet shop gets each event at once, a busy one pays per batch less often."""
        return (not self._stopping and len(self._pull.buffer) < MAX_BATCH
                and self._rate * self._linger >= 1)

    async def _traced(self, msgs: list[Msg]) -> None:
        """Handles a batch, inside its spans when tracing is on."""
        if self._tracer is None:
            await self._handle(msgs, None)
            return
        with telemetry.batch_scope(self._tracer, self.durable, msgs) as traces:
            await self._handle(msgs, traces)

    async def _handle(self, msgs: list[Msg], traces: list[str | None] | None) -> None:
        deliveries: list[tuple[Msg, Delivery[Any]]] = []
        for i, msg in enumerate(msgs):
            try:
                event = self._events.validate_json(msg.data)
            except ValidationError as exc:
                await self._dead_letter(msg, _malformed(exc))
                continue
            meta = msg.metadata
            # The inbox key is the event's own id: the same event published again under
            # another Nats-Msg-Id (a republish past the duplicate window) is still itself.
            event_id = getattr(event, "event_id", None) or (msg.headers or {}).get(
                "Nats-Msg-Id") or f"seq-{meta.sequence.stream}"
            deliveries.append((msg, Delivery(event, event_id, meta.num_delivered,
                                             traces[i] if traces else None)))
        if not deliveries:
            return
        try:
            applied = await self._apply([d for _, d in deliveries])
        except Exception as exc:
            if len(deliveries) == 1:
                await self._failed(*deliveries[0], exc)
                return
            log.info("%s: a batch of %d failed (%r); applying it one event at a time",
                     self.durable, len(deliveries), exc)
            for msg, delivery in deliveries:
                await self._alone(msg, delivery)
            return
        await self._settle(deliveries, applied)

    async def _apply(self, deliveries: Sequence[Delivery[Any]]) -> Applied:
        return await apply(self._pool, self.schema, self.durable, self.consumer.handler,
                           deliveries, self._context)

    async def _alone(self, msg: Msg, delivery: Delivery[Any]) -> None:
        try:
            applied = await self._apply([delivery])
        except Exception as exc:
            await self._failed(msg, delivery, exc)
        else:
            await self._settle([(msg, delivery)], applied)

    async def _settle(self, deliveries: list[tuple[Msg, Delivery[Any]]], applied: Applied
                      ) -> None:
        """After the commit: the after-commit work, publish what the batch emitted, then ack
        its events (or hand back the early ones). A crash before the acks redelivers them, and
        their inbox marks make that a no-op. The work comes first so that whoever learns of
        the change from an event finds the caches already invalidated."""
        for hook in applied.hooks:
            try:
                await hook()
            except Exception:  # a cache that misses an invalidation expires on its own
                log.warning("%s: after-commit work failed", self.durable, exc_info=True)
        if applied.published and self._relay:
            await self._relay.send(applied.published)
        for msg, delivery in deliveries:
            if (reason := applied.retries.get(delivery.event_id)) is not None:
                await self._retry(msg, delivery, f"EventTooEarly: {reason}", routine=True)
            else:
                await msg.ack()
                self._applied.inc()

    async def _failed(self, msg: Msg, delivery: Delivery[Any], exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, PERMANENT):
            await self._dead_letter(msg, reason)
        elif isinstance(exc, OUTAGE):
            delay = max(self.consumer.backoff, default=1.0)
            log.warning("%s: %s; event %s comes back in %.0f s", self.durable, reason,
                        delivery.event_id, delay)
            await msg.nak(delay=delay)
            self._retried.inc()
        else:
            await self._retry(msg, delivery, reason, routine=getattr(exc, "routine", False))

    async def _retry(self, msg: Msg, delivery: Delivery[Any], reason: str, *,
                     routine: bool) -> None:
        """Redelivery after the consumer's backoff; the last delivery is dead-lettered."""
        if delivery.attempt >= self.consumer.max_deliver:
            await self._dead_letter(msg, reason)
            return
        delay = retry_delay(self.consumer, delivery.attempt)
        # An event that merely overtook the one it follows is routine, not a warning.
        log.log(logging.INFO if routine else logging.WARNING,
                "%s failed on delivery %d of %s, retrying in %.2f s: %s",
                self.durable, delivery.attempt, msg.subject, delay, reason)
        await msg.nak(delay=delay)
        self._retried.inc()

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        """Records the event with the reason for operators, then acks it so the rest flow."""
        meta = msg.metadata
        await deadletters.add(
            self._pool, consumer=self.durable, subject=msg.subject,
            stream_seq=meta.sequence.stream, event_id=_event_id(msg), deliveries=meta.num_delivered,
            error=reason[:2000], payload=msg.data)
        log.error("%s dead-lettered stream message %d (%s): %s",
                  self.durable, meta.sequence.stream, msg.subject, reason[:2000])
        await msg.ack()
        self._dead.inc()


def consumer_config(consumer: EventConsumer, ack_wait: float) -> ConsumerConfig:
    """Durable, explicit acks, exactly the consumer's subjects. Failures are naked with their
    backoff delay and dead-lettered here, so the server neither limits deliveries (an outage
    must not use them up) nor sets a backoff (it would become the ack wait of every event: with
    FastStream's consumers a batch not acked within 50 ms was delivered again). The ack wait is
    how long a crashed consumer's events wait to come back."""
    return ConsumerConfig(
        durable_name=consumer.durable,
        filter_subjects=list(consumer.subjects),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_deliver=-1,
        backoff=[],
        max_ack_pending=MAX_ACK_PENDING,
    )


def retry_delay(consumer: EventConsumer, attempt: int) -> float:
    """Seconds before delivery number `attempt + 1`."""
    if not consumer.backoff:
        return 0.0
    return consumer.backoff[min(attempt, len(consumer.backoff)) - 1]


def _malformed(exc: ValidationError) -> str:
    if any(e["type"] == "json_invalid" for e in exc.errors()):
        return f"Malformed: the event is not valid JSON ({exc.errors()[0]['msg']})"
    return f"ValidationError: {exc}"


def _event_id(msg: Msg) -> str | None:
    if msg_id := (msg.headers or {}).get("Nats-Msg-Id"):
        return msg_id[:64]
    try:
        return str(json.loads(msg.data).get("eventId"))[:64]
    except (ValueError, AttributeError):
        return None
