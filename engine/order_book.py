"""OrderBook: one symbol's resting limit orders, price-time priority.

Structure (per side):

* ``bid_levels`` / ``ask_levels``: dict ``price -> Level`` (O(1) lookup),
* ``bid_prices`` / ``ask_prices``: ``sortedcontainers.SortedList`` of the level prices
  (bids stored negated so index 0 is the best level on both sides),
* ``best_bid`` / ``best_ask``: cached best prices; ``NO_BID`` (0) and ``NO_ASK``
  (2**62) when a side is empty, so "crosses" is a plain integer comparison,
* each :class:`Level` is a doubly linked FIFO of :class:`Order` objects (``head`` is
  the oldest) with the level's total remaining quantity (L2) and order count.

Cancel is O(1) given the :class:`Order` (unlink) plus O(log L) when its level empties.
The matcher walks levels directly for speed; the public methods below are the book
contract that :class:`engine.reference_book.ReferenceBook` also implements and the
contract tests exercise on both.

Example::

    >>> book = OrderBook(1)
    >>> book.insert(Order.new(1, BUY, 100, 5))
    >>> book.best_bid_level()
    (100, 5)
"""
from sortedcontainers import SortedList

__all__ = ["Order", "Level", "OrderBook", "BUY", "SELL", "NO_BID", "NO_ASK"]

BUY = 1
SELL = 2
NO_BID = 0
NO_ASK = 1 << 62


class Order(object):
    """A live order (resting, being matched, or waiting as a stop).

    Quantities in lots, prices in ticks.  ``qty`` is the total size, ``filled`` the
    cumulative fill, ``remaining = qty - filled`` while open.  ``hold`` is what the
    order has reserved in the asset it spends (quote for buys, base for sells);
    ``fee_num`` the running sum of ``notional * rate_bps`` of its fills and
    ``fee_paid = ceil(fee_num / 10000)`` the fees charged so far (see docs/engine.md).
    """

    __slots__ = ("order_id", "account_id", "symbol_id", "side", "order_type", "tif", "flags",
                 "stp", "price", "qty", "remaining", "filled", "client_order_id", "producer_id",
                 "expire_ns", "stop_price", "funds", "hold", "fee_num", "fee_paid",
                 "prev", "next", "level")

    def __init__(self, order_id, account_id, symbol_id, side, order_type, tif, flags, stp,
                 price, qty, client_order_id, producer_id, expire_ns, stop_price, funds):
        self.order_id = order_id
        self.account_id = account_id
        self.symbol_id = symbol_id
        self.side = side
        self.order_type = order_type
        self.tif = tif
        self.flags = flags
        self.stp = stp
        self.price = price
        self.qty = qty
        self.remaining = qty
        self.filled = 0
        self.client_order_id = client_order_id
        self.producer_id = producer_id
        self.expire_ns = expire_ns
        self.stop_price = stop_price
        self.funds = funds
        self.hold = 0
        self.fee_num = 0
        self.fee_paid = 0
        self.prev = None
        self.next = None
        self.level = None

    @classmethod
    def new(cls, order_id, side, price, qty, account_id=1, symbol_id=1):
        """A plain GTC limit order (for book-level use and tests)."""
        return cls(order_id, account_id, symbol_id, side, 1, 1, 0, 0, price, qty, 0, 0, 0, 0, 0)

    def __repr__(self):
        return "Order(id=%d, acct=%d, sym=%d, side=%d, type=%d, price=%d, qty=%d, rem=%d)" % (
            self.order_id, self.account_id, self.symbol_id, self.side, self.order_type,
            self.price, self.qty, self.remaining)


class Level(object):
    """One price level: FIFO linked list of orders, total remaining qty, count."""

    __slots__ = ("price", "total", "count", "head", "tail")

    def __init__(self, price):
        self.price = price
        self.total = 0
        self.count = 0
        self.head = None
        self.tail = None

    def order_ids(self):
        out = []
        o = self.head
        while o is not None:
            out.append(o.order_id)
            o = o.next
        return out


