"""The orders set: places orders and owns their status, moved by requests and by saga events.

This module is the set itself: its HandlerSet, its schema, what its handlers receive beyond the
shared clients, and the catalog client it quotes through. The handlers are in the modules
beside it, imported at the end, so that they find the set here when they register on it.
"""

import json
import time
from typing import Annotated

from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from contracts.catalog import QUOTE, ItemLine, Quote
from contracts.errors import NotFound, Unavailable
from handlers import telemetry
from handlers.deps import Context, NatsBroker, Publisher
from handlers.handler_set import HandlerSet
from storage.sessions import SessionInfo

SCHEMA = "orders"  # this set's PostgreSQL schema: its tables, outbox and inbox

orders = HandlerSet(
    "orders", "Orders: placing them, their status through the saga, shipping and returns",
    outbox_schema=SCHEMA,
)

QuoteTimeout = Annotated[float, Context("settings.quote_timeout_seconds")]
Outbox = Annotated[Publisher, Context(f"outbox.{SCHEMA}")]


async def request_quote(broker: NatsBroker, lines: list[ItemLine], timeout: float) -> Quote:
    """Current prices and availability from the catalog set (it owns them; DESIGN step 1)."""
    body = json.dumps({"items": [line.model_dump(mode="json") for line in lines]}).encode()
    deadline = time.monotonic() + timeout
    try:
        # No responders: the catalog's replicas are moving to another NATS server (theirs
        # went) or restarting. A quote changes nothing, so it is asked again within the time.
        async for attempt in AsyncRetrying(
                stop=stop_after_delay(timeout), wait=wait_exponential(multiplier=0.05, max=0.5),
                retry=retry_if_exception_type(NoRespondersError), reraise=True):
            with attempt:
                reply = await broker.connection.request(
                    QUOTE, body, timeout=max(0.01, deadline - time.monotonic()),
                    headers=telemetry.outgoing())
    except (TimeoutError, NatsError):
        raise Unavailable("the catalog did not answer; try again shortly") from None
    if (reply.headers or {}).get("Nats-Service-Error-Code"):
        raise Unavailable(f"the catalog refused the quote: {reply.data.decode()[:200]}")
    return Quote.model_validate_json(reply.data)


def visible_to(session: SessionInfo, customer_id: str, order_id: str) -> None:
    """Customers see only their own orders; to them another's order does not exist."""
    if session.role != "admin" and session.user_id != customer_id:
        raise NotFound("order", order_id)


# The handlers, registered on the set as they are imported (each imports the set from here).
from handlers.orders import deadlines, requests, saga  # noqa: E402

__all__ = ["orders", "deadlines", "requests", "saga"]
