"""StopBook: stop and take-profit orders of one symbol waiting for their trigger.

Triggers use the symbol's last trade price:

* "rising" triggers fire when ``last >= stop_price``: stop-loss / stop-limit **buys** and
  take-profit / take-profit-limit **sells**;
* "falling" triggers fire when ``last <= stop_price``: stop-loss / stop-limit **sells**
  and take-profit(-limit) **buys**.

Each direction is a ``SortedList`` of ``(stop_price, order_id)``.  ``pop_triggered``
removes and returns every order whose trigger holds, in the documented entry order:
ascending ``(stop_price, order_id)`` -- trigger price, then arrival (rule T1 in
docs/engine.md).  O(log n) add/remove, O(k log n) to pop k triggered orders.
"""
from sortedcontainers import SortedList

__all__ = ["StopBook", "rises"]

_BUY = 1
_STOP_TYPES = (3, 4)      # STOP_LOSS, STOP_LIMIT


def rises(order):
    """True if ``order`` triggers on a rising price (``last >= stop_price``)."""
    return (order.side == _BUY) == (order.order_type in _STOP_TYPES)


class StopBook(object):
    __slots__ = ("symbol_id", "rising", "falling", "orders")

    def __init__(self, symbol_id):
        self.symbol_id = symbol_id
        self.rising = SortedList()
        self.falling = SortedList()
        self.orders = {}

    def add(self, order):
        (self.rising if rises(order) else self.falling).add((order.stop_price, order.order_id))
        self.orders[order.order_id] = order

    def remove(self, order):
        (self.rising if rises(order) else self.falling).remove(
            (order.stop_price, order.order_id))
        del self.orders[order.order_id]

    def would_trigger(self, order, last_price):
        """True if ``order`` would trigger at ``last_price`` (None: no trade yet)."""
        if last_price is None:
            return False
        if rises(order):
            return last_price >= order.stop_price
        return last_price <= order.stop_price

    def pop_triggered(self, last_price):
        """Remove and return the orders triggered at ``last_price``, in entry order."""
        keys = []
        rising = self.rising
        while rising and rising[0][0] <= last_price:
            keys.append(rising.pop(0))
        falling = self.falling
        while falling and falling[-1][0] >= last_price:
            keys.append(falling.pop())
        if not keys:
            return []
        keys.sort()
        orders = self.orders
        return [orders.pop(oid) for _, oid in keys]

    def __len__(self):
        return len(self.orders)

    def iter_orders(self):
        """Every waiting order in ascending (stop_price, order_id)."""
        keys = sorted(list(self.rising) + list(self.falling))
        return [self.orders[oid] for _, oid in keys]

    def _check(self):
        keys = list(self.rising) + list(self.falling)
        assert len(keys) == len(self.orders)
        for stop_price, oid in self.rising:
            o = self.orders[oid]
            assert rises(o) and o.stop_price == stop_price
        for stop_price, oid in self.falling:
            o = self.orders[oid]
            assert not rises(o) and o.stop_price == stop_price
