"""One place where every failure of a request becomes a structured reply.

Every request gets a reply (the caller would otherwise wait out its timeout): decoding,
validation, typed domain errors and the unexpected all become the NATS micro error reply
(runtime.requests sends it). Event consumers re-raise instead, so JetStream redelivers them.
"""

import logging
import uuid

from pydantic import ValidationError

from contracts.base import MAX_REQUEST_BYTES
from contracts.errors import AtlanticError, PayloadTooLarge, invalid_request

log = logging.getLogger("atlantic.errors")


def decode_request(body: bytes) -> bytes:
    """A request body as it came (too big: refused unread; empty: an empty object). The endpoint
    parses and validates it in one pass of pydantic's JSON parser (handlers.endpoints)."""
    if len(body) > MAX_REQUEST_BYTES:
        raise PayloadTooLarge(
            f"the request is {len(body)} bytes; the limit is {MAX_REQUEST_BYTES}")
    return body or b"{}"


def as_error(exc: Exception) -> AtlanticError:
    if isinstance(exc, AtlanticError):
        return exc
    if isinstance(exc, ValidationError):
        return invalid_request(exc)
    log.exception("unexpected error while handling a request", exc_info=exc)
    return AtlanticError("an internal error occurred; it has been logged")


def correlation_id(requested: str | None) -> str:
    """The reply's correlation id: the request's own, else a new one (as FastStream made)."""
    return requested or str(uuid.uuid4())


def error_reply(error: AtlanticError, requested_id: str | None) -> tuple[bytes, dict[str, str]]:
    """An error reply's body and headers: NATS micro's error and code, beside the reply's own."""
    return error.reply().model_dump_json().encode(), {
        "content-type": "application/json",
        "correlation_id": correlation_id(requested_id),
        "Nats-Service-Error": " ".join(error.message.split())[:200],
        "Nats-Service-Error-Code": str(error.status),
    }
