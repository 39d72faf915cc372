"""The payments set: one charge per order, refunds on cancel and return."""

from datetime import datetime
from typing import Literal

from contracts.base import Id, Money, Request, Wire

GET = "atlantic.payments.get"

# PENDING: the order is known, not yet validated. CHARGED and DECLINED: the provider's answer.
# VOIDED: cancelled before any charge. REFUNDED: some or all of the charge was given back.
PaymentState = Literal["PENDING", "CHARGED", "DECLINED", "VOIDED", "REFUNDED"]


class GetPayment(Request):
    order_id: Id


class Payment(Wire):
    order_id: str
    customer_id: str
    payment_id: str | None
    state: PaymentState
    amount: Money
    charged_amount: Money
    refunded_amount: Money
    decline_reason: str | None
    created_at: datetime
    updated_at: datetime
