"""The order state machine (handlers/orders/lifecycle.py) read as a table, without servers: every
pair of statuses gets the verdict the module's docstring promises."""

import itertools

import pytest

from handlers.orders.lifecycle import CANCELLABLE, FINAL, HAPPY_PATH, NEXT, step

pytestmark = pytest.mark.fast

STATUSES = list(NEXT)
PAIRS = list(itertools.product(STATUSES, STATUSES))


@pytest.mark.parametrize("status", STATUSES)
def test_the_status_an_order_already_has_is_a_duplicate(status):
    assert step(status, status).verdict == "duplicate"


def test_exactly_the_moves_in_the_table_apply():
    applied = {(current, target) for current, target in PAIRS
               if step(current, target).verdict == "apply"}

    assert applied == {(current, target) for current, nexts in NEXT.items() for target in nexts}


@pytest.mark.parametrize("final", sorted(FINAL))
def test_a_final_order_ignores_every_other_status(final):
    verdicts = {target: step(final, target) for target in STATUSES if target != final}

    assert {v.verdict for v in verdicts.values()} == {"ignore"}
    assert all(f"already {final}" in v.reason for v in verdicts.values())


def test_a_step_ahead_on_the_happy_path_is_early_and_one_behind_is_ignored():
    for i, current in enumerate(HAPPY_PATH):
        for j, target in enumerate(HAPPY_PATH):
            verdict = step(current, target).verdict
            if j == i + 1:
                assert verdict == "apply", (current, target)
            elif j > i + 1:
                assert verdict == "early", (current, target)
            elif j < i:
                assert verdict == "ignore", (current, target)


def test_a_cancel_that_presumes_a_later_status_waits_for_it():
    """A payment decline cancels from VALIDATED: it must not overtake the validation."""
    assert step("CREATED", "CANCELLED", after="VALIDATED").verdict == "early"
    assert step("VALIDATED", "CANCELLED", after="VALIDATED").verdict == "apply"
    assert step("PAID", "CANCELLED", after="VALIDATED").verdict == "apply"


def test_no_cancel_after_shipment():
    assert step("SHIPPED", "CANCELLED").verdict == "ignore"
    assert step("DELIVERED", "CANCELLED").verdict == "ignore"
    assert CANCELLABLE == {"CREATED", "VALIDATED", "PAID", "RESERVED"}
