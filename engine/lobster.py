"""Replay the LOBSTER AMZN sample through a price-time-priority book and compare.

Theory of operation (the recipe of ``/work/shared/data/README.md``; rule numbers
are used in the code):

1. *Seed.*  Each side of orderbook row 0 becomes one synthetic resting order
   ("blob") queued before every real order.  Replay starts at message 1.
2. *Messages.*  Type 1 rests a limit order (none crosses).  Type 2 reduces the
   order by ``size`` (an amend down: it keeps its queue position); type 3
   cancels it; types 5 and 7 change nothing visible.  A run of consecutive
   type-4/5 rows with one timestamp is one aggressive order: an IOC on the
   opposite side for the sum of the type-4 sizes, limited at the worst price hit.
   Its fills are compared with the run's ``(order id, size)`` pairs as a
   multiset.
3. *Ids outside the window.*  An event on an id that is not resting in our book
   (it was entered before 09:30, or deeper than level 1, or it rested in a level
   we dropped, rule 5) is a change of the volume of the synthetic order of its
   level.  A level only ever enters our book empty (seed, or coming into view),
   so its blob holds orders older than every known order queued behind it: the
   blob's queue position (first) is the one the ids imply.  Fills of a blob are
   compared under the key ``("synthetic", price)``.
4. *Replace.*  A type 3 directly followed by a type 1 with the same timestamp,
   side and price and no size increase is an order replace: the old order is
   amended down (keeping its queue position) and takes the new id.
5. *Reconcile.*  After each message the best bid and ask (price and size) are
   compared with orderbook row ``k``.  Then levels the row no longer shows are
   dropped, and a price the row shows that we do not hold came into view from
   outside the window: it is added as a blob at the back.  A size difference
   at a level we hold is a mismatch; it is counted and then repaired (blob
   adjusted) so one error does not cascade.
6. *Runs.*  Rows inside a multi-message run cannot be observed on the matcher
   (the run is one command); they are checked against our book before the IOC
   minus the run's fills so far (``rows_derived``), and the row after the run
   against the matcher.  Hidden levels a run reaches are added before the IOC
   with the size the rows reveal plus the run's fills there.
7. *Exceptions.*  Rows 56083-56086 and 56552-56554 cannot be reproduced by any
   strict FIFO engine; their runs are not counted against the fill match.

The book behind the replay is a :class:`Venue`: :class:`MatcherVenue` drives
:class:`engine.matcher.Matcher` through ``process(seq, cmd)`` and reads its
events; :class:`FifoVenue` is a small independent reference book.

Usage::

    ringmatch lobster [--data DIR] [--venue matcher|fifo] [--passes N] [--list N]
"""
import collections
import csv
import os
import sys
import time

DEFAULT_DATA_DIR = os.environ.get("RINGMATCH_LOBSTER_DIR", "/work/shared/data/lobster")
MESSAGE_GLOB = "_message_1.csv"
ORDERBOOK_GLOB = "_orderbook_1.csv"

#: (first row, last row), inclusive, 0-based row numbers in the files.
ALLOWED_EXCEPTIONS = ((56083, 56086), (56552, 56554))

BUY = 1     # engine Side.BUY
SELL = 2    # engine Side.SELL

# AMZN symbol: prices in dollars x 10000 ticks, 1 share lots, no fees.
AMZN_SYMBOL_ID = 1
AMZN_BASE_ASSET = 1      # AMZN shares
AMZN_QUOTE_ASSET = 2     # USD in 1/10000 dollars (price ticks x lots = quote units)
RESTING_ACCOUNT = 1      # every resting order (one account: resting orders never cross)
AGGRESSOR_ACCOUNT = 2    # every IOC (a different account: self-trade prevention never fires)
FUNDING = 10 ** 15       # per asset per account


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
Message = collections.namedtuple("Message", "time type order_id size price direction")


def find_files(data_dir=DEFAULT_DATA_DIR):
    """Return ``(message_path, orderbook_path)`` in ``data_dir``, or None if absent.

    O(files in the directory).
    """
    if not os.path.isdir(data_dir):
        return None
    names = sorted(os.listdir(data_dir))
    messages = [n for n in names if n.endswith(MESSAGE_GLOB)]
    books = [n for n in names if n.endswith(ORDERBOOK_GLOB)]
    if not messages or not books:
        return None
    return os.path.join(data_dir, messages[0]), os.path.join(data_dir, books[0])


