"""Where an event goes when its consumer gives up on it.

A malformed event (bad JSON, a body that fails validation, a typed domain error) will never
succeed, so it is dead-lettered at once; any other failure is retried by JetStream with backoff
and dead-lettered on its last delivery. Either way the message is then acked, so the consumer
moves on and the others flow, and the reason waits in ops.dead_letters for an operator.
"""

import json
import logging
from typing import Any

from faststream import BaseMiddleware
from pydantic import ValidationError

from contracts.errors import AtlanticError
from storage import deadletters

log = logging.getLogger("atlantic.deadletters")

PERMANENT = (AtlanticError, ValidationError)


def _event_id(body: bytes, headers: dict[str, str]) -> str | None:
    if msg_id := headers.get("Nats-Msg-Id"):
        return msg_id
    try:
        return str(json.loads(body).get("eventId"))[:64]
    except (ValueError, AttributeError):
        return None


class DeadLetters(BaseMiddleware):
    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        raw = msg.raw_message
        if isinstance(raw, list) or not raw.reply.startswith("$JS.ACK."):
            return await call_next(msg)  # requests, and batch consumers that decide themselves
        try:
            return await call_next(msg)
        except Exception as exc:
            meta = raw.metadata
            limits: dict[str, int] = self.context.get("event_max_deliver") or {}
            last = meta.num_delivered >= limits.get(meta.consumer, 1)
            if not (isinstance(exc, PERMANENT) or last):
                log.warning("%s failed on delivery %d of %s, will retry: %r",
                            meta.consumer, meta.num_delivered, raw.subject, exc)
                raise
            reason = f"{type(exc).__name__}: {exc}"[:2000]
            await deadletters.add(
                self.context.get("pool"), consumer=meta.consumer, subject=raw.subject,
                stream_seq=meta.sequence.stream, event_id=_event_id(raw.data, raw.headers or {}),
                deliveries=meta.num_delivered, error=reason, payload=raw.data)
            log.error("%s dead-lettered stream message %d (%s): %s",
                      meta.consumer, meta.sequence.stream, raw.subject, reason)
            return None  # handled: acked, so the consumer moves on
