"""The publisher's read model: books, tickers, trades and order states from events only.

Theory of operation (numbered rules; the code refers to them):

1. The model is a pure fold over the output event stream.  It never asks the
   matcher anything and never guesses: whatever it shows was in an event.
2. ``applied_seq`` is the highest input sequence whose events have all been
   applied (an event with ``EventFlags.LAST`` closes its input sequence; an
   event of a higher sequence closes every lower one).  Every view returns it
   so a reader can tell which input it reflects (read-your-writes).
3. L2 books are price -> total quantity per side, set from BOOK_DELTA events
   (``qty`` is the new level total; 0 removes the level).  A BOOK_DELTA is the
   only thing that changes a book.
4. Every market-data stream of a symbol has its own message sequence
   (``level2_seq``, ``trades_seq``, ``ticker_seq`` on the SymbolView), which
   the WebSocket hub increments by exactly one per message it publishes, so a
   client can detect a gap.  ``apply`` returns one ``Changes`` per call: the
   per-symbol changes of that batch, book levels coalesced to their final value.
5. Orders: ACCEPTED (of a NEW_ORDER) creates the order state; FILL, AMENDED,
   TRIGGERED, CANCELLED and EXPIRED update it.  A reject creates no order: a
   REJECTED NEW_ORDER is not in ``orders`` (so no order list shows it and it
   pushes no done order out); it is kept apart in ``rejections`` (the newest
   ``rejections_keep``, and only for this model's symbols) so that
   ``order(id)`` can still say why.  Done orders are kept up to
   ``done_orders_keep`` (oldest forgotten first); open orders are always kept.
6. 24h statistics use stream time (the events' ``timestamp_ns``), never the
   wall clock: the window is the 24 hours before the newest trade's time.
8. Balances: a BALANCE event (deposit/withdraw) gives an asset's available
   and held amounts; a FILL moves the total (buyer: +qty*base_per_lot base,
   -(amount + fee) quote; seller the opposite, +(amount - fee) quote).  Held
   is the sum of the open orders' holds, each the last one an event gave it
   (``aux`` of its ACCEPTED, FILLs, AMENDEDs and of the BOOK_DELTA that names it
   when it rests: docs/records.md), so available = total - held, exactly as the
   matcher has it; the model never re-derives the matcher's hold rule M4.
7. After a restart the model is rebuilt (publisher/rebuild.py): from the
   journal's first record, or ``seed_from_matcher`` loads the state of a
   restored matcher snapshot, then the events of the later journaled commands
   (re-derived by an in-process matcher) and then later ring events are applied.
"""
from collections import OrderedDict, deque

from sortedcontainers import SortedDict

from ringbuf.records import (CommandKind, EventFlags, EventKind, OrderType, Reason, Side,
                             TimeInForce)

__all__ = ["ReadModel", "OrderState", "Trade", "Changes", "SymbolView"]

DAY_NS = 24 * 3600 * 10 ** 9
_LAST = int(EventFlags.LAST)
_STOP_TYPES = frozenset({int(OrderType.STOP_LOSS), int(OrderType.STOP_LIMIT),
                         int(OrderType.TAKE_PROFIT), int(OrderType.TAKE_PROFIT_LIMIT)})
_K_ACCEPTED = int(EventKind.ACCEPTED)
_K_REJECTED = int(EventKind.REJECTED)
_K_FILL = int(EventKind.FILL)
_K_CANCELLED = int(EventKind.CANCELLED)
_K_EXPIRED = int(EventKind.EXPIRED)
_K_TRIGGERED = int(EventKind.TRIGGERED)
_K_TRADE = int(EventKind.TRADE)
_K_BOOK_DELTA = int(EventKind.BOOK_DELTA)
_K_AMENDED = int(EventKind.AMENDED)
_K_BALANCE = int(EventKind.BALANCE)
_K_SYMBOL_STATUS = int(EventKind.SYMBOL_STATUS)
_C_NEW = int(CommandKind.NEW_ORDER)
_BUY = int(Side.BUY)
_STOP = int(EventFlags.STOP)
_USER_KINDS = frozenset({_K_ACCEPTED, _K_REJECTED, _K_FILL, _K_CANCELLED, _K_EXPIRED,
                         _K_TRIGGERED, _K_AMENDED, _K_BALANCE})