def load_messages(path):
    """Parse a LOBSTER message file into a list of :class:`Message`.

    The time stays a string (it is only compared for equality); every other
    column is an int.  O(rows).  Raises ValueError on a malformed row.
    """
    out = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if len(row) < 6:
                raise ValueError("%s: short row %r" % (path, row))
            out.append(Message(row[0], int(row[1]), int(row[2]), int(row[3]),
                               int(row[4]), int(row[5])))
    return out


def load_orderbook(path):
    """Parse a level-1 LOBSTER orderbook file: list of ``(ask, ask_size, bid, bid_size)``.

    O(rows).  Raises ValueError on a malformed row.
    """
    out = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if row:
                out.append((int(row[0]), int(row[1]), int(row[2]), int(row[3])))
    return out


def in_allowed_exception(row):
    """True if 0-based message/orderbook row ``row`` is an allowed exception (rule 7)."""
    for first, last in ALLOWED_EXCEPTIONS:
        if first <= row <= last:
            return True
    return False


def side_of(direction):
    """LOBSTER direction (1 buy, -1 sell) -> engine side code."""
    return BUY if direction == 1 else SELL


# ---------------------------------------------------------------------------
# Venues: the book under test
# ---------------------------------------------------------------------------
class FifoVenue(object):
    """A plain price-time-priority book used as an independent reference.

    Handles are ints.  ``ioc`` returns ``[(handle, qty, price)]`` in match order.
    Every operation is O(orders at the touched levels).
    """

    name = "fifo"

    def __init__(self):
        self._levels = {BUY: {}, SELL: {}}   # side -> price -> [handle, ...]
        self._orders = {}                    # handle -> [side, price, qty]
        self._next = 1
        self.commands = 0

    def add(self, side, price, qty):
        self.commands += 1
        handle = self._next
        self._next += 1
        self._orders[handle] = [side, price, qty]
        self._levels[side].setdefault(price, []).append(handle)
        return handle

    def amend(self, handle, qty):
        self.commands += 1
        self._orders[handle][2] = qty

    def cancel(self, handle):
        self.commands += 1
        side, price, _ = self._orders.pop(handle)
        queue = self._levels[side][price]
        queue.remove(handle)
        if not queue:
            del self._levels[side][price]

    def ioc(self, side, price, qty):
        self.commands += 1
        opposite = SELL if side == BUY else BUY
        levels = self._levels[opposite]
        fills = []
        while qty > 0 and levels:
            best = min(levels) if opposite == SELL else max(levels)
            if (side == BUY and best > price) or (side == SELL and best < price):
                break
            queue = levels[best]
            while qty > 0 and queue:
                handle = queue[0]
                order = self._orders[handle]
                take = min(qty, order[2])
                fills.append((handle, take, best))
                qty -= take
                order[2] -= take
                if order[2] == 0:
                    queue.pop(0)
                    del self._orders[handle]
            if not queue:
                del levels[best]
        return fills

    def best(self, side):
        levels = self._levels[side]
        if not levels:
            return None
        price = max(levels) if side == BUY else min(levels)
        return price, sum(self._orders[h][2] for h in levels[price])


