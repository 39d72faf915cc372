"""The order lifecycle events against DESIGN's event table: the models, the AsyncAPI document,
and (in test_saga.py) every event the running sets really emit."""

import json
from datetime import datetime
from pathlib import Path

import pytest

from contracts import events

pytestmark = pytest.mark.fast

# DESIGN "Events", transcribed: subject -> (event name, {field: JSON type}).
ENVELOPE = {"event": "string", "timestamp": "string", "eventId": "string"}
ITEM_WITH_PRICE = {"productId": "string", "quantity": "integer", "price": "number"}
ITEM = {"productId": "string", "quantity": "integer"}
LIFECYCLE = {
    "atlantic.events.order.created": ("OrderCreated", {
        "orderId": "string", "customerId": "string", "items": [ITEM_WITH_PRICE],
        "totalPrice": "number"}),
    "atlantic.events.order.validated": ("OrderValidated", {
        "orderId": "string", "isValid": "boolean", "validationErrors": ["string"]}),
    "atlantic.events.order.payment_processed": ("PaymentProcessed", {
        "orderId": "string", "paymentId": "string", "paymentStatus": "string",
        "amount": "number"}),
    "atlantic.events.order.inventory_reserved": ("InventoryReserved", {
        "orderId": "string", "items": [ITEM]}),
    "atlantic.events.order.shipped": ("OrderShipped", {
        "orderId": "string", "shipmentId": "string", "carrier": "string",
        "trackingNumber": "string"}),
    "atlantic.events.order.delivered": ("OrderDelivered", {
        "orderId": "string", "deliveryStatus": "string"}),
    "atlantic.events.order.cancelled": ("OrderCancelled", {
        "orderId": "string", "cancellationReason": "string"}),
    "atlantic.events.order.returned": ("OrderReturned", {
        "orderId": "string", "returnReason": "string", "refundAmount": "number"}),
}
DOCS = Path(__file__).parent.parent / "docs" / "asyncapi.json"


def _matches(value: object, expected: object) -> bool:
    """Does a decoded JSON value have the shape DESIGN gives (types, nested lists, objects)?"""
    if isinstance(expected, list):
        return isinstance(value, list) and all(_matches(v, expected[0]) for v in value)
    if isinstance(expected, dict):
        return isinstance(value, dict) and value.keys() == expected.keys() and all(
            _matches(value[k], t) for k, t in expected.items())
    return {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }[expected](value)


def check_event(subject: str, headers: dict[str, str], body: dict) -> None:
    """Fails unless an emitted event is exactly what DESIGN's table says it is."""
    name, fields = LIFECYCLE[subject]
    assert body["event"] == name
    assert _matches(body, ENVELOPE | fields), (subject, body)
    assert body["timestamp"].endswith("Z"), body["timestamp"]
    datetime.fromisoformat(body["timestamp"])
    assert headers["Nats-Msg-Id"] == body["eventId"]
    if name == "PaymentProcessed":
        assert body["paymentStatus"] in ("SUCCESS", "FAILED", "REFUNDED")


def _event_classes() -> dict[str, type[events.Event]]:
    return {cls.subject: cls for cls in events.EVENT_TYPES.values()}


@pytest.mark.parametrize("subject", LIFECYCLE)
def test_each_lifecycle_model_has_exactly_the_fields_design_names(subject):
    name, fields = LIFECYCLE[subject]
    model = _event_classes()[subject]

    schema = model.model_json_schema(mode="serialization", by_alias=True)

    assert model.model_fields["event"].default == name
    assert set(schema["properties"]) == set(ENVELOPE) | set(fields)


@pytest.mark.parametrize("subject", LIFECYCLE)
def test_a_sample_of_each_lifecycle_event_serialises_as_design_says(subject):
    samples = {
        "OrderCreated": {"order_id": "o1", "customer_id": "c1", "total_price": "10.50",
                         "items": [{"product_id": "p1", "quantity": 2, "price": "5.25"}]},
        "OrderValidated": {"order_id": "o1", "is_valid": False, "validation_errors": ["gone"]},
        "PaymentProcessed": {"order_id": "o1", "payment_id": "x", "payment_status": "SUCCESS",
                             "amount": "10.50"},
        "InventoryReserved": {"order_id": "o1", "items": [{"product_id": "p1", "quantity": 2}]},
        "OrderShipped": {"order_id": "o1", "shipment_id": "s", "carrier": "DHL",
                         "tracking_number": "T1"},
        "OrderDelivered": {"order_id": "o1", "delivery_status": "DELIVERED"},
        "OrderCancelled": {"order_id": "o1", "cancellation_reason": "why"},
        "OrderReturned": {"order_id": "o1", "return_reason": "why", "refund_amount": "10.50"},
    }
    event = _event_classes()[subject].model_validate(samples[LIFECYCLE[subject][0]])

    body = json.loads(event.model_dump_json())

    check_event(subject, {"Nats-Msg-Id": event.event_id}, body)


@pytest.mark.parametrize("subject", LIFECYCLE)
def test_the_asyncapi_document_lists_each_lifecycle_event(subject):
    document = json.loads(DOCS.read_text())
    name, fields = LIFECYCLE[subject]

    channel = document["channels"][subject]
    message = document["components"]["messages"][name]
    schema_ref = message["payload"]["$ref"].split("/")[-1]
    properties = document["components"]["schemas"][schema_ref]["properties"]

    assert channel["address"] == subject
    assert name in channel["messages"]
    assert set(properties) == set(ENVELOPE) | set(fields)