class Trade(object):
    """One match on the tape (ints: ticks, lots, ns)."""
    __slots__ = ("trade_id", "price", "qty", "taker_side", "timestamp_ns", "seq",
                 "maker_order_id", "taker_order_id")

    def __init__(self, trade_id, price, qty, taker_side, timestamp_ns, seq,
                 maker_order_id, taker_order_id):
        self.trade_id = trade_id
        self.price = price
        self.qty = qty
        self.taker_side = taker_side
        self.timestamp_ns = timestamp_ns
        self.seq = seq
        self.maker_order_id = maker_order_id
        self.taker_order_id = taker_order_id


class OrderState(object):
    """What the event stream says about one order.

    ``status``: ``"pending"`` (stop order waiting for its trigger), ``"open"``,
    ``"done"`` or ``"rejected"``; ``done_reason``: ``"filled"``, ``"canceled"``,
    ``"expired"`` or the rejecting ``Reason`` name.
    """
    __slots__ = ("order_id", "account_id", "symbol_id", "side", "order_type", "tif", "flags",
                 "price", "qty", "stop_price", "funds", "filled", "remaining",
                 "executed_value", "fees", "status", "done_reason", "reason",
                 "client_order_id", "created_ns", "done_ns", "last_seq", "fills", "hold")

    def __init__(self, event):
        self.order_id = event.order_id or event.seq
        self.account_id = event.account_id
        self.symbol_id = event.symbol_id
        self.side = event.side
        self.order_type = event.order_type
        self.tif = event.tif
        self.flags = event.flags
        self.price = event.price
        self.qty = event.qty
        self.stop_price = event.trade_id if event.flags & _STOP else 0   # stop's ACCEPTED
        self.funds = event.amount
        self.filled = event.filled
        self.remaining = event.remaining
        self.executed_value = 0
        self.fees = 0
        self.status = "open"
        self.done_reason = None
        self.reason = int(event.reason)
        self.client_order_id = event.client_order_id
        self.created_ns = event.timestamp_ns
        self.done_ns = 0
        self.last_seq = event.seq
        self.fills = 0
        self.hold = event.aux     # ACCEPTED: the hold taken (rule 8: then FILL, AMENDED, rest)

    @property
    def is_open(self):
        return self.status in ("open", "pending")


class SymbolView(object):
    """Per-symbol state: the L2 book, last trade, recent trades, 24h window."""

    def __init__(self, symbol_id, trades_keep):
        self.symbol_id = symbol_id
        self.bids = SortedDict()          # price -> qty; best = last key
        self.asks = SortedDict()          # price -> qty; best = first key
        self.last_price = None
        self.last_qty = None
        self.last_trade_id = 0
        self.trades = deque(maxlen=trades_keep)
        self.halted = False
        self.level2_seq = 0               # rule 4
        self.trades_seq = 0
        self.ticker_seq = 0
        self.book_seq = 0                 # input seq of the last BOOK_DELTA
        # rule 6: 24h window of (ts, price, qty), sliding max/min deques, volume
        self.window = deque()
        self.win_max = deque()
        self.win_min = deque()
        self.volume = 0
        self.quote_volume = 0

    def best_bid(self):
        """(price, qty) of the best bid or None.  O(1)."""
        if not self.bids:
            return None
        return self.bids.peekitem(-1)

    def best_ask(self):
        """(price, qty) of the best ask or None.  O(1)."""
        if not self.asks:
            return None
        return self.asks.peekitem(0)

    def depth(self, levels=None):
        """(bids best first, asks best first) as lists of (price, qty).  O(levels)."""
        bids = self.bids.items()
        asks = self.asks.items()
        if levels is None:
            return list(reversed(bids)), list(asks)
        nb = len(bids)
        return ([bids[i] for i in range(nb - 1, max(nb - 1 - levels, -1), -1)],
                [asks[i] for i in range(min(levels, len(asks)))])

    def _add_trade(self, trade):
        self.trades.append(trade)
        self.last_price = trade.price
        self.last_qty = trade.qty
        self.last_trade_id = trade.trade_id
        ts, price = trade.timestamp_ns, trade.price
        self.window.append((ts, price, trade.qty))
        self.volume += trade.qty
        self.quote_volume += price * trade.qty
        while self.win_max and self.win_max[-1][1] <= price:
            self.win_max.pop()
        self.win_max.append((ts, price))
        while self.win_min and self.win_min[-1][1] >= price:
            self.win_min.pop()
        self.win_min.append((ts, price))
        self._evict(ts - DAY_NS)

    def _evict(self, cutoff):
        window = self.window
        while window and window[0][0] <= cutoff:
            _ts, price, qty = window.popleft()
            self.volume -= qty
            self.quote_volume -= price * qty
        while self.win_max and self.win_max[0][0] <= cutoff:
            self.win_max.popleft()
        while self.win_min and self.win_min[0][0] <= cutoff:
            self.win_min.popleft()

    def stats(self):
        """24h (stream time) open/high/low/last/volume as ints (None when no trade)."""
        if not self.window:
            return {"open": None, "high": None, "low": None, "last": self.last_price,
                    "volume": 0, "quote_volume": 0}
        return {"open": self.window[0][1], "high": self.win_max[0][1],
                "low": self.win_min[0][1], "last": self.last_price,
                "volume": self.volume, "quote_volume": self.quote_volume}