class MatcherVenue(object):
    """Drive :class:`engine.matcher.Matcher` with commands; read back its events.

    Every command is recorded as ``(seq, Command)`` in ``self.log`` so the stream
    can be re-timed on a fresh matcher (:func:`time_commands`).  A REJECTED
    outcome raises RuntimeError: the replay never sends a bad command.
    """

    name = "matcher"

    def __init__(self):
        from engine.matcher import Matcher
        from engine.events import ListSink
        self.config = amzn_config()
        self.sink = ListSink()
        self.matcher = Matcher(self.config, self.sink)
        self.seq = 0
        self.log = []
        self.commands = 0
        self._kinds = _event_kinds()
        self._filled = {}       # resting order id -> qty filled so far (for AMEND)
        for account in (RESTING_ACCOUNT, AGGRESSOR_ACCOUNT):
            for asset in (AMZN_BASE_ASSET, AMZN_QUOTE_ASSET):
                self._send(deposit_command(account, asset, FUNDING))
        self.commands = 0

    def _send(self, cmd):
        self.seq += 1
        seq = self.seq
        self.log.append((seq, cmd))
        self.commands += 1
        events = self.sink.events
        start = len(events)
        self.matcher.process(seq, cmd)
        new = events[start:]
        del events[start:]
        rejected = self._kinds["REJECTED"]
        for ev in new:
            if ev.kind == rejected:
                raise RuntimeError("matcher rejected command %d %r: reason %d"
                                   % (seq, cmd, ev.reason))
        return seq, new

    def add(self, side, price, qty):
        seq, _ = self._send(order_command(RESTING_ACCOUNT, side, price, qty, tif_ioc=False))
        return seq

    def amend(self, handle, qty):
        # AMEND carries the new *total* qty (filled + open): keep what was filled
        self._send(amend_command(RESTING_ACCOUNT, handle, qty + self._filled.get(handle, 0)))

    def cancel(self, handle):
        self._filled.pop(handle, None)
        self._send(cancel_command(RESTING_ACCOUNT, handle))

    def ioc(self, side, price, qty):
        _, events = self._send(order_command(AGGRESSOR_ACCOUNT, side, price, qty, tif_ioc=True))
        fill = self._kinds["FILL"]
        maker = self._kinds["MAKER"]
        fills = []
        for ev in events:
            if ev.kind == fill and ev.flags & maker:
                fills.append((ev.order_id, ev.qty, ev.price))
                if ev.remaining:
                    self._filled[ev.order_id] = ev.filled
                else:
                    self._filled.pop(ev.order_id, None)
        return fills

    def best(self, side):
        if side == BUY:
            return self.matcher.best_bid(AMZN_SYMBOL_ID)
        return self.matcher.best_ask(AMZN_SYMBOL_ID)


def _event_kinds():
    from ringbuf.records import EventKind, EventFlags
    return {"REJECTED": int(EventKind.REJECTED), "FILL": int(EventKind.FILL),
            "MAKER": int(EventFlags.MAKER)}


def amzn_config():
    """The exchange configuration of the replay: one symbol AMZN-USD, no fees.

    Price ticks are dollars x 10000 (tick 0.0001), lots are shares.
    """
    from engine.config import ExchangeConfig
    return ExchangeConfig.from_dict(AMZN_CONFIG_DICT)


AMZN_CONFIG_DICT = {
    "fee_account_id": 0,
    "assets": [
        {"id": AMZN_BASE_ASSET, "name": "AMZN", "decimals": 0},
        {"id": AMZN_QUOTE_ASSET, "name": "USD", "decimals": 4},
    ],
    # one tick x one lot = 0.0001 USD = 1 quote minor unit
    "symbols": [
        {"id": AMZN_SYMBOL_ID, "name": "AMZN-USD", "base": AMZN_BASE_ASSET,
         "quote": AMZN_QUOTE_ASSET, "tick_size": "0.0001", "lot_size": "1",
         "min_qty": 1, "max_qty": 10 ** 9, "maker_fee_bps": 0, "taker_fee_bps": 0},
    ],
}


def _command(**fields):
    from engine.commands import Command
    cmd = Command()
    for name, value in fields.items():
        setattr(cmd, name, value)
    return cmd


def deposit_command(account, asset, amount):
    from ringbuf.records import CommandKind
    return _command(kind=int(CommandKind.DEPOSIT), account_id=account, symbol_id=asset,
                    qty=amount)


def order_command(account, side, price, qty, tif_ioc):
    from ringbuf.records import CommandKind, OrderType, TimeInForce
    return _command(kind=int(CommandKind.NEW_ORDER), symbol_id=AMZN_SYMBOL_ID,
                    account_id=account, side=side, order_type=int(OrderType.LIMIT),
                    tif=int(TimeInForce.IOC if tif_ioc else TimeInForce.GTC),
                    price=price, qty=qty)


def cancel_command(account, order_id):
    from ringbuf.records import CommandKind
    return _command(kind=int(CommandKind.CANCEL), symbol_id=AMZN_SYMBOL_ID,
                    account_id=account, order_id=order_id)


