"""Every request model fed hypothesis-made bodies over NATS, to the real handlers of every set
(issue 12): bodies near the schema (its fields with values of any type, in range and out, any
unicode), any JSON at all, any bytes, any depth. Only the errors the contract declares may come
back, each as a structured error reply: never a 500, never silence.

`just test` tries a few dozen bodies per request model. `HYPOTHESIS_PROFILE=thorough` tries
10,000 per model (the issue's bar; see the README's Security section for a run's figures).
"""

import functools
import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from support import world_of_its_own

from contracts.base import MAX_REQUEST_BYTES
from handlers import HANDLER_SETS
from handlers.endpoints import request_model
from runtime.tools.bench.world import SAGA_SETS
from runtime.tools.client import AtlanticClient

settings.register_profile("thorough", max_examples=10_000)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE")
FUZZ = settings(
    settings.get_profile(PROFILE) if PROFILE else settings(max_examples=25),
    deadline=None, database=None, derandomize=not PROFILE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)

# What a request may be answered with: a reply, or one of the client's errors.
DECLARED = {200, 400, 401, 403, 404, 409, 413, 422, 429}
MODELS = [(e.subject, model) for hs in HANDLER_SETS.values() for e in hs.endpoints
          if (model := request_model(e.handler)) is not None]


# --- Bodies --------------------------------------------------------------------------------------

LEAVES = (st.none() | st.booleans() | st.integers() | st.floats()
          | st.text(st.characters(codec=None)) | st.decimals(allow_nan=False).map(str))
ANY_JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                        max_leaves=8)


def _text(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if "pattern" in schema:
        fitting = st.from_regex(schema["pattern"], fullmatch=True)
    else:
        fitting = st.text(min_size=schema.get("minLength", 0),
                          max_size=schema.get("maxLength", 50) if schema.get("maxLength", 0)
                          <= 50 else 50)
    if schema.get("format") == "date-time":
        fitting = st.datetimes().map(lambda d: d.isoformat() + "Z")
    edge = st.sampled_from(["", "x" * (schema.get("maxLength", 64) + 1), "a\x00b", "\x1b[0m",
                            "caf\u00e9 \u202e\U0001f600", "' OR 1=1 --", "%s%n", "\t\n"])
    return fitting | edge


def _near(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values shaped by a JSON schema: in range, at its edges and past them."""
    if "$ref" in schema:
        return st.deferred(lambda: _near(defs[schema["$ref"].rsplit("/", 1)[1]], defs))
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([_near(s, defs) for s in schema.get("anyOf", schema.get("oneOf"))])
    if "const" in schema or "enum" in schema:
        return st.sampled_from(schema.get("enum", [schema.get("const")]))
    kind = schema.get("type")
    if kind == "integer":
        low, high = schema.get("minimum", -(2**63)), schema.get("maximum", 2**63)
        return st.integers(low, high) | st.sampled_from([low - 1, high + 1, 2**64, True, "2"])
    if kind == "number":
        return st.decimals(min_value=-1, max_value=10**7, places=2).map(float) \
            | st.sampled_from([1e400, -0.0, "1.005", "NaN", 0.001])
    if kind == "boolean":
        return st.booleans() | st.sampled_from([0, 1, "true"])
    if kind == "string":
        return _text(schema)
    if kind == "array":
        return st.lists(_near(schema.get("items", {}), defs), max_size=4)
    if kind == "object" and "properties" in schema:
        return _object(schema, defs)
    return ANY_JSON


def _object(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[dict]:
    fields = {name: _near(s, defs) | LEAVES for name, s in schema["properties"].items()}
    required = {name: fields[name] for name in schema.get("required", [])}
    optional = {name: s for name, s in fields.items() if name not in required}
    snake = {re.sub(r"([A-Z])", r"_\1", name).lower(): LEAVES for name in schema["properties"]
             if name != name.lower()}
    return st.fixed_dictionaries(required, optional=optional | snake) \
        | st.fixed_dictionaries({}, optional=fields | {"extra": LEAVES})


@functools.cache
def bodies(model: Any) -> st.SearchStrategy[bytes]:
    schema = TypeAdapter(model).json_schema(by_alias=True)
    near = _object(schema, schema.get("$defs", {}))
    as_json = (near | near | ANY_JSON).map(lambda b: json.dumps(b).encode())
    broken = st.binary(max_size=64) | st.integers(150, 1_200).map(
        lambda depth: b'{"a": ' + b"[" * depth + b"]" * depth + b"}")
    return as_json | as_json | as_json | broken


# --- The system: every set, on servers of its own ---------------------------------------------

@pytest.fixture(scope="module")
async def admin(settings) -> AsyncIterator[AtlanticClient]:
    """Every set (analytics in a process of its own: chDB is one data directory per process),
    a database and Redis prefix of its own, since fuzzed bodies that are valid change things;
    an admin's session, so bodies get past authorization to validation and the handlers."""
    async with world_of_its_own(settings, "fuzz", sets=SAGA_SETS, in_process=True) as world:
        await world.serve(["analytics"])
        yield world.admin


def test_every_set_and_request_model_is_fuzzed():
    answering = {name for name, hs in HANDLER_SETS.items() if hs.endpoints}  # not web: HTTP
    assert {subject.split(".")[1] for subject, _ in MODELS} == answering
    assert "analytics" in HANDLER_SETS and "analytics" not in SAGA_SETS


@pytest.mark.parametrize(("subject", "model"), MODELS, ids=[s for s, _ in MODELS])
@pytest.mark.timeout(6 * 3600 if PROFILE else 300)  # 10,000 bodies take minutes per model
@FUZZ
@given(data=st.data())
async def test_any_body_gets_a_declared_answer_never_a_500(admin, subject, model, data):
    body = data.draw(bodies(model), label="body")

    reply = await admin.call(subject, raw=body[:MAX_REQUEST_BYTES + 1], timeout=10)

    assert reply.status in DECLARED, (reply.status, reply.body)
    if reply.status != 200:
        assert set(reply.body["error"]) == {"code", "message", "details"}
        assert reply.headers["Nats-Service-Error-Code"] == str(reply.status)
