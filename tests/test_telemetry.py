"""Traces, metrics and logs as the tools that read them see them.

A shop of its own: the saga's sets in this process, with an in-memory span exporter, and the
analytics set in a process of its own exporting over OTLP to a receiver here (runtime.tools.
otlp_sink), so one order's trace is followed across processes and across each outbox."""

import asyncio
import io
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from urllib.request import urlopen

import pytest
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client.parser import text_string_to_metric_families
from support import ATLANTIC, cli_env, eventually, world_of_its_own

from contracts.events import OrderCreated, OrderItem
from handlers import HANDLER_SETS, telemetry
from runtime import telemetry as runtime_telemetry
from runtime.settings import Settings
from runtime.tools.bench.world import SAGA_SETS, World
from runtime.tools.otlp_sink import OtlpSink, ReceivedSpan
from runtime.tools.readiness import wait_until_answering
from runtime.tools.services import free_port
from storage import outbox

SAGA_EVENTS = [f"atlantic.events.order.{name}" for name in
               ("created", "validated", "payment_processed", "inventory_reserved")]


@dataclass
class Shop:
    world: World
    exporter: InMemorySpanExporter
    sink: OtlpSink
    metrics_url: str

    def all_spans(self) -> list[ReceivedSpan]:
        """Every span: this process's and the analytics process's."""
        here = [ReceivedSpan(
            f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}",
            f"{s.parent.span_id:016x}" if s.parent else "", s.name, "here",
            dict(s.attributes or {}), tuple((
                f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}",
                str((link.attributes or {}).get("messaging.destination.name", "")))
                for link in s.links))
            for s in self.exporter.get_finished_spans()]
        return here + list(self.sink.spans)

    def spans(self, trace_id: str) -> list[ReceivedSpan]:
        """Every span of the trace."""
        return [s for s in self.all_spans() if s.trace_id == trace_id]

    def linked(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans of other traces that link into this one: batches of several orders."""
        return [s for s in self.all_spans()
                if s.trace_id != trace_id and any(t == trace_id for t, _, _ in s.links)]

    async def metrics(self) -> dict[tuple[str, frozenset], float]:
        """This process's /metrics, parsed by prometheus_client's own parser. Fetched off the
        loop: the scrape asks the outboxes and consumers on it."""
        text = await asyncio.to_thread(lambda: urlopen(self.metrics_url, timeout=10).read())
        return {(sample.name, frozenset(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(text.decode())
                for sample in family.samples}


@pytest.fixture(scope="module")
async def shop(settings) -> AsyncIterator[Shop]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = OtlpSink().start()
    telemetry.use(provider.get_tracer("atlantic-test"))
    try:
        async with world_of_its_own(settings, "telemetry", sets=SAGA_SETS, in_process=True,
                                    nats_users=True, metrics_port=free_port(),
                                    otel_exporter_otlp_endpoint=sink.endpoint) as world:
            await world.serve(["analytics"], ATLANTIC_METRICS_PORT="0",
                              OTEL_BSP_SCHEDULE_DELAY="50")
            # Once a process: the port of whichever app started it first.
            port = runtime_telemetry.serve_metrics(world.settings)
            yield Shop(world, exporter, sink, f"http://127.0.0.1:{port}/metrics")
    finally:
        telemetry.use(None)
        sink.stop()


def new_trace() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def traceparent(trace_id: str, span_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{span_id}-01"}


def expected_consumers() -> set[tuple[str, str]]:
    """(subject, consumer) for every consumer of the saga's sets that takes a saga event."""
    return {(subject, consumer.durable) for name in SAGA_SETS
            for consumer in HANDLER_SETS[name].consumers
            for subject in consumer.subjects if subject in SAGA_EVENTS}


def consumed(spans: list[ReceivedSpan], trace_id: str) -> set[tuple[str, str]]:
    """(subject, consumer) of each event of the trace that a consumer's span covers: the event's
    own span (a batch of one), or a batch's span with a link to the event's writer in the trace
    (OpenTelemetry's messaging conventions for a batch), the link naming the event's subject."""
    found = set()
    for s in spans:
        if s.name.startswith("atlantic.events.") and s.name.endswith(" process"):
            found.add((s.attributes["messaging.destination.name"],
                       s.attributes["messaging.consumer.group.name"]))
        elif "messaging.batch.message_count" in s.attributes:
            found |= {(subject, s.attributes["messaging.consumer.group.name"])
                      for t, _, subject in s.links if t == trace_id}
    return found


async def test_one_order_is_one_trace_across_the_sets_the_outbox_and_analytics(shop: Shop):
    world = shop.world
    customer, _ = await world.customer()
    product = await world.product("12.00", 10)
    trace_id, root = new_trace()
    wanted = expected_consumers() | {(s, "analytics-ingest") for s in SAGA_EVENTS}

    order = await world.order(customer, (product, 1), headers=traceparent(trace_id, root))
    await world.status_becomes(customer, order["orderId"], "RESERVED")

    async def all_consumed():
        return wanted <= consumed(shop.spans(trace_id) + shop.linked(trace_id), trace_id)

    await eventually(all_consumed, seconds=20)
    spans, linked = shop.spans(trace_id), shop.linked(trace_id)

    names = {s.name for s in spans}
    assert {"atlantic.orders.create process", "atlantic.catalog.quote process"} <= names
    assert wanted <= consumed(spans + linked, trace_id)
    assert any(s.service == "atlantic-analytics" for s in spans + linked)  # its own process's
    by_id = {s.span_id: s for s in spans}
    for span in spans:  # no broken link: every parent is in the trace, or is the caller's
        assert span.parent_span_id == root or span.parent_span_id in by_id, span
    for span in spans:  # an event's span is a child of the span that wrote it to an outbox
        if span.name.startswith("atlantic.events."):
            parent = by_id[span.parent_span_id]
            assert parent.name.endswith(" process") and parent.name != span.name, span
    for batch in spans + linked:  # a batch's links lead to the writers of its events here
        into = [span_id for t, span_id, _ in batch.links if t == trace_id]
        for span_id in into:
            assert by_id[span_id].name.endswith(" process") and by_id[span_id] is not batch
        if batch.trace_id == trace_id and into:  # a batch of this order's events alone
            assert batch.parent_span_id == into[0], batch
    [create] = [s for s in spans if s.name == "atlantic.orders.create process"]
    [quote] = [s for s in spans if s.name == "atlantic.catalog.quote process"]
    assert create.parent_span_id == root and quote.parent_span_id == create.span_id
    [created] = [s for s in spans + linked if s.attributes.get("messaging.consumer.group.name")
                 == "catalog-stock" and ("atlantic.events.order.created", "catalog-stock")
                 in consumed([s], trace_id)]
    # across the orders set's outbox: the event's span, or its batch's link, leads to the create
    assert (created.parent_span_id == create.span_id
            or (trace_id, create.span_id, "atlantic.events.order.created") in created.links)


async def test_metrics_count_orders_saga_steps_requests_and_dead_letters(shop: Shop):
    world = shop.world
    customer, _ = await world.customer()
    product = await world.product("5.00", 50)
    before = await shop.metrics()
    n = 3

    orders = [await world.order(customer, (product, 1)) for _ in range(n)]
    for order in orders:
        await world.status_becomes(customer, order["orderId"], "RESERVED")
    await world.operator.nc.jetstream().publish(
        "atlantic.events.order.validated", b"{not json", headers={"Nats-Msg-Id": new_trace()[0]})

    def delta(after, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    async def counted():
        after = await shop.metrics()
        done = (delta(after, "atlantic_saga_step_duration_seconds_count",
                      step="paid_to_reserved") >= n
                and delta(after, "atlantic_dead_letters_total", consumer="orders-lifecycle") >= 1)
        return after if done else None

    after = await eventually(counted, seconds=20)
    assert delta(after, "atlantic_orders_created_total") == n
    assert delta(after, "atlantic_requests_total", subject="atlantic.orders.create",
                 outcome="ok") == n
    assert delta(after, "atlantic_request_duration_seconds_count",
                 subject="atlantic.orders.create") == n
    for step in ("created_to_validated", "validated_to_paid", "paid_to_reserved"):
        assert delta(after, "atlantic_saga_step_duration_seconds_count", step=step) == n, step
    assert delta(after, "atlantic_order_transitions_total", from_status="PAID",
                 to_status="RESERVED") == n
    assert delta(after, "atlantic_dead_letters_total", consumer="orders-lifecycle") == 1
    assert delta(after, "atlantic_events_total", consumer="orders-lifecycle",
                 outcome="dead_lettered") == 1
    assert delta(after, "atlantic_events_total", consumer="orders-lifecycle",
                 outcome="applied") >= 3 * n
    for schema in ("catalog", "orders", "payments", "users"):
        assert ("atlantic_outbox_waiting_rows", frozenset({("schema", schema)})) in after
        assert ("atlantic_outbox_oldest_age_seconds", frozenset({("schema", schema)})) in after
    assert after[("atlantic_consumer_pending_messages",
                  frozenset({("consumer", "orders-lifecycle")}))] >= 0


async def test_product_cache_hits_and_misses_are_counted(shop: Shop):
    product = await shop.world.product("9.00", 5)
    before = await shop.metrics()

    for _ in range(3):
        reply = await shop.world.client.call("atlantic.catalog.products.get",
                                             {"productId": product})
        assert reply.ok, reply.body
    after = await shop.metrics()

    def delta(result: str) -> float:
        key = ("atlantic_cache_lookups_total", frozenset({("cache", "product"),
                                                           ("result", result)}))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("miss") + delta("hit") == 3
    assert delta("hit") >= 1  # the first read fills the cache (unless creation did)


async def test_json_log_lines_carry_the_trace_of_their_request(shop: Shop):
    product = await shop.world.product("4.00", 5)
    trace_id, root = new_trace()
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(runtime_telemetry.JsonFormatter())
    access = logging.getLogger("atlantic.requests")  # one DEBUG line a request
    level = access.level
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    try:
        reply = await shop.world.client.call("atlantic.catalog.products.get",
                                             {"productId": product},
                                             headers=traceparent(trace_id, root))
    finally:
        access.removeHandler(handler)
        access.setLevel(level)

    assert reply.ok, reply.body
    parsed = [json.loads(line) for line in lines.getvalue().splitlines()]
    [mine] = [p for p in parsed if p.get("trace_id") == trace_id]
    assert mine["subject"] == "atlantic.catalog.products.get"
    assert mine["set"] == "catalog"
    assert mine["logger"] == "atlantic.requests" and mine["level"] == "DEBUG"
    assert mine["span_id"] != root and len(mine["span_id"]) == 16
    assert mine["time"].endswith("Z") and mine["message"].startswith(mine["subject"])


async def test_a_process_with_json_logs_writes_only_json_lines_with_its_requests_traces(
        shop: Shop):
    world = shop.world
    process = await asyncio.create_subprocess_exec(
        ATLANTIC, "serve", "--handlers", "users", stderr=asyncio.subprocess.PIPE,
        env=cli_env(world.settings, ATLANTIC_LOG_FORMAT="json", ATLANTIC_LOG_LEVEL="DEBUG",
                    ATLANTIC_METRICS_PORT="0", OTEL_BSP_SCHEDULE_DELAY="50"))
    traces = {}
    try:  # a second users instance: the queue group shares the requests between the two
        await wait_until_answering(world.client.nc, "users", instances=2, seconds=30,
                                   exited=lambda: process.returncode is not None)
        for _ in range(24):  # each lands on either instance: this one's share is not zero
            trace_id, root = new_trace()
            reply = await world.client.call("atlantic.users.me",
                                            headers=traceparent(trace_id, root))
            assert reply.status == 401
            traces[trace_id] = root
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), 30)

    lines = [json.loads(line) for line in stderr.decode().splitlines()]  # each one JSON
    served = [line for line in lines if line.get("trace_id") in traces]
    assert served, lines[-5:]
    for line in served:
        assert line["subject"] == "atlantic.users.me" and line["set"] == "users"
        assert line["span_id"] != traces[line["trace_id"]]
    assert any(line["logger"] == "faststream" for line in lines)  # FastStream's own, as JSON
    assert {"time", "level", "logger", "message"} <= set(lines[0])


