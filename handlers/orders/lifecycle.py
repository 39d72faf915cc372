"""The one state machine of an order's status (DESIGN "The order saga", step 5).

Pure: it says what an incoming step does to an order in a given status, and the handlers obey.
Events can arrive twice or out of order (FastStream handles a fetched batch concurrently, and
redeliveries overtake), so every step is one of:
  apply     - legal now: change the status;
  duplicate - the order is already there: change nothing;
  early     - a step before it has not been applied yet: retry the event later;
  ignore    - not legal in this status (too late, or the order is final): record it, change nothing.
"""

from dataclasses import dataclass
from typing import Literal

from contracts.orders import OrderStatus

HAPPY_PATH: tuple[OrderStatus, ...] = (
    "CREATED", "VALIDATED", "PAID", "RESERVED", "SHIPPED", "DELIVERED")

NEXT: dict[OrderStatus, frozenset[OrderStatus]] = {
    "CREATED": frozenset({"VALIDATED", "CANCELLED"}),
    "VALIDATED": frozenset({"PAID", "CANCELLED"}),
    "PAID": frozenset({"RESERVED", "CANCELLED"}),
    "RESERVED": frozenset({"SHIPPED", "CANCELLED"}),
    "SHIPPED": frozenset({"DELIVERED"}),
    "DELIVERED": frozenset({"RETURNED"}),
    "CANCELLED": frozenset(),
    "RETURNED": frozenset(),
}
FINAL: frozenset[OrderStatus] = frozenset({"CANCELLED", "RETURNED"})
CANCELLABLE: frozenset[OrderStatus] = frozenset(s for s, nxt in NEXT.items() if "CANCELLED" in nxt)
# Before these the saga is still working on the order; the deadline sweep watches them.
AWAITING_SAGA: frozenset[OrderStatus] = frozenset({"CREATED", "VALIDATED", "PAID"})

Verdict = Literal["apply", "duplicate", "early", "ignore"]


@dataclass(frozen=True)
class Step:
    verdict: Verdict
    reason: str = ""


def step(current: OrderStatus, target: OrderStatus, after: OrderStatus | None = None) -> Step:
    """`after`: the status the event presumes (a payment decline presumes VALIDATED), for
    targets such as CANCELLED that are legal from several statuses."""
    if target == current:
        return Step("duplicate")
    if after and current in HAPPY_PATH and HAPPY_PATH.index(current) < HAPPY_PATH.index(after):
        return Step("early", f"this event presumes {after}; the order is still {current}")
    if target in NEXT[current]:
        return Step("apply")
    if current in FINAL:
        return Step("ignore", f"the order is already {current}")
    if target in HAPPY_PATH and HAPPY_PATH.index(target) > HAPPY_PATH.index(current):
        return Step("early", f"{target} cannot follow {current}; an earlier step is missing")
    return Step("ignore", f"{target} is not legal after {current}")