def amend_command(account, order_id, qty):
    from ringbuf.records import CommandKind
    return _command(kind=int(CommandKind.AMEND), symbol_id=AMZN_SYMBOL_ID,
                    account_id=account, order_id=order_id, qty=qty, price=0)


# ---------------------------------------------------------------------------
# The replay
# ---------------------------------------------------------------------------
class ReplayResult(object):
    """Counts and mismatch lists of one replay."""

    def __init__(self):
        self.messages = 0
        self.rows_checked = 0          # rows compared against the venue directly
        self.rows_derived = 0          # rows inside runs / replaces (rule 6)
        self.row_mismatches = []       # (row, expected, got, how)
        self.runs = 0
        self.runs_excepted = 0
        self.fill_mismatches = []      # (first row, last row, expected, got)
        self.synthetic_events = 0
        self.levels_into_view = 0
        self.replaces = 0
        self.venue_commands = 0
        self.seconds = 0.0

    @property
    def rows_total(self):
        return self.rows_checked + self.rows_derived

    @property
    def row_match_fraction(self):
        total = self.rows_total
        return (total - len(self.row_mismatches)) / float(total) if total else 0.0

    @property
    def runs_compared(self):
        return self.runs - self.runs_excepted

    @property
    def fill_match_fraction(self):
        n = self.runs_compared
        return (n - len(self.fill_mismatches)) / float(n) if n else 0.0

    def summary(self):
        return ("messages %d; rows %d/%d match (%.4f%%; %d on the book, %d derived inside runs); "
                "aggressive orders %d/%d fills match (%.4f%%; %d allowed exceptions); "
                "synthetic-id events %d, levels into view %d, replaces %d; "
                "%d venue commands in %.3f s"
                % (self.messages, self.rows_total - len(self.row_mismatches), self.rows_total,
                   100.0 * self.row_match_fraction, self.rows_checked, self.rows_derived,
                   self.runs_compared - len(self.fill_mismatches), self.runs_compared,
                   100.0 * self.fill_match_fraction, self.runs_excepted,
                   self.synthetic_events, self.levels_into_view, self.replaces,
                   self.venue_commands, self.seconds))


class _Entry(object):
    __slots__ = ("handle", "key", "qty")

    def __init__(self, handle, key, qty):
        self.handle = handle
        self.key = key      # LOBSTER id, or None for the level's synthetic blob
        self.qty = qty