# --- no servers -----------------------------------------------------------------------------------

@pytest.mark.fast
def test_traces_are_on_only_when_the_otel_settings_ask():
    base = Settings.model_construct()

    assert not runtime_telemetry.tracing_wanted(base)
    assert runtime_telemetry.tracing_wanted(base.model_copy(update={
        "otel_exporter_otlp_endpoint": "http://collector:4318"}))
    assert runtime_telemetry.tracing_wanted(base.model_copy(update={
        "otel_traces_exporter": "console"}))
    assert not runtime_telemetry.tracing_wanted(base.model_copy(update={
        "otel_exporter_otlp_endpoint": "http://collector:4318", "otel_traces_exporter": "none"}))
    assert not runtime_telemetry.tracing_wanted(base.model_copy(update={
        "otel_exporter_otlp_endpoint": "http://collector:4318", "otel_sdk_disabled": True}))


@pytest.mark.fast
def test_otel_settings_reach_a_child_process_under_their_own_names():
    settings = Settings.model_construct().model_copy(update={
        "otel_exporter_otlp_endpoint": "http://collector:4318", "metrics_port": 9464})

    env = settings.environment()

    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert env["ATLANTIC_METRICS_PORT"] == "9464"
    assert "ATLANTIC_OTEL_EXPORTER_OTLP_ENDPOINT" not in env