class Changes(object):
    """What one ``ReadModel.apply`` call changed, ready for the WebSocket fan-out (rule 4).

    ``level2``: symbol -> {(side, price): qty} coalesced to final values;
    ``trades``: symbol -> [Trade, ...];
    ``ticker``: set of symbols whose best bid/ask or last trade changed;
    ``user``: account -> [(event, OrderState or None), ...] execution reports;
    ``closed_seqs``: input sequences whose LAST event was in this batch.
    """
    __slots__ = ("level2", "trades", "ticker", "user", "closed_seqs", "status", "ts_ns")

    def merge(self, later):
        """Fold a later batch's changes into this one (the hub's conflation)."""
        for sym, levels in later.level2.items():
            mine = self.level2.get(sym)
            if mine is None:
                self.level2[sym] = levels
            else:
                mine.update(levels)
        for sym, tlist in later.trades.items():
            self.trades.setdefault(sym, []).extend(tlist)
        self.ticker.update(later.ticker)
        for account, reports in later.user.items():
            self.user.setdefault(account, []).extend(reports)
        self.closed_seqs.extend(later.closed_seqs)
        self.status.extend(later.status)
        self.ts_ns = max(self.ts_ns, later.ts_ns)
        return self

    def __init__(self):
        self.ts_ns = 0              # newest stream time in the batch
        self.level2 = {}
        self.trades = {}
        self.ticker = set()
        self.user = {}
        self.closed_seqs = []
        self.status = []


