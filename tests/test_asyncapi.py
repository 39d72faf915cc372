"""The AsyncAPI document: committed copies are current, and every request, reply, error and event
a client can meet is in it with its wire (camelCase) field names. A pure build, no servers."""

from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import unquote

import pytest
from pydantic import BaseModel

from contracts.base import MAX_REQUEST_BYTES
from contracts.errors import ErrorReply
from contracts.events import EVENT_TYPES, Event
from contracts.orders import CREATE as ORDERS_CREATE
from contracts.orders import IDEMPOTENCY_HEADER, MAX_IDEMPOTENCY_KEY
from handlers import HANDLER_SETS
from handlers.deps import Admin, CurrentUser, OptionalUser
from runtime.tools.asyncapi import build_document, render, request_name

pytestmark = pytest.mark.fast

DOCS = Path(__file__).resolve().parent.parent / "docs"
ENDPOINTS = [e for hs in HANDLER_SETS.values() for e in hs.endpoints]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_document()


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[unquote(part).replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def wire_names(model: type[BaseModel]) -> set[str]:
    return {f.serialization_alias or f.alias or name for name, f in model.model_fields.items()}


def reply_payloads(doc: dict[str, Any], subject: str) -> dict[str, dict[str, Any]]:
    """Message name -> payload schema, for each reply the operation on `subject` documents."""
    operations = [op for op in doc["operations"].values()
                  if resolve(doc, op["channel"]).get("address") == subject]
    assert len(operations) == 1, f"{subject}: expected one operation, found {len(operations)}"
    assert "reply" in operations[0], f"{subject}: the operation documents no reply"
    messages = [resolve(doc, m) for m in operations[0]["reply"]["messages"]]
    return {m["name"]: resolve(doc, m["payload"]) for m in messages}


def contract_events() -> list[type[Event]]:
    return list(EVENT_TYPES.values())


def test_committed_documents_match_the_code(doc):
    stale = [name for name, text in render(doc).items()
             if not (DOCS / name).exists() or (DOCS / name).read_text(encoding="utf-8") != text]

    assert not stale, f"docs/{', docs/'.join(stale)} out of date: run `just docs`"


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.subject)
def test_every_endpoint_documents_its_reply_and_the_error_reply(doc, endpoint):
    model = get_type_hints(endpoint.handler)["return"]

    payloads = reply_payloads(doc, endpoint.subject)

    assert set(payloads) == {model.__name__, "ErrorReply"}
    assert set(payloads[model.__name__]["properties"]) == wire_names(model)


def test_login_reply_has_the_token_and_its_expiry(doc):
    payloads = reply_payloads(doc, "atlantic.users.login")

    assert {"token", "userId", "role", "expiresAt"} <= set(payloads["Session"]["properties"])


@pytest.mark.parametrize("event", sorted(contract_events(), key=lambda e: e.subject),
                         ids=lambda e: e.subject)
def test_every_event_is_a_channel_on_its_subject_with_camelcase_fields(doc, event):
    channel = doc["channels"].get(event.subject, {})

    assert channel.get("address") == event.subject
    payload = resolve(doc, resolve(doc, channel["messages"][event.__name__])["payload"])
    assert set(payload["properties"]) == wire_names(event)
    assert {"event", "eventId", "timestamp"} <= set(payload["required"])


def test_user_events_are_found():
    subjects = {e.subject for e in contract_events()}

    assert {"atlantic.events.user.registered", "atlantic.events.user.logged_in"} <= subjects


def test_error_reply_documents_its_body_and_nats_micro_headers(doc):
    message = doc["components"]["messages"]["ErrorReply"]

    error = resolve(doc, resolve(doc, message["payload"])["properties"]["error"])
    assert set(error["properties"]) == wire_names(ErrorReply.model_fields["error"].annotation)
    headers = message["headers"]["properties"]
    assert set(message["headers"]["required"]) == {"Nats-Service-Error", "Nats-Service-Error-Code"}
    assert {"400", "401", "404", "422", "500"} <= set(headers["Nats-Service-Error-Code"]["enum"])


def request_message(doc: dict[str, Any], subject: str) -> dict[str, Any]:
    operation = next(op for op in doc["operations"].values()
                     if resolve(doc, op["channel"]).get("address") == subject)
    (message,) = operation["messages"]
    return resolve(doc, message)


def test_every_message_has_a_name_of_its_own_and_is_listed_under_it(doc):
    names = [m.get("name") for m in doc["components"]["messages"].values()]
    listed = {(key, resolve(doc, message)["name"])
              for channel in doc["channels"].values()
              for key, message in channel["messages"].items()}

    assert None not in names
    assert len(names) == len(set(names))
    assert {key for key, name in listed if key != name} == set()


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.subject)
def test_every_request_states_the_limits_and_the_authorization_it_needs(doc, endpoint):
    hints = get_type_hints(endpoint.handler, include_extras=True).values()
    signed_in = any(hint in (CurrentUser, Admin) for hint in hints)

    message = request_message(doc, endpoint.subject)

    assert message["name"] == request_name(endpoint.subject)
    assert f"{MAX_REQUEST_BYTES:,} bytes" in message["description"]
    headers = message.get("headers", {"properties": {}})
    assert ("Authorization" in headers.get("required", [])) == signed_in
    if signed_in or any(hint == OptionalUser for hint in hints):
        assert "Authorization" in headers["properties"]


def test_orders_create_declares_its_idempotency_key_and_the_document_its_limits(doc):
    headers = request_message(doc, ORDERS_CREATE)["headers"]

    assert headers["properties"][IDEMPOTENCY_HEADER]["maxLength"] == MAX_IDEMPOTENCY_KEY
    assert f"{MAX_REQUEST_BYTES:,} bytes" in doc["info"]["description"]
    assert "413" in doc["components"]["messages"]["ErrorReply"]["headers"]["properties"][
        "Nats-Service-Error-Code"]["enum"]


def test_every_bound_is_written_as_json_schema_states_it(doc):
    """pydantic writes a bound it cannot place on the type (one set beside a validator) under
    its own name ("gt", "le"): enforced, but no client reads it."""
    found, todo = [], [("", doc)]
    while todo:
        path, node = todo.pop()
        if isinstance(node, dict):
            found += [f"{path}/{k}" for k in node if k in {"gt", "ge", "lt", "le", "max_digits"}]
            todo += [(f"{path}/{k}", v) for k, v in node.items()]
        elif isinstance(node, list):
            todo += [(path, v) for v in node]

    assert found == []
