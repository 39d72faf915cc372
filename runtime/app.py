"""App assembly: a broker with the chosen handler sets, and the clients they share.

Start-up order: connect, migrate, declare the stream, open the pools, enter each set's lifespans,
start the outbox relays (on_startup); then the request subscriptions (runtime.requests), the event
consumers (runtime.consumers) and $SRV responders (after_startup). Shutdown runs it backwards:
the batch each consumer holds is finished and the requests in hand answered, then FastStream
stops.
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import asyncpg
from faststream import FastStream
from faststream.nats import NatsBroker
from redis.asyncio import Redis

from handlers import HANDLER_SETS
from handlers.handler_set import HandlerSet
from runtime.accounts import Passwords, url_user
from runtime.consumers import BatchConsumer
from runtime.micro import MicroService, StatsBook
from runtime.nats_headers import install as install_header_parser
from runtime.relay import OutboxRelay
from runtime.requests import RequestServer
from runtime.settings import Settings
from runtime.streams import ensure_stream
from runtime.telemetry import SCRAPED, ScrapeSource, configure_tracing, serve_metrics
from storage import redis_client
from storage.migrations import apply_migrations
from storage.postgres import create_database, open_pool
from storage.ratelimits import LoginLimiter
from storage.sessions import Sessions

log = logging.getLogger("atlantic")


class UnknownHandlerSet(ValueError):
    pass


class NatsUnreachable(RuntimeError):
    pass


async def connect_broker(broker: NatsBroker, settings: Settings) -> None:
    """nats-py keeps retrying unreachable servers at start-up for minutes, saying nothing (its
    reconnect policy applies to the first connect too): a deadline turns that into an error."""
    try:
        async with asyncio.timeout(settings.nats_connect_timeout_seconds):
            await broker.connect()
    except TimeoutError:
        raise NatsUnreachable(
            f"no NATS server answered at {', '.join(settings.nats_servers)} within "
            f"{settings.nats_connect_timeout_seconds:g} s (ATLANTIC_NATS_URL)") from None


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
        self.requests: RequestServer | None = None
        self.consumers: list[BatchConsumer] = []
        self.services: list[MicroService] = []
        self.scraped: ScrapeSource | None = None
        self.lifespans = contextlib.AsyncExitStack()

    async def open(self) -> None:
        s = self.settings
        if await create_database(s.postgres_dsn):
            log.info("created the database %s", s.postgres_dsn.rsplit("/", 1)[-1])
        await asyncio.to_thread(apply_migrations, s.postgres_dsn)
        await connect_broker(self.broker, s)
        await ensure_stream(self.broker.connection.jetstream(), s)
        self.pool = await open_pool(s.postgres_dsn, s.postgres_pool_size)
        self.redis = redis_client.connect(s.redis_url)
        context = self.app.context
        context.set_global("broker", self.broker)  # FastStream sets it only for its subscribers
        context.set_global("settings", s)
        context.set_global("pool", self.pool)
        context.set_global("redis", self.redis)
        context.set_global("sessions", Sessions(
            self.redis, s.redis_prefix, idle_seconds=s.session_idle_seconds,
            absolute_seconds=s.session_absolute_seconds))
        context.set_global("login_limiter", LoginLimiter(
            self.redis, s.redis_url, s.redis_prefix, attempts=s.login_attempts,
            window_seconds=s.login_window_seconds, global_failures=s.login_failures_global))
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
        self.requests = RequestServer(nc, self.sets, self.app.context, self.stats,
                                      self.settings.request_workers)
        await self.requests.start()
        for hs in self.sets:
            for consumer in hs.consumers:
                batches = BatchConsumer(
                    consumer, hs.outbox_schema, nc=nc, js=js, pool=self.pool,
                    relay=self.relays.get(hs.outbox_schema or ""), context=self.app.context,
                    linger=self.settings.event_batch_linger_seconds,
                    ack_wait=self.settings.event_ack_wait_seconds, set_name=hs.name)
                await batches.start()
                self.consumers.append(batches)
        for hs in self.sets:
            service = MicroService(hs, self.stats)
            await service.start(nc)
            self.services.append(service)
        self.scraped = ScrapeSource(asyncio.get_running_loop(), self.pool, list(self.relays), js,
                                    self.durables)
        SCRAPED.sources.append(self.scraped)
        serve_metrics(self.settings)
        log.info("atlantic running: %s", ", ".join(hs.name for hs in self.sets))

    def durables(self) -> list[str]:
        """The durable consumers this app runs: the sets' batch consumers and the ingest's."""
        ingest = self.app.context.get("analytics_ingest")
        return [c.durable for c in self.consumers] + ([ingest.durable] if ingest else [])

    async def stop_background(self) -> None:
        # Both at once, each within the grace period: the batches in hand are finished and
        # acked, the requests in hand answered.
        grace = self.settings.graceful_timeout_seconds
        if self.scraped is not None:
            SCRAPED.sources.remove(self.scraped)
            self.scraped = None
        await asyncio.gather(*(c.stop(grace) for c in self.consumers),
                             *([self.requests.stop(grace)] if self.requests else []))
        for service in self.services:
            await service.stop()
        for relay in self.relays.values():
            await relay.stop()

    async def close(self) -> None:
        await self.lifespans.aclose()
        if self.pool:
            await self.pool.close()
        if self.redis:
            await self.redis.aclose()


def build_app(settings: Settings, set_names: Iterable[str] | None = None) -> FastStream:
    sets = select_sets(settings.handler_sets if set_names is None else set_names)
    install_header_parser()
    configure_tracing(settings, service_name(sets))
    stats = StatsBook()
    # The broker holds the connection; requests and events are served below it
    # (runtime.requests, runtime.consumers), so it has no subscribers of its own, and what the
    # sets send goes through its nats-py connection. FastStream's TelemetryMiddleware and
    # PrometheusMiddleware would see no message here: those two modules make the spans and the
    # metrics themselves (runtime.telemetry).
    broker = NatsBroker(
        settings.nats_servers,
        inbox_prefix=settings.nats_inbox_prefix,
        max_reconnect_attempts=-1,  # once up, wait out any outage: a cluster node comes back
        name=f"atlantic[{','.join(hs.name for hs in sets)}]",
        apply_types=False,
        graceful_timeout=settings.graceful_timeout_seconds,
    )
    app = FastStream(broker)
    resources = AppResources(app, broker, settings, sets, stats)
    app.on_startup(resources.open)
    app.after_startup(resources.start_background)
    app.on_shutdown(resources.stop_background)
    app.after_shutdown(resources.close)
    app.context.set_global("resources", resources)
    return app


def service_name(sets: Iterable[HandlerSet]) -> str:
    """The OpenTelemetry service.name of a process running these sets (OTEL_SERVICE_NAME wins)."""
    return "atlantic-" + "-".join(hs.name for hs in sets)


def document_broker(sets: Iterable[HandlerSet]) -> NatsBroker:
    """A broker declaring every endpoint of these sets, for the AsyncAPI document only."""
    broker = NatsBroker(Settings.model_construct().nats_url, apply_types=False)
    for hs in sets:
        broker.include_router(hs.router())
    return broker


def build_apps(settings: Settings, set_names: Iterable[str] | None = None) -> list[FastStream]:
    """One app for the chosen sets; or, where `atlantic up` generated a NATS password for each
    set and the URL names no user, one app per set, each connected as its own NATS user (one
    connection cannot hold two users' permissions). The PostgreSQL pool size is the process's,
    shared out among them."""
    sets = select_sets(settings.handler_sets if set_names is None else set_names)
    names = [hs.name for hs in sets]
    configure_tracing(settings, service_name(sets))  # once for the process, before its apps
    passwords = None if url_user(settings.nats_url) else Passwords.read(settings.data_dir)
    if passwords is None:
        return [build_app(settings, names)]
    pool_size = max(2, settings.postgres_pool_size // len(names))
    return [build_app(settings.model_copy(update={
        "nats_url": passwords.url(settings.nats_url, name), "postgres_pool_size": pool_size}),
        [name]) for name in names]
