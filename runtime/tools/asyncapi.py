"""The AsyncAPI 3.0 document of every handler set: what FastStream generates, plus what it omits.

FastStream 0.7 documents each subscriber and its request schema, but not what a handler replies
(FastStream issue #1586), nor the events the outbox publishes, nor the event consumers (they run
below FastStream: runtime.consumers). This module adds a `reply` to every request-reply operation
(the handler's return model, or the error reply), a channel with a send operation for every
event, and a receive operation for every subject each durable consumer takes. Reply and event
schemas are the serialization form: camelCase, every field present, as a client receives them.
Every message has a name of its own (a request is named after its subject, a reply or an event
after its model), under which the channels list it too, so code generators make one type per
message; a request message declares the headers it reads and the request limits.

`python -m runtime.tools.asyncapi [out_dir]` (or `atlantic docs`) writes docs/asyncapi.json
and .yaml.
"""

import importlib
import json
import pkgutil
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from faststream.specification import AsyncAPI
from faststream.specification.asyncapi.utils import clear_key, ref
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

import contracts
from contracts.base import MAX_REQUEST_BYTES, MAX_REQUEST_DEPTH
from contracts.errors import AtlanticError, ErrorReply
from contracts.events import EVENT_TYPES, STREAM, Event
from contracts.orders import CREATE as ORDERS_CREATE
from contracts.orders import IDEMPOTENCY_HEADER, MAX_IDEMPOTENCY_KEY
from handlers import HANDLER_SETS
from handlers.deps import Admin, CurrentUser, OptionalUser
from handlers.handler_set import Endpoint, EventConsumer, HandlerSet
from runtime.app import document_broker

JSON_FILE = "asyncapi.json"
YAML_FILE = "asyncapi.yaml"

LIMITS = (
    f"A request body is JSON of at most {MAX_REQUEST_BYTES:,} bytes (larger: 413 "
    f"payload_too_large) nesting at most {MAX_REQUEST_DEPTH} arrays and objects inside its outer "
    "object (deeper: 400 too_deep). It is read exactly as its schema says: the camelCase field "
    "names only, no other fields, no value of another JSON type (true or \"2\" is no integer), "
    "and no control characters in text but tab and line breaks (422 validation_failed)."
)

INTRO = """\
Atlantic: a real-time e-commerce backend with live analytics, on NATS.

Queries and commands are NATS request-reply; requests that need a user carry the header \
`Authorization: Bearer <token>`. Every request gets a reply: the operation's reply message, or \
the error reply with the headers `Nats-Service-Error` and `Nats-Service-Error-Code`. Events are \
published to the JetStream stream {stream} with their eventId as `Nats-Msg-Id`.

{limits}

Handler sets:
"""


class _WireSchema(GenerateJsonSchema):
    """Serialization mode with every field required: replies and events always carry them all
    (pydantic's `json_schema_serialization_defaults_required`, without touching the contracts)."""

    def field_is_required(self, field: Any, total: bool) -> bool:
        if self.mode == "serialization":
            return field.get("serialization_exclude_if") is None
        return super().field_is_required(field, total)


def build_document() -> dict[str, Any]:
    """The whole document, deterministic: the same code always gives the same dict."""
    sets = list(HANDLER_SETS.values())
    # Defaults only: the document must not change with this machine's ATLANTIC_* variables.
    doc = AsyncAPI(
        document_broker(sets),
        title="Atlantic",
        version=version("atlantic"),
        description=INTRO.format(stream=STREAM, limits=LIMITS)
        + "".join(f"- {hs.name}: {hs.description}\n" for hs in sets),
        tags=[{"name": hs.name, "description": hs.description} for hs in sets],
    ).to_specification().to_jsonable()

    replies = {e: _reply_model(e) for hs in sets for e in hs.endpoints}
    events = _events()
    names = _add_wire_models(doc, [*replies.values(), *events, ErrorReply])
    for hs in sets:
        _patch_operations(doc, hs, {e.subject: names[replies[e]] for e in hs.endpoints})
    for event in events:
        _add_event(doc, event, names[event])
    for hs in sets:
        for consumer in hs.consumers:
            _add_consumer(doc, hs, consumer)
    return doc