@pytest.mark.fast
def test_an_outbox_row_keeps_the_trace_it_was_written_in():
    tracer = TracerProvider().get_tracer("test")
    event = OrderCreated(order_id="o-1", customer_id="c-1", total_price=Decimal("1.00"),
                         items=[OrderItem(product_id="p-1", quantity=1, price=Decimal("1.00"))])

    [outside] = outbox.rows([event])
    with tracer.start_as_current_span("work") as span:
        [inside] = outbox.rows([event])

    context = span.get_span_context()
    assert outside.traceparent is None
    assert inside.traceparent == (f"00-{context.trace_id:032x}-{context.span_id:016x}"
                                  f"-{context.trace_flags:02x}")


def _msg(subject: str, headers: dict[str, str] | None) -> Msg:
    return Msg(_client=None, subject=subject, headers=headers)  # type: ignore[arg-type]


def _recorded() -> tuple[InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider


@pytest.mark.fast
def test_an_event_batch_of_one_is_one_span_in_its_events_trace():
    exporter, provider = _recorded()
    trace_id, parent = new_trace()

    with telemetry.batch_scope(provider.get_tracer("test"), "orders-lifecycle", [
            _msg("atlantic.events.order.validated", traceparent(trace_id, parent))]) as traces:
        inside = outbox.traceparent()

    [span] = exporter.get_finished_spans()
    assert traces == [None]  # what it emits goes on from the batch's span
    assert span.name == "atlantic.events.order.validated process"
    assert f"{span.context.trace_id:032x}" == trace_id
    assert f"{span.parent.span_id:016x}" == parent
    assert span.attributes["messaging.consumer.group.name"] == "orders-lifecycle"
    assert span.attributes["messaging.destination.name"] == "atlantic.events.order.validated"
    assert inside == outbox.traceparent(span)  # what the batch emits goes on in the trace


@pytest.mark.fast
def test_a_batch_of_several_orders_is_one_span_of_its_own_linked_to_each_traced_event():
    exporter, provider = _recorded()
    (first, a), (second, b) = new_trace(), new_trace()
    headers = [traceparent(first, a), {"Nats-Msg-Id": "untraced"}, traceparent(second, b)]

    with telemetry.batch_scope(provider.get_tracer("test"), "catalog-stock", [
            _msg("atlantic.events.order.created", headers[0]),
            _msg("atlantic.events.order.created", headers[1]),
            _msg("atlantic.events.order.payment_processed", headers[2]),
    ]) as traces:
        inside = outbox.traceparent()

    [batch] = exporter.get_finished_spans()  # one span, not one an event
    assert batch.name == "catalog-stock process" and batch.parent is None
    assert f"{batch.context.trace_id:032x}" not in (first, second)
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert batch.attributes["messaging.consumer.group.name"] == "catalog-stock"
    assert "messaging.destination.name" not in batch.attributes  # two subjects
    assert [(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}",
             link.attributes["messaging.destination.name"]) for link in batch.links] == [
        (first, a, "atlantic.events.order.created"),
        (second, b, "atlantic.events.order.payment_processed")]
    assert inside == outbox.traceparent(batch)
    # what it emits about each order goes on in that order's trace, from the event's writer
    assert traces == [headers[0]["traceparent"], None, headers[2]["traceparent"]]


