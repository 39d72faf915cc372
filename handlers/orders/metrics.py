"""What the orders set counts for Prometheus: orders placed, status changes, and how long each
step of the saga took (from the order's previous change to this one, both times the orders set
recorded itself). Counted after the commit, so a rolled-back batch counts nothing."""

from datetime import datetime

from prometheus_client import Counter, Histogram

from contracts.orders import OrderStatus

CREATED = Counter("atlantic_orders_created", "Orders placed (a retry returning the same order"
                  " does not count)")
TRANSITIONS = Counter("atlantic_order_transitions", "Order status changes",
                      ["from_status", "to_status"])
SAGA_STEP_SECONDS = Histogram(
    "atlantic_saga_step_duration_seconds", "Time an order took from one saga status to the"
    " next (created_to_validated, validated_to_paid, paid_to_reserved)", ["step"],
    buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
SAGA_STEPS = {("CREATED", "VALIDATED"), ("VALIDATED", "PAID"), ("PAID", "RESERVED")}


def moved(before: OrderStatus, after: OrderStatus, since: datetime | None = None,
          at: datetime | None = None) -> None:
    """One order went from `before` (entered at `since`) to `after` (at `at`)."""
    TRANSITIONS.labels(before, after).inc()
    if (before, after) in SAGA_STEPS and since is not None and at is not None:
        SAGA_STEP_SECONDS.labels(f"{before}_to_{after}".lower()).observe(
            max((at - since).total_seconds(), 0.0))
