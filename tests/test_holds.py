"""The hold state machine (handlers/catalog/holds.py) without servers: a StockBook over rows made
here, every move's verdict and what it does to the stock figures."""

import pytest

from handlers.catalog.holds import MOVES, StockBook
from storage.catalog import HoldRow, StockRow

pytestmark = pytest.mark.fast

STATES = ["rejected", "held", "reserved", "released", "expired", "failed", "shipped", "returned",
          "cancelled"]


def figures(book: StockBook, product_id: str = "p") -> tuple[int, int, int]:
    row = book.stock[product_id]
    return row.on_hand, row.held, row.reserved


def a_book(state: str | None = None, *, on_hand: int = 10, held: int = 0, reserved: int = 0,
           quantity: int = 2, expired: bool = False, active: bool = True) -> StockBook:
    holds = {"o": HoldRow(state, expired, {"p": quantity})} if state else {}
    return StockBook(holds, {"p": StockRow(active, on_hand, held, reserved, threshold=0)})


def test_a_hold_takes_available_stock_and_a_second_created_event_changes_nothing():
    book = a_book()

    verdict = book.place_hold("o", [("p", 1), ("p", 2)], 900)
    again = book.place_hold("o", [("p", 3)], 900)

    assert verdict.placed and verdict.change.lines == [("p", 3)]
    assert again is None
    assert figures(book) == (10, 3, 0)
    assert book.holds["o"].state == "held"


@pytest.mark.parametrize(("stock", "error"), [
    ({}, "product p does not exist"),
    ({"p": StockRow(False, 10, 0, 0, 0)}, "product p is not for sale"),
    ({"p": StockRow(True, 5, 2, 2, 0)}, "product p: 2 requested, 1 available"),
])
def test_an_order_the_stock_cannot_serve_is_rejected_and_takes_nothing(stock, error):
    book = StockBook({}, stock)

    verdict = book.place_hold("o", [("p", 2)], 900)

    assert verdict.errors == [error]
    assert book.holds["o"].state == "rejected"
    assert not book.touched


def test_payment_turns_a_hold_into_a_reservation():
    book = a_book("held", held=2)

    transition = book.reserve("o")

    assert (transition.before, transition.after) == ("held", "reserved")
    assert figures(book) == (10, 0, 2)


def test_a_paid_expired_hold_is_reserved_while_the_stock_lasts_and_fails_when_it_is_gone():
    in_stock, sold_out = a_book("expired"), a_book("expired", on_hand=1)

    assert in_stock.reserve("o").after == "reserved"
    assert figures(in_stock) == (10, 0, 2)
    assert sold_out.reserve("o").after == "failed"
    assert figures(sold_out) == (1, 0, 0)


def test_an_expired_hold_not_yet_swept_gives_its_stock_back_before_it_is_reserved():
    book = a_book("held", held=2, expired=True)

    assert book.reserve("o").after == "reserved"
    assert figures(book) == (10, 0, 2)


@pytest.mark.parametrize(("event", "state", "before", "after", "moved"), [
    ("payment_failed", "held", (10, 2, 0), "released", (10, 0, 0)),
    ("cancel", "held", (10, 2, 0), "released", (10, 0, 0)),
    ("cancel", "reserved", (10, 0, 2), "released", (10, 0, 0)),
    ("cancel", "expired", (10, 0, 0), "released", (10, 0, 0)),
    ("cancel", "failed", (10, 0, 0), "released", (10, 0, 0)),
    ("ship", "reserved", (10, 0, 2), "shipped", (8, 0, 0)),
    ("return", "shipped", (8, 0, 0), "returned", (10, 0, 0)),
])
def test_each_move_in_the_table_changes_state_and_stock(event, state, before, after, moved):
    on_hand, held, reserved = before
    book = a_book(state, on_hand=on_hand, held=held, reserved=reserved)

    transition = book.move("o", event)

    assert (transition.before, transition.after, transition.applied) == (state, after, True)
    assert figures(book) == moved


@pytest.mark.parametrize("event", sorted(MOVES))
def test_a_move_not_in_the_table_for_the_state_changes_nothing(event):
    for state in (s for s in STATES if s not in MOVES[event]):
        book = a_book(state, held=2, reserved=2)

        transition = book.move("o", event)

        assert (transition.before, transition.after) == (state, state)
        assert figures(book) == (10, 2, 2) and not book.touched


def test_a_cancel_before_its_order_is_created_keeps_the_late_order_from_holding_stock():
    book = a_book()

    assert book.move("o", "cancel").after == "cancelled"
    assert book.place_hold("o", [("p", 1)], 900) is None
    assert figures(book) == (10, 0, 0)


def test_moves_of_an_unknown_order_change_nothing():
    book = a_book()

    assert [book.move("o", e).applied for e in ("payment_failed", "ship", "return")] == [False] * 3
    assert not book.reserve("o").applied
    assert "o" not in book.holds