class Replay(object):
    """Replays messages and rows into a venue and keeps the id bookkeeping.

    ``self.levels[side]`` mirrors the venue: ``price -> [_Entry, ...]`` in queue
    order.  ``self.live`` maps a LOBSTER id to its entry and level.
    """

    def __init__(self, venue, messages, rows, limit=None):
        self.venue = venue
        self.messages = messages
        self.rows = rows
        self.end = len(messages) if limit is None else min(limit, len(messages))
        self.levels = {BUY: {}, SELL: {}}
        self.live = {}          # lobster id -> (side, price, entry)
        self.by_handle = {}     # venue handle -> entry
        self.result = ReplayResult()

    # --- book mirror helpers ------------------------------------------------
    def _add(self, side, price, qty, key):
        handle = self.venue.add(side, price, qty)
        entry = _Entry(handle, key, qty)
        self.levels[side].setdefault(price, []).append(entry)
        self.by_handle[handle] = entry
        if key is not None:
            self.live[key] = (side, price, entry)
        return entry

    def _remove(self, side, price, entry, cancel=True):
        if cancel:
            self.venue.cancel(entry.handle)
        queue = self.levels[side][price]
        queue.remove(entry)
        if not queue:
            del self.levels[side][price]
        self.by_handle.pop(entry.handle, None)
        if entry.key is not None:
            self.live.pop(entry.key, None)

    def _reduce(self, side, price, entry, by):
        """Take ``by`` off an entry (amend down, or cancel when nothing is left)."""
        left = entry.qty - by
        if left <= 0:
            self._remove(side, price, entry)
        else:
            self.venue.amend(entry.handle, left)
            entry.qty = left

    def _blob(self, side, price):
        queue = self.levels[side].get(price, ())
        for entry in queue:
            if entry.key is None:
                return entry
        return None

    def _best(self, side):
        levels = self.levels[side]
        if not levels:
            return None
        price = max(levels) if side == BUY else min(levels)
        return price, sum(e.qty for e in levels[price])

    def _reduce_unknown(self, side, price, size):
        """Rule 3: an event on an id we do not hold takes volume off the level's blob."""
        self.result.synthetic_events += 1
        blob = self._blob(side, price)
        if blob is not None:
            self._reduce(side, price, blob, min(size, blob.qty))

    # --- row comparison -----------------------------------------------------
    def _compare(self, k, got, how):
        expected = self.rows[k]
        if how == "book":
            self.result.rows_checked += 1
        else:
            self.result.rows_derived += 1
        if got != expected:
            self.result.row_mismatches.append((k, expected, got, how))
            return False
        return True

    def _venue_row(self):
        ask = self.venue.best(SELL) or (None, 0)
        bid = self.venue.best(BUY) or (None, 0)
        return (ask[0], ask[1], bid[0], bid[1])

    def _reconcile(self, k, touched=()):
        """Rule 5: bring in levels that came into view, compare row k, then drop/repair.

        ``touched`` holds the prices the message (or run) acted on.  A level came
        into view when we hold nothing on that side, row k shows a price that
        row k-1 did not, and the message did not touch it; anything else that
        differs is a mismatch.
        """
        row, prev = self.rows[k], self.rows[k - 1]
        for side, idx in ((SELL, 0), (BUY, 2)):
            price = row[idx]
            if (not self.levels[side] and price != prev[idx] and price not in touched):
                self.result.levels_into_view += 1
                self._add(side, price, row[idx + 1], None)
        self._compare(k, self._venue_row(), "book")
        for side, idx in ((SELL, 0), (BUY, 2)):
            price, size = row[idx], row[idx + 1]
            levels = self.levels[side]
            for other in [p for p in levels if p != price]:
                for entry in list(levels[other]):
                    self._remove(side, other, entry)
            held = sum(e.qty for e in levels.get(price, ()))
            if held < size:
                # growing the blob (an amend up) would lose its priority:
                # add the missing volume behind instead
                self._add(side, price, size - held, None)
            elif held > size:
                excess = held - size
                for entry in list(reversed(levels[price])):
                    if excess <= 0:
                        break
                    take = min(excess, entry.qty)
                    self._reduce(side, price, entry, take)
                    excess -= take

    # --- messages -----------------------------------------------------------
    def run(self):
        messages, rows = self.messages, self.rows
        result = self.result
        start = time.perf_counter()
        ask, ask_size, bid, bid_size = rows[0]
        self._add(SELL, ask, ask_size, None)       # rule 1
        self._add(BUY, bid, bid_size, None)
        k = 1
        end = self.end
        while k < end:
            msg = messages[k]
            kind = msg.type
            if kind == 4:
                k = self._run_of_executions(k)
                continue
            side = side_of(msg.direction)
            if kind == 1:
                self._new(msg)
            elif kind == 2:
                held = self.live.get(msg.order_id)
                if held is None:
                    self._reduce_unknown(side, msg.price, msg.size)
                else:
                    self._reduce(held[0], held[1], held[2], msg.size)
            elif kind == 3:
                nxt = messages[k + 1] if k + 1 < end else None
                held = self.live.get(msg.order_id)
                if (held is not None and nxt is not None and nxt.type == 1
                        and nxt.time == msg.time and nxt.direction == msg.direction
                        and nxt.price == msg.price and nxt.size <= held[2].qty):
                    self._replace(k, held, nxt)
                    k += 2
                    result.messages += 2
                    continue
                if held is None:
                    self._reduce_unknown(side, msg.price, msg.size)
                else:
                    self._remove(held[0], held[1], held[2])
            # 5 and 7: nothing visible
            result.messages += 1
            self._reconcile(k, (msg.price,))
            k += 1
        result.venue_commands = self.venue.commands
        result.seconds = time.perf_counter() - start
        return result

    def _new(self, msg):
        self._add(side_of(msg.direction), msg.price, msg.size, msg.order_id)

    def _replace(self, k, held, nxt):
        """Rule 4: amend the old order down and give it the new id."""
        side, price, entry = held
        self.result.replaces += 1
        # row k: the old order is gone (derived from our book)
        best = self._best(side)
        got = list(self._venue_row())
        if best is not None and best[0] == price:
            size = best[1] - entry.qty
            if side == SELL:
                got[1] = size
            else:
                got[3] = size
            if size == 0:
                # the level vanished for one message: the row shows the next level
                # (not held by us); compare only the other side
                other = (2, 3) if side == SELL else (0, 1)
                want = self.rows[k]
                got = list(want)
                for i in other:
                    got[i] = self._venue_row()[i]
        self._compare(k, tuple(got), "derived")
        if nxt.size < entry.qty:
            self.venue.amend(entry.handle, nxt.size)
            entry.qty = nxt.size
        self.live.pop(entry.key, None)
        entry.key = nxt.order_id
        self.live[nxt.order_id] = (side, price, entry)
        self._reconcile(k + 1, (price,))

    def _run_of_executions(self, k):
        """Rules 2 and 6: a run of type-4/5 rows at one timestamp is one IOC."""
        messages, rows, result = self.messages, self.rows, self.result
        first = messages[k]
        j = k
        while (j < self.end and messages[j].type in (4, 5)
               and messages[j].time == first.time):
            j += 1
        run = [(i, messages[i]) for i in range(k, j) if messages[i].type == 4]
        hit_side = side_of(first.direction)
        aggressor = SELL if hit_side == BUY else BUY
        better = (lambda a, b: a > b) if hit_side == BUY else (lambda a, b: a < b)

        # simulate the hit side through the run (rule 6)
        levels = {p: sum(e.qty for e in q) for p, q in self.levels[hit_side].items()}
        filled_at = collections.Counter()
        hidden = {}      # price -> volume to add before the IOC
        other_idx = (0, 1) if aggressor == SELL else (2, 3)
        side_idx = (2, 3) if hit_side == BUY else (0, 1)
        venue_row = self._venue_row()
        for i in range(k, j):
            msg = messages[i]
            if msg.type == 4:
                filled_at[msg.price] += msg.size
                if msg.price in levels:
                    levels[msg.price] -= msg.size
                    if levels[msg.price] <= 0:
                        del levels[msg.price]
            if i == j - 1:
                break          # the last row is compared against the venue
            row = rows[i]
            price, size = row[side_idx[0]], row[side_idx[1]]
            if price not in levels:
                if price in hidden or any(not better(price, p) for p in levels):
                    pass
                else:
                    hidden[price] = size + filled_at[price]
                    levels[price] = size
            got = list(row)
            if levels:
                best = max(levels) if hit_side == BUY else min(levels)
                got[side_idx[0]], got[side_idx[1]] = best, levels[best]
            else:
                got[side_idx[0]], got[side_idx[1]] = None, 0
            got[other_idx[0]], got[other_idx[1]] = venue_row[other_idx[0]], venue_row[other_idx[1]]
            self._compare(i, tuple(got), "derived")
        # levels the run reached that no intermediate row revealed
        for price, qty in filled_at.items():
            if price not in levels and price not in hidden and price not in self.levels[hit_side]:
                hidden[price] = qty
        for price in sorted(hidden, reverse=(hit_side == BUY)):
            if price not in self.levels[hit_side]:
                self.result.levels_into_view += 1
                self._add(hit_side, price, hidden[price], None)

        worst = min(m.price for _, m in run) if hit_side == BUY else max(m.price for _, m in run)
        qty = sum(m.size for _, m in run)
        expected = collections.Counter()
        for _, m in run:
            if m.order_id in self.live:
                expected[m.order_id] += m.size
            else:
                expected[("synthetic", m.price)] += m.size
                result.synthetic_events += 1
        fills = self.venue.ioc(aggressor, worst, qty)
        got = collections.Counter()
        got_price = {}
        for handle, fill_qty, fill_price in fills:
            entry = self.by_handle[handle]
            key = entry.key if entry.key is not None else ("synthetic", fill_price)
            got[key] += fill_qty
            got_price[key] = fill_price
            entry.qty -= fill_qty
            if entry.qty == 0:
                self._remove(hit_side, fill_price, entry, cancel=False)
        result.runs += 1
        excepted = in_allowed_exception(k) or in_allowed_exception(j - 1)
        if excepted:
            result.runs_excepted += 1
            if got != expected:
                self._realign(hit_side, expected, got, got_price)
        elif got != expected:
            result.fill_mismatches.append((k, j - 1, dict(expected), dict(got)))
        result.messages += j - k
        self._reconcile(j - 1, set(filled_at))
        return j

    def _realign(self, side, expected, got, got_price):
        """After an allowed exception (rule 7): give the book the volumes the file says.

        Orders the file says were filled but the venue did not fill are reduced;
        volume the venue took from other orders is put back behind the level
        (a blob), so the level totals and later events stay consistent.
        """
        for key, qty in expected.items():
            short = qty - got.get(key, 0)
            if short > 0 and key in self.live:
                held_side, price, entry = self.live[key]
                self._reduce(held_side, price, entry, min(short, entry.qty))
        for key, qty in got.items():
            extra = qty - expected.get(key, 0)
            if extra > 0:
                self._add(side, got_price[key], extra, None)


