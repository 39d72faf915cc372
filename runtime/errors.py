"""One place where every failure of a request becomes a structured reply.

FastStream sends no reply when a handler raises (the caller would wait out its timeout), so this
middleware catches everything on request-reply messages: decoding, validation, typed domain
errors and the unexpected, and returns the NATS micro error reply. Event consumers re-raise, so
JetStream redelivers them.
"""

import functools
import json
import logging
import time
from typing import Any

from faststream import BaseMiddleware
from faststream.nats.response import NatsResponse
from pydantic import ValidationError

from contracts.base import MAX_REQUEST_BYTES
from contracts.errors import AtlanticError, BadRequest, Unprocessable

log = logging.getLogger("atlantic.errors")
access = logging.getLogger("atlantic.requests")


async def decode_json(msg: Any, _original: Any) -> Any:
    """Bodies are JSON objects; an empty body is an empty object; too big is refused unread."""
    body = msg.body
    if msg.reply_to and len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(
            f"the request is {len(body)} bytes; the limit is {MAX_REQUEST_BYTES}",
            code="payload_too_large",
        )
    if not body:
        return {}
    try:
        return json.loads(body)
    except ValueError:
        raise BadRequest("the request body is not valid JSON", code="malformed_json") from None


def _field(loc: tuple[Any, ...]) -> str:
    # The first element is the handler's parameter name; clients know only the fields.
    path = [str(part) for part in loc[1:]]
    return ".".join(path) or "body"


def as_error(exc: Exception) -> AtlanticError:
    if isinstance(exc, AtlanticError):
        return exc
    if isinstance(exc, ValidationError):
        details = [
            {"field": _field(e["loc"]), "message": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        fields = ", ".join(sorted({d["field"] for d in details}))
        return Unprocessable(f"invalid request fields: {fields}", details=details)
    log.exception("unexpected error while handling a request", exc_info=exc)
    return AtlanticError("an internal error occurred; it has been logged")


def error_response(error: AtlanticError) -> NatsResponse:
    header_text = " ".join(error.message.split())[:200]
    return NatsResponse(
        error.reply().model_dump_json().encode(),
        headers={
            "Nats-Service-Error": header_text,
            "Nats-Service-Error-Code": str(error.status),
            "content-type": "application/json",
        },
    )


class ErrorReplies(BaseMiddleware):
    """Turns request failures into error replies, counts requests per endpoint for $SRV.STATS,
    and logs one DEBUG line per request. On success that is a clock read on each side, a dict
    update and a disabled-level check: the stats book is bound once (`for_stats`), not looked
    up in the context per message."""

    def __init__(self, msg: Any, /, *, context: Any, stats: Any = None) -> None:
        super().__init__(msg, context=context)
        self.stats = stats

    @classmethod
    def for_stats(cls, stats: Any) -> Any:
        """The middleware factory FastStream calls per message, with this process's book."""
        return functools.partial(cls, stats=stats)

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        if not msg.reply_to:
            return await call_next(msg)
        started = time.perf_counter_ns()
        error: AtlanticError | None = None
        try:
            result = await call_next(msg)
        except Exception as exc:  # every failure is answered
            error = as_error(exc)
            result = error_response(error)
        elapsed = time.perf_counter_ns() - started
        subject = msg.raw_message.subject
        if self.stats is not None:
            self.stats.record(subject, elapsed, error)
        if access.isEnabledFor(logging.DEBUG):
            access.debug("%s %s %.2f ms", subject, error.status if error else 200, elapsed / 1e6)
        return result