class OrderBook(object):
    """Per-symbol book of resting limit orders (see module docstring)."""

    __slots__ = ("symbol_id", "bid_levels", "ask_levels", "bid_prices", "ask_prices",
                 "best_bid", "best_ask")

    def __init__(self, symbol_id):
        self.symbol_id = symbol_id
        self.bid_levels = {}
        self.ask_levels = {}
        self.bid_prices = SortedList()
        self.ask_prices = SortedList()
        self.best_bid = NO_BID
        self.best_ask = NO_ASK

    # -- mutation -----------------------------------------------------------
    def insert(self, order):
        """Rest ``order`` at the back of its price level.  O(1), O(log L) for a new level."""
        price = order.price
        if order.side == BUY:
            level = self.bid_levels.get(price)
            if level is None:
                level = self.bid_levels[price] = Level(price)
                self.bid_prices.add(-price)
                if price > self.best_bid:
                    self.best_bid = price
        else:
            level = self.ask_levels.get(price)
            if level is None:
                level = self.ask_levels[price] = Level(price)
                self.ask_prices.add(price)
                if price < self.best_ask:
                    self.best_ask = price
        tail = level.tail
        order.prev = tail
        order.next = None
        if tail is None:
            level.head = order
        else:
            tail.next = order
        level.tail = order
        level.total += order.remaining
        level.count += 1
        order.level = level

    def remove(self, order):
        """Unlink ``order`` (its ``remaining`` still counted in the level).  O(1) / O(log L)."""
        level = order.level
        prev = order.prev
        nxt = order.next
        if prev is None:
            level.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            level.tail = prev
        else:
            nxt.prev = prev
        order.prev = order.next = order.level = None
        level.total -= order.remaining
        level.count -= 1
        if level.count == 0:
            self._drop_level(order.side, level.price)

    def _drop_level(self, side, price):
        if side == BUY:
            del self.bid_levels[price]
            prices = self.bid_prices
            prices.remove(-price)
            if price == self.best_bid:
                self.best_bid = -prices[0] if prices else NO_BID
        else:
            del self.ask_levels[price]
            prices = self.ask_prices
            prices.remove(price)
            if price == self.best_ask:
                self.best_ask = prices[0] if prices else NO_ASK

    def reduce(self, order, new_remaining):
        """Lower ``order.remaining`` (and ``qty`` by as much) in place, keeping priority.  O(1)."""
        cut = order.remaining - new_remaining
        order.level.total -= cut
        order.qty -= cut
        order.remaining = new_remaining

    def match(self, side, limit_price, qty):
        """Take up to ``qty`` from the side opposite ``side`` at prices no worse than
        ``limit_price``; returns ``[(maker_order_id, price, qty)]`` in execution order and
        removes/reduces the makers.  No self-trade or balance logic (the matcher's job).
        O(fills + levels emptied x log L).
        """
        fills = []
        while qty > 0:
            if side == BUY:
                price = self.best_ask
                if price > limit_price or price == NO_ASK:
                    break
                level = self.ask_levels[price]
            else:
                price = self.best_bid
                if price < limit_price or price == NO_BID:
                    break
                level = self.bid_levels[price]
            order = level.head
            q = order.remaining if order.remaining < qty else qty
            fills.append((order.order_id, price, q))
            qty -= q
            order.filled += q
            if q == order.remaining:
                self.remove(order)
                order.remaining = 0
            else:
                order.remaining -= q
                level.total -= q
        return fills

    # -- queries -------------------------------------------------------------
    def best_bid_level(self):
        """``(price, total)`` of the best bid or None.  O(1)."""
        if self.best_bid == NO_BID:
            return None
        return (self.best_bid, self.bid_levels[self.best_bid].total)

    def best_ask_level(self):
        """``(price, total)`` of the best ask or None.  O(1)."""
        if self.best_ask == NO_ASK:
            return None
        return (self.best_ask, self.ask_levels[self.best_ask].total)

    def depth(self, side, n=None):
        """Best-first ``[(price, total)]`` of ``side`` (at most ``n`` levels).  O(n)."""
        if side == BUY:
            prices = [-p for p in self.bid_prices]
            levels = self.bid_levels
        else:
            prices = list(self.ask_prices)
            levels = self.ask_levels
        if n is not None:
            prices = prices[:n]
        return [(p, levels[p].total) for p in prices]

    def orders_at(self, side, price):
        """Order ids at ``price`` in priority order (empty list if no level)."""
        level = (self.bid_levels if side == BUY else self.ask_levels).get(price)
        return level.order_ids() if level is not None else []

    def iter_orders(self):
        """Every resting order: bids best-first then asks best-first, FIFO within a level."""
        for side in (BUY, SELL):
            levels = self.bid_levels if side == BUY else self.ask_levels
            for price, _ in self.depth(side):
                o = levels[price].head
                while o is not None:
                    yield o
                    o = o.next

    def __len__(self):
        return sum(lv.count for lv in self.bid_levels.values()) + \
            sum(lv.count for lv in self.ask_levels.values())

    # -- invariants ------------------------------------------------------------
    def _check(self):
        """Assert every structural invariant (links, totals, sorted prices, not crossed)."""
        for side, levels, prices, sign in ((BUY, self.bid_levels, self.bid_prices, -1),
                                           (SELL, self.ask_levels, self.ask_prices, 1)):
            assert sorted(levels) == sorted(sign * p for p in prices), "price index mismatch"
            for price, level in levels.items():
                assert level.price == price
                assert level.count > 0, "empty level kept"
                total = 0
                count = 0
                prev = None
                o = level.head
                while o is not None:
                    assert o.prev is prev, "broken back link"
                    assert o.level is level and o.side == side and o.price == price
                    assert o.remaining > 0, "resting order with nothing left"
                    assert o.filled + o.remaining == o.qty, "qty accounting"
                    total += o.remaining
                    count += 1
                    prev = o
                    o = o.next
                assert level.tail is prev
                assert total == level.total, "level total %d != %d" % (level.total, total)
                assert count == level.count
        assert self.best_bid == (max(self.bid_levels) if self.bid_levels else NO_BID)
        assert self.best_ask == (min(self.ask_levels) if self.ask_levels else NO_ASK)
        if self.bid_levels and self.ask_levels:
            assert self.best_bid < self.best_ask, "book crossed"
