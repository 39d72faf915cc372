"""The order lifecycle events against DESIGN's event table: the models, the AsyncAPI document,
and (in test_saga.py) every event the running sets really emit."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from support import ENVELOPE, LIFECYCLE, check_event

from contracts import events
from contracts.base import MAX_REQUEST_DEPTH
from contracts.catalog import ListProducts

pytestmark = pytest.mark.fast

DOCS = Path(__file__).parent.parent / "docs" / "asyncapi.json"


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


def test_the_request_depth_limit_is_the_one_the_parser_keeps():
    def parse(depth: int) -> str:
        body = '{"q": ' + "[" * depth + "]" * depth + "}"
        try:
            ListProducts.model_validate_json(body, strict=True)
        except ValidationError as exc:
            return exc.errors()[0]["type"]
        return "ok"

    assert parse(MAX_REQUEST_DEPTH) == "string_type"
    assert parse(MAX_REQUEST_DEPTH + 1) == "json_invalid"
