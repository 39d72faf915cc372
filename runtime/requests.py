"""Request-reply below FastStream: each endpoint is a core NATS queue subscription whose messages
are served here, each request on its own task, at most `request_workers` at once per endpoint.

Why not FastStream's subscribers: profiled on a cached `catalog.products.get` (py-spy, BENCHMARKS.md
"Request-reply at the framework's floor"), after everything Atlantic did on its own side the
request still cost about 500 us of CPU, half of it FastStream's per-message pipeline: the stream
message and its parser, the middleware chain, anyio's task group and limiter around every call,
the publish command object and the codec of the reply. A request needs none of it: decode the body,
call the bound endpoint (handlers.endpoints), encode the reply, publish it. FastStream still
declares the endpoints (`HandlerSet.router`, for the AsyncAPI document), owns the connection and
runs the app's life cycle.

What a client sees is what FastStream sent: the reply model's JSON with `content-type` and a
`correlation_id` header (the request's own, or a new one), and on failure the NATS micro error
reply (runtime.errors).

Telemetry is made here for the same reason: FastStream's TelemetryMiddleware and
PrometheusMiddleware wrap its subscribers, and no request passes through one. Each request is
counted and timed by subject and outcome (Prometheus), and, when tracing is on, served inside a
span "<subject> process" that continues the trace the request's `traceparent` header carries.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import pydantic_core
from faststream import ContextRepo
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram
from pydantic import BaseModel

from contracts.errors import AtlanticError, Unavailable
from handlers import telemetry
from handlers.endpoints import RequestMessage, StoredReply, bind
from handlers.handler_set import HandlerSet
from runtime.errors import as_error, correlation_id, decode_request, error_reply
from runtime.micro import StatsBook

log = logging.getLogger("atlantic.errors")
access = logging.getLogger("atlantic.requests")

JSON = "application/json"

REQUESTS = Counter("atlantic_requests", "Requests answered, by subject and outcome (ok, or the"
                   " error code of the reply)", ["subject", "outcome"])
REQUEST_SECONDS = Histogram(
    "atlantic_request_duration_seconds", "Time from a request's arrival to its reply",
    ["subject"], buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))


def encode_reply(result: Any) -> tuple[bytes, str]:
    """A handler's result as the bytes and content type FastStream's codec gave it."""
    if isinstance(result, StoredReply):
        return result.body, JSON
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode(), JSON
    if result is None:
        return b"", ""
    if isinstance(result, bytes):
        return result, ""
    if isinstance(result, str):
        return result.encode(), "text/plain"
    return pydantic_core.to_json(result), JSON


class _Endpoint:
    """One subject's subscription and the requests it is serving."""

    def __init__(self, nc: Client, subject: str, queue: str, endpoint: Callable[..., Any],
                 stats: StatsBook, workers: int, set_name: str):
        self.nc, self.subject, self.queue, self.endpoint = nc, subject, queue, endpoint
        self.stats = stats
        self.tracer = telemetry.tracer()
        self.scope = {"subject": subject, "set": set_name}
        self.latency = REQUEST_SECONDS.labels(subject)
        self.answered = REQUESTS.labels(subject, "ok")
        self.slots = asyncio.Semaphore(workers)
        self.serving: set[asyncio.Task[None]] = set()
        self.subscription: Subscription | None = None

    async def start(self) -> None:
        self.subscription = await self.nc.subscribe(self.subject, queue=self.queue,
                                                    cb=self._receive)

    async def _receive(self, msg: Msg) -> None:
        # nats-py calls this for one message at a time: waiting here for a free slot holds the
        # rest in the subscription's queue, as FastStream's max_workers did.
        await self.slots.acquire()
        task = asyncio.create_task(self._serve(msg))
        self.serving.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.serving.discard(task)
        self.slots.release()

    async def _serve(self, msg: Msg) -> None:
        telemetry.log_scope.set(self.scope)  # this task's own context: no reset needed
        if self.tracer is None:
            await self._answer(msg)
            return
        span = self.tracer.start_span(f"{self.subject} process", kind=SpanKind.SERVER,
                                      context=telemetry.extract(msg.headers))
        if span.is_recording():  # an unsampled request pays no attributes
            span.set_attributes(telemetry.messaging(
                self.subject, "process", **{"consumer.group.name": self.queue,
                                            "message.body.size": len(msg.data)}))
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            error = await self._answer(msg)
            if error is not None:
                span.set_attribute("error.type", error.code)
                if error.status >= 500:
                    span.set_status(Status(StatusCode.ERROR, error.message))
        finally:
            otel_context.detach(token)
            span.end()

    async def _answer(self, msg: Msg) -> AtlanticError | None:
        started = time.perf_counter_ns()
        headers = msg.headers or {}
        error: AtlanticError | None = None
        try:
            decoded = decode_request(msg.data)
            result = await self.endpoint(decoded, RequestMessage(msg.subject, headers, msg.data))
            body, content_type = encode_reply(result)
            reply_headers = {"content-type": content_type,
                             "correlation_id": correlation_id(headers.get("correlation_id"))}
        except Exception as exc:  # every failure is answered
            error = as_error(exc)
            body, reply_headers = error_reply(error, headers.get("correlation_id"))
        except asyncio.CancelledError:  # still unanswered when the graceful stop ran out
            error = Unavailable("the service stopped before answering; try again")
            await self._reply(msg, *error_reply(error, headers.get("correlation_id")))
            raise
        await self._reply(msg, body, reply_headers)
        elapsed = time.perf_counter_ns() - started
        self.stats.record(self.subject, elapsed, error)
        self.latency.observe(elapsed / 1e9)
        (self.answered if error is None else REQUESTS.labels(self.subject, error.code)).inc()
        if access.isEnabledFor(logging.DEBUG):
            access.debug("%s %s %.2f ms", self.subject, error.status if error else 200,
                         elapsed / 1e6)
        return error

    async def _reply(self, msg: Msg, body: bytes, headers: dict[str, str]) -> None:
        if msg.reply:
            try:
                await self.nc.publish(msg.reply, body, headers=headers)
            except Exception:  # the connection is closing: the caller's request times out
                log.warning("could not reply on %s", self.subject, exc_info=True)

    async def drain(self) -> None:
        """Takes no new requests; those already delivered to this process are still served."""
        if self.subscription is not None:
            try:
                await self.subscription.drain()
            except Exception:  # the connection is already gone: nothing more will arrive
                log.debug("draining %s failed", self.subject, exc_info=True)
            self.subscription = None


class RequestServer:
    """Every request-reply endpoint of the sets this process runs."""

    def __init__(self, nc: Client, sets: Iterable[HandlerSet], context: ContextRepo,
                 stats: StatsBook, workers: int):
        self.endpoints = [
            _Endpoint(nc, e.subject, hs.queue, bind(e.handler, context), stats, workers, hs.name)
            for hs in sets for e in hs.endpoints
        ]

    async def start(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.start()

    async def stop(self, timeout: float) -> None:
        """Stops taking requests, then waits up to `timeout` for those in hand to be answered."""
        await asyncio.gather(*(e.drain() for e in self.endpoints))
        serving = set().union(*(e.serving for e in self.endpoints))
        if serving:
            _, late = await asyncio.wait(serving, timeout=timeout)
            for task in late:  # each answers 503 as it goes
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
