"""Fills per account and OHLCV candles per product, for the REST history endpoints.

Theory of operation (numbered rules; the code refers to them):

1. Both read models own one ``History`` (their appended ``history`` property; a
   model re-initialised by the rebuild gets a new, empty one) and their services feed
   it every applied batch, after the model: ``record_events`` with event tuples (the
   object model and the columnar per-event path), ``record_array`` with a numpy
   ``EVENT_DTYPE`` batch (the columnar batch path).  Both give the same state: a
   candle bucket is a fold of (low, high, open, close, volume) partials that is
   associative in stream order, so merging per-minute partials of a batch equals
   merging trade by trade.
2. Fills: each FILL of this model's symbols is kept in its account's ring (the newest
   ``fills_keep``); each gets the account's next cursor (1, 2, ...), the pagination id
   of ``GET /fills``.  Nothing older than the ring is answered.
3. Candles: for each granularity, bucket start = floor(trade time in s / g) * g (UTC,
   epoch aligned); open is the first trade of the bucket in stream (trade id) order,
   close the last, volume the sum of sizes.  Per product and granularity the newest
   ``candles_keep[g]`` buckets are kept (eviction once per batch, oldest start first).
4. The batch path keeps its FILL rows as numpy arrays (``_pending``) and moves them into
   the rings, grouped by account, when a read needs them, when the per-event path is
   about to append (so a ring stays in stream order), or beyond ``PENDING_FILLS`` rows;
   there a fill is one 80-byte ``bytes`` (10 int64, made in C: ~10x cheaper than a tuple
   of ints), the per-event path's a tuple; reads unpack both alike.
"""
import struct
from collections import deque

import numpy as np

from ringbuf.records import EventKind

__all__ = ["History", "GRANULARITIES", "FILLS_KEEP", "CANDLES_KEEP", "page"]

GRANULARITIES = (60, 300, 900, 3600, 21600, 86400)
FILLS_KEEP = 10000
PENDING_FILLS = 1 << 15       # rule 4: numpy fill rows held before they go into the rings
#: one-minute buckets for 31 days (volume_30day), 10,000 of every other granularity
CANDLES_KEEP = {60: 31 * 1440, 300: 10000, 900: 10000, 3600: 10000, 21600: 10000,
                86400: 10000}
_K_TRADE = int(EventKind.TRADE)
_K_FILL = int(EventKind.FILL)
_NS = 10 ** 9


class _Ring(deque):
    """An account's kept fills; ``total``: fills it ever got (the newest one's cursor)."""
    __slots__ = ("total",)

    def __init__(self, maxlen):
        deque.__init__(self, (), maxlen)
        self.total = 0


# fill rows: (account, trade_id, symbol_id, order_id, price, qty, fee, side, flags, ts)
_FILL_COLUMNS = ("account_id", "trade_id", "symbol_id", "order_id", "price", "qty", "fee",
                 "side", "flags", "timestamp_ns")


#: the batch path keeps a fill as the 80 bytes of these 10 int64 (``_FILL_ROW.unpack``)
_COMPACT = np.dtype([(n, "<i8") for n in _FILL_COLUMNS])
_ROW_VOID = np.dtype("V%d" % _COMPACT.itemsize)
_FILL_ROW = struct.Struct("<%dq" % len(_FILL_COLUMNS))


def _fill_row(r):
    """A ring entry (tuple from the per-event path, bytes from the batch path) as a tuple."""
    return r if r.__class__ is tuple else _FILL_ROW.unpack(r)