@pytest.mark.fast
def test_a_batch_of_one_orders_events_is_one_span_in_its_trace():
    exporter, provider = _recorded()
    trace_id, a = new_trace()
    _, b = new_trace()

    with telemetry.batch_scope(provider.get_tracer("test"), "orders-lifecycle", [
            _msg("atlantic.events.order.created", traceparent(trace_id, a)),
            _msg("atlantic.events.order.validated", traceparent(trace_id, b)),
    ]) as traces:
        inside = outbox.traceparent()

    [batch] = exporter.get_finished_spans()
    assert f"{batch.context.trace_id:032x}" == trace_id
    assert f"{batch.parent.span_id:016x}" == a  # the first event's writer
    assert [f"{link.context.span_id:016x}" for link in batch.links] == [a, b]
    assert traces == [None, None] and inside == outbox.traceparent(batch)


@pytest.mark.fast
def test_an_unsampled_batch_records_nothing_and_its_orders_keep_their_traces():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    (first, a), (second, b) = new_trace(), new_trace()
    one, two = traceparent(first, a), traceparent(second, b)

    with telemetry.batch_scope(provider.get_tracer("test"), "payments-orders", [
            _msg("atlantic.events.order.validated", one),
            _msg("atlantic.events.order.validated", two)]) as traces:
        pass
    with telemetry.batch_scope(provider.get_tracer("test"), "payments-orders", [
            _msg("atlantic.events.order.validated", one)]):
        alone = outbox.traceparent()

    assert exporter.get_finished_spans() == ()
    assert traces == [one["traceparent"], two["traceparent"]]
    assert alone is not None and alone.split("-")[1] == first  # still the order's trace


