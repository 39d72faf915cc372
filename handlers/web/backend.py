"""The web set's side of NATS: it asks the other sets like any client would, with the signed-in
admin's token, and reads discovery ($SRV) and JetStream consumer state for the live panel."""

import asyncio
import json
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js.errors import Error as JetStreamError

from contracts.events import STREAM

ASK_TIMEOUT_SECONDS = 5.0
# $SRV answers come from every running instance; those that answer within this long are listed.
DISCOVERY_SECONDS = 0.3


class BackendError(Exception):
    """A set answered with an error (status and body passed on as they came), or nobody did."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(body["error"]["message"])
        self.status, self.body = status, body

    @classmethod
    def unavailable(cls, subject: str) -> "BackendError":
        return cls(503, {"error": {"code": "unavailable", "details": [],
                                   "message": f"no answer on {subject}; try again shortly"}})


class Backend:
    def __init__(self, nc: Client):
        self.nc = nc

    async def ask(self, subject: str, payload: Any = None, token: str | None = None) -> Any:
        """One request-reply; the body of a success, else BackendError."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        body = b"" if payload is None else json.dumps(payload).encode()
        try:
            msg = await self.nc.request(subject, body, timeout=ASK_TIMEOUT_SECONDS,
                                        headers=headers)
        except (TimeoutError, nats.errors.Error):
            raise BackendError.unavailable(subject) from None
        status = int((msg.headers or {}).get("Nats-Service-Error-Code", 200))
        reply = json.loads(msg.data) if msg.data else None
        if status != 200:
            raise BackendError(status, reply)
        return reply

    async def services(self) -> list[dict[str, Any]]:
        """Every running handler set instance, from its $SRV.STATS answer, with its request and
        error counts summed over its endpoints."""
        inbox = self.nc.new_inbox()
        answers: list[dict[str, Any]] = []

        async def collect(msg) -> None:
            answers.append(json.loads(msg.data))

        subscription = await self.nc.subscribe(inbox, cb=collect)
        try:
            await self.nc.publish("$SRV.STATS", b"", reply=inbox)
            await asyncio.sleep(DISCOVERY_SECONDS)  # a scatter-gather: no "last answer" comes
        finally:
            await subscription.unsubscribe()
        return sorted(({
            "name": a["name"], "id": a["id"], "version": a.get("version"),
            "started": a.get("started"),
            "requests": sum(e.get("num_requests", 0) for e in a.get("endpoints") or []),
            "errors": sum(e.get("num_errors", 0) for e in a.get("endpoints") or []),
        } for a in answers), key=lambda s: (s["name"], s["id"]))

    async def consumers(self) -> list[dict[str, Any]]:
        """Each durable consumer of the event stream: messages not yet delivered to it, and those
        delivered but not yet acknowledged."""
        try:
            infos = await self.nc.jetstream().consumers_info(STREAM)
        except (TimeoutError, nats.errors.Error, JetStreamError):
            return []
        return sorted(({"name": i.name, "pending": i.num_pending or 0,
                        "ackPending": i.num_ack_pending or 0,
                        "redelivered": i.num_redelivered or 0}
                       for i in infos if i.config.durable_name), key=lambda c: c["name"])
