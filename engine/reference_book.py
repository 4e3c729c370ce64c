"""ReferenceBook: a deliberately simple order book, for checking the fast one.

``sortedcontainers.SortedDict`` of price -> plain ``list`` of orders (FIFO), totals
recomputed on demand.  Same contract as :class:`engine.order_book.OrderBook`
(``insert``, ``remove``, ``reduce``, ``match``, ``best_bid_level``, ``best_ask_level``,
``depth``, ``orders_at``, ``_check``); the contract tests run on both and compare.
Cancel is O(orders at the level); nothing here is tuned.
"""
from sortedcontainers import SortedDict

from engine.order_book import BUY

__all__ = ["ReferenceBook"]


class ReferenceBook(object):
    def __init__(self, symbol_id):
        self.symbol_id = symbol_id
        self.bids = SortedDict()   # price -> [orders]
        self.asks = SortedDict()

    def _side(self, side):
        return self.bids if side == BUY else self.asks

    def insert(self, order):
        self._side(order.side).setdefault(order.price, []).append(order)

    def remove(self, order):
        book = self._side(order.side)
        queue = book[order.price]
        queue.remove(order)
        if not queue:
            del book[order.price]

    def reduce(self, order, new_remaining):
        order.qty -= order.remaining - new_remaining
        order.remaining = new_remaining

    def match(self, side, limit_price, qty):
        fills = []
        book = self.asks if side == BUY else self.bids
        while qty > 0 and book:
            price = book.keys()[0] if side == BUY else book.keys()[-1]
            if (side == BUY and price > limit_price) or (side != BUY and price < limit_price):
                break
            order = book[price][0]
            q = min(qty, order.remaining)
            fills.append((order.order_id, price, q))
            qty -= q
            order.filled += q
            order.remaining -= q
            if order.remaining == 0:
                self.remove(order)
        return fills

    def best_bid_level(self):
        if not self.bids:
            return None
        price = self.bids.keys()[-1]
        return (price, sum(o.remaining for o in self.bids[price]))

    def best_ask_level(self):
        if not self.asks:
            return None
        price = self.asks.keys()[0]
        return (price, sum(o.remaining for o in self.asks[price]))

    def depth(self, side, n=None):
        book = self._side(side)
        prices = list(reversed(book.keys())) if side == BUY else list(book.keys())
        if n is not None:
            prices = prices[:n]
        return [(p, sum(o.remaining for o in book[p])) for p in prices]

    def orders_at(self, side, price):
        return [o.order_id for o in self._side(side).get(price, [])]

    def __len__(self):
        return sum(len(q) for q in self.bids.values()) + sum(len(q) for q in self.asks.values())

    def _check(self):
        for book in (self.bids, self.asks):
            for price, queue in book.items():
                assert queue, "empty level kept"
                for o in queue:
                    assert o.price == price and o.remaining > 0
        if self.bids and self.asks:
            assert self.bids.keys()[-1] < self.asks.keys()[0], "book crossed"
