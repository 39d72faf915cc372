"""A request handler bound once: its request model for FastStream's AsyncAPI document, and
everything else it declares injected here (runtime.requests serves the bound endpoint).

Handlers declare what they need with the `handlers.deps` aliases (`Pool`, `Cache`, `Db`,
`CurrentUser`, ...). FastStream's own injection (fast_depends) resolves every one of them again
for every message: each `Context` parameter is looked up through an anyio task group and a
thread-pool check, each `Depends` is a nested call model, and the handler's arguments are
validated as one pydantic model of all of them. Profiled on a cached `catalog.products.get`
(py-spy, one process), that was a quarter of the request's CPU besides the handler itself.

So nothing injects per message but this module: `bind` splits a handler's parameters once, when
the set's endpoints are built:
- the request model (at most one parameter without a marker): parsed and validated here from
  the body's bytes, strictly (`_request_parser`), and documented in AsyncAPI by FastStream
  exactly as before, since it is all the bound endpoint's signature shows;
- `Context("name")` values: resolved from the app's context at the first message, then kept for
  the life of the app (the pools, the cache, settings, the outbox relays: one per process);
- `Context("message")` (the request: its subject, headers and body) and `Depends(...)` values
  (the session behind the token, a pooled connection): resolved per message by plain calls,
  each dependency once per message; a generator dependency is closed when the handler returns
  or raises, as fast_depends does.

Measured on a cached products.get: binding took an in-process round trip from ~1,120 to ~930 us
of CPU (a raw echo ~250), and leaving fast_depends out of the request entirely took the catalog
from 540 to 503 us of CPU per request at 64 in flight (interleaved runs; BENCHMARKS.md, issue 14).
"""

import contextlib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from fast_depends.dependencies import Dependant
from faststream import ContextRepo
from faststream._internal.context import Context as FastStreamContext
from pydantic import BaseModel, TypeAdapter

MESSAGE = "message"  # the one context value that changes with every message


class RequestMessage:
    """The request a handler may ask for (`Context("message")`): its subject, its headers
    (empty when it has none) and its body as it came."""

    __slots__ = ("body", "headers", "subject")

    def __init__(self, subject: str, headers: dict[str, str], body: bytes):
        self.subject, self.headers, self.body = subject, headers, body


class StoredReply:
    """A reply that was encoded earlier and stored (a cache entry holding the reply model's
    JSON): sent as it is, with the content type of a model encoded afresh, so the client
    receives the same bytes and headers as from a fresh reply. A handler returning one keeps
    its reply model as its return annotation: that is what the reply is, and what the AsyncAPI
    document shows."""

    __slots__ = ("body",)

    def __init__(self, body: bytes):
        self.body = body


@dataclass(frozen=True, eq=False)
class _Dependency:
    call: Callable[..., Any]
    statics: dict[str, str]  # parameter -> context name
    message: tuple[str, ...]  # parameters that take the message
    dependencies: dict[str, "_Dependency"]
    is_generator: bool = False
    manager: Callable[..., contextlib.AbstractAsyncContextManager[Any]] | None = None


@dataclass
class _Plan:
    body: inspect.Parameter | None = None
    statics: dict[str, str] = field(default_factory=dict)
    message: list[str] = field(default_factory=list)
    dependencies: dict[str, _Dependency] = field(default_factory=dict)

    def add(self, name: str, parameter: inspect.Parameter, hint: Any, owner: str) -> None:
        marker = _marker(hint)
        if isinstance(marker, FastStreamContext):
            if marker.default is not _NO_DEFAULT or marker.initial is not None or marker.prefix:
                raise TypeError(f"{owner}: Context({marker.name!r}) with a default, initial or "
                                "prefix is not supported here")
            context_name = marker.name or name
            if context_name == MESSAGE:
                self.message.append(name)
            else:
                self.statics[name] = context_name
        elif isinstance(marker, Dependant):
            self.dependencies[name] = _dependency(marker)
        elif self.body is None and owner == "handler":
            self.body = parameter.replace(annotation=hint)
        else:
            raise TypeError(f"{owner}: parameter {name!r} is neither the request model nor an "
                            "injected value (Context or Depends)")


_NO_DEFAULT = FastStreamContext().default


def _marker(hint: Any) -> Any:
    if get_origin(hint) is Annotated:
        return next((m for m in get_args(hint)[1:]
                     if isinstance(m, FastStreamContext | Dependant)), None)
    return None


def _parameters(call: Callable[..., Any], owner: str) -> _Plan:
    hints = get_type_hints(call, include_extras=True)
    plan = _Plan()
    for name, parameter in inspect.signature(call).parameters.items():
        plan.add(name, parameter, hints.get(name, Any), owner)
    return plan


@functools.cache
def _dependency_of(call: Callable[..., Any]) -> _Dependency:
    plan = _parameters(call, f"dependency {call.__name__}")
    generator = inspect.isasyncgenfunction(call)
    return _Dependency(call, plan.statics, tuple(plan.message), plan.dependencies, generator,
                       contextlib.asynccontextmanager(call) if generator else None)


