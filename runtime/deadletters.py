"""Where an event goes when its consumer gives up on it.

A malformed event (bad JSON, a body that fails validation, a typed domain error) will never
succeed, so it is dead-lettered at once; any other failure is retried after the consumer's
backoff delay and dead-lettered on its last delivery. The delay is sent with the nak: the
server applies a consumer's BackOff only to ack timeouts, and a plain nak (FastStream's
NACK_ON_ERROR) is redelivered at once, which would burn every delivery in milliseconds.
A dead-lettered message is acked, so the consumer moves on and the others flow, and the
reason waits in ops.dead_letters for an operator.
"""

import json
import logging
from dataclasses import dataclass
from typing import Any

from faststream import BaseMiddleware
from pydantic import ValidationError

from contracts.errors import AtlanticError
from storage import deadletters

log = logging.getLogger("atlantic.deadletters")

PERMANENT = (AtlanticError, ValidationError)


@dataclass(frozen=True)
class RetryPolicy:
    max_deliver: int
    backoff: tuple[float, ...]

    def delay(self, delivered: int) -> float:
        """Seconds before delivery number `delivered + 1`."""
        if not self.backoff:
            return 0.0
        return self.backoff[min(delivered, len(self.backoff)) - 1]


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
            policies: dict[str, RetryPolicy] = self.context.get("event_retry") or {}
            policy = policies.get(meta.consumer, RetryPolicy(1, ()))
            if not (isinstance(exc, PERMANENT) or meta.num_delivered >= policy.max_deliver):
                delay = policy.delay(meta.num_delivered)
                # An event that merely overtook the one it follows is routine, not a warning.
                level = logging.INFO if getattr(exc, "routine", False) else logging.WARNING
                log.log(level, "%s failed on delivery %d of %s, retrying in %.2f s: %r",
                        meta.consumer, meta.num_delivered, raw.subject, delay, exc)
                await msg.nack(delay=delay)
                return None
            reason = f"{type(exc).__name__}: {exc}"[:2000]
            await deadletters.add(
                self.context.get("pool"), consumer=meta.consumer, subject=raw.subject,
                stream_seq=meta.sequence.stream, event_id=_event_id(raw.data, raw.headers or {}),
                deliveries=meta.num_delivered, error=reason, payload=raw.data)
            log.error("%s dead-lettered stream message %d (%s): %s",
                      meta.consumer, meta.sequence.stream, raw.subject, reason)
            return None  # handled: acked, so the consumer moves on
