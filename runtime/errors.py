"""One place where every failure of a request becomes a structured reply.

Every request gets a reply (the caller would otherwise wait out its timeout): decoding,
validation, typed domain errors and the unexpected all become the NATS micro error reply
(runtime.requests sends it). Event consumers re-raise instead, so JetStream redelivers them.
"""

import json
import logging
import uuid
from typing import Any

from pydantic import ValidationError

from contracts.base import MAX_REQUEST_BYTES
from contracts.errors import AtlanticError, BadRequest, Unprocessable

log = logging.getLogger("atlantic.errors")


def decode_request(body: bytes) -> Any:
    """Bodies are JSON objects; an empty body is an empty object; too big is refused unread."""
    if len(body) > MAX_REQUEST_BYTES:
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


def error_headers(error: AtlanticError, correlation_id: str | None) -> dict[str, str]:
    """The headers of an error reply: NATS micro's error and code, beside the reply's own."""
    return {
        "content-type": "application/json",
        "correlation_id": correlation_id or str(uuid.uuid4()),
        "Nats-Service-Error": " ".join(error.message.split())[:200],
        "Nats-Service-Error-Code": str(error.status),
    }
