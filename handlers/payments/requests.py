"""What operators ask of the payments set."""

from contracts.errors import NotFound
from contracts.payments import GET, GetPayment, Payment
from handlers.deps import Admin, Db
from handlers.payments import payments
from storage import payments as store


@payments.request(GET)
async def get_payment(req: GetPayment, _: Admin, db: Db) -> Payment:
    """The payment of one order: its state, and what was charged and refunded."""
    payment = await store.view(db, req.order_id)
    if payment is None:
        raise NotFound("payment for order", req.order_id)
    return payment
