"""The shared base of every wire model: camelCase on the wire, snake_case in Python."""

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import uuid4

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

MAX_STRING = 2_000  # no single text field on the wire is longer than this
MAX_REQUEST_BYTES = 64 * 1024  # a request body larger than this is refused before parsing
# Arrays and objects nested inside a request's outer object past this depth are refused
# unparsed: the limit of pydantic-core's JSON parser (jiter), which reads every request
# (tests/test_contracts.py holds it to this number).
MAX_REQUEST_DEPTH = 200

# C0 control characters but tab, line feed and carriage return, and DEL: nothing a person types,
# and PostgreSQL refuses NUL in text outright.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _no_controls(value: str) -> str:
    if _CONTROL.search(value):
        raise PydanticCustomError(
            "control_characters", "must not contain control characters (U+0000 to U+001F but "
            "tab and line breaks, and U+007F)")
    return value


# Every request string that is stored or searched: a name, a reason, a query, a cursor.
NoControls = AfterValidator(_no_controls)


def _two_decimals(value: Decimal) -> Decimal:
    if value != value.quantize(Decimal("0.01")):
        raise ValueError("at most two decimal places")
    return value


def money(**bounds: Any) -> Any:
    """Money is exact in Python and a JSON number on the wire (DESIGN "Events"). Bounds go in
    with the others, before the validator: set beside it (Annotated[Money, Field(gt=0)]) they
    were enforced, but the JSON schema showed them as "gt" and "le", which no client reads."""
    return Annotated[
        Decimal,
        Field(**{"ge": 0, "max_digits": 14, "decimal_places": 2} | bounds),
        AfterValidator(_two_decimals),
        PlainSerializer(float, return_type=float, when_used="json"),
    ]


Money = money()

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid4().hex


class Wire(BaseModel):
    """Base of every reply and event: camelCase aliases, both names accepted on input."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        str_max_length=MAX_STRING,
    )


class Request(Wire):
    """Base of every request: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Empty(Request):
    """A request with no fields (the caller's identity comes from the token)."""
