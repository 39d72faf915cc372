"""Live activity for open dashboards: every event on atlantic.events.> from one core NATS
subscription (no durable state: a dashboard shows what happens while it is open), coalesced into
one tick a quarter second, and fanned out to every connected stream."""

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

EVENTS = "atlantic.events.>"
TICK_SECONDS = 0.25
RECENT = 12  # events shown in a tick's "recent" list
QUEUE_TICKS = 64  # ticks a slow stream may fall behind before it misses some
CLOSED = None  # put on every queue when the feed stops: the streams end


@dataclass
class Tick:
    """What happened since the last tick: the figures a dashboard adds to its own."""

    orders: int = 0
    revenue: Decimal = Decimal(0)
    cancelled: int = 0
    returned: int = 0
    events: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))

    def add(self, subject: str, event: dict[str, Any]) -> None:
        self.events += 1
        name = subject.removeprefix("atlantic.events.")
        if name == "order.created":
            self.orders += 1
            self.revenue += Decimal(str(event.get("totalPrice", 0)))
        elif name == "order.cancelled":
            self.cancelled += 1
        elif name == "order.returned":
            self.returned += 1
        self.recent.append({"event": name, "orderId": event.get("orderId"),
                            "totalPrice": event.get("totalPrice"),
                            "timestamp": event.get("timestamp")})

    def as_json(self) -> dict[str, Any]:
        return {"orders": self.orders, "revenue": float(self.revenue),
                "cancelled": self.cancelled, "returned": self.returned,
                "events": self.events, "recent": list(self.recent)}


class LiveFeed:
    def __init__(self, nc: Client):
        self.nc = nc
        self._queues: set[asyncio.Queue] = set()
        self._tick = Tick()
        self._subscription: Subscription | None = None
        self._flusher: asyncio.Task | None = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(EVENTS, cb=self._on_event)
        self._flusher = asyncio.create_task(self._flush_forever(), name="web-live-feed")

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for queue in self._queues:
            self._offer(queue, CLOSED)

    @contextlib.contextmanager
    def listen(self):
        """A queue of ticks (dicts) for one stream, ended by CLOSED when the feed stops."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_TICKS)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    async def _on_event(self, msg: Msg) -> None:
        if not self._queues:
            return
        try:
            event = json.loads(msg.data)
        except ValueError:
            return  # not ours to judge: the consumers dead-letter what they cannot read
        if isinstance(event, dict):
            self._tick.add(msg.subject, event)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if self._tick.events:
                tick, self._tick = self._tick.as_json(), Tick()
                for queue in self._queues:
                    self._offer(queue, tick)

    @staticmethod
    def _offer(queue: asyncio.Queue, item: Any) -> None:
        if queue.full():  # a stream that stopped reading loses its oldest tick, not the feed
            queue.get_nowait()
        queue.put_nowait(item)
