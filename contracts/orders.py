"""The orders set: placing orders and moving them through their life (DESIGN "The order saga")."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from contracts.base import Empty, Id, Money, NoControls, Request, Wire
from contracts.catalog import ItemLines
from contracts.events import (
    InventoryReserved,
    OrderCancelled,
    OrderCreated,
    OrderDelivered,
    OrderItem,
    OrderReturned,
    OrderShipped,
    OrderValidated,
    PaymentProcessed,
)

CREATE = "atlantic.orders.create"
GET = "atlantic.orders.get"
LIST = "atlantic.orders.list"
CANCEL = "atlantic.orders.cancel"
SHIP = "atlantic.orders.ship"
DELIVER = "atlantic.orders.deliver"
RETURN = "atlantic.orders.return"
STATS = "atlantic.orders.stats"

# A reason and a carrier as a client sends them: no control characters, and each constraint
# inside its own Annotated (a Field beside a validated alias was silently dropped: a carrier of
# 65 characters passed its max_length=64).
Reason = Annotated[str, Field(max_length=500), NoControls]
Carrier = Annotated[str, Field(min_length=1, max_length=64), NoControls]

ORDER_EVENTS = "atlantic.events.order.>"
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 128
MAX_PAGE = 100

OrderStatus = Literal[
    "CREATED", "VALIDATED", "PAID", "RESERVED", "SHIPPED", "DELIVERED", "CANCELLED", "RETURNED"]


class CreateOrder(Request):
    items: ItemLines


class GetOrder(Request):
    order_id: Id


class ListOrders(Request):
    status: OrderStatus | None = None
    created_from: datetime | None = Field(None, alias="from")
    created_to: datetime | None = Field(None, alias="to")
    limit: int = Field(20, ge=1, le=MAX_PAGE)
    cursor: Annotated[str, Field(max_length=200), NoControls] | None = Field(
        None, description="nextCursor of the previous page")

    @model_validator(mode="after")
    def _window(self) -> "ListOrders":
        if self.created_from and self.created_to and self.created_from >= self.created_to:
            raise ValueError("'from' must be before 'to'")
        return self


class CancelOrder(Request):
    order_id: Id
    reason: Reason = "cancelled by the customer"


class ReturnOrder(Request):
    order_id: Id
    reason: Annotated[str, Field(min_length=1, max_length=500), NoControls]


class ShipOrder(Request):
    order_id: Id
    carrier: Carrier


class DeliverOrder(Request):
    order_id: Id


class StatusChange(Wire):
    status: OrderStatus
    timestamp: datetime
    note: str | None = None


class Shipment(Wire):
    shipment_id: str
    carrier: str
    tracking_number: str


class Order(Wire):
    order_id: str
    customer_id: str
    status: OrderStatus
    items: list[OrderItem]
    total_price: Money
    paid_amount: Money  # what the payment provider charged for it
    refunded_amount: Money
    shipment: Shipment | None = None
    cancellation_reason: str | None = None
    return_reason: str | None = None
    created_at: datetime
    updated_at: datetime
    history: list[StatusChange]


class OrderSummary(Wire):
    order_id: str
    customer_id: str
    status: OrderStatus
    total_price: Money
    created_at: datetime


class OrderPage(Wire):
    orders: list[OrderSummary]
    next_cursor: str | None = Field(None, description="pass back as cursor; null on the last page")


class OrderStatusReply(Wire):
    order_id: str
    status: OrderStatus


OrderStats = Empty


class DeadLetterCount(Wire):
    consumer: str
    count: int


class OrderStatsReply(Wire):
    """Orders as they stand now, for the operators' live panel."""

    by_status: dict[OrderStatus, int]  # every status, 0 included
    past_deadline: int  # short of PAID or RESERVED past the deadline, not yet cancelled
    # ops.dead_letters, which every set's consumers write: the orders set answers for it
    dead_letters: list[DeadLetterCount]


class ShipmentReply(Wire):
    order_id: str
    shipment_id: str
    carrier: str
    tracking_number: str


# Any event under atlantic.events.order.>, told apart by its "event" field.
OrderLifecycleEvent = Annotated[
    OrderCreated | OrderValidated | PaymentProcessed | InventoryReserved | OrderShipped
    | OrderDelivered | OrderCancelled | OrderReturned,
    Field(discriminator="event"),
]
