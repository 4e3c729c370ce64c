"""Book contract, run on the fast OrderBook and the simple ReferenceBook, and a
hypothesis comparison of the two on random operation sequences."""
import pytest
from hypothesis import given, settings, strategies as st

from engine.order_book import BUY, SELL, Order, OrderBook
from engine.reference_book import ReferenceBook

pytestmark = pytest.mark.pypy

BOOKS = [OrderBook, ReferenceBook]


@pytest.mark.parametrize("Book", BOOKS)
def test_price_time_priority(Book):
    book = Book(1)
    book.insert(Order.new(1, SELL, 101, 2))
    book.insert(Order.new(2, SELL, 100, 3))
    book.insert(Order.new(3, SELL, 100, 4))
    assert book.best_ask_level() == (100, 7)
    assert book.orders_at(SELL, 100) == [2, 3]
    fills = book.match(BUY, 101, 8)
    assert fills == [(2, 100, 3), (3, 100, 4), (1, 101, 1)]
    assert book.best_ask_level() == (101, 1)
    book._check()


@pytest.mark.parametrize("Book", BOOKS)
def test_limit_not_traded_through(Book):
    book = Book(1)
    book.insert(Order.new(1, BUY, 99, 2))
    book.insert(Order.new(2, BUY, 98, 2))
    assert book.match(SELL, 99, 5) == [(1, 99, 2)]
    assert book.best_bid_level() == (98, 2)
    assert book.match(SELL, 99, 5) == []
    book._check()


@pytest.mark.parametrize("Book", BOOKS)
def test_remove_and_reduce(Book):
    book = Book(1)
    orders = [Order.new(i, BUY, 100 - i % 3, 5) for i in range(1, 10)]
    for o in orders:
        book.insert(o)
    book.remove(orders[0])
    book.reduce(orders[3], 1)
    book._check()
    assert book.depth(BUY) == [(100, 15), (99, 6), (98, 15)]
    assert book.orders_at(BUY, 99) == [4, 7] and book.orders_at(BUY, 100) == [3, 6, 9]
    assert book.best_bid_level() == (100, 15)
    assert book.depth(SELL) == [] and book.best_ask_level() is None


ops = st.lists(st.tuples(st.sampled_from(["add", "add", "add", "cancel", "reduce", "match"]),
                         st.sampled_from([BUY, SELL]), st.integers(90, 110),
                         st.integers(1, 20), st.integers(0, 10 ** 6)), max_size=120)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_fast_book_equals_reference_book(operations):
    fast, ref = OrderBook(1), ReferenceBook(1)
    live_fast, live_ref = {}, {}
    oid = 0
    for op, side, price, qty, pick in operations:
        if op == "add":
            oid += 1
            # keep the book uncrossed like the matcher does: match first, rest the remainder
            a, b = Order.new(oid, side, price, qty), Order.new(oid, side, price, qty)
            fa, fb = fast.match(side, price, qty), ref.match(side, price, qty)
            assert fa == fb
            for (mid, _, q) in fa:
                if live_fast[mid].remaining == 0:
                    del live_fast[mid], live_ref[mid]
            a.remaining = b.remaining = qty - sum(q for _, _, q in fa)
            a.qty = b.qty = a.remaining
            if a.remaining:
                fast.insert(a)
                ref.insert(b)
                live_fast[oid], live_ref[oid] = a, b
        elif op in ("cancel", "reduce") and live_fast:
            key = sorted(live_fast)[pick % len(live_fast)]
            if op == "cancel" or live_fast[key].remaining == 1:
                fast.remove(live_fast.pop(key))
                ref.remove(live_ref.pop(key))
            else:
                new = 1 + pick % (live_fast[key].remaining - 1)
                fast.reduce(live_fast[key], new)
                ref.reduce(live_ref[key], new)
        elif op == "match":
            limit = price
            fa, fb = fast.match(side, limit, qty), ref.match(side, limit, qty)
            assert fa == fb
            for (mid, _, q) in fa:
                if live_fast[mid].remaining == 0:
                    del live_fast[mid], live_ref[mid]
        fast._check()
        ref._check()
        for s in (BUY, SELL):
            assert fast.depth(s) == ref.depth(s)
        assert fast.best_bid_level() == ref.best_bid_level()
        assert fast.best_ask_level() == ref.best_ask_level()
