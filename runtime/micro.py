"""NATS micro discovery: each running handler set answers $SRV.PING, $SRV.INFO and $SRV.STATS
(and the `.<name>` and `.<name>.<id>` forms) with the io.nats.micro.v1 schemas, so standard NATS
tooling lists the sets, their endpoints and their request and error counts.

FastStream has no $SRV support; these are plain nats-py subscriptions without a queue group, so
every instance answers.
"""

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from contracts.errors import AtlanticError
from handlers.handler_set import HandlerSet

VERSION = "0.1.0"


@dataclass(slots=True)
class EndpointStats:
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time: int = 0  # nanoseconds, summed


class StatsBook:
    """Request counts per subject, filled in by the error middleware."""

    def __init__(self) -> None:
        self._by_subject: dict[str, EndpointStats] = defaultdict(EndpointStats)

    def record(self, subject: str, elapsed_ns: int, error: AtlanticError | None) -> None:
        stats = self._by_subject[subject]
        stats.num_requests += 1
        stats.processing_time += elapsed_ns
        if error is not None:
            stats.num_errors += 1
            stats.last_error = f"{error.status}:{error.message}"

    def get(self, subject: str) -> EndpointStats:
        return self._by_subject.get(subject) or EndpointStats()


class MicroService:
    def __init__(self, handler_set: HandlerSet, stats: StatsBook):
        self.handler_set = handler_set
        self.name = f"atlantic-{handler_set.name}"
        self.id = NUID().next().decode()
        self._stats = stats
        self._started = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self._subscriptions: list[Subscription] = []

    async def start(self, nc: Client) -> None:
        for verb in ("PING", "INFO", "STATS"):
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{self.name}",
                            f"$SRV.{verb}.{self.name}.{self.id}"):
                self._subscriptions.append(await nc.subscribe(subject, cb=self._answer))

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()

    def _identity(self, kind: str) -> dict[str, Any]:
        return {"type": f"io.nats.micro.v1.{kind}_response", "name": self.name, "id": self.id,
                "version": VERSION, "metadata": {}}

    def info(self) -> dict[str, Any]:
        endpoints = [
            {"name": e.name, "subject": e.subject, "queue_group": self.handler_set.queue,
             "metadata": {}}
            for e in self.handler_set.endpoints
        ]
        return {**self._identity("info"), "description": self.handler_set.description,
                "endpoints": endpoints}

    def stats(self) -> dict[str, Any]:
        endpoints = []
        for e in self.handler_set.endpoints:
            s = self._stats.get(e.subject)
            endpoints.append({
                "name": e.name, "subject": e.subject, "queue_group": self.handler_set.queue,
                "num_requests": s.num_requests, "num_errors": s.num_errors,
                "last_error": s.last_error, "processing_time": s.processing_time,
                "average_processing_time": s.processing_time // s.num_requests
                if s.num_requests else 0,
                "data": None,
            })
        return {**self._identity("stats"), "started": self._started, "endpoints": endpoints}

    async def _answer(self, msg: Msg) -> None:
        verb = msg.subject.split(".")[1]
        reply = {"PING": lambda: self._identity("ping"), "INFO": self.info,
                 "STATS": self.stats}[verb]()
        await msg.respond(json.dumps(reply).encode())
