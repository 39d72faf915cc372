"""A handler set: its request-reply endpoints and event consumers, declared once at import time,
and a factory that builds a fresh FastStream router of its endpoints for each app.

Event consumers are run by runtime.consumers, in batches (handlers.batches)."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from faststream import AckPolicy
from faststream.context import ContextRepo
from faststream.nats import NatsRouter

from handlers.batches import BatchHandler
from handlers.endpoints import bind

Handler = Callable[..., Any]
# Something a set runs beside its handlers (a cache client, a sweeper): entered once the shared
# clients are in the context, before any message arrives; exited after the last one.
Lifespan = Callable[[ContextRepo], AbstractAsyncContextManager[None]]
Chore = Callable[[ContextRepo], Awaitable[object]]

log = logging.getLogger("atlantic.chores")

# Redelivery of a failing event: a few quick retries, then slower ones, then the dead-letter table.
EVENT_MAX_DELIVER = 6
# The first retry is quick: most failures are an event that overtook the one it follows (the
# sets and their replicas work concurrently), and that one lands within milliseconds.
EVENT_BACKOFF_SECONDS = (0.05, 0.25, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class Endpoint:
    subject: str
    handler: Handler

    @property
    def name(self) -> str:
        return self.handler.__name__


@dataclass(frozen=True)
class EventConsumer:
    """A durable consumer of exactly the subjects its handler acts on."""

    subjects: tuple[str, ...]
    durable: str
    handler: BatchHandler
    max_deliver: int = EVENT_MAX_DELIVER
    backoff: tuple[float, ...] = EVENT_BACKOFF_SECONDS
    # Consumers this one took over: it starts where the slowest of them stopped, with their
    # inbox marks, and they are removed (runtime.consumers).
    replaces: tuple[str, ...] = ()


@dataclass
class HandlerSet:
    name: str
    description: str
    outbox_schema: str | None = None
    endpoints: list[Endpoint] = field(default_factory=list)
    consumers: list[EventConsumer] = field(default_factory=list)
    lifespans: list[Lifespan] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return f"atlantic-{self.name}"

    def request(self, subject: str) -> Callable[[Handler], Handler]:
        """Declares a request-reply endpoint; replicas share it through the set's queue group."""

        def register(handler: Handler) -> Handler:
            self.endpoints.append(Endpoint(subject, handler))
            return handler

        return register

    def event(self, *subjects: str, durable: str, max_deliver: int = EVENT_MAX_DELIVER,
              backoff: tuple[float, ...] = EVENT_BACKOFF_SECONDS, replaces: tuple[str, ...] = (),
              ) -> Callable[[BatchHandler], BatchHandler]:
        """Declares a durable JetStream consumer of these subjects, whose handler takes a batch
        of events in one transaction (handlers.batches); each event is acked after the commit,
        a failing one is redelivered with backoff, then dead-lettered (runtime.consumers)."""

        def register(handler: BatchHandler) -> BatchHandler:
            self.consumers.append(
                EventConsumer(subjects, durable, handler, max_deliver, backoff, replaces))
            return handler

        return register

    def lifespan(self, lifespan: Lifespan) -> Lifespan:
        """Declares a resource or background task that lives as long as the app serves."""
        self.lifespans.append(lifespan)
        return lifespan

    def periodic(self, seconds_setting: str) -> Callable[[Chore], Chore]:
        """Declares a chore run every `settings.<seconds_setting>` seconds while the app serves,
        in every replica (chores take their rows with SKIP LOCKED, so replicas share the work).
        A failing round is logged and the next one tries again."""

        def register(chore: Chore) -> Chore:
            name = f"{self.name}-{chore.__name__}"

            async def forever(context: ContextRepo) -> None:
                while True:
                    try:
                        await chore(context)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # PostgreSQL away and the like: the next round retries
                        log.warning("%s failed; will retry", name, exc_info=True)
                    await asyncio.sleep(getattr(context.get("settings"), seconds_setting))

            @contextlib.asynccontextmanager
            async def running(context: ContextRepo) -> AsyncIterator[None]:
                task = asyncio.create_task(forever(context), name=name)
                try:
                    yield
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

            self.lifespans.append(running)
            return chore

        return register

    def router(self) -> NatsRouter:
        """A FastStream router of the set's endpoints, for the AsyncAPI document: their
        subjects, queue group, request models and docstrings (runtime.requests serves them)."""
        router = NatsRouter()
        for endpoint in self.endpoints:
            router.subscriber(endpoint.subject, queue=self.queue,
                              ack_policy=AckPolicy.MANUAL)(bind(endpoint.handler, None))
        return router
