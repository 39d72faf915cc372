"""Typed failures. Raised anywhere in a handler, turned into one error reply by the runtime.

The reply follows the NATS micro convention: headers `Nats-Service-Error` and
`Nats-Service-Error-Code`, and the body `{"error": {"code", "message", "details"}}`.
"""

from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError


class ErrorDetail(BaseModel):
    field: str
    message: str
    type: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorReply(BaseModel):
    error: ErrorInfo


class AtlanticError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, details: list[Any] = ()):
        super().__init__(message)
        self.message = message
        self.details = [ErrorDetail.model_validate(d) for d in details]
        if code is not None:
            self.code = code

    def reply(self) -> ErrorReply:
        info = ErrorInfo(code=self.code, message=self.message, details=self.details)
        return ErrorReply(error=info)


class BadRequest(AtlanticError):
    status = 400
    code = "bad_request"


class Unauthorized(AtlanticError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str = "a valid session token is required", **kw: Any):
        super().__init__(message, **kw)


class Forbidden(AtlanticError):
    status = 403
    code = "forbidden"

    def __init__(self, message: str = "not allowed for this account", **kw: Any):
        super().__init__(message, **kw)


class NotFound(AtlanticError):
    status = 404
    code = "not_found"

    def __init__(self, kind: str, key: str, **kw: Any):
        super().__init__(f"{kind} {key!r} does not exist", **kw)


class Conflict(AtlanticError):
    status = 409
    code = "conflict"


class PayloadTooLarge(AtlanticError):
    status = 413
    code = "payload_too_large"


class Unprocessable(AtlanticError):
    status = 422
    code = "validation_failed"


class TooManyRequests(AtlanticError):
    status = 429
    code = "rate_limited"


class Unavailable(AtlanticError):
    status = 503
    code = "unavailable"


def invalid_request(exc: ValidationError) -> AtlanticError:
    """A request that does not meet its model: 400 when the body is not JSON or nests too deep
    (JSON parsing stops there), 422 naming every offending field otherwise."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if errors and errors[0]["type"] == "json_invalid":
        if "recursion limit" in errors[0]["msg"]:
            return BadRequest("the request nests deeper than the limit", code="too_deep")
        reason = errors[0]["msg"].removeprefix("Invalid JSON: ")
        return BadRequest(f"the request body is not valid JSON: {reason}", code="malformed_json")
    details = [
        {"field": ".".join(str(part) for part in e["loc"]) or "body", "message": e["msg"],
         "type": e["type"]}
        for e in errors
    ]
    fields = ", ".join(sorted({d["field"] for d in details}))
    return Unprocessable(f"invalid request fields: {fields}", details=details)