@pytest.mark.fast
def test_an_empty_batch_makes_no_span():
    exporter, provider = _recorded()

    with telemetry.batch_scope(provider.get_tracer("test"), "payments-orders", []) as traces:
        pass

    assert traces == [] and exporter.get_finished_spans() == ()


@pytest.mark.fast
def test_a_traceparent_is_read_as_a_span_context_or_refused():
    trace_id, span_id = new_trace()

    context = telemetry.span_context(f"00-{trace_id}-{span_id}-01")

    assert context is not None and context.is_remote and context.trace_flags.sampled
    assert (f"{context.trace_id:032x}", f"{context.span_id:016x}") == (trace_id, span_id)
    for bad in ("", "00-zz-yy-01", f"00-{'0' * 32}-{span_id}-01", f"00-{trace_id}-{span_id}",
                f"00-{trace_id}-{span_id}-0x"):
        assert telemetry.span_context(bad) is None, bad


@pytest.mark.fast
def test_a_json_log_line_outside_any_message_has_the_basic_fields():
    record = logging.LogRecord("atlantic", logging.WARNING, __file__, 1, "hello %s", ("you",),
                               None)

    line = json.loads(runtime_telemetry.JsonFormatter().format(record))

    assert line.keys() == {"time", "level", "logger", "message"}
    assert line["message"] == "hello you" and line["level"] == "WARNING"