class ReadModel(object):
    """Books, tickers, recent trades, 24h stats, order states and balances.

    >>> model = ReadModel([1, 2])
    >>> model.applied_seq
    0
    """

    def __init__(self, symbol_ids, trades_keep=1000, done_orders_keep=200000, specs=None,
                 rejections_keep=10000):
        self.symbols = {int(s): SymbolView(int(s), trades_keep) for s in symbol_ids}
        # symbol_id -> SymbolSpec-like (base_asset, quote_asset, base_per_lot,
        # quote_per_tick_lot, maker_fee_bps, taker_fee_bps): balances (rule 8)
        self.specs = dict(specs or {})
        self.totals = {}                        # (account, asset) -> available + held
        self.orders = {}                        # order_id -> OrderState (open + recent done)
        self.done_order_ids = OrderedDict()     # done order ids, oldest first (rule 5)
        self.done_orders_keep = done_orders_keep
        self.rejections = OrderedDict()         # seq -> rejected OrderState (rule 5)
        self.rejections_keep = rejections_keep
        self.open_by_account = {}               # account -> {order_id: OrderState}
        self.client_ids = {}                    # (account, client_order_id) -> order_id
        self.balances = {}                      # (account, asset) -> [available, held, seq]
        self.applied_seq = 0                    # rule 2
        self.events_applied = 0
        self._open_seq = 0                      # input seq currently being applied
        self.last_timestamp_ns = 0

    # ------------------------------------------------------------------ apply
    def apply(self, events):
        """Apply a batch of events in stream order; return the ``Changes``.  O(len(events) log n)."""
        changes = Changes()
        l2 = {}
        trades = {}
        symbols = self.symbols
        for e in events:
            kind = e.kind
            seq = e.seq
            if seq != self._open_seq:
                if seq > self._open_seq and self._open_seq > self.applied_seq:
                    self.applied_seq = self._open_seq          # rule 2
                self._open_seq = seq
            if kind == _K_BOOK_DELTA:
                view = symbols.get(e.symbol_id)
                if view is not None:
                    side = view.bids if e.side == _BUY else view.asks
                    if e.qty:
                        side[e.price] = e.qty
                    else:
                        side.pop(e.price, None)
                    view.book_seq = seq
                    l2.setdefault(e.symbol_id, {})[(e.side, e.price)] = e.qty
                if e.order_id:                 # an order rests: its hold (rule 8)
                    order = self.orders.get(e.order_id)
                    if order is not None:
                        order.hold = e.aux
            elif kind == _K_TRADE:
                view = symbols.get(e.symbol_id)
                if view is not None:
                    # TRADE: side and order_id are the taker's (docs/records.md)
                    trade = Trade(e.trade_id, e.price, e.qty, e.side, e.timestamp_ns, seq,
                                  e.counter_order_id, e.order_id)
                    view._add_trade(trade)
                    trades.setdefault(e.symbol_id, []).append(trade)
            elif kind in _USER_KINDS:
                order = self._apply_order_event(e)
                changes.user.setdefault(e.account_id, []).append((e, order))
            elif kind == _K_SYMBOL_STATUS:
                view = symbols.get(e.symbol_id)
                if view is not None:
                    view.halted = e.reason == int(Reason.SYMBOL_HALTED)
                    changes.status.append(e)
            if e.timestamp_ns > self.last_timestamp_ns:
                self.last_timestamp_ns = e.timestamp_ns
            if e.flags & _LAST:
                if seq > self.applied_seq:
                    self.applied_seq = seq
                changes.closed_seqs.append(seq)
        self.events_applied += len(events)
        changes.ts_ns = self.last_timestamp_ns
        changes.level2 = l2
        changes.trades = trades
        changes.ticker.update(l2)
        changes.ticker.update(trades)
        return changes

    def _apply_order_event(self, e):
        kind = e.kind
        orders = self.orders
        if kind == _K_BALANCE:
            # BALANCE: symbol_id is the asset, amount the available balance after,
            # aux the held amount after (engine/matcher.py _transfer)
            self.balances[(e.account_id, e.symbol_id)] = [e.amount, e.aux, e.seq]
            self.totals[(e.account_id, e.symbol_id)] = e.amount + e.aux
            return None
        if kind == _K_ACCEPTED:
            if e.command_kind != _C_NEW:
                return orders.get(e.order_id)
            order = OrderState(e)
            if order.order_type in _STOP_TYPES:
                order.status = "pending"
            orders[order.order_id] = order
            self.open_by_account.setdefault(order.account_id, {})[order.order_id] = order
            if order.client_order_id:
                self.client_ids[(order.account_id, order.client_order_id)] = order.order_id
            return order
        if kind == _K_REJECTED:
            if e.command_kind != _C_NEW:
                return orders.get(e.order_id) if e.order_id != e.seq else None
            order = OrderState(e)
            order.order_id = e.seq
            order.status = "rejected"
            order.done_reason = _reason_name(e.reason)
            order.remaining = 0
            if e.symbol_id in self.symbols:                    # rule 5: not an order
                rejections = self.rejections
                rejections[order.order_id] = order
                if len(rejections) > self.rejections_keep:
                    rejections.popitem(last=False)
            return order
        order = orders.get(e.order_id)
        if order is None:
            return None
        order.last_seq = e.seq
        if kind == _K_FILL:
            spec = self.specs.get(e.symbol_id)
            if spec is not None:                               # rule 8
                totals = self.totals
                base = (e.account_id, spec.base_asset)
                quote = (e.account_id, spec.quote_asset)
                b = e.qty * spec.base_per_lot
                if e.side == _BUY:
                    totals[base] = totals.get(base, 0) + b
                    totals[quote] = totals.get(quote, 0) - e.amount - e.fee
                else:
                    totals[base] = totals.get(base, 0) - b
                    totals[quote] = totals.get(quote, 0) + e.amount - e.fee
            order.filled = e.filled
            order.remaining = e.remaining
            order.hold = e.aux                                 # rule 8
            order.executed_value += e.amount
            order.fees += e.fee
            order.fills += 1
            if order.status == "pending":
                order.status = "open"
            if e.remaining == 0:
                order.status = "done"
                order.done_reason = "filled"
                order.done_ns = e.timestamp_ns
                self._close(order)
        elif kind == _K_CANCELLED or kind == _K_EXPIRED:
            order.remaining = 0
            order.status = "done"
            order.done_reason = "expired" if kind == _K_EXPIRED else "canceled"
            order.reason = int(e.reason)
            order.done_ns = e.timestamp_ns
            self._close(order)
        elif kind == _K_AMENDED:
            order.hold = e.aux                                 # rule 8
            if e.price:
                order.price = e.price
            order.qty = e.qty
            order.remaining = e.remaining
        elif kind == _K_TRIGGERED:
            order.status = "open"
            if e.aux:
                order.stop_price = e.aux              # TRIGGERED: aux = stop price
        return order

    def _close(self, order):
        by_account = self.open_by_account.get(order.account_id)
        if by_account is not None:
            by_account.pop(order.order_id, None)
        self._mark_done(order)

    def _mark_done(self, order):
        done = self.done_order_ids
        done[order.order_id] = None
        while len(done) > self.done_orders_keep:
            old_id, _ = done.popitem(last=False)
            old = self.orders.pop(old_id, None)
            if old is not None and old.client_order_id:
                key = (old.account_id, old.client_order_id)
                if self.client_ids.get(key) == old_id:
                    del self.client_ids[key]

    # ------------------------------------------------------------------ seeding (rule 7)
    def seed_from_matcher(self, matcher, seq):
        """Load the state of a restored ``engine.matcher.Matcher`` at input ``seq``.

        Books, live orders (resting and waiting stops), balances, last prices and
        halts come from the matcher snapshot; recent trades and 24h statistics
        start empty (a snapshot has no tape).  O(orders + accounts).
        """
        for sid, view in self.symbols.items():
            sym = matcher.symbols.get(sid)
            if sym is None:
                continue
            view.bids.clear()
            view.asks.clear()
            for price, level in sym.book.bid_levels.items():
                view.bids[price] = level.total
            for price, level in sym.book.ask_levels.items():
                view.asks[price] = level.total
            view.last_price = sym.last_price or None
            view.last_trade_id = sym.trade_id
            view.halted = bool(sym.halted)
        for oid in sorted(matcher.orders):
            o = matcher.orders[oid]
            order = OrderState.__new__(OrderState)
            for name in ("order_id", "account_id", "symbol_id", "side", "order_type", "tif",
                         "flags", "price", "qty", "stop_price", "funds", "filled", "remaining",
                         "client_order_id", "hold"):
                setattr(order, name, getattr(o, name))
            order.executed_value = 0
            order.fees = o.fee_paid
            order.fills = 0
            order.status = "open" if o.level is not None else "pending"
            order.done_reason = None
            order.reason = 0
            order.created_ns = 0
            order.done_ns = 0
            order.last_seq = seq
            self.orders[oid] = order
            self.open_by_account.setdefault(order.account_id, {})[oid] = order
            if order.client_order_id:
                self.client_ids[(order.account_id, order.client_order_id)] = oid
        accounts = matcher.accounts
        for account_id, acct in accounts.accounts.items():
            if account_id == getattr(accounts, "fee_account_id", None):
                continue
            for asset_id, i in accounts.index.items():
                self.totals[(account_id, asset_id)] = acct.bal[i] + acct.bal[i + 1]
        self.applied_seq = max(self.applied_seq, seq)
        self._open_seq = max(self._open_seq, seq)

    # ------------------------------------------------------------------ reads
    def symbol(self, symbol_id):
        """The SymbolView of a symbol id; KeyError when unknown."""
        return self.symbols[symbol_id]

    def order(self, order_id):
        """OrderState (or a remembered rejection, rule 5) or None.  O(1)."""
        order = self.orders.get(order_id)
        return order if order is not None else self.rejections.get(order_id)

    def order_by_client_id(self, account_id, client_order_id):
        order_id = self.client_ids.get((account_id, client_order_id))
        return None if order_id is None else self.orders.get(order_id)

    def open_orders(self, account_id, symbol_id=None):
        """Open (and pending stop) orders of an account, oldest first."""
        orders = self.open_by_account.get(account_id, {}).values()
        if symbol_id is not None:
            orders = [o for o in orders if o.symbol_id == symbol_id]
        return sorted(orders, key=lambda o: o.order_id)

    def account_orders(self, account_id, symbol_id=None):
        """Every order of an account still remembered (open and done), oldest first."""
        out = [o for o in self.orders.values() if o.account_id == account_id
               and (symbol_id is None or o.symbol_id == symbol_id)]
        out.sort(key=lambda o: o.order_id)
        return out

    def account_balances(self, account_id):
        """{asset_id: (available, held)} derived from events (rule 8).  O(assets + open orders)."""
        held = {}
        for order in self.open_by_account.get(account_id, {}).values():
            spec = self.specs.get(order.symbol_id)
            if spec is None:
                continue
            asset = spec.quote_asset if order.side == _BUY else spec.base_asset
            held[asset] = held.get(asset, 0) + order.hold
        out = {}
        for (acct, asset), total in self.totals.items():
            if acct == account_id:
                h = held.get(asset, 0)
                out[asset] = (total - h, h)
        return out

    # --------------------------------------------------------------- checking
    def _check(self):
        """Assert every structural invariant (used by stress tests)."""
        for view in self.symbols.values():
            for side in (view.bids, view.asks):
                for price, qty in side.items():
                    assert qty > 0, (view.symbol_id, price, qty)
            bb, ba = view.best_bid(), view.best_ask()
            if bb is not None and ba is not None:
                assert bb[0] < ba[0], ("crossed book", view.symbol_id, bb, ba)
            assert view.volume == sum(q for _t, _p, q in view.window)
        for account, opened in self.open_by_account.items():
            for order_id, order in opened.items():
                assert order.account_id == account
                assert order.is_open, (order_id, order.status)
                assert self.orders.get(order_id) is order
        assert self.applied_seq <= max(self._open_seq, self.applied_seq)


