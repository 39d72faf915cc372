"""How a handler is bound (handlers.endpoints), without servers: what FastStream documents of
it, and when each injected value is resolved."""

import inspect
import json
from collections.abc import AsyncIterator
from typing import Annotated

import pytest
from faststream import ContextRepo, Depends
from pydantic import ValidationError

from contracts.base import Request, Wire
from handlers.deps import Context
from handlers.endpoints import StoredReply, bind

pytestmark = pytest.mark.fast


class Ask(Request):
    name: str


class Answer(Wire):
    greeting: str


class Counting(ContextRepo):
    def __init__(self) -> None:
        super().__init__()
        self.resolved: list[str] = []

    def resolve(self, argument: str) -> object:
        self.resolved.append(argument)
        return super().resolve(argument)


events: list[str] = []


async def _connection(pool: Annotated[list, Context("pool")]) -> AsyncIterator[str]:
    events.append("acquire")
    try:
        yield f"connection from {len(pool)} pooled"
    finally:
        events.append("release")


async def _caller(message: Annotated[dict, Context("message")]) -> str:
    events.append("caller")
    return message["Authorization"]


Connection = Annotated[str, Depends(_connection, cast=False)]
Caller = Annotated[str, Depends(_caller, cast=False)]


async def _greeter(caller: Caller) -> str:
    return f"greeter for {caller}"


Greeter = Annotated[str, Depends(_greeter, cast=False)]


async def greet(req: Ask, db: Connection, caller: Caller, greeter: Greeter,
                prefix: Annotated[str, Context("settings.prefix")]) -> Answer:
    """Says hello."""
    if req.name == "boom":
        raise ValueError("boom")
    return Answer(greeting=f"{prefix} {req.name} ({caller}, {greeter}, {db})")


class Settings:
    prefix = "Hello"


@pytest.fixture
def context() -> Counting:
    context = Counting()
    context.set_global("pool", [1, 2])
    context.set_global("settings", Settings())
    events.clear()
    return context


async def call(endpoint, context: ContextRepo, message: dict, *body):
    """The endpoint called as runtime.requests calls it: with the body's bytes."""
    return await endpoint(*(json.dumps(b).encode() for b in body), message=message)


def test_fast_stream_sees_the_request_model_only():
    endpoint = bind(greet, None)

    signature = inspect.signature(endpoint)

    assert list(signature.parameters) == ["req"]
    assert signature.parameters["req"].annotation is Ask
    assert (endpoint.__name__, endpoint.__doc__) == ("greet", "Says hello.")


async def test_context_values_are_resolved_once_and_dependencies_once_per_message(context):
    endpoint = bind(greet, context)

    first = await call(endpoint, context, {"Authorization": "ada"}, {"name": "Ada"})
    second = await call(endpoint, context, {"Authorization": "bob"}, {"name": "Bob"})

    assert first.greeting == "Hello Ada (ada, greeter for ada, connection from 2 pooled)"
    assert second.greeting == "Hello Bob (bob, greeter for bob, connection from 2 pooled)"
    assert sorted(context.resolved) == ["pool", "settings.prefix"]
    assert events == ["acquire", "caller", "release"] * 2


async def test_an_invalid_request_fails_naming_its_fields(context):
    endpoint = bind(greet, context)

    with pytest.raises(ValidationError) as failed:
        await call(endpoint, context, {"Authorization": "ada"}, {"name": 5, "extra": 1})

    assert {e["loc"] for e in failed.value.errors()} == {("name",), ("extra",)}
    assert events == ["acquire", "caller", "release"]


async def test_a_failing_dependency_is_reported_before_an_invalid_request(context):
    endpoint = bind(greet, context)

    with pytest.raises(KeyError, match="Authorization"):
        await call(endpoint, context, {}, {"name": 5})


async def test_a_generator_dependency_is_closed_when_the_handler_raises(context):
    endpoint = bind(greet, context)

    with pytest.raises(ValueError, match="boom"):
        await call(endpoint, context, {"Authorization": "ada"}, {"name": "boom"})

    assert events == ["acquire", "caller", "release"]


async def test_a_handler_without_a_request_model_takes_no_body(context):
    async def whoami(caller: Caller) -> Answer:
        return Answer(greeting=caller)

    endpoint = bind(whoami, context)

    assert list(inspect.signature(endpoint).parameters) == []
    assert (await call(endpoint, context, {"Authorization": "ada"})).greeting == "ada"


async def test_a_reply_that_is_not_its_model_is_validated_into_it_and_a_stored_one_is_not(
        context):
    async def loose(req: Ask) -> Answer:
        return {"greeting": req.name} if req.name != "stored" else StoredReply(b'{"x":1}')

    endpoint = bind(loose, context)

    assert await call(endpoint, context, {}, {"name": "Ada"}) == Answer(greeting="Ada")
    assert (await call(endpoint, context, {}, {"name": "stored"})).body == b'{"x":1}'


def test_a_parameter_that_is_neither_the_request_nor_injected_is_refused():
    async def two_bodies(req: Ask, other: Ask) -> Answer: ...

    with pytest.raises(TypeError, match="other"):
        bind(two_bodies, None)