def _dependency(marker: Dependant) -> _Dependency:
    if not marker.use_cache or marker.cast or marker.cast_result:
        raise TypeError(f"{marker!r}: only Depends(..., cast=False) is supported here")
    return _dependency_of(marker.dependency)


class _Message:
    """What one message's dependencies share: the message, the values already resolved (each
    dependency runs once per message), and the exit stack of generator dependencies."""

    __slots__ = ("message", "resolved", "stack")

    def __init__(self, message: Any, stack: contextlib.AsyncExitStack | None):
        self.message, self.stack = message, stack
        self.resolved: dict[_Dependency, Any] = {}

    async def value(self, dependency: _Dependency, statics: dict[str, Any]) -> Any:
        if (found := self.resolved.get(dependency, self)) is not self:
            return found
        kwargs = {name: statics[context_name]
                  for name, context_name in dependency.statics.items()}
        for name in dependency.message:
            kwargs[name] = self.message
        for name, inner in dependency.dependencies.items():
            kwargs[name] = await self.value(inner, statics)
        if dependency.manager is not None:
            assert self.stack is not None
            value = await self.stack.enter_async_context(dependency.manager(**kwargs))
        else:
            value = await dependency.call(**kwargs)
        self.resolved[dependency] = value
        return value


def _all_statics(plan: _Plan) -> set[str]:
    names, todo = set(plan.statics.values()), list(plan.dependencies.values())
    while todo:
        dependency = todo.pop()
        names.update(dependency.statics.values())
        todo.extend(dependency.dependencies.values())
    return names


def _has_generator(dependencies: dict[str, _Dependency]) -> bool:
    return any(d.is_generator or _has_generator(d.dependencies) for d in dependencies.values())


def _reply_model(handler: Callable[..., Any]) -> type[BaseModel] | None:
    returned = get_type_hints(handler).get("return")
    return returned if isinstance(returned, type) and issubclass(returned, BaseModel) else None


def _request_parser(model: Any) -> Callable[[bytes], Any]:
    """The request body's bytes to the request model, held to the contract the AsyncAPI document
    states: pydantic's JSON parser (in Rust: one pass, no Python objects for what is refused,
    nesting past its limit refused) and strict types (`true` or `"2"` is no number), by the
    camelCase wire names only. Unknown fields are refused by the models themselves."""
    validate = TypeAdapter(model).validate_json
    return functools.partial(validate, strict=True, by_alias=True, by_name=False)


def bind(handler: Callable[..., Any], context: ContextRepo | None) -> Callable[..., Any]:
    """The endpoint: `handler` called with the body's bytes and the request message, everything
    it declares injected here. What FastStream sees of it (for the AsyncAPI document) is the
    request model only. `context` is the app's context; None builds an endpoint for the
    document only."""
    plan = _parameters(handler, "handler")
    reply_model = _reply_model(handler)
    body = plan.body.name if plan.body is not None else None
    request = _request_parser(plan.body.annotation) if plan.body is not None else None
    names = _all_statics(plan)
    statics: dict[str, Any] = {}
    per_message = bool(plan.message or plan.dependencies)
    needs_stack = _has_generator(plan.dependencies)

    async def endpoint(decoded: Any = None, message: RequestMessage | None = None) -> Any:
        if len(statics) < len(names):  # the first message: the app's values are all set by now
            assert context is not None, "an endpoint built without a context cannot serve"
            statics.update({name: context.resolve(name) for name in names})
        kwargs = {name: statics[context_name] for name, context_name in plan.statics.items()}
        if not per_message:
            if request is not None:
                kwargs[body] = request(decoded)
            result = await handler(**kwargs)
        else:
            async with contextlib.AsyncExitStack() if needs_stack else _NO_STACK as stack:
                scope = _Message(message, stack)
                for name in plan.message:
                    kwargs[name] = message
                for name, dependency in plan.dependencies.items():
                    kwargs[name] = await scope.value(dependency, statics)
                # After the dependencies, as fast_depends did: a request without a valid token
                # is refused for that before its body is looked at.
                if request is not None:
                    kwargs[body] = request(decoded)
                result = await handler(**kwargs)
        # What fast_depends' reply cast did, for a handler that returns something else than its
        # model (a dict, say); a model instance or a ready reply passes untouched.
        if reply_model is not None and type(result) is not reply_model \
                and not isinstance(result, StoredReply | BaseModel):
            result = reply_model.model_validate(result)
        return result

    functools.update_wrapper(endpoint, handler)  # its name and docstring, for AsyncAPI
    # What FastStream documents (and builds its unused argument model from): the request only.
    endpoint.__signature__ = inspect.Signature([plan.body] if plan.body is not None else [])
    endpoint.__annotations__ = {body: plan.body.annotation} if plan.body is not None else {}
    return endpoint


class _NoStack:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_STACK = _NoStack()


def request_model(handler: Callable[..., Any]) -> Any:
    """The request model a handler takes (what `bind` validates the body into), or None."""
    body = _parameters(handler, "handler").body
    return body.annotation if body is not None else None