class History(object):
    """Fill rings per account and candle buckets per (product, granularity)."""

    def __init__(self, symbol_ids, fills_keep=FILLS_KEEP, candles_keep=None):
        """``fills_keep``: fills kept per account (rule 2; None: ``FILLS_KEEP``; the
        config's ``publisher.fills_per_account``, via the model's ``history_fills_keep``)."""
        self.symbols = frozenset(int(s) for s in symbol_ids)
        self.fills_keep = FILLS_KEEP if fills_keep is None else int(fills_keep)
        if self.fills_keep < 1:
            raise ValueError("fills_keep must be >= 1, got %r" % (fills_keep,))
        self.candles_keep = dict(candles_keep or CANDLES_KEEP)
        self.fills = {}           # account -> _Ring of fill rows, rule 2
        self.candles = {s: {g: {} for g in GRANULARITIES} for s in self.symbols}
        self._sym_ok = np.zeros(65536, bool)      # symbol_id (uint16) -> one of ours
        self._sym_ok[list(self.symbols)] = True
        self._evict_at = {g: k + (k >> 3) for g, k in self.candles_keep.items()}
        self._over = False        # some bucket dict is over its eviction threshold
        self._pending = []        # numpy FILL rows of the batch path, not yet in rings (rule 4)
        self._pending_rows = 0
        self._idx = None          # event tuple field positions (set on first use)

    # ------------------------------------------------------------------ feed (rule 1)
    def record_events(self, events):
        """Event tuples (``PublishedEvent``: fields by position) of one applied batch."""
        idx = self._idx
        if idx is None:
            from publisher.event_decoder import PublishedEvent
            f = PublishedEvent._fields
            idx = self._idx = tuple(f.index(n) for n in _FILL_COLUMNS) + (f.index("kind"),)
        ia, it, isym, io, ip, iq, ife, isd, ifl, its, ik = idx
        if self._pending:
            self._flush_fills()               # rule 4: older fills first
        symbols = self.symbols
        fills = self.fills
        keep = self.fills_keep
        partial = None            # symbol -> [minute, low, high, open, close, volume]
        for e in events:
            kind = e[ik]
            if kind == _K_TRADE:
                sym = e[isym]
                if sym not in symbols:
                    continue
                if partial is None:
                    partial = {}
                m = e[its] // 60000000000
                price, qty = e[ip], e[iq]
                c = partial.get(sym)
                if c is not None and c[0] == m:          # the run of this minute goes on
                    if price < c[1]:
                        c[1] = price
                    elif price > c[2]:
                        c[2] = price
                    c[4] = price
                    c[5] += qty
                else:
                    if c is not None:
                        self._merge(sym, c[0] * 60, c[1], c[2], c[3], c[4], c[5])
                    partial[sym] = [m, price, price, price, price, qty]
            elif kind == _K_FILL:
                sym = e[isym]
                if sym in symbols:
                    acct = e[ia]
                    ring = fills.get(acct)
                    if ring is None:
                        ring = fills[acct] = _Ring(keep)
                    ring.append((acct, e[it], sym, e[io], e[ip], e[iq], e[ife], e[isd],
                                 e[ifl], e[its]))
                    ring.total += 1
        if partial is not None:
            for sym, c in partial.items():
                self._merge(sym, c[0] * 60, c[1], c[2], c[3], c[4], c[5])
            self._evict()

    def record_array(self, arr):
        """A numpy EVENT_DTYPE batch (the columnar model's batch path)."""
        kinds = arr["kind"]
        fills = np.flatnonzero(kinds == _K_FILL)
        if len(fills):                            # rule 4: kept as numpy until needed
            f = arr.take(fills)
            f = f[self._sym_ok[f["symbol_id"]]]
            if len(f):
                self._pending.append(f)
                self._pending_rows += len(f)
                if self._pending_rows >= PENDING_FILLS:
                    self._flush_fills()
        trades = np.flatnonzero(kinds == _K_TRADE)
        if not len(trades):
            return
        t = arr.take(trades)
        t = t[self._sym_ok[t["symbol_id"]]]
        if not len(t):
            return
        sym = t["symbol_id"].astype(np.int64)
        minute = (t["timestamp_ns"] // (60 * _NS)).astype(np.int64)
        price = t["price"].astype(np.int64)
        qty = t["qty"].astype(np.int64)
        order = np.argsort(sym, kind="stable")     # symbols are independent; stream order kept
        sym, minute, price, qty = sym[order], minute[order], price[order], qty[order]
        key = sym * (1 << 40) + minute
        # runs of one (symbol, minute) in stream order: contiguous partials (rule 1)
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = np.r_[starts[1:], len(key)] - 1
        lows = np.minimum.reduceat(price, starts).tolist()
        highs = np.maximum.reduceat(price, starts).tolist()
        vols = np.add.reduceat(qty, starts).tolist()
        opens = price[starts].tolist()
        closes = price[ends].tolist()
        for s, m, lo, hi, op, cl, v in zip(sym[starts].tolist(), minute[starts].tolist(), lows,
                                           highs, opens, closes, vols):
            self._merge(s, m * 60, lo, hi, op, cl, v)
        self._evict()

    def _flush_fills(self):
        """Rule 4: the pending numpy fills into the account rings, grouped by account (one
        list slice per account; per fill only its 80-byte ``bytes``)."""
        parts = self._pending
        if not parts:
            return
        self._pending = []
        self._pending_rows = 0
        f = parts[0] if len(parts) == 1 else np.concatenate(parts)
        c = np.empty(len(f), _COMPACT)
        for n in _FILL_COLUMNS:
            c[n] = f[n]
        order = np.argsort(c["account_id"], kind="stable")   # stream order within an account
        c = c[order]
        acct = c["account_id"]
        rows = c.view(_ROW_VOID).tolist()         # one 80-byte ``bytes`` per fill, in C
        starts = np.flatnonzero(np.r_[True, acct[1:] != acct[:-1]]).tolist()
        ends = starts[1:] + [len(rows)]
        rings = self.fills
        keep = self.fills_keep
        for a, lo, hi in zip(acct[starts].tolist(), starts, ends):
            ring = rings.get(a)
            if ring is None:
                ring = rings[a] = _Ring(keep)
            ring.extend(rows[lo:hi] if hi - lo <= keep else rows[hi - keep:hi])
            ring.total += hi - lo

    def _merge(self, symbol_id, t_s, low, high, open_, close, volume):
        """Fold one partial (trades of one minute, in stream order) into every granularity."""
        for g, buckets in self.candles[symbol_id].items():
            b = t_s - t_s % g
            c = buckets.get(b)
            if c is None:
                buckets[b] = [low, high, open_, close, volume]
                if len(buckets) > self._evict_at[g]:
                    self._over = True
            else:
                if low < c[0]:
                    c[0] = low
                if high > c[1]:
                    c[1] = high
                c[3] = close
                c[4] += volume

    def _evict(self):
        if not self._over:
            return
        self._over = False
        keep = self.candles_keep
        for per_g in self.candles.values():
            for g, buckets in per_g.items():
                k = keep[g]
                if len(buckets) > k + (k >> 3):
                    for b in sorted(buckets)[:len(buckets) - k]:
                        del buckets[b]

    # ------------------------------------------------------------------ reads
    def account_fills(self, account_id, order_id=None, symbol_id=None):
        """The kept fills of an account (rule 2), oldest first, optionally filtered:
        (cursor, trade_id, symbol_id, order_id, price, qty, fee, side, flags, ts)."""
        self._flush_fills()
        ring = self.fills.get(account_id)
        if not ring:
            return []
        first = ring.total - len(ring) + 1
        rows = map(_fill_row, ring)
        return [(first + i,) + f[1:] for i, f in enumerate(rows)
                if (order_id is None or f[3] == order_id)
                and (symbol_id is None or f[2] == symbol_id)]

    def candle_rows(self, symbol_id, granularity, start_s, end_s):
        """[(start, low, high, open, close, volume)] of the buckets in [start_s, end_s], newest
        first (only buckets with trades).  O((end - start) / granularity)."""
        buckets = self.candles[symbol_id][granularity]
        first = start_s - start_s % granularity
        b = end_s - end_s % granularity
        out = []
        get = buckets.get
        while b >= first:
            c = get(b)
            if c is not None:
                out.append((b, c[0], c[1], c[2], c[3], c[4]))
            b -= granularity
        return out

    def volume_since(self, symbol_id, start_s):
        """Volume of the one-minute buckets starting at or after ``start_s``."""
        return sum(c[4] for b, c in self.candles[symbol_id][60].items() if b >= start_s)

    def snapshot(self):
        """Plain state (the equality test)."""
        self._flush_fills()
        return ({a: (r.total, [_fill_row(x) for x in r]) for a, r in self.fills.items()},
                {s: {g: sorted((b, tuple(c)) for b, c in d.items()) for g, d in per.items()}
                 for s, per in self.candles.items()})


def page(items, key, before=None, after=None, limit=100):
    """Coinbase cursor pagination over ``items`` (oldest first, ``key(item)`` increasing).

    Returns (page newest first, CB-BEFORE, CB-AFTER): ``after`` gives the ``limit``
    items just older than that cursor, ``before`` the ``limit`` just newer, neither the
    newest ``limit``.  CB-BEFORE is the newest item's cursor, CB-AFTER the oldest's
    (None for an empty page).
    """
    if before is not None:
        sel = [it for it in items if key(it) > before][:limit]
    elif after is not None:
        sel = [it for it in items if key(it) < after][-limit:]
    else:
        sel = items[-limit:]
    sel = list(reversed(sel))
    if not sel:
        return sel, None, None
    return sel, key(sel[0]), key(sel[-1])