def replay(venue, messages, rows, limit=None):
    """Replay ``messages``/``rows`` into ``venue``; return a :class:`ReplayResult`.

    O(messages x orders per level).
    """
    return Replay(venue, messages, rows, limit).run()


def time_commands(log, passes=3, warmup=1):
    """Re-run a recorded ``[(seq, cmd)]`` stream on fresh matchers; return seconds per pass.

    Events are packed into 128-byte records (``BytesSink``, taken every 4096
    commands, as the matcher process does).  ``warmup`` passes are run untimed first.
    """
    from engine.matcher import Matcher
    from engine.events import BytesSink
    config = amzn_config()
    times = []
    for i in range(warmup + passes):
        sink = BytesSink()
        matcher = Matcher(config, sink)
        process = matcher.process
        take = sink.take
        t0 = time.perf_counter()
        for start in range(0, len(log), 4096):
            for seq, cmd in log[start:start + 4096]:
                process(seq, cmd)
            take()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument("--data", default=DEFAULT_DATA_DIR,
                        help="folder with the LOBSTER message and orderbook files")
    parser.add_argument("--venue", choices=("matcher", "fifo"), default="matcher",
                        help="book to replay into (fifo: the small reference book)")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N messages")
    parser.add_argument("--list", type=int, default=10, metavar="N",
                        help="list the first N mismatches of each kind")
    parser.add_argument("--passes", type=int, default=3,
                        help="re-time the recorded command stream this many times (matcher)")


