"""How one stream message becomes one row of the events table.

Known events are validated against their contract, so a malformed OrderCreated is refused
(and dead-lettered) rather than counted wrong; an unknown event with a sound envelope is kept
with its raw body, so a new event type is never lost while analytics catches up.
"""

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from contracts.events import EVENT_TYPES, Event


class Malformed(ValueError):
    """The message can never become a row."""


def ch_time(moment: datetime) -> str:
    """A timestamp as ClickHouse DateTime64(3, 'UTC') text."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "milliseconds")


# Every known event, told apart by its "event" field: a sound known event is parsed and
# validated in one pass, straight from the bytes (pydantic's own JSON parser keeps money exact).
_KNOWN: TypeAdapter[Event] = TypeAdapter(Annotated[Union[tuple(EVENT_TYPES.values())],  # noqa: UP007
                                                   Field(discriminator="event")])
_REQUIRED = frozenset({"event_id", "timestamp"})  # they have defaults: here they must be given


def _envelope(body: bytes) -> Event:
    try:
        event: Event | None = _KNOWN.validate_json(body)
    except ValidationError:
        event = None
    if event is None or not (_REQUIRED <= event.model_fields_set and event.event_id):
        event = _checked(body)  # an unknown event, or a malformed one: says which
    if event.timestamp.tzinfo is None:
        raise Malformed("the timestamp has no time zone")
    return event


def _checked(body: bytes) -> Event:
    """The envelope checked step by step: an unknown event's, or why the message is malformed."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise Malformed(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Malformed("the event is not a JSON object")
    if not data.get("eventId") or not data.get("timestamp") or not data.get("event"):
        raise Malformed("event, eventId and timestamp are required")  # no defaults here
    model = EVENT_TYPES.get(data["event"], Event) if isinstance(data["event"], str) else Event
    try:
        event = model.model_validate_json(body)
    except ValidationError as exc:
        raise Malformed(f"{model.__name__}: {exc}") from None
    return event


def row(body: bytes, *, subject: str, stream_seq: int, published_at: datetime) -> dict[str, Any]:
    """The events-table row for one message; raises Malformed."""
    event = _envelope(body)
    fields = event.__dict__  # the fields by name, as validated (no copy: the event is ours)
    items = fields.get("items") or []
    quantity = sum(i.quantity for i in items) if items else (
        fields.get("delta") or fields.get("quantity") or 0)
    amount = next((fields[k] for k in ("total_price", "amount", "refund_amount", "price",
                                        "cart_value") if fields.get(k) is not None),
                  Decimal(0))
    status = fields.get("payment_status") or (
        ("valid" if fields["is_valid"] else "invalid") if "is_valid" in fields else "")
    on_hand = fields.get("on_hand")
    available = fields.get("available", on_hand)  # a new product: all of it is available
    return {
        "event_id": event.event_id,
        "event": event.event,
        "subject": subject,
        "timestamp": ch_time(event.timestamp),
        "order_id": fields.get("order_id") or "",
        "user_id": fields.get("customer_id") or fields.get("user_id") or "",
        "anonymous_id": fields.get("anonymous_id") or "",
        "product_id": fields.get("product_id") or "",
        "amount": str(amount),
        "status": status,
        "quantity": int(quantity),
        "on_hand": on_hand,
        "available": available,
        "threshold": fields.get("threshold"),
        "items": [{"product_id": i.product_id, "quantity": i.quantity,
                   "price": str(getattr(i, "price", 0))} for i in items],
        "stream_seq": stream_seq,
        "published_at": ch_time(published_at),
        "raw": body.decode(),
    }