def _reason_name(code):
    try:
        return Reason(code).name
    except ValueError:
        return "REASON_%d" % code


def reason_name(code):
    """Name of a Reason code (``"REASON_<n>"`` for an unknown code)."""
    return _reason_name(code)


# names used on the wire
SIDE_NAMES = {int(Side.BUY): "buy", int(Side.SELL): "sell"}
TYPE_NAMES = {int(OrderType.LIMIT): "limit", int(OrderType.MARKET): "market",
              int(OrderType.STOP_LOSS): "stop_loss", int(OrderType.STOP_LIMIT): "stop_limit",
              int(OrderType.TAKE_PROFIT): "take_profit",
              int(OrderType.TAKE_PROFIT_LIMIT): "take_profit_limit"}
TIF_NAMES = {int(TimeInForce.GTC): "GTC", int(TimeInForce.GTT): "GTT",
             int(TimeInForce.IOC): "IOC", int(TimeInForce.FOK): "FOK"}


# ---------------------------------------------------------------- REST history (issue 16)
# Appended methods only (publisher/history.py rule 1); the services feed ``history``.
def _model_history(self):
    """This model's ``History`` (fills, candles); a re-initialised model (the rebuild calls
    ``__init__`` again, which makes a new ``symbols``) gets a new, empty one."""
    h = self.__dict__.get("_history")
    if h is None or h[0] is not self.symbols:
        from publisher.history import History
        h = self._history = (self.symbols, History(
            self.symbols, fills_keep=getattr(self, "history_fills_keep", None)))
    return h[1]


def _model_level3(self, symbol_id):
    """Every resting order of a symbol: ([(price, qty, order_id)] bids, asks), best price
    first, within a price by order id.  O(open orders)."""
    bids, asks = [], []
    for by_account in self.open_by_account.values():
        for o in by_account.values():
            if o.symbol_id == symbol_id and o.status == "open" and o.remaining > 0:
                (bids if o.side == _BUY else asks).append((o.price, o.remaining, o.order_id))
    bids.sort(key=lambda r: (-r[0], r[2]))
    asks.sort(key=lambda r: (r[0], r[2]))
    return bids, asks


ReadModel.history = property(_model_history)
ReadModel.level3 = _model_level3