def render(doc: dict[str, Any]) -> dict[str, str]:
    """File name -> text; sorted keys and no timestamps, so a stale copy shows up as a diff."""
    return {
        JSON_FILE: json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
        YAML_FILE: yaml.safe_dump(doc, sort_keys=True, allow_unicode=True),
    }


def write_documents(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render(build_document()).items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def _reply_model(endpoint: Endpoint) -> type[BaseModel]:
    model = get_type_hints(endpoint.handler).get("return")
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{endpoint.subject}: {endpoint.name} must be annotated with its reply "
                        f"model (a pydantic model), not {model!r}")
    return model


def _contract_subclasses(cls: type) -> list[type]:
    """Every subclass, however deep, defined in contracts (tests may define their own)."""
    for module in pkgutil.iter_modules(contracts.__path__, "contracts."):
        importlib.import_module(module.name)  # an event no handler imports yet still counts
    found, todo = set(), [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted((c for c in found if c.__module__.startswith("contracts.")),
                  key=lambda c: (c.__module__, c.__qualname__))


def _events() -> list[type[Event]]:
    return sorted(EVENT_TYPES.values(), key=lambda c: (c.__module__, c.__qualname__))


def _add_wire_models(doc: dict[str, Any], models: list[type[BaseModel]]) -> dict[type, str]:
    """Adds each model's wire schema and a message named after it; returns model -> name."""
    models = list(dict.fromkeys(models))
    refs, top = models_json_schema(
        [(m, "serialization") for m in models], by_alias=True,
        ref_template="#/components/schemas/{model}", schema_generator=_WireSchema,
    )
    components = doc.setdefault("components", {})
    # FastStream documents a consumed event in validation mode under the same name; the wire form
    # replaces it, so each model has one schema: what its producer sends.
    components.setdefault("schemas", {}).update(top.get("$defs", {}))
    names = {m: refs[m, "serialization"]["$ref"].rsplit("/", 1)[1] for m in models}
    messages = components.setdefault("messages", {})
    for name in names.values():
        messages[name] = {
            "name": name,
            "title": name,
            "contentType": "application/json",
            "payload": ref("components", "schemas", name),
        }
    messages[names[ErrorReply]]["headers"] = _error_headers()
    return names


def _error_headers() -> dict[str, Any]:
    statuses = {AtlanticError.status} | {c.status for c in _contract_subclasses(AtlanticError)}
    return {
        "type": "object",
        "required": ["Nats-Service-Error", "Nats-Service-Error-Code"],
        "properties": {
            "Nats-Service-Error": {"type": "string", "description": "The message, on one line."},
            "Nats-Service-Error-Code": {
                "type": "string",
                "enum": [str(s) for s in sorted(statuses)],
                "description": "The status, read as in HTTP: 4xx the request, 5xx the service.",
            },
        },
    }


# Headers a request may carry besides Authorization, by subject.
OPTIONAL_HEADERS = {
    ORDERS_CREATE: {IDEMPOTENCY_HEADER: {
        "type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY,
        "description": "The client's key for this order: a retry with the same key and items "
                       "replies with the order the first placed, and places no other."}},
}
AUTHORIZATION = {
    "type": "string", "pattern": "^Bearer .+$",
    "description": "`Bearer <token>`, the token of a sign-in (atlantic.users.login).",
}


def _patch_operations(doc: dict[str, Any], hs: HandlerSet, replies: dict[str, str]) -> None:
    """Tags the set's operations with its name; names each endpoint's request message and gives
    it its headers, its reply and the error reply."""
    # FastStream names a channel "<subject>:<Handler>"; the set's own subscribers say which.
    keys = {clear_key(k) for sub in hs.router().subscribers for k in sub.schema()}
    endpoints = {e.subject: e for e in hs.endpoints}
    for operation in doc["operations"].values():
        key = next((k for k in keys if operation["channel"] == ref("channels", k)), None)
        if key is None:
            continue
        operation["tags"] = [{"name": hs.name}]
        if (endpoint := endpoints.get(doc["channels"][key]["address"])) is not None:
            _name_request(doc, key, operation, endpoint)
            operation["reply"] = _reply(doc, f"{key}:Reply", replies[endpoint.subject])


def request_name(subject: str) -> str:
    """atlantic.catalog.products.get -> CatalogProductsGetRequest."""
    words = subject.removeprefix("atlantic.").replace(".", "_").split("_")
    return "".join(w.capitalize() for w in words) + "Request"


def _name_request(doc: dict[str, Any], key: str, operation: dict[str, Any],
                  endpoint: Endpoint) -> None:
    # FastStream keys every request message "SubscribeMessage" in its channel, with no name.
    channel = doc["channels"][key]
    (message_ref,) = channel["messages"].values()
    name = request_name(endpoint.subject)
    channel["messages"] = {name: message_ref}
    operation["messages"] = [ref("channels", key, "messages", name)]
    message = doc["components"]["messages"][message_ref["$ref"].rsplit("/", 1)[1]]
    message.update(name=name, title=name, description=LIMITS)
    if headers := _request_headers(endpoint):
        message["headers"] = headers


def _request_headers(endpoint: Endpoint) -> dict[str, Any] | None:
    hints = get_type_hints(endpoint.handler, include_extras=True).values()
    properties = dict(OPTIONAL_HEADERS.get(endpoint.subject, {}))
    required = []
    if any(hint in (CurrentUser, Admin) for hint in hints):
        properties["Authorization"], required = AUTHORIZATION, ["Authorization"]
    elif any(hint == OptionalUser for hint in hints):
        properties["Authorization"] = AUTHORIZATION | {
            "description": AUTHORIZATION["description"] + " Optional: without it, anonymous."}
    if not properties:
        return None
    return {"type": "object", "properties": properties} | ({"required": required}
                                                          if required else {})


def _reply(doc: dict[str, Any], key: str, message: str) -> dict[str, Any]:
    # A NATS reply goes to the inbox the requester named on the request, so no fixed address.
    names = (message, ErrorReply.__name__)
    doc["channels"][key] = {
        "address": None,
        "description": "The requester's inbox: the reply subject of the request.",
        "messages": {name: ref("components", "messages", name) for name in names},
    }
    return {
        "channel": ref("channels", key),
        "messages": [ref("channels", key, "messages", name) for name in names],
    }


def _add_event(doc: dict[str, Any], event: type[Event], name: str) -> None:
    doc["components"]["messages"][name]["headers"] = {
        "type": "object",
        "properties": {"Nats-Msg-Id": {
            "type": "string", "description": "The eventId: JetStream drops a duplicate publish."}},
    }
    channel = doc["channels"].setdefault(event.subject, {
        "address": event.subject,
        "description": f"Events on the {STREAM} stream, published through the outbox.",
        "messages": {},
    })
    channel["messages"][name] = ref("components", "messages", name)
    doc["operations"][f"{event.subject}:Publish"] = {
        "action": "send",
        "channel": ref("channels", event.subject),
        "messages": [ref("channels", event.subject, "messages", m)
                     for m in sorted(channel["messages"])],
    }


def _add_consumer(doc: dict[str, Any], hs: HandlerSet, consumer: EventConsumer) -> None:
    about = " ".join((consumer.handler.__doc__ or "").split())
    for subject in consumer.subjects:
        channel = doc["channels"][subject]
        doc["operations"][f"{subject}:{consumer.durable}"] = {
            "action": "receive",
            "channel": ref("channels", subject),
            "messages": [ref("channels", subject, "messages", m)
                         for m in sorted(channel["messages"])],
            "summary": about,
            "description": f"Durable consumer `{consumer.durable}` on the {STREAM} stream; its "
                           "events are applied in batches, each event once, acked after commit.",
            "tags": [{"name": hs.name}],
        }


if __name__ == "__main__":
    for written in write_documents(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(f"wrote {written}")
