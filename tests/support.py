"""What the tests share besides fixtures (those are in conftest.py): this run's ids, waiting for
an outcome, signing up, running the `atlantic` command, reading and publishing events, and
DESIGN's event table to check emitted events against."""

import asyncio
import itertools
import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from nats.errors import TimeoutError as NatsTimeout

from contracts import analytics as contract
from contracts.events import OrderCreated, OrderItem
from handlers import HANDLER_SETS
from runtime.tools.bench.world import open_world
from runtime.tools.client import AtlanticClient

# --- this run ------------------------------------------------------------------------------------

RUN_ID = uuid.uuid4().hex[:10]
TEST_PASSWORD = "correct-horse-battery"
_counter = itertools.count()


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{RUN_ID}-{next(_counter)}@example.com"


# orders and payments act on every OrderCreated, and the catalog's tests drive the saga by hand,
# so the shared system runs without them; the saga's tests start worlds of their own
# (runtime.tools.bench.world),
# and so do the dashboard's (test_web.py).
SHARED_SETS = [name for name in HANDLER_SETS if name not in ("orders", "payments", "web")]


def world_of_its_own(settings, tag: str, **options):
    """open_world for a test: a database atlantic_test_<run>_<tag>, kept with
    ATLANTIC_KEEP_TEST_DB."""
    return open_world(settings, f"test_{RUN_ID}_{tag}",
                      keep=bool(os.environ.get("ATLANTIC_KEEP_TEST_DB")), **options)


# --- waiting for an outcome ----------------------------------------------------------------------

async def eventually(check, *, seconds: float = 10.0, interval: float = 0.05):
    """Polls an async check until it returns something truthy; fails with its last value."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            assert result, f"condition not met within {seconds} s: {result!r}"
            return result
        await asyncio.sleep(interval)


# --- signed-in clients ---------------------------------------------------------------------------

async def sign_up(client: AtlanticClient, tag: str = "customer") -> tuple[AtlanticClient, dict]:
    return await client.sign_up(unique_email(tag), TEST_PASSWORD, tag)


# --- the atlantic command ------------------------------------------------------------------------

ATLANTIC = str(Path(sys.executable).parent / "atlantic")


def cli_env(settings, **overrides) -> dict[str, str]:
    return os.environ | settings.environment() | {"ATLANTIC_LOG_LEVEL": "WARNING"} | overrides


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Runs the atlantic command without blocking the loop the in-process system serves on."""
    process = await asyncio.create_subprocess_exec(
        ATLANTIC, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, stdout.decode(), stderr.decode()


# --- events on the stream ------------------------------------------------------------------------

async def read_events(client: AtlanticClient, subject: str) -> list[tuple[dict, dict]]:
    """Every message on the ATLANTIC stream under `subject`, as (headers, body), oldest first."""
    js = client.nc.jetstream()
    subscription = await js.pull_subscribe(subject, stream="ATLANTIC")
    events: list[tuple[dict, dict]] = []
    try:
        while True:
            try:
                batch = await subscription.fetch(256, timeout=0.5)
            # nats-py sometimes raises a plain asyncio TimeoutError here, not its own subclass.
            except (NatsTimeout, TimeoutError):
                return events
            for msg in batch:
                events.append((dict(msg.headers or {}), json.loads(msg.data)))
                await msg.ack()
    finally:
        await subscription.unsubscribe()


async def publish_all(client, messages) -> None:
    js = client.nc.jetstream()
    for subject, body, msg_id in messages:
        await js.publish_async(subject, body, headers={"Nats-Msg-Id": msg_id})
    await js.publish_async_completed()


async def drained(system) -> None:
    ingest = system.context.get("analytics_ingest")

    async def nothing_pending():
        return await ingest.pending() == 0

    await eventually(nothing_pending, seconds=60, interval=0.1)


def orders_in(start: datetime, n: int, tag: str) -> list[OrderCreated]:
    return [OrderCreated(order_id=f"{tag}-{i}", customer_id=f"c-{tag}", total_price=price,
                         items=[OrderItem(product_id="p-1", quantity=1, price=price)],
                         timestamp=start + timedelta(seconds=i))
            for i in range(n) for price in [Decimal(i % 997 + 1) / 100]]


def window(start: datetime, length: timedelta = timedelta(days=1)) -> dict:
    return {"from": start.isoformat(), "to": (start + length).isoformat()}


def as_messages(events, again: int = 0) -> list[tuple[str, bytes, str]]:
    messages = [(e.subject, e.model_dump_json().encode(), e.event_id) for e in events]
    return messages + [(s, b, f"again-{m}") for s, b, m in messages[:again]]


async def summary(admin, start: datetime, length: timedelta = timedelta(days=1)) -> dict:
    reply = await admin.call(contract.SUMMARY, window(start, length))
    assert reply.ok, reply.body
    return reply.body


def past_day(days_ago: int) -> datetime:
    return (datetime.now(UTC) - timedelta(days=days_ago)).replace(hour=0, minute=0, second=0,
                                                                   microsecond=0)


# --- DESIGN's event table ------------------------------------------------------------------------

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