def run(args):
    files = find_files(args.data)
    if files is None:
        print("lobster: no LOBSTER message/orderbook files in %s" % args.data, file=sys.stderr)
        return 2
    messages = load_messages(files[0])
    rows = load_orderbook(files[1])
    venue = MatcherVenue() if args.venue == "matcher" else FifoVenue()
    result = replay(venue, messages, rows, args.limit)
    print("lobster replay (%s, %s %s): %s" % (venue.name, sys.implementation.name,
                                              sys.version.split()[0], result.summary()))
    print("best bid/ask rows matching: %.4f%%" % (100.0 * result.row_match_fraction))
    print("aggressive orders whose fills match: %.4f%%" % (100.0 * result.fill_match_fraction))
    for k, expected, got, how in result.row_mismatches[:args.list]:
        print("  row %d (%s): expected %r got %r" % (k, how, expected, got))
    for first, last, expected, got in result.fill_mismatches[:args.list]:
        print("  run rows %d-%d: expected fills %r got %r" % (first, last, expected, got))
    if args.venue == "matcher" and args.passes > 0:
        times = sorted(time_commands(venue.log, args.passes))
        n = len(venue.log)
        print("matcher re-run of the %d recorded commands (BytesSink), 1 warm-up + %d passes: "
              "median %.0f commands/s (min %.0f, max %.0f)"
              % (n, len(times), n / times[len(times) // 2], n / times[-1], n / times[0]))
    return 0 if not result.row_mismatches and result.fill_match_fraction >= 0.999 else 1


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="ringmatch lobster", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
