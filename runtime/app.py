"""App assembly: a broker with the chosen handler sets, and the clients they share.

Start-up order: connect, migrate, declare the stream, open the pools, enter each set's lifespans,
start the outbox relays (on_startup); start the request subscribers (FastStream); then the event
consumers (runtime.consumers) and $SRV responders (after_startup). Shutdown runs it backwards:
requests in flight are answered, the batch each consumer holds is finished, then FastStream stops.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import asyncpg
from faststream import FastStream
from faststream.nats import NatsBroker
from redis.asyncio import Redis

from handlers import HANDLER_SETS
from handlers.handler_set import HandlerSet
from runtime.consumers import BatchConsumer
from runtime.errors import ErrorReplies, decode_json
from runtime.micro import MicroService, StatsBook
from runtime.nats_headers import install as install_header_parser
from runtime.relay import OutboxRelay
from runtime.settings import Settings
from runtime.streams import ensure_stream
from storage.migrations import apply_migrations
from storage.postgres import open_pool
from storage.ratelimits import LoginLimiter
from storage.sessions import Sessions

log = logging.getLogger("atlantic")


class UnknownHandlerSet(ValueError):
    pass


def select_sets(names: Iterable[str]) -> list[HandlerSet]:
    names = list(dict.fromkeys(names))
    if names == ["all"]:
        names = list(HANDLER_SETS)
    if unknown := [n for n in names if n not in HANDLER_SETS]:
        raise UnknownHandlerSet(
            f"unknown handler set(s): {', '.join(unknown)}; known: {', '.join(HANDLER_SETS)}")
    if not names:
        raise UnknownHandlerSet("no handler set chosen")
    return [HANDLER_SETS[n] for n in names]


class AppResources:
    """The pools and background tasks one process owns, whatever sets it runs."""

    def __init__(self, app: FastStream, broker: NatsBroker, settings: Settings,
                 sets: list[HandlerSet], stats: StatsBook):
        self.app, self.broker, self.settings, self.sets = app, broker, settings, sets
        self.stats = stats
        self.pool: asyncpg.Pool | None = None
        self.redis: Redis | None = None
        self.relays: dict[str, OutboxRelay] = {}
        self.consumers: list[BatchConsumer] = []
        self.services: list[MicroService] = []
        self.lifespans = contextlib.AsyncExitStack()

    async def open(self) -> None:
        s = self.settings
        await asyncio.to_thread(apply_migrations, s.postgres_dsn)
        await self.broker.connect()
        await ensure_stream(self.broker.connection.jetstream(), s)
        self.pool = await open_pool(s.postgres_dsn, s.postgres_pool_size)
        self.redis = Redis.from_url(s.redis_url)
        context = self.app.context
        context.set_global("settings", s)
        context.set_global("pool", self.pool)
        context.set_global("redis", self.redis)
        context.set_global("sessions", Sessions(
            self.redis, s.redis_prefix, idle_seconds=s.session_idle_seconds,
            absolute_seconds=s.session_absolute_seconds))
        context.set_global("login_limiter", LoginLimiter(
            s.redis_url, s.redis_prefix, attempts=s.login_attempts,
            window_seconds=s.login_window_seconds))
        for hs in self.sets:
            for lifespan in hs.lifespans:
                await self.lifespans.enter_async_context(lifespan(context))
        js = self.broker.connection.jetstream()
        for schema in sorted({hs.outbox_schema for hs in self.sets if hs.outbox_schema}):
            relay = OutboxRelay(self.pool, s.postgres_dsn, js, schema,
                                sweep_seconds=s.outbox_sweep_seconds,
                                stale_seconds=s.outbox_stale_seconds,
                                retention_hours=s.outbox_retention_hours)
            await relay.start()  # before the first request, which may hand it rows
            self.relays[schema] = relay
        context.set_global("outbox", self.relays)

    async def start_background(self) -> None:
        nc = self.broker.connection
        js = nc.jetstream()
        for hs in self.sets:
            for consumer in hs.consumers:
                batches = BatchConsumer(
                    consumer, hs.outbox_schema, nc=nc, js=js, pool=self.pool,
                    relay=self.relays.get(hs.outbox_schema or ""), context=self.app.context,
                    linger=self.settings.event_batch_linger_seconds,
                    ack_wait=self.settings.event_ack_wait_seconds)
                await batches.start()
                self.consumers.append(batches)
        for hs in self.sets:
            service = MicroService(hs, self.stats)
            await service.start(nc)
            self.services.append(service)
        log.info("atlantic running: %s", ", ".join(hs.name for hs in self.sets))

    async def stop_background(self) -> None:
        await asyncio.gather(*(c.stop(self.settings.graceful_timeout_seconds)
                               for c in self.consumers))
        await self._finish_delivered_requests()
        for service in self.services:
            await service.stop()
        for relay in self.relays.values():
            await relay.stop()

    async def _finish_delivered_requests(self) -> None:
        """FastStream's stop drops requests already delivered to this process but not yet
        started, and their callers time out. Stop taking new ones, then answer those."""
        subscribers = [s for s in self.broker.subscribers
                       if getattr(s, "subscription", None) is not None
                       and getattr(s, "stream", None) is None]
        await asyncio.gather(*(s.subscription.drain() for s in subscribers),
                             return_exceptions=True)
        for subscriber in subscribers:
            subscriber.subscription = None  # drained: FastStream must not unsubscribe it again
        deadline = time.monotonic() + self.settings.graceful_timeout_seconds
        # FastStream exposes no "all handlers finished" event, so poll its worker counters.
        while time.monotonic() < deadline and any(_busy(s) for s in subscribers):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.lifespans.aclose()
        if self.pool:
            await self.pool.close()
        if self.redis:
            await self.redis.aclose()


def _busy(subscriber: Any) -> bool:
    limiter = getattr(subscriber, "limiter", None)
    if limiter is None:
        return False
    queued = subscriber.receive_stream.statistics().current_buffer_used
    return queued > 0 or limiter.value < subscriber.max_workers


def build_app(settings: Settings, set_names: Iterable[str] | None = None) -> FastStream:
    sets = select_sets(settings.handler_sets if set_names is None else set_names)
    install_header_parser()
    stats = StatsBook()
    broker = NatsBroker(
        settings.nats_url,
        name=f"atlantic[{','.join(hs.name for hs in sets)}]",
        middlewares=[ErrorReplies.for_stats(stats)],
        decoder=decode_json,
        apply_types=False,  # the endpoints inject their own (handlers.endpoints)
        graceful_timeout=settings.graceful_timeout_seconds,
        log_level=logging.DEBUG,
    )
    # FastStream logs two access lines per message ("Received", "Processed"); ErrorReplies logs
    # one per request (atlantic.requests, DEBUG). FastStream's errors still come through.
    if (access := logging.getLogger("faststream.access.nats")).level == logging.NOTSET:
        access.setLevel(logging.WARNING)
    app = FastStream(broker)
    for hs in sets:
        broker.include_router(hs.router(workers=settings.request_workers,
                                        context=broker.context))
    resources = AppResources(app, broker, settings, sets, stats)
    app.on_startup(resources.open)
    app.after_startup(resources.start_background)
    app.on_shutdown(resources.stop_background)
    app.after_shutdown(resources.close)
    app.context.set_global("resources", resources)
    return app
