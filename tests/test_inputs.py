"""Requests held to their contract (issue 12): each attack an outside client tried, refused with
a structured error over NATS, never a 500 and never accepted by a looser reading."""

import json

import pytest
from support import unique_email

from contracts.analytics import SUMMARY, TIMESERIES
from contracts.base import MAX_REQUEST_BYTES, MAX_REQUEST_DEPTH
from contracts.catalog import INVENTORY_ADJUST, PRODUCTS_CREATE, PRODUCTS_LIST, QUOTE
from contracts.users import ME, REGISTER

NEW_PRODUCT = {"name": "Kettle", "price": 30, "category": "kitchen", "stock": 5}


def nested(depth: int) -> bytes:
    return b'{"q": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(("body", "field"), [
    (NEW_PRODUCT | {"stock": True}, "stock"),
    (NEW_PRODUCT | {"stock": "5"}, "stock"),
    (NEW_PRODUCT | {"stock": 5.0}, "stock"),
    (NEW_PRODUCT | {"active": "yes"}, "active"),
    (NEW_PRODUCT | {"active": 1}, "active"),
    (NEW_PRODUCT | {"name": 5}, "name"),
])
async def test_a_product_of_the_wrong_types_is_not_coerced(admin, body, field):
    reply = await admin.call(PRODUCTS_CREATE, body)

    assert reply.status == 422, reply.body
    assert reply.error_fields == {field}


@pytest.mark.parametrize("delta", [True, "3", 3.0])
async def test_a_stock_delta_must_be_a_json_integer(admin, delta):
    product = (await admin.call(PRODUCTS_CREATE, NEW_PRODUCT)).body

    reply = await admin.call(INVENTORY_ADJUST, {"productId": product["productId"],
                                                "delta": delta, "reason": "count"})

    assert reply.status == 422, reply.body
    assert reply.error_fields == {"delta"}


@pytest.mark.parametrize("quantity", [True, "2", 2.0])
async def test_a_quantity_must_be_a_json_integer(client, quantity):
    reply = await client.call(QUOTE, {"items": [{"productId": "p1", "quantity": quantity}]})

    assert reply.status == 422, reply.body
    assert reply.error_fields == {"items.0.quantity"}


@pytest.mark.parametrize(("body", "field"), [
    (NEW_PRODUCT | {"low_stock_threshold": 2}, "low_stock_threshold"),
    ({"name": "Kettle", "price": 30, "category": "kitchen", "product_id": "x"}, "product_id"),
])
async def test_snake_case_field_names_are_refused(admin, body, field):
    reply = await admin.call(PRODUCTS_CREATE, body)

    assert reply.status == 422, reply.body
    assert reply.error_fields == {field}
    assert reply.body["error"]["details"][0]["type"] == "extra_forbidden"


async def test_a_listing_by_the_python_name_of_a_field_is_refused(client):
    reply = await client.call(PRODUCTS_LIST, {"in_stock": True})

    assert reply.status == 422
    assert reply.error_fields == {"in_stock"}


async def test_a_nul_in_a_name_is_refused_not_a_500(client):
    reply = await client.call(REGISTER, {"email": unique_email(), "password": "a-fine-password",
                                         "name": "Ada\x00Lovelace"})

    assert reply.status == 422, reply.body
    assert reply.error_fields == {"name"}
    assert reply.body["error"]["details"][0]["type"] == "control_characters"


@pytest.mark.parametrize("q", ["coffee\x00", "\x1b[31mred", "bell\x07", "del\x7f"])
async def test_control_characters_in_a_search_are_refused_not_a_500(client, q):
    reply = await client.call(PRODUCTS_LIST, {"q": q})

    assert reply.status == 422, reply.body
    assert reply.error_fields == {"q"}


@pytest.mark.parametrize(("subject", "body", "field"), [
    (SUMMARY, {"to": "0001-01-01T00:00:00Z"}, "to"),  # its default start would be year 0
    (SUMMARY, {"from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:00:00Z"}, "from"),
    (SUMMARY, {"from": "9999-12-30T00:00:00Z"}, "from"),
    (TIMESERIES, {"metric": "revenue", "to": "0001-01-01T00:00:00+01:00"}, "to"),
])
async def test_a_window_out_of_the_calendar_is_a_422_not_a_500(admin, subject, body, field):
    """Found by the 10,000-body fuzz: a `to` in year 1 made the default window overflow."""
    reply = await admin.call(subject, body)

    assert reply.status == 422, reply.body
    assert field in reply.error_fields


async def test_a_product_description_keeps_its_line_breaks_and_tabs(admin):
    reply = await admin.call(PRODUCTS_CREATE, NEW_PRODUCT | {"description": "one\n\ttwo\r\n"})

    assert reply.status == 200, reply.body
    assert reply.body["description"] == "one\n\ttwo"  # surrounding whitespace is stripped


@pytest.mark.parametrize("field", ["name", "category", "description"])
async def test_control_characters_in_a_product_are_refused(admin, field):
    reply = await admin.call(PRODUCTS_CREATE, NEW_PRODUCT | {field: "a\x00b"})

    assert reply.status == 422, reply.body
    assert reply.error_fields == {field}


async def test_a_request_nested_a_thousand_deep_is_a_400(client):
    reply = await client.call(PRODUCTS_LIST, raw=nested(1_000))

    assert reply.status == 400, reply.body
    assert reply.error_code == "too_deep"


async def test_nesting_within_the_limit_is_judged_on_its_fields(client):
    reply = await client.call(PRODUCTS_LIST, raw=nested(MAX_REQUEST_DEPTH - 2))

    assert reply.status == 422, reply.body
    assert reply.error_fields == {"q"}


async def test_an_oversized_request_is_a_413_refused_unread(client):
    body = json.dumps({"q": "x" * MAX_REQUEST_BYTES}).encode()

    reply = await client.call(PRODUCTS_LIST, raw=body)

    assert reply.status == 413
    assert reply.error_code == "payload_too_large"
    assert reply.headers["Nats-Service-Error-Code"] == "413"


@pytest.mark.parametrize("raw", [b'{"q": "\\ud800"}', b'{"q": "\xff"}', b"[1] [2]", b"   "])
async def test_bodies_that_are_not_json_text_are_a_400(client, raw):
    reply = await client.call(PRODUCTS_LIST, raw=raw)

    assert reply.status == 400, reply.body
    assert reply.error_code == "malformed_json"


@pytest.mark.parametrize("token", ["forged-token", "A" * 43, "' OR 1=1 --"])
async def test_a_token_that_never_existed_is_an_invalid_token(client, token):
    reply = await client.signed_in(token).call(ME)

    assert reply.status == 401
    assert reply.error_code == "invalid_token"
