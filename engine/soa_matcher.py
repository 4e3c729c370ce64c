"""SoaMatcher: the matcher's rules (engine/matcher.py, M1-M9) on struct-of-arrays state.

Theory of operation.  Same rules, same events byte for byte, same ``state_hash()`` and
``snapshot()`` bytes as :class:`engine.matcher.Matcher` (the reference implementation,
tests/engine/test_soa_matcher.py).  Only the representation differs:

S1. Orders are *records* in one flat int list ``ob``: the order in slot ``k`` has handle
    ``h = k * RECORD`` and its fields at ``ob[h + O_PRICE]``, ``ob[h + O_REM]``, ...
    (``O_*`` offsets below); the client order id and the fee numerator, which may
    exceed int64 and would turn the whole list into boxed objects on PyPy, live in
    columns of their own indexed by ``h >> SHIFT``.  Handles come from a free list; no
    Python object per order.  A record is live while ``ob[h + O_STATE]`` is RESTING (on
    a level) or WAITING (a stop); a finished order's handle goes back to the free list
    at the end of the step that finished it (after its last event was written).  A
    free record is FREE and unlinked (``O_PREV``/``O_NEXT``/``O_LVL`` = -1), so reuse
    writes only the order's own fields (``_check`` asserts it).
    (Parallel per-field lists were the first layout: every field access then costs its
    own list load and bounds check, the command's trace outgrew PyPy's 16000-op limit
    and was segmented; one list for all fields and locals bound per method brought the
    traces back to the reference's length -- docs/engine.md, Speed.)
S2. A price-time FIFO is an intrusive doubly linked list through ``O_NEXT``/``O_PREV``
    (-1 = none); a level is a slot of the level columns (``lv_head``, ``lv_tail``,
    ``lv_total``, ``lv_count``), found by price through a per-side dict.  The best
    price is kept in ``best_bid``/``best_ask``; the level prices of a side are in a
    binary heap (bids negated) with lazy deletion: a price is pushed when its level is
    created, nothing happens when a level that is not the best empties, and when the
    best empties stale tops are popped until the top is a live level.  The heap is
    rebuilt from the live levels at a push once it holds more than 2 x live levels +
    _HEAP_SLACK entries (amortised O(log L) per level created).  Ordered walks (FOK,
    ``depth``, snapshots) step tick by tick near the touch (at most _SCAN_TICKS ticks)
    or sort the side's prices.
S3. Live orders by id: ``win[order_id - win_base]`` = handle + 1 (0 = not live), a list
    that grows with the seq (in chunks of 4096); when it is long, its older half is folded into the
    ``old`` dict (only still-live orders) and dropped, so memory follows the live
    orders, not the history.
S4. Accounts are slots: ``acct_slot`` maps account id -> slot; balances are one
    flat list ``bal`` with account slot ``a`` at ``bal[a * W + i]`` (``W = 2 *
    n_assets``, ``i`` as ``Accounts.index``: even = available, odd = held).  Each
    account keeps a count of its live orders (as the reference: mass cancel scans the
    records, O(slots), and stops at the count); client order ids per account in a dict
    created on first use.  The fee account is slot 0 (balance base 0).
S5. Events go straight into a :class:`BytesSink`'s buffer with one ``pack_into`` per
    record (the sink's buffer is reused across takes); any other sink gets
    ``emit_event``/``mark_last`` calls.
S6. Fast paths with a BytesSink, events packed from locals: a limit order that does not
    cross rests in one step (:meth:`SoaMatcher._rest_new`), a user cancel of a resting
    order by id in one step (``_cancel_resting``), a fill writes its three records in
    ``_settle``.  Everything else takes the general path; both give the same bytes.
S7. PyPy: when a trace enters the separately compiled maker loop of ``_match``, every
    frame on the stack is materialised and each int local boxed.  So the loop has few
    locals (the per-fill work is in ``_settle``) and the taker phase of a new order
    runs from ``process`` (``_take_new``), not from inside ``_new_order``'s frame.

Attributes are ``__slots__`` (fixed offsets; hot methods bind them to locals).
Hot path per order: list stores, no allocation except the level dict and price-heap
upkeep when a price level is created or emptied, GTT heap entries and stop-book keys.
Py3.9-compatible (PyPy).
"""
import hashlib
import heapq
import struct

from sortedcontainers import SortedList

from engine.events import BytesSink
from engine.matcher import (  # the wire codes and constants are the reference's
    BUY, SELL, LIMIT, MARKET, STOP_LOSS, STOP_LIMIT, TAKE_PROFIT, TAKE_PROFIT_LIMIT,
    GTC, GTT, IOC, FOK, F_POST, F_REPRICE, F_BY_CID, F_FUNDS, STP_DC, STP_CO, STP_CN,
    STP_CB, E_ACCEPTED, E_REJECTED, E_FILL, E_CANCELLED, E_EXPIRED, E_TRIGGERED, E_TRADE,
    E_DELTA, E_AMENDED, E_BALANCE, E_SNAPSHOT, E_STATUS, E_HASH, EF_MAKER, EF_TAKER,
    EF_LAST, EF_REPRICED, EF_STOP, R_OK, R_UNKNOWN_COMMAND, R_UNKNOWN_SYMBOL,
    R_INVALID_SIDE, R_INVALID_ORDER_TYPE, R_INVALID_TIF, R_INVALID_PRICE, R_INVALID_QTY,
    R_QTY_BELOW_MIN, R_QTY_ABOVE_MAX, R_INVALID_STOP_PRICE, R_INVALID_EXPIRY,
    R_INVALID_FLAGS, R_INVALID_STP, R_UNKNOWN_ACCOUNT, R_INVALID_FUNDS, R_VALUE_OVERFLOW,
    R_DUPLICATE_CLIENT_ORDER_ID, R_UNKNOWN_ASSET, R_INVALID_AMOUNT, R_INSUFFICIENT_FUNDS,
    R_PRICE_OUT_OF_BAND, R_POST_ONLY_WOULD_TAKE, R_FOK_NOT_FILLABLE, R_NO_LIQUIDITY,
    R_SYMBOL_HALTED, R_ORDER_NOT_FOUND, R_NOT_ORDER_OWNER, R_AMEND_BELOW_FILLED,
    R_AMEND_NOT_ALLOWED, R_ALREADY_HALTED, R_NOT_HALTED, R_NOT_PRIVILEGED,
    R_CANCELLED_BY_USER, R_CANCELLED_IOC_REMAINDER, R_CANCELLED_MARKET_REMAINDER,
    R_CANCELLED_STP, R_CANCELLED_MASS, R_CANCELLED_EXPIRED, R_CANCELLED_NO_FUNDS,
    K_NOP, K_NEW, K_CANCEL, K_AMEND, K_MASS, K_DEPOSIT, K_WITHDRAW, K_SNAPSHOT, K_HALT,
    K_RESUME, K_HASH, K_CLOCK, MAX_VALUE, SNAPSHOT_VERSION, SnapshotError,
    _MAGIC, _MAX_TS, _MASK63, _CLOCK_TRAILER, _ALLOWED_TIF, _i64)
from engine.order_book import NO_ASK, NO_BID
from ringbuf.records import (EVENT_SIZE, MAX_CLOCK_SKEW_NS, PRIVILEGED_PRODUCER_ID_MAX,
                             PRIVILEGED_PRODUCER_ID_MIN, event_struct)

__all__ = ["SoaMatcher"]

FREE, RESTING, WAITING = 0, 1, 2      # o_state
_WINDOW_FOLD = 1 << 20                # S3: fold the window's older half beyond this length
_WINDOW_CHUNK = 4096
_ZEROS = [0] * _WINDOW_CHUNK
_pack_into = event_struct.pack_into
_E2 = 2 * EVENT_SIZE
_E3 = 3 * EVENT_SIZE
# order record layout (S1): field offsets within a record of RECORD ints
O_ID = 0
O_ACCT = 1
O_ASLOT = 2
O_SYM = 3
O_SIDE = 4
O_TYPE = 5
O_TIF = 6
O_FLAGS = 7
O_STP = 8
O_PRICE = 9
O_QTY = 10
O_REM = 11
O_FILLED = 12
O_PROD = 13
O_EXP = 14
O_STOP = 15
O_FUNDS = 16
O_HOLD = 17
O_FEEPAID = 18
O_PREV = 19
O_NEXT = 20
O_LVL = 21
O_STATE = 22
RECORD = 32                           # ints per record (a power of two)
SHIFT = 5                             # handle >> SHIFT = slot number
_TEMPLATE = [0] * RECORD
for _f in (O_PREV, O_NEXT, O_LVL):
    _TEMPLATE[_f] = -1
del _f
_ORDER = struct.Struct("<qIHBBBBBBqqqqQHqqqq16sq")
_SYM_HDR = struct.Struct("<HBqqII")


_HEAP_SLACK = 64        # S2: a price heap is rebuilt beyond 2 x its live levels + this
_SCAN_TICKS = 256       # S2: _prices_to steps tick by tick over at most this many ticks


def _push_price(heap, key, levels, sign):
    """S2: add a new level's price key (``sign * price``) to a side's heap; rebuild the
    heap from the live levels once the prices of dropped levels make it too long (the
    heap then holds each live price once).  Amortised O(log L)."""
    if len(heap) > 2 * len(levels) + _HEAP_SLACK:
        heap[:] = [sign * p for p in levels]
        heapq.heapify(heap)
    else:
        heapq.heappush(heap, key)


def _prices_to(levels, best, limit, sign):
    """S2: the prices from ``best`` to ``limit`` (inclusive) of one side in priority
    order (asks ascending: ``sign`` 1; bids descending: -1): every tick (a ``range``:
    the caller skips ticks without a level) over a span of at most _SCAN_TICKS ticks
    (a FOK limit near the touch), else the side's level prices sorted (O(L log L)).
    ``best`` is NO_ASK/NO_BID for an empty side."""
    if not levels:
        return ()
    if sign == 1:
        if limit - best <= _SCAN_TICKS:
            return range(best, limit + 1)
        return sorted(p for p in levels if p <= limit)
    if best - limit <= _SCAN_TICKS:
        return range(best, limit - 1, -1)
    return sorted((p for p in levels if p >= limit), reverse=True)


class _Sym(object):
    """One symbol: the spec's numbers flattened, its book (S2) and its stops."""

    __slots__ = ("symbol_id", "spec", "base_i", "quote_i", "bpl", "u", "maker", "taker",
                 "band", "min_qty", "max_qty", "halted", "last_price", "trade_id",
                 "bid_levels", "ask_levels", "bid_heap", "ask_heap", "best_bid",
                 "best_ask", "rising", "falling", "stops")

    def __init__(self, spec, index):
        self.symbol_id = spec.symbol_id
        self.spec = spec
        self.base_i = index[spec.base_asset]
        self.quote_i = index[spec.quote_asset]
        self.bpl = spec.base_per_lot
        self.u = spec.quote_per_tick_lot
        self.maker = spec.maker_fee_bps
        self.taker = spec.taker_fee_bps
        self.band = spec.price_band_bps
        self.min_qty = spec.min_qty
        self.max_qty = spec.max_qty
        self.halted = spec.status == "halted"
        self.last_price = 0
        self.trade_id = 0
        self.bid_levels = {}        # price -> level slot
        self.ask_levels = {}
        self.bid_heap = []          # S2: level prices, negated; lazily deleted
        self.ask_heap = []
        self.best_bid = NO_BID
        self.best_ask = NO_ASK
        self.rising = SortedList()  # (stop_price, order_id)
        self.falling = SortedList()
        self.stops = {}             # order_id -> slot


class SoaMatcher(object):
    """Drop-in for :class:`engine.matcher.Matcher`'s command processing, hashing and
    snapshots (``process``, ``state_hash``, ``snapshot``, ``restore``, ``best_bid``,
    ``best_ask``, ``last_price``, ``balance``, ``depth``, ``_check``).

    ``process`` is O(1) plus O(log L) per level created/emptied plus O(1) per fill.
    Raises only on bugs (and ValueError for a non-increasing seq).

    Example::

        >>> from engine.config import DEFAULT_CONFIG
        >>> from engine.commands import Command
        >>> m = SoaMatcher(DEFAULT_CONFIG, BytesSink())
        >>> m.process(1, Command.deposit(7, 1, 100)); m.balance(7, 1)
        (100, 0)
    """

    __slots__ = ("W", "_bs", "_ck", "_ei", "_emit_event", "_seq", "_sink_mark_last", "_ts",
                 "a_coid", "a_id", "a_norders", "acct_slot", "asset_ids", "bal",
                 "clock", "commands", "config", "expiry", "fee_account_id", "index", "last_seq",
                 "lv_count", "lv_free", "lv_head", "lv_price", "lv_tail", "lv_total", "n_assets",
                 "n_live", "now", "o_coid", "o_feenum", "o_free", "ob", "old", "sink",
                 "snapshot_seq", "supply", "symbols", "win", "win_base")

    def __init__(self, config, sink):
        self.config = config
        self.sink = sink
        if type(sink) is BytesSink:
            self._bs = sink
            self._emit_event = None
            self._sink_mark_last = None
        else:
            self._bs = None
            self._emit_event = sink.emit_event
            self._sink_mark_last = sink.mark_last
        self._seq = 0
        self._ts = 0
        self._ck = 0
        self._ei = 0
        # assets / accounts (S4)
        self.asset_ids = sorted(config.assets)
        self.index = dict((aid, 2 * i) for i, aid in enumerate(self.asset_ids))
        self.n_assets = len(self.asset_ids)
        self.W = 2 * self.n_assets
        self.supply = [0] * self.n_assets
        self.fee_account_id = config.fee_account_id
        self.acct_slot = {}
        self.a_id = []
        self.a_norders = []
        self.a_coid = []           # dict client order id -> order slot, or None
        self.bal = []
        self._new_account(config.fee_account_id)
        self.symbols = dict((sid, _Sym(config.symbols[sid], self.index))
                            for sid in sorted(config.symbols))
        # order columns (S1)
        self.ob = []            # order records, RECORD ints each, at handle h = slot * RECORD
        self.o_coid = []        # client order id per slot (h >> SHIFT): may exceed int64
        self.o_feenum = []      # fee numerator per slot: may exceed int64
        self.o_free = []
        # level columns (S2)
        self.lv_price = []
        self.lv_head = []
        self.lv_tail = []
        self.lv_total = []
        self.lv_count = []
        self.lv_free = []
        # live orders by id (S3)
        self.win = []
        self.win_base = 1
        self.old = {}
        self.n_live = 0
        self.expiry = []
        self.now = 0
        self.clock = 0
        self.snapshot_seq = 0
        self.last_seq = 0
        self.commands = 0

    # ==================================================================
    # storage
    # ==================================================================
    def _new_account(self, account_id):
        a = len(self.a_id)
        self.acct_slot[account_id] = a
        self.a_id.append(account_id)
        self.a_norders.append(0)
        self.a_coid.append(None)
        self.bal.extend([0] * self.W)
        return a

    def _alloc(self, oid, account_id, a, sid, side, otype, tif, flags, stp, price, qty,
               coid, prod, expire_ns, stop_price, funds):
        """A new record at the end of ``ob`` (S1; reuse of a free record is inlined in
        :meth:`_new_order`, the only caller with a free list)."""
        ob = self.ob
        h = len(ob)
        ob.extend(_TEMPLATE)
        ob[h + O_ID] = oid
        ob[h + O_ACCT] = account_id
        ob[h + O_ASLOT] = a
        ob[h + O_SYM] = sid
        ob[h + O_SIDE] = side
        ob[h + O_TYPE] = otype
        ob[h + O_TIF] = tif
        ob[h + O_FLAGS] = flags
        ob[h + O_STP] = stp
        ob[h + O_PRICE] = price
        ob[h + O_QTY] = qty
        ob[h + O_REM] = qty
        ob[h + O_PROD] = prod
        ob[h + O_EXP] = expire_ns
        ob[h + O_STOP] = stop_price
        ob[h + O_FUNDS] = funds
        self.o_coid.append(coid)
        self.o_feenum.append(0)
        return h

    def _free(self, s):
        """Return a finished order's slot (S1); a live one stays."""
        ob = self.ob
        if ob[s + O_STATE] == FREE:
            self.o_free.append(s)

    def _lookup(self, oid):
        """Slot of live order ``oid`` or -1.  O(1)."""
        i = oid - self.win_base
        if 0 <= i < len(self.win):
            return self.win[i] - 1
        return self.old.get(oid, -1)

    def _register(self, s, state):
        """Index a live order by id, account and client id (rule M8); GTT -> heap."""
        ob = self.ob
        oid = ob[s + O_ID]
        win = self.win
        i = oid - self.win_base
        if i >= len(win):
            if i - len(win) > _WINDOW_FOLD:     # a jump in ids: a fresh window at oid
                self._fold(True)
                self.win_base = oid
                i = 0
            elif i >= _WINDOW_FOLD:
                self._fold(False)
                i = oid - self.win_base
            d = i + 1 - len(win)
            if d <= _WINDOW_CHUNK:
                win.extend(_ZEROS)     # grows in chunks: no list built per order
            else:
                win.extend([0] * d)
        if i >= 0:
            win[i] = s + 1
        else:
            self.old[oid] = s
        ob[s + O_STATE] = state
        self.n_live += 1
        a = ob[s + O_ASLOT]
        self.a_norders[a] += 1
        coid = self.o_coid[s >> SHIFT]
        if coid:
            d = self.a_coid[a]
            if d is None:
                d = self.a_coid[a] = {}
            d[coid] = s
        if ob[s + O_TIF] == GTT:
            heapq.heappush(self.expiry, (ob[s + O_EXP], oid))

    def _fold(self, everything=False):
        """S3: move the live orders of the window's older half (or all of it, before a
        jump in order ids) into ``old`` and drop that part."""
        win = self.win
        half = len(win) if everything else len(win) // 2
        base = self.win_base
        old = self.old
        for i in range(half):
            v = win[i]
            if v:
                old[base + i] = v - 1
        del win[:half]
        self.win_base = base + half

    def _unregister(self, s):
        ob = self.ob
        oid = ob[s + O_ID]
        i = oid - self.win_base
        if 0 <= i < len(self.win):
            self.win[i] = 0
        else:
            del self.old[oid]
        ob[s + O_STATE] = FREE
        self.n_live -= 1
        a = ob[s + O_ASLOT]
        self.a_norders[a] -= 1
        coid = self.o_coid[s >> SHIFT]
        if coid:
            del self.a_coid[a][coid]

    # -- book (S2) ---------------------------------------------------------
    def _book_insert(self, sym, s):
        ob = self.ob
        price = ob[s + O_PRICE]
        if ob[s + O_SIDE] == BUY:
            lv = sym.bid_levels.get(price, -1)
            if lv < 0:
                lv = self._new_level(price)
                sym.bid_levels[price] = lv
                _push_price(sym.bid_heap, -price, sym.bid_levels, -1)
                if price > sym.best_bid:
                    sym.best_bid = price
        else:
            lv = sym.ask_levels.get(price, -1)
            if lv < 0:
                lv = self._new_level(price)
                sym.ask_levels[price] = lv
                _push_price(sym.ask_heap, price, sym.ask_levels, 1)
                if price < sym.best_ask:
                    sym.best_ask = price
        tail = self.lv_tail[lv]
        ob[s + O_PREV] = tail
        ob[s + O_NEXT] = -1
        if tail < 0:
            self.lv_head[lv] = s
        else:
            ob[tail + O_NEXT] = s
        self.lv_tail[lv] = s
        self.lv_total[lv] += ob[s + O_REM]
        self.lv_count[lv] += 1
        ob[s + O_LVL] = lv

    def _new_level(self, price):
        free = self.lv_free
        if free:
            lv = free.pop()
            self.lv_price[lv] = price
            self.lv_head[lv] = -1
            self.lv_tail[lv] = -1
            self.lv_total[lv] = 0
            self.lv_count[lv] = 0
            return lv
        lv = len(self.lv_price)
        self.lv_price.append(price)
        self.lv_head.append(-1)
        self.lv_tail.append(-1)
        self.lv_total.append(0)
        self.lv_count.append(0)
        return lv

    def _book_remove(self, sym, s):
        """Unlink resting ``s`` (its remaining leaves the total); returns the level's
        total afterwards (0 when the level emptied and was dropped)."""
        ob = self.ob
        lv = ob[s + O_LVL]
        prv = ob[s + O_PREV]
        nxt = ob[s + O_NEXT]
        if prv < 0:
            self.lv_head[lv] = nxt
        else:
            ob[prv + O_NEXT] = nxt
        if nxt < 0:
            self.lv_tail[lv] = prv
        else:
            ob[nxt + O_PREV] = prv
        ob[s + O_PREV] = ob[s + O_NEXT] = ob[s + O_LVL] = -1
        self.lv_total[lv] -= ob[s + O_REM]
        count = self.lv_count[lv] - 1
        self.lv_count[lv] = count
        if count == 0:
            self._drop_level(sym, ob[s + O_SIDE], self.lv_price[lv])
            return 0
        return self.lv_total[lv]

    def _drop_level(self, sym, side, price):
        if side == BUY:
            levels = sym.bid_levels
            lv = levels.pop(price)
            if price == sym.best_bid:
                # S2: the heap's top, once the prices of dropped levels are popped
                heap = sym.bid_heap
                while heap and -heap[0] not in levels:
                    heapq.heappop(heap)
                sym.best_bid = -heap[0] if heap else NO_BID
        else:
            levels = sym.ask_levels
            lv = levels.pop(price)
            if price == sym.best_ask:
                heap = sym.ask_heap
                while heap and heap[0] not in levels:
                    heapq.heappop(heap)
                sym.best_ask = heap[0] if heap else NO_ASK
        self.lv_free.append(lv)

    # -- stops ---------------------------------------------------------------
    def _rises(self, s):
        ob = self.ob
        return (ob[s + O_SIDE] == BUY) == (ob[s + O_TYPE] == STOP_LOSS or
                                            ob[s + O_TYPE] == STOP_LIMIT)

    def _stop_add(self, sym, s):
        ob = self.ob
        (sym.rising if self._rises(s) else sym.falling).add((ob[s + O_STOP], ob[s + O_ID]))
        sym.stops[ob[s + O_ID]] = s

    def _stop_remove(self, sym, s):
        ob = self.ob
        (sym.rising if self._rises(s) else sym.falling).remove((ob[s + O_STOP], ob[s + O_ID]))
        del sym.stops[ob[s + O_ID]]

    # ==================================================================
    # events (S5)
    # ==================================================================
    def _ev(self, kind, side, otype, tif, flags, sid, reason, prod, account_id, oid, price,
            qty, rem, filled, fee, amount, trade_id, c_oid, c_acct, coid, aux):
        ei = self._ei
        self._ei = ei + 1
        bs = self._bs
        if bs is not None:
            end = bs._end
            if end > bs._limit:
                bs._grow()
            _pack_into(bs._buf, end, kind, side, otype, tif, flags, self._ck, sid, reason, prod,
                       account_id, self._seq, oid, price, qty, rem, filled, fee, amount,
                       trade_id, c_oid, c_acct, ei, self._ts, coid, aux)
            bs._end = end + EVENT_SIZE
        else:
            self._emit_event(kind, side, otype, tif, flags, self._ck, sid, reason, prod,
                             account_id, self._seq, oid, price, qty, rem, filled, fee, amount,
                             trade_id, c_oid, c_acct, ei, self._ts, coid, aux)

    def _oev(self, kind, s, flags, reason, price, qty, fee, amount, trade_id, c_oid, c_acct,
             aux):
        """An event about order slot ``s`` (EventWriter.order)."""
        ob = self.ob
        self._ev(kind, ob[s + O_SIDE], ob[s + O_TYPE], ob[s + O_TIF], flags, ob[s + O_SYM],
                 reason, ob[s + O_PROD], ob[s + O_ACCT], ob[s + O_ID], price, qty,
                 ob[s + O_REM], ob[s + O_FILLED], fee, amount, trade_id, c_oid, c_acct,
                 self.o_coid[s >> SHIFT], aux)

    def _delta(self, sid, side, price, total):
        self._ev(E_DELTA, side, 0, 0, 0, sid, 0, 0, 0, 0, price, total, 0, 0, 0, 0, 0, 0, 0, 0,
                 0)

    def _fill(self, m, o, sid, price, q, mfee, tfee, n, trade_id):
        """Maker FILL, taker FILL, TRADE (EventWriter.fill)."""
        ob = self.ob
        maker_id = ob[m + O_ID]
        maker_acct = ob[m + O_ACCT]
        taker_id = ob[o + O_ID]
        taker_acct = ob[o + O_ACCT]
        taker_side = ob[o + O_SIDE]
        bs = self._bs
        if bs is not None:
            end = bs._end
            if end > bs._limit:
                bs._grow()
            buf = bs._buf
            ei = self._ei
            ck = self._ck
            seq = self._seq
            ts = self._ts
            _pack_into(buf, end, E_FILL, ob[m + O_SIDE], ob[m + O_TYPE], ob[m + O_TIF],
                       EF_MAKER, ck, sid, 0, ob[m + O_PROD], maker_acct, seq, maker_id, price,
                       q, ob[m + O_REM], ob[m + O_FILLED], mfee, n, trade_id, taker_id,
                       taker_acct, ei, ts, self.o_coid[m >> SHIFT], ob[m + O_HOLD])
            _pack_into(buf, end + EVENT_SIZE, E_FILL, taker_side, ob[o + O_TYPE],
                       ob[o + O_TIF], EF_TAKER, ck, sid, 0, ob[o + O_PROD], taker_acct, seq,
                       taker_id, price, q, ob[o + O_REM], ob[o + O_FILLED], tfee, n, trade_id,
                       maker_id, maker_acct, ei + 1, ts, self.o_coid[o >> SHIFT],
                       ob[o + O_HOLD])
            _pack_into(buf, end + _E2, E_TRADE, taker_side, 0, 0, 0, ck, sid, 0, 0, taker_acct,
                       seq, taker_id, price, q, 0, 0, 0, n, trade_id, maker_id, maker_acct,
                       ei + 2, ts, 0, 0)
            self._ei = ei + 3
            bs._end = end + _E3
            return
        self._ev(E_FILL, ob[m + O_SIDE], ob[m + O_TYPE], ob[m + O_TIF], EF_MAKER, sid, 0,
                 ob[m + O_PROD], maker_acct, maker_id, price, q, ob[m + O_REM],
                 ob[m + O_FILLED], mfee, n, trade_id, taker_id, taker_acct, self.o_coid[m >> SHIFT],
                 ob[m + O_HOLD])
        self._ev(E_FILL, taker_side, ob[o + O_TYPE], ob[o + O_TIF], EF_TAKER, sid, 0,
                 ob[o + O_PROD], taker_acct, taker_id, price, q, ob[o + O_REM],
                 ob[o + O_FILLED], tfee, n, trade_id, maker_id, maker_acct, self.o_coid[o >> SHIFT],
                 ob[o + O_HOLD])
        self._ev(E_TRADE, taker_side, 0, 0, 0, sid, 0, 0, taker_acct, taker_id, price, q, 0, 0,
                 0, n, trade_id, maker_id, maker_acct, 0, 0)

    def _mark_last(self):
        bs = self._bs
        if bs is not None:
            bs._buf[bs._end - EVENT_SIZE + 4] |= EF_LAST
        else:
            self._sink_mark_last()

    # ==================================================================
    # dispatch (rule M1, M9)
    # ==================================================================
    def process(self, seq, cmd):
        """Apply one command (rule M1).  ``cmd``: any object with the command fields."""
        kind = cmd.kind
        if kind == K_NOP:
            return
        if seq <= self.last_seq:
            raise ValueError("seq %d does not follow %d" % (seq, self.last_seq))
        self.last_seq = seq
        self.commands += 1
        ts = cmd.timestamp_ns
        refused = False
        if kind >= K_SNAPSHOT:
            privileged = PRIVILEGED_PRODUCER_ID_MIN <= cmd.producer_id \
                <= PRIVILEGED_PRODUCER_ID_MAX
            if kind == K_CLOCK:
                if privileged:
                    if self.clock < ts <= _MAX_TS:
                        self.clock = ts
                else:
                    refused = True
            elif kind <= K_HASH and not privileged and self.clock:
                refused = True
        clock = self.clock
        if clock and ts > clock + MAX_CLOCK_SKEW_NS:
            ts = clock + MAX_CLOCK_SKEW_NS
        now = self.now
        if ts > now and ts <= _MAX_TS:
            self.now = now = ts
        self._seq = seq
        self._ts = now
        self._ck = kind
        self._ei = 0
        expiry = self.expiry
        if expiry and expiry[0][0] <= now:
            self._expire(now)
        if refused:
            self._reject(cmd, R_NOT_PRIVILEGED, 0)
        elif kind == K_NEW:
            t = self._new_order(seq, cmd)   # None/0, or handle + 1 of an order to take
            if t:
                self._take_new(t - 1)
        elif kind == K_CANCEL:
            self._cancel(cmd)
        elif kind == K_AMEND:
            self._amend(cmd)
        elif kind == K_MASS:
            self._mass_cancel(cmd)
        elif kind == K_DEPOSIT or kind == K_WITHDRAW:
            self._transfer(kind, cmd)
        elif kind == K_HALT or kind == K_RESUME:
            self._halt(kind, cmd)
        elif kind == K_SNAPSHOT or kind == K_HASH:
            self._ack(cmd)
            if kind == K_SNAPSHOT:
                self.snapshot_seq = seq
            h = self.state_hash() & _MASK63
            self._ev(E_SNAPSHOT if kind == K_SNAPSHOT else E_HASH, 0, 0, 0, 0, 0, 0,
                     cmd.producer_id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, h)
        elif kind == K_CLOCK:
            self._ack(cmd)
        else:
            self._ck = kind & 0xFF
            self._reject(cmd, R_UNKNOWN_COMMAND, 0)
        self._mark_last()

    def _reject(self, cmd, reason, order_id):
        self._ev(E_REJECTED, cmd.side & 0xFF, cmd.order_type & 0xFF, cmd.tif & 0xFF, 0,
                 cmd.symbol_id & 0xFFFF, reason, cmd.producer_id & 0xFFFF,
                 cmd.account_id & 0xFFFFFFFF, _i64(order_id), _i64(cmd.price), _i64(cmd.qty),
                 0, 0, 0, 0, 0, 0, 0, cmd.client_order_id & 0xFFFFFFFFFFFFFFFF, 0)

    def _ack(self, cmd, order_id=0, qty=0, amount=0, aux=0):
        self._ev(E_ACCEPTED, 0, 0, 0, 0, cmd.symbol_id, 0, cmd.producer_id, cmd.account_id,
                 order_id, 0, qty, 0, 0, 0, amount, 0, 0, 0, cmd.client_order_id, aux)

    # ==================================================================
    # holds (rule M4)
    # ==================================================================
    def _need_rest(self, s, sym):
        ob = self.ob
        rem = ob[s + O_REM]
        if ob[s + O_SIDE] == SELL:
            return rem * sym.bpl
        n = ob[s + O_PRICE] * rem * sym.u
        m = sym.maker
        if m > 0:
            return n - ((-(self.o_feenum[s >> SHIFT] + n * m)) // 10000) - ob[s + O_FEEPAID]
        return n

    def _need_stop(self, s, sym):
        ob = self.ob
        if ob[s + O_SIDE] == SELL:
            return ob[s + O_QTY] * sym.bpl
        if ob[s + O_FLAGS] & F_FUNDS:
            return ob[s + O_FUNDS]
        price = ob[s + O_PRICE]
        if price == 0:
            return 0
        n = price * ob[s + O_QTY] * sym.u
        return n - ((-n * sym.taker) // 10000)

    # ==================================================================
    # NEW_ORDER
    # ==================================================================
    def _new_order(self, seq, cmd):
        ob = self.ob
        sym = self.symbols.get(cmd.symbol_id)
        if sym is None:
            return self._reject(cmd, R_UNKNOWN_SYMBOL, seq)
        account_id = cmd.account_id
        a = self.acct_slot.get(account_id, -1)
        if a < 0 or account_id == self.fee_account_id:
            return self._reject(cmd, R_UNKNOWN_ACCOUNT, seq)
        side = cmd.side
        otype = cmd.order_type
        tif = cmd.tif
        flags = cmd.flags
        stp = cmd.stp
        price = cmd.price
        qty = cmd.qty
        funds = 0
        expire_ns = 0
        stop_price = cmd.stop_price
        if not (flags == 0 and stop_price == 0 and (side == BUY or side == SELL)
                and 0 <= stp <= 3 and sym.min_qty <= qty <= sym.max_qty
                and (tif == GTC or tif == IOC or tif == FOK)
                and ((otype == LIMIT and 0 < price <= MAX_VALUE)
                     or (otype == MARKET and price == 0))):
            if side != BUY and side != SELL:
                return self._reject(cmd, R_INVALID_SIDE, seq)
            allowed_tif = _ALLOWED_TIF.get(otype)
            if allowed_tif is None:
                return self._reject(cmd, R_INVALID_ORDER_TYPE, seq)
            if tif not in allowed_tif:
                return self._reject(cmd, R_INVALID_TIF, seq)
            if flags:
                if flags & ~(F_POST | F_REPRICE | F_FUNDS):
                    return self._reject(cmd, R_INVALID_FLAGS, seq)
                if flags & F_POST:
                    if otype != LIMIT or tif == IOC or tif == FOK:
                        return self._reject(cmd, R_INVALID_FLAGS, seq)
                elif flags & F_REPRICE:
                    return self._reject(cmd, R_INVALID_FLAGS, seq)
                if flags & F_FUNDS:
                    if side != BUY or (otype != MARKET and otype != STOP_LOSS
                                       and otype != TAKE_PROFIT):
                        return self._reject(cmd, R_INVALID_FLAGS, seq)
                    if tif == GTT or tif == FOK:
                        return self._reject(cmd, R_INVALID_TIF, seq)
            if stp < 0 or stp > 3:
                return self._reject(cmd, R_INVALID_STP, seq)
            if otype == LIMIT or otype == STOP_LIMIT or otype == TAKE_PROFIT_LIMIT:
                if price <= 0:
                    return self._reject(cmd, R_INVALID_PRICE, seq)
                if price > MAX_VALUE:
                    return self._reject(cmd, R_VALUE_OVERFLOW, seq)
            elif price != 0:
                return self._reject(cmd, R_INVALID_PRICE, seq)
            if flags & F_FUNDS:
                if qty != 0:
                    return self._reject(cmd, R_INVALID_QTY, seq)
                funds = cmd.funds
                if funds <= 0:
                    return self._reject(cmd, R_INVALID_FUNDS, seq)
                if funds > MAX_VALUE:
                    return self._reject(cmd, R_VALUE_OVERFLOW, seq)
            else:
                if qty <= 0:
                    return self._reject(cmd, R_INVALID_QTY, seq)
                if qty < sym.min_qty:
                    return self._reject(cmd, R_QTY_BELOW_MIN, seq)
                if qty > sym.max_qty:
                    return self._reject(cmd, R_QTY_ABOVE_MAX, seq)
            if otype >= STOP_LOSS:
                if stop_price <= 0 or stop_price > MAX_VALUE:
                    return self._reject(cmd, R_INVALID_STOP_PRICE, seq)
            elif stop_price != 0:
                return self._reject(cmd, R_INVALID_STOP_PRICE, seq)
            if tif == GTT:
                expire_ns = cmd.expire_ns
                if expire_ns <= self.now or expire_ns > _MAX_TS:
                    return self._reject(cmd, R_INVALID_EXPIRY, seq)
        if sym.halted:
            return self._reject(cmd, R_SYMBOL_HALTED, seq)
        coid = cmd.client_order_id
        if coid:
            d = self.a_coid[a]
            if d is not None and coid in d:
                return self._reject(cmd, R_DUPLICATE_CLIENT_ORDER_ID, seq)
        band = sym.band
        if band and price and sym.last_price:
            last = sym.last_price
            if abs(price - last) * 10000 > last * band:
                return self._reject(cmd, R_PRICE_OUT_OF_BAND, seq)
        if funds:
            qty = 0
        free = self.o_free
        if free:        # _alloc's reuse path, inlined (S1: a free slot is unlinked)
            s = free.pop()
            ob[s + O_ID] = seq
            ob[s + O_ACCT] = account_id
            ob[s + O_ASLOT] = a
            ob[s + O_SYM] = sym.symbol_id
            ob[s + O_SIDE] = side
            ob[s + O_TYPE] = otype
            ob[s + O_TIF] = tif
            ob[s + O_FLAGS] = flags
            ob[s + O_STP] = stp
            ob[s + O_PRICE] = price
            ob[s + O_QTY] = qty
            ob[s + O_REM] = qty
            ob[s + O_FILLED] = 0
            ob[s + O_PROD] = cmd.producer_id
            ob[s + O_EXP] = expire_ns
            ob[s + O_STOP] = stop_price
            ob[s + O_FUNDS] = funds
            ob[s + O_HOLD] = 0
            ob[s + O_FEEPAID] = 0
            i = s >> SHIFT
            self.o_coid[i] = coid
            self.o_feenum[i] = 0
        else:
            s = self._alloc(seq, account_id, a, sym.symbol_id, side, otype, tif, flags, stp,
                            price, qty, coid, cmd.producer_id, expire_ns, stop_price, funds)
        if otype >= STOP_LOSS:
            self._new_stop(s, sym, a, cmd)
            if ob[s + O_STATE] == FREE:
                self.o_free.append(s)
        else:
            r = self._new_taker(s, sym, a, cmd, seq, side, otype, tif, flags, price, qty, funds)
            if r is None:
                self.o_free.append(s)        # rejected
            elif r is not True:
                return s + 1                 # accepted, to take: process calls _take_new
        return 0

    def _take_new(self, s):
        """The taker phase of an accepted limit/market order (S7: called from
        :meth:`process`, so the frames of _new_order and _new_taker, with their many int
        locals, are gone when the maker loop is entered; docs/engine.md); frees the slot
        before the triggers run, since a triggered order may take it."""
        sym = self.symbols[self.ob[s + O_SYM]]
        last = sym.last_price
        self._take(s, sym)
        if self.ob[s + O_STATE] == FREE:
            self.o_free.append(s)
        if sym.last_price != last and sym.stops:
            self._run_triggers(sym)

    def _new_taker(self, s, sym, a, cmd, seq, side, otype, tif, flags, price, qty, funds):
        """Limit/market entry.  None when rejected (the caller frees the slot), True once
        accepted and handled here (rested), else ``s``: accepted, the taker phase is
        :meth:`_take_new`'s."""
        ob = self.ob
        bal = self.bal
        ab = a * self.W
        eflags = 0
        if otype == LIMIT:
            if flags & F_POST:
                if side == BUY:
                    if price >= sym.best_ask:
                        if not flags & F_REPRICE or sym.best_ask <= 1:
                            return self._reject(cmd, R_POST_ONLY_WOULD_TAKE, seq)
                        price = sym.best_ask - 1
                        ob[s + O_PRICE] = price
                        eflags = EF_REPRICED
                elif price <= sym.best_bid:
                    if not flags & F_REPRICE:
                        return self._reject(cmd, R_POST_ONLY_WOULD_TAKE, seq)
                    price = sym.best_bid + 1
                    ob[s + O_PRICE] = price
                    eflags = EF_REPRICED
                hold = self._need_rest(s, sym)
            elif side == BUY:
                n = price * qty * sym.u
                hold = n - ((-n * sym.taker) // 10000)
            else:
                hold = qty * sym.bpl
            hi = ab + (sym.quote_i if side == BUY else sym.base_i)
            if hold > bal[hi]:
                return self._reject(cmd, R_INSUFFICIENT_FUNDS, seq)
            if tif == FOK and not self._fok_fillable(s, sym, ab):
                return self._reject(cmd, R_FOK_NOT_FILLABLE, seq)
        else:   # MARKET
            if side == BUY:
                if sym.best_ask == NO_ASK:
                    return self._reject(cmd, R_NO_LIQUIDITY, seq)
                hi = ab + sym.quote_i
                hold = funds if funds else bal[hi]
                if hold > bal[hi] or hold == 0:
                    return self._reject(cmd, R_INSUFFICIENT_FUNDS, seq)
            else:
                if sym.best_bid == NO_BID:
                    return self._reject(cmd, R_NO_LIQUIDITY, seq)
                hi = ab + sym.base_i
                hold = qty * sym.bpl
                if hold > bal[hi]:
                    return self._reject(cmd, R_INSUFFICIENT_FUNDS, seq)
            if tif == FOK and not self._fok_fillable(s, sym, ab):
                return self._reject(cmd, R_FOK_NOT_FILLABLE, seq)
        bal[hi] -= hold
        bal[hi + 1] += hold
        ob[s + O_HOLD] = hold
        bs = self._bs
        if bs is None:
            self._oev(E_ACCEPTED, s, eflags, 0, price, qty, 0, funds, 0, 0, 0, hold)
        else:
            # S6: ACCEPTED from the locals (= _oev: rem = qty, filled 0 at entry)
            ei = self._ei
            end = bs._end
            if end > bs._limit:
                bs._grow()
            _pack_into(bs._buf, end, E_ACCEPTED, side, otype, tif, eflags, K_NEW, sym.symbol_id,
                       0, ob[s + O_PROD], ob[s + O_ACCT], seq, seq, price, qty, qty, 0, 0,
                       funds, 0, 0, 0, ei, self._ts, self.o_coid[s >> SHIFT], hold)
            bs._end = end + EVENT_SIZE
            self._ei = ei + 1
            if otype == LIMIT and not flags and (tif == GTC or tif == GTT) and (
                    sym.best_ask > price if side == BUY else sym.best_bid < price):
                # S6: a limit order that does not cross rests at once
                self._rest_new(s, sym, a, side, price, qty, hold, hi, bs)
                return True
        if flags & F_POST:
            self._rest(s, sym)
            return True
        return s

    def _new_stop(self, s, sym, a, cmd):
        ob = self.ob
        last = sym.last_price
        if last:
            if self._rises(s):
                triggered = last >= ob[s + O_STOP]
            else:
                triggered = last <= ob[s + O_STOP]
            if triggered:
                return self._reject(cmd, R_INVALID_STOP_PRICE, ob[s + O_ID])
        hold = self._need_stop(s, sym)
        hi = a * self.W + (sym.quote_i if ob[s + O_SIDE] == BUY else sym.base_i)
        bal = self.bal
        if hold > bal[hi]:
            return self._reject(cmd, R_INSUFFICIENT_FUNDS, ob[s + O_ID])
        bal[hi] -= hold
        bal[hi + 1] += hold
        ob[s + O_HOLD] = hold
        self._stop_add(sym, s)
        self._register(s, WAITING)
        self._oev(E_ACCEPTED, s, EF_STOP, 0, ob[s + O_PRICE], ob[s + O_QTY], 0,
                  ob[s + O_FUNDS], ob[s + O_STOP], 0, 0, hold)

    def _fok_fillable(self, s, sym, ab):
        ob = self.ob
        need = ob[s + O_QTY]
        account_id = ob[s + O_ACCT]
        skip_own = ob[s + O_STP] == STP_CO
        side = ob[s + O_SIDE]
        oprice = ob[s + O_PRICE]
        budget = self.bal[ab + sym.quote_i] if (side == BUY and oprice == 0) else -1
        cost = 0
        fee_num = 0
        u = sym.u
        rate = sym.taker
        lv_head = self.lv_head
        if side == BUY:
            limit = oprice or NO_ASK - 1
            levels = sym.ask_levels
            prices = _prices_to(levels, sym.best_ask, limit, 1)
        else:
            limit = oprice or 1
            levels = sym.bid_levels
            prices = _prices_to(levels, sym.best_bid, limit, -1)
        for price in prices:
            lv = levels.get(price, -1)
            if lv < 0:
                continue        # a tick without a level
            m = lv_head[lv]
            while m >= 0:
                if ob[m + O_ACCT] == account_id:
                    if not skip_own:
                        return False
                else:
                    mrem = ob[m + O_REM]
                    q = mrem if mrem < need else need
                    if budget >= 0:
                        n = price * q * u
                        fee_num += n * rate
                        cost += n
                        if cost - ((-fee_num) // 10000) > budget:
                            return False
                    need -= q
                    if need == 0:
                        return True
                m = ob[m + O_NEXT]
        return False

    def _rest(self, s, sym):
        ob = self.ob
        need = self._need_rest(s, sym)
        extra = ob[s + O_HOLD] - need
        if extra:
            hi = ob[s + O_ASLOT] * self.W + (sym.quote_i if ob[s + O_SIDE] == BUY
                                             else sym.base_i)
            bal = self.bal
            bal[hi + 1] -= extra
            bal[hi] += extra
            ob[s + O_HOLD] = need
        self._book_insert(sym, s)
        self._register(s, RESTING)
        # the rest's BOOK_DELTA names the order and carries its hold (docs/records.md)
        self._ev(E_DELTA, ob[s + O_SIDE], 0, 0, 0, sym.symbol_id, 0, 0, 0, ob[s + O_ID],
                 ob[s + O_PRICE], self.lv_total[ob[s + O_LVL]], 0, 0, 0, 0, 0, 0, 0, 0,
                 ob[s + O_HOLD])

    def _rest_new(self, s, sym, a, side, price, qty, hold, hi, bs):
        """S6: :meth:`_rest` + :meth:`_book_insert` + :meth:`_register` + the DELTA for
        a fresh, unfilled limit order (fee numerator and fees paid 0, remaining = qty),
        from locals, into BytesSink ``bs``."""
        ob = self.ob
        if side == BUY:
            need = price * qty * sym.u
            maker = sym.maker
            if maker > 0:
                need -= (-(need * maker)) // 10000
            levels = sym.bid_levels
        else:
            need = qty * sym.bpl
            levels = sym.ask_levels
        extra = hold - need
        if extra:
            bal = self.bal
            bal[hi + 1] -= extra
            bal[hi] += extra
            ob[s + O_HOLD] = need
        lv = levels.get(price, -1)
        if lv < 0:
            lv = self._new_level(price)
            levels[price] = lv
            if side == BUY:
                _push_price(sym.bid_heap, -price, levels, -1)
                if price > sym.best_bid:
                    sym.best_bid = price
            else:
                _push_price(sym.ask_heap, price, levels, 1)
                if price < sym.best_ask:
                    sym.best_ask = price
        lv_tail = self.lv_tail
        tail = lv_tail[lv]
        ob[s + O_PREV] = tail
        if tail < 0:
            self.lv_head[lv] = s
        else:
            ob[tail + O_NEXT] = s
        lv_tail[lv] = s
        lv_total = self.lv_total
        total = lv_total[lv] + qty
        lv_total[lv] = total
        self.lv_count[lv] += 1
        ob[s + O_LVL] = lv
        # _register (rule M8)
        oid = ob[s + O_ID]
        win = self.win
        i = oid - self.win_base
        if 0 <= i < len(win):
            win[i] = s + 1
            ob[s + O_STATE] = RESTING
            self.n_live += 1
            self.a_norders[a] += 1
            coid = self.o_coid[s >> SHIFT]
            if coid:
                d = self.a_coid[a]
                if d is None:
                    d = self.a_coid[a] = {}
                d[coid] = s
            if ob[s + O_TIF] == GTT:
                heapq.heappush(self.expiry, (ob[s + O_EXP], oid))
        else:
            self._register(s, RESTING)
        ei = self._ei
        end = bs._end
        if end > bs._limit:
            bs._grow()
        _pack_into(bs._buf, end, E_DELTA, side, 0, 0, 0, K_NEW, sym.symbol_id, 0, 0, 0,
                   self._seq, oid, price, total, 0, 0, 0, 0, 0, 0, 0, ei, self._ts, 0, need)
        bs._end = end + EVENT_SIZE
        self._ei = ei + 1

    def _release(self, s, sym):
        ob = self.ob
        hold = ob[s + O_HOLD]
        if hold:
            hi = ob[s + O_ASLOT] * self.W + (sym.quote_i if ob[s + O_SIDE] == BUY
                                             else sym.base_i)
            bal = self.bal
            bal[hi + 1] -= hold
            bal[hi] += hold
            ob[s + O_HOLD] = 0
        return hold

    def _take(self, s, sym):
        ob = self.ob
        otype = ob[s + O_TYPE]
        price = ob[s + O_PRICE]
        if ob[s + O_SIDE] == BUY:
            crosses = sym.best_ask <= (price or NO_ASK - 1)
        else:
            crosses = sym.best_bid >= (price or 1)
        stop_reason = self._match(s, sym) if crosses else 0
        rem = ob[s + O_REM]
        tif = ob[s + O_TIF]
        if rem > 0 and stop_reason == 0 and otype != MARKET and otype != STOP_LOSS and \
                otype != TAKE_PROFIT and (tif == GTC or tif == GTT):
            self._rest(s, sym)
            return
        if rem > 0 or ob[s + O_FUNDS]:
            if stop_reason == 0:
                if price == 0:
                    stop_reason = R_CANCELLED_MARKET_REMAINDER
                else:
                    stop_reason = R_CANCELLED_IOC_REMAINDER
            ob[s + O_REM] = 0
            released = self._release(s, sym)
            self._oev(E_CANCELLED, s, 0, stop_reason, price, rem, 0, released, 0, 0, 0, 0)
        else:
            self._release(s, sym)

    def _match(self, o, sym):
        """Match taker ``o``; returns 0 or the reason its remainder must be cancelled.

        Few int locals on purpose: when the maker loop runs as its own compiled JIT loop,
        PyPy materialises this frame at its head and boxes every int local in it; the
        per-fill arithmetic lives in :meth:`_settle` (docs/engine.md, Speed).
        """
        ob = self.ob
        lv_head = self.lv_head
        side = ob[o + O_SIDE]
        by_funds = ob[o + O_FUNDS]
        rem = MAX_VALUE if by_funds else ob[o + O_REM]
        account_id = ob[o + O_ACCT]
        if side == BUY:
            levels = sym.ask_levels
            limit = ob[o + O_PRICE] or NO_ASK - 1
        else:
            levels = sym.bid_levels
            limit = ob[o + O_PRICE] or 1
        stop_reason = 0
        last = 0
        while rem > 0:
            if side == BUY:
                price = sym.best_ask
                if price > limit:
                    break
            else:
                price = sym.best_bid
                if price < limit:
                    break
            lv = levels[price]
            m = lv_head[lv]
            while m >= 0:
                nxt = ob[m + O_NEXT]
                if ob[m + O_ACCT] == account_id:
                    mode = ob[o + O_STP]
                    if mode == STP_CO or (mode == STP_DC and by_funds):
                        self._cancel_head(m, lv, sym, R_CANCELLED_STP)
                        m = nxt
                        continue
                    if mode == STP_CN:
                        stop_reason = R_CANCELLED_STP
                        break
                    if mode == STP_CB:
                        self._cancel_head(m, lv, sym, R_CANCELLED_STP)
                        stop_reason = R_CANCELLED_STP
                        break
                    d = self._stp_decrement(o, m, lv, sym, rem)
                    if d == 0:
                        stop_reason = R_CANCELLED_STP
                        break
                    rem -= d
                    m = nxt
                    continue
                q = self._settle(o, m, lv, sym, price, rem)
                if q == 0:
                    stop_reason = R_CANCELLED_NO_FUNDS
                    break
                rem -= q
                last = price
                if ob[m + O_REM] == 0:
                    self._maker_done(m, lv, nxt, sym)
                    m = nxt
                    if rem == 0:
                        break
                else:
                    if rem:     # maker left, taker not done: only a budget stops this
                        stop_reason = R_CANCELLED_NO_FUNDS
                    break
            mside = SELL if side == BUY else BUY
            if self.lv_count[lv] == 0:
                self._delta(sym.symbol_id, mside, price, 0)
                self._drop_level(sym, mside, price)
            else:
                self._delta(sym.symbol_id, mside, price, self.lv_total[lv])
            if stop_reason:
                break
        if last:
            sym.last_price = last
        return stop_reason

    def _stp_decrement(self, o, m, lv, sym, rem):
        """Rule M6 DECREMENT_AND_CANCEL against maker ``m`` (same account); returns the
        size taken off the taker's remainder and the loop continues, or 0 when the taker
        must stop (its remainder is cancelled)."""
        ob = self.ob
        mrem = ob[m + O_REM]
        d = rem if rem < mrem else mrem
        if mrem > d:
            self._decrement_maker(m, lv, sym, d)
            return 0
        mid = ob[m + O_ID]
        macct = ob[m + O_ACCT]
        self._cancel_head(m, lv, sym, R_CANCELLED_STP)
        if rem == d:
            return 0
        ob[o + O_QTY] -= d
        ob[o + O_REM] -= d
        self._oev(E_AMENDED, o, 0, R_CANCELLED_STP, ob[o + O_PRICE], ob[o + O_QTY], 0, 0, 0,
                  mid, macct, ob[o + O_HOLD])
        return d

    def _settle(self, o, m, lv, sym, price, rem):
        """One fill of taker ``o`` against maker ``m`` at ``price`` (rules M4, M5): fees,
        balances, holds, sizes, level total, trade id, the three fill events.  Returns
        the size filled, 0 if the taker's budget (market buy by size) affords nothing."""
        ob = self.ob
        o_feenum = self.o_feenum
        bal = self.bal
        mrem = ob[m + O_REM]
        q = mrem if mrem < rem else rem
        u = sym.u
        taker_rate = sym.taker
        n = price * q * u
        fn = o_feenum[o >> SHIFT] + n * taker_rate
        fp = -((-fn) // 10000)
        tfee = fp - ob[o + O_FEEPAID]
        side = ob[o + O_SIDE]
        if side == BUY and ob[o + O_PRICE] == 0 and n + tfee > ob[o + O_HOLD]:
            q = self._affordable(o, price * u, q, taker_rate)
            if q == 0:
                return 0
            n = price * q * u
            fn = o_feenum[o >> SHIFT] + n * taker_rate
            fp = -((-fn) // 10000)
            tfee = fp - ob[o + O_FEEPAID]
        o_feenum[o >> SHIFT] = fn
        ob[o + O_FEEPAID] = fp
        fn = o_feenum[m >> SHIFT] + n * sym.maker
        fp = -((-fn) // 10000)
        mfee = fp - ob[m + O_FEEPAID]
        o_feenum[m >> SHIFT] = fn
        ob[m + O_FEEPAID] = fp
        b = q * sym.bpl
        W = self.W
        tb = ob[o + O_ASLOT] * W
        mb = ob[m + O_ASLOT] * W
        qi = sym.quote_i
        bi = sym.base_i
        if side == BUY:
            cost = n + tfee
            ob[o + O_HOLD] -= cost
            bal[tb + qi + 1] -= cost
            bal[tb + bi] += b
            ob[m + O_HOLD] -= b
            bal[mb + bi + 1] -= b
            bal[mb + qi] += n - mfee
        else:
            ob[o + O_HOLD] -= b
            bal[tb + bi + 1] -= b
            bal[tb + qi] += n - tfee
            if mfee >= 0:
                cost = n + mfee
                ob[m + O_HOLD] -= cost
                bal[mb + qi + 1] -= cost
            else:
                ob[m + O_HOLD] -= n
                bal[mb + qi + 1] -= n
                bal[mb + qi] -= mfee
            bal[mb + bi] += b
        bal[qi] += tfee + mfee        # the fee account is account slot 0 (balance base 0)
        ofilled = ob[o + O_FILLED] + q
        ob[o + O_FILLED] = ofilled
        orem = ob[o + O_REM]
        if not ob[o + O_FUNDS]:
            orem -= q
            ob[o + O_REM] = orem
        mfilled = ob[m + O_FILLED] + q
        ob[m + O_FILLED] = mfilled
        ob[m + O_REM] = mrem - q
        self.lv_total[lv] -= q
        trade_id = sym.trade_id + 1
        sym.trade_id = trade_id
        bs = self._bs
        if bs is None:
            self._fill(m, o, sym.symbol_id, price, q, mfee, tfee, n, trade_id)
            return q
        # _fill from the locals: maker FILL, taker FILL, TRADE
        end = bs._end
        if end > bs._limit:
            bs._grow()
        buf = bs._buf
        ei = self._ei
        ck = self._ck
        seq = self._seq
        ts = self._ts
        sid = sym.symbol_id
        maker_id = ob[m + O_ID]
        maker_acct = ob[m + O_ACCT]
        taker_id = ob[o + O_ID]
        taker_acct = ob[o + O_ACCT]
        _pack_into(buf, end, E_FILL, ob[m + O_SIDE], ob[m + O_TYPE], ob[m + O_TIF], EF_MAKER, ck,
                   sid, 0, ob[m + O_PROD], maker_acct, seq, maker_id, price, q, mrem - q,
                   mfilled, mfee, n, trade_id, taker_id, taker_acct, ei, ts,
                   self.o_coid[m >> SHIFT], ob[m + O_HOLD])
        _pack_into(buf, end + EVENT_SIZE, E_FILL, side, ob[o + O_TYPE], ob[o + O_TIF], EF_TAKER,
                   ck, sid, 0, ob[o + O_PROD], taker_acct, seq, taker_id, price, q, orem,
                   ofilled, tfee, n, trade_id, maker_id, maker_acct, ei + 1, ts,
                   self.o_coid[o >> SHIFT], ob[o + O_HOLD])
        _pack_into(buf, end + _E2, E_TRADE, side, 0, 0, 0, ck, sid, 0, 0, taker_acct, seq,
                   taker_id, price, q, 0, 0, 0, n, trade_id, maker_id, maker_acct, ei + 2, ts, 0,
                   0)
        self._ei = ei + 3
        bs._end = end + _E3
        return q

    def _maker_done(self, m, lv, nxt, sym):
        """Unlink filled maker ``m`` from the head of ``lv``; release what is left of its
        hold (exactly 0 by rules M4/M5); unregister and free it."""
        ob = self.ob
        self.lv_head[lv] = nxt
        if nxt < 0:
            self.lv_tail[lv] = -1
        else:
            ob[nxt + O_PREV] = -1
        self.lv_count[lv] -= 1
        ob[m + O_NEXT] = -1
        ob[m + O_LVL] = -1
        mhold = ob[m + O_HOLD]
        if mhold:
            hi = ob[m + O_ASLOT] * self.W + (sym.quote_i if ob[m + O_SIDE] == BUY
                                            else sym.base_i)
            bal = self.bal
            bal[hi + 1] -= mhold
            bal[hi] += mhold
            ob[m + O_HOLD] = 0
        # _unregister
        oid = ob[m + O_ID]
        i = oid - self.win_base
        if 0 <= i < len(self.win):
            self.win[i] = 0
        else:
            del self.old[oid]
        ob[m + O_STATE] = FREE
        self.n_live -= 1
        self.a_norders[ob[m + O_ASLOT]] -= 1
        coid = self.o_coid[m >> SHIFT]
        if coid:
            del self.a_coid[ob[m + O_ASLOT]][coid]
        self.o_free.append(m)

    def _affordable(self, o, pu, q, rate):
        ob = self.ob
        hold = ob[o + O_HOLD]
        est = (hold * 10000) // (pu * (10000 + rate)) + 1
        if est < q:
            q = est
        fee_num = self.o_feenum[o >> SHIFT]
        fee_paid = ob[o + O_FEEPAID]
        while q > 0:
            n = pu * q
            if n - ((-(fee_num + n * rate)) // 10000) - fee_paid <= hold:
                return q
            q -= 1
        return 0

    def _cancel_head(self, m, lv, sym, reason):
        """Cancel maker ``m`` at the head of level ``lv`` during matching (no delta)."""
        ob = self.ob
        nxt = ob[m + O_NEXT]
        self.lv_head[lv] = nxt
        if nxt < 0:
            self.lv_tail[lv] = -1
        else:
            ob[nxt + O_PREV] = -1
        self.lv_count[lv] -= 1
        cancelled = ob[m + O_REM]
        self.lv_total[lv] -= cancelled
        ob[m + O_NEXT] = -1
        ob[m + O_LVL] = -1
        ob[m + O_REM] = 0
        released = self._release(m, sym)
        self._unregister(m)
        self._oev(E_CANCELLED, m, EF_MAKER, reason, ob[m + O_PRICE], cancelled, 0, released, 0,
                  0, 0, 0)
        self.o_free.append(m)

    def _decrement_maker(self, m, lv, sym, d):
        ob = self.ob
        ob[m + O_QTY] -= d
        ob[m + O_REM] -= d
        self.lv_total[lv] -= d
        need = self._need_rest(m, sym)
        extra = ob[m + O_HOLD] - need
        if extra:
            hi = ob[m + O_ASLOT] * self.W + (sym.quote_i if ob[m + O_SIDE] == BUY
                                             else sym.base_i)
            bal = self.bal
            bal[hi + 1] -= extra
            bal[hi] += extra
            ob[m + O_HOLD] = need
        self._oev(E_AMENDED, m, EF_MAKER, R_CANCELLED_STP, ob[m + O_PRICE], ob[m + O_QTY], 0,
                  extra, 0, 0, 0, ob[m + O_HOLD])

    # -- triggers (rule M7) ------------------------------------------------
    def _pop_triggered(self, sym, last_price):
        keys = []
        rising = sym.rising
        while rising and rising[0][0] <= last_price:
            keys.append(rising.pop(0))
        falling = sym.falling
        while falling and falling[-1][0] >= last_price:
            keys.append(falling.pop())
        if not keys:
            return keys
        keys.sort()
        stops = sym.stops
        return [stops.pop(oid) for _, oid in keys]

    def _run_triggers(self, sym):
        ob = self.ob
        while sym.stops:
            batch = self._pop_triggered(sym, sym.last_price)
            if not batch:
                return
            for s in batch:
                self._unregister(s)
                self._oev(E_TRIGGERED, s, EF_STOP, 0, ob[s + O_PRICE], ob[s + O_QTY], 0,
                          ob[s + O_FUNDS], 0, 0, 0, ob[s + O_STOP])
                buy_by_size = ob[s + O_SIDE] == BUY and ob[s + O_PRICE] == 0
                if buy_by_size and not ob[s + O_FUNDS]:
                    bal = self.bal
                    qi = ob[s + O_ASLOT] * self.W + sym.quote_i
                    avail = bal[qi]
                    bal[qi] = 0
                    bal[qi + 1] += avail
                    ob[s + O_HOLD] = avail
                if sym.halted:
                    self._finish_unfilled(s, sym, R_SYMBOL_HALTED)
                elif buy_by_size and ob[s + O_HOLD] == 0:
                    self._finish_unfilled(s, sym, R_CANCELLED_NO_FUNDS)
                else:
                    self._take(s, sym)
                self._free(s)

    def _finish_unfilled(self, s, sym, reason):
        ob = self.ob
        cancelled = ob[s + O_REM]
        ob[s + O_REM] = 0
        released = self._release(s, sym)
        self._oev(E_CANCELLED, s, EF_STOP, reason, ob[s + O_PRICE], cancelled, 0, released, 0,
                  0, 0, 0)

    # -- expiry (rule M1) --------------------------------------------------
    def _expire(self, now):
        ob = self.ob
        expiry = self.expiry
        while expiry and expiry[0][0] <= now:
            expire_ns, oid = heapq.heappop(expiry)
            s = self._lookup(oid)
            if s < 0 or ob[s + O_EXP] != expire_ns:
                continue
            self._remove_live(s, self.symbols[ob[s + O_SYM]], E_EXPIRED, R_CANCELLED_EXPIRED)

    def _remove_live(self, s, sym, kind, reason):
        """Remove a resting order or waiting stop; release its hold; emit kind (+ delta);
        frees the slot."""
        ob = self.ob
        resting = ob[s + O_STATE] == RESTING
        price = ob[s + O_PRICE]
        if resting:
            total = self._book_remove(sym, s)
        else:
            self._stop_remove(sym, s)
        cancelled = ob[s + O_REM]
        ob[s + O_REM] = 0
        released = self._release(s, sym)
        self._unregister(s)
        self._oev(kind, s, 0 if resting else EF_STOP, reason, price, cancelled, 0, released, 0,
                  0, 0, 0)
        if resting:
            self._delta(sym.symbol_id, ob[s + O_SIDE], price, total)
        self.o_free.append(s)

    # ==================================================================
    # CANCEL / AMEND / MASS_CANCEL
    # ==================================================================
    def _target(self, cmd):
        """(account slot, order slot, reason) for a CANCEL/AMEND command."""
        ob = self.ob
        account_id = cmd.account_id
        a = self.acct_slot.get(account_id, -1)
        if a < 0 or account_id == self.fee_account_id:
            return -1, -1, R_UNKNOWN_ACCOUNT
        flags = cmd.flags
        if flags & ~F_BY_CID:
            return a, -1, R_INVALID_FLAGS
        if flags:
            coid = cmd.client_order_id
            d = self.a_coid[a]
            s = d.get(coid, -1) if (coid and d is not None) else -1
            if s < 0:
                return a, -1, R_ORDER_NOT_FOUND
            return a, s, 0
        s = self._lookup(cmd.order_id)
        if s < 0:
            return a, -1, R_ORDER_NOT_FOUND
        if ob[s + O_ACCT] != account_id:
            return a, -1, R_NOT_ORDER_OWNER
        return a, s, 0

    def _cancel(self, cmd):
        ob = self.ob
        bs = self._bs
        if bs is not None and not cmd.flags:
            # S6: a user cancel of a resting order by order id, events from locals
            account_id = cmd.account_id
            a = self.acct_slot.get(account_id, -1)
            if a > 0:       # account slot 0 is the fee account's (_check)
                oid = cmd.order_id
                i = oid - self.win_base
                win = self.win
                if 0 <= i < len(win):
                    s = win[i] - 1
                    if s >= 0 and ob[s + O_ACCT] == account_id and \
                            ob[s + O_STATE] == RESTING:
                        return self._cancel_resting(cmd, s, a, bs)
        a, s, reason = self._target(cmd)
        if reason:
            return self._reject(cmd, reason, cmd.order_id if not cmd.flags & F_BY_CID else 0)
        self._ack(cmd, ob[s + O_ID])
        self._remove_live(s, self.symbols[ob[s + O_SYM]], E_CANCELLED, R_CANCELLED_BY_USER)

    def _cancel_resting(self, cmd, s, a, bs):
        """S6: :meth:`_ack` + :meth:`_remove_live` of resting order ``s`` (account slot
        ``a``) with the events packed here into BytesSink ``bs``."""
        ob = self.ob
        oid = ob[s + O_ID]
        ei = self._ei
        seq = self._seq
        ts = self._ts
        end = bs._end
        if end > bs._limit:
            bs._grow()
        _pack_into(bs._buf, end, E_ACCEPTED, 0, 0, 0, 0, K_CANCEL, cmd.symbol_id, 0,
                   cmd.producer_id, cmd.account_id, seq, oid, 0, 0, 0, 0, 0, 0, 0, 0, 0, ei, ts,
                   cmd.client_order_id, 0)
        sid = ob[s + O_SYM]
        sym = self.symbols[sid]
        price = ob[s + O_PRICE]
        side = ob[s + O_SIDE]
        # _book_remove
        lv = ob[s + O_LVL]
        prv = ob[s + O_PREV]
        nxt = ob[s + O_NEXT]
        if prv < 0:
            self.lv_head[lv] = nxt
        else:
            ob[prv + O_NEXT] = nxt
        if nxt < 0:
            self.lv_tail[lv] = prv
        else:
            ob[nxt + O_PREV] = prv
        ob[s + O_PREV] = ob[s + O_NEXT] = ob[s + O_LVL] = -1
        cancelled = ob[s + O_REM]
        lv_total = self.lv_total
        total = lv_total[lv] - cancelled
        lv_total[lv] = total
        count = self.lv_count[lv] - 1
        self.lv_count[lv] = count
        if count == 0:
            self._drop_level(sym, side, price)
            total = 0
        ob[s + O_REM] = 0
        # _release
        released = ob[s + O_HOLD]
        if released:
            hi = a * self.W + (sym.quote_i if side == BUY else sym.base_i)
            bal = self.bal
            bal[hi + 1] -= released
            bal[hi] += released
            ob[s + O_HOLD] = 0
        # _unregister
        self.win[oid - self.win_base] = 0
        ob[s + O_STATE] = FREE
        self.n_live -= 1
        self.a_norders[a] -= 1
        coid = self.o_coid[s >> SHIFT]
        if coid:
            del self.a_coid[a][coid]
        end += EVENT_SIZE
        _pack_into(bs._buf, end, E_CANCELLED, side, ob[s + O_TYPE], ob[s + O_TIF], 0, K_CANCEL,
                   sid, R_CANCELLED_BY_USER, ob[s + O_PROD], ob[s + O_ACCT], seq, oid, price,
                   cancelled, 0, ob[s + O_FILLED], 0, released, 0, 0, 0, ei + 1, ts, coid, 0)
        _pack_into(bs._buf, end + EVENT_SIZE, E_DELTA, side, 0, 0, 0, K_CANCEL, sid, 0, 0, 0,
                   seq, 0, price, total, 0, 0, 0, 0, 0, 0, 0, ei + 2, ts, 0, 0)
        bs._end = end + _E2
        self._ei = ei + 3
        self.o_free.append(s)

    def _amend(self, cmd):
        ob = self.ob
        a, s, reason = self._target(cmd)
        oid = cmd.order_id if not cmd.flags & F_BY_CID else 0
        if reason:
            return self._reject(cmd, reason, oid)
        oid = ob[s + O_ID]
        sym = self.symbols[ob[s + O_SYM]]
        if ob[s + O_STATE] != RESTING:
            return self._reject(cmd, R_AMEND_NOT_ALLOWED, oid)
        if sym.halted:
            return self._reject(cmd, R_SYMBOL_HALTED, oid)
        price = cmd.price
        qty = cmd.qty
        if price < 0:
            return self._reject(cmd, R_INVALID_PRICE, oid)
        if price > MAX_VALUE:
            return self._reject(cmd, R_VALUE_OVERFLOW, oid)
        if qty < 0:
            return self._reject(cmd, R_INVALID_QTY, oid)
        old_price = ob[s + O_PRICE]
        old_qty = ob[s + O_QTY]
        old_rem = ob[s + O_REM]
        side = ob[s + O_SIDE]
        new_price = price or old_price
        new_qty = qty or old_qty
        filled = ob[s + O_FILLED]
        if new_qty <= filled:
            return self._reject(cmd, R_AMEND_BELOW_FILLED, oid)
        if new_qty < sym.min_qty:
            return self._reject(cmd, R_QTY_BELOW_MIN, oid)
        if new_qty > sym.max_qty:
            return self._reject(cmd, R_QTY_ABOVE_MAX, oid)
        if new_price == old_price and new_qty == old_qty:
            return self._reject(cmd, R_AMEND_NOT_ALLOWED, oid)
        if new_price != old_price:
            if sym.band and sym.last_price:
                last = sym.last_price
                if abs(new_price - last) * 10000 > last * sym.band:
                    return self._reject(cmd, R_PRICE_OUT_OF_BAND, oid)
            if (side == BUY and new_price >= sym.best_ask) or \
                    (side == SELL and new_price <= sym.best_bid):
                return self._reject(cmd, R_AMEND_NOT_ALLOWED, oid)
        ob[s + O_PRICE] = new_price
        ob[s + O_QTY] = new_qty
        ob[s + O_REM] = new_qty - filled
        need = self._need_rest(s, sym)
        hi = ob[s + O_ASLOT] * self.W + (sym.quote_i if side == BUY else sym.base_i)
        bal = self.bal
        diff = need - ob[s + O_HOLD]
        if diff > bal[hi]:
            ob[s + O_PRICE] = old_price
            ob[s + O_QTY] = old_qty
            ob[s + O_REM] = old_rem
            return self._reject(cmd, R_INSUFFICIENT_FUNDS, oid)
        bal[hi] -= diff
        bal[hi + 1] += diff
        ob[s + O_HOLD] = need
        self._ack(cmd, oid)
        lv = ob[s + O_LVL]
        if new_price == old_price and new_qty < old_qty:
            self.lv_total[lv] -= old_rem - ob[s + O_REM]
            self._oev(E_AMENDED, s, 0, 0, new_price, new_qty, 0, 0, 0, 0, 0, need)
            self._delta(sym.symbol_id, side, new_price, self.lv_total[lv])
        else:
            new_rem = ob[s + O_REM]
            ob[s + O_REM] = old_rem
            ob[s + O_PRICE] = old_price
            old_total = self._book_remove(sym, s)
            ob[s + O_PRICE] = new_price
            ob[s + O_REM] = new_rem
            self._book_insert(sym, s)
            self._oev(E_AMENDED, s, 0, 0, new_price, new_qty, 0, 0, 0, 0, 0, need)
            if new_price != old_price:
                self._delta(sym.symbol_id, side, old_price, old_total)
            self._delta(sym.symbol_id, side, new_price, self.lv_total[ob[s + O_LVL]])

    def _orders_of(self, a, symbol_id=0):
        """Live order slots of account slot ``a`` (of ``symbol_id``; 0 = all), ascending
        order id.  O(the account's live orders)."""
        out = []
        ob = self.ob
        left = self.a_norders[a]
        h = 0
        end = len(ob)
        while left and h < end:
            if ob[h + O_STATE] != FREE and ob[h + O_ASLOT] == a:
                if not symbol_id or ob[h + O_SYM] == symbol_id:
                    out.append(h)
                left -= 1
            h += RECORD
        out.sort(key=lambda h: ob[h + O_ID])
        return out

    def _mass_cancel(self, cmd):
        ob = self.ob
        account_id = cmd.account_id
        a = self.acct_slot.get(account_id, -1)
        if a < 0 or account_id == self.fee_account_id:
            return self._reject(cmd, R_UNKNOWN_ACCOUNT, 0)
        symbol_id = cmd.symbol_id
        if symbol_id and symbol_id not in self.symbols:
            return self._reject(cmd, R_UNKNOWN_SYMBOL, 0)
        if cmd.flags:
            return self._reject(cmd, R_INVALID_FLAGS, 0)
        targets = self._orders_of(a, symbol_id)
        self._ack(cmd, 0, len(targets))
        symbols = self.symbols
        for s in targets:
            self._remove_live(s, symbols[ob[s + O_SYM]], E_CANCELLED, R_CANCELLED_MASS)

    # ==================================================================
    # DEPOSIT / WITHDRAW / HALT / RESUME
    # ==================================================================
    def _transfer(self, kind, cmd):
        account_id = cmd.account_id
        if account_id == self.fee_account_id or account_id < 0 or account_id >= (1 << 32):
            return self._reject(cmd, R_UNKNOWN_ACCOUNT, 0)
        a = self.acct_slot.get(account_id, -1)
        if a < 0 and kind == K_WITHDRAW:
            return self._reject(cmd, R_UNKNOWN_ACCOUNT, 0)
        asset_id = cmd.symbol_id
        i = self.index.get(asset_id)
        if i is None:
            return self._reject(cmd, R_UNKNOWN_ASSET, 0)
        amount = cmd.qty
        if amount <= 0:
            return self._reject(cmd, R_INVALID_AMOUNT, 0)
        bal = self.bal
        if kind == K_DEPOSIT:
            if amount > MAX_VALUE or self.supply[i >> 1] + amount > MAX_VALUE:
                return self._reject(cmd, R_VALUE_OVERFLOW, 0)
            if a < 0:
                a = self._new_account(account_id)
            bal[a * self.W + i] += amount
            self.supply[i >> 1] += amount
        else:
            if amount > bal[a * self.W + i]:
                return self._reject(cmd, R_INSUFFICIENT_FUNDS, 0)
            bal[a * self.W + i] -= amount
            self.supply[i >> 1] -= amount
        self._ack(cmd, 0, amount)
        j = a * self.W + i
        self._ev(E_BALANCE, 0, 0, 0, 0, asset_id, 0, cmd.producer_id, account_id, 0, 0, amount,
                 0, 0, 0, bal[j], 0, 0, 0, 0, bal[j + 1])

    def _halt(self, kind, cmd):
        sym = self.symbols.get(cmd.symbol_id)
        if sym is None:
            return self._reject(cmd, R_UNKNOWN_SYMBOL, 0)
        if kind == K_HALT:
            if sym.halted:
                return self._reject(cmd, R_ALREADY_HALTED, 0)
            sym.halted = True
        else:
            if not sym.halted:
                return self._reject(cmd, R_NOT_HALTED, 0)
            sym.halted = False
        self._ack(cmd)
        self._ev(E_STATUS, 0, 0, 0, 0, sym.symbol_id, R_SYMBOL_HALTED if sym.halted else R_OK,
                 cmd.producer_id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    # ==================================================================
    # queries
    # ==================================================================
    def best_bid(self, symbol_id):
        """``(price_ticks, total_qty_lots)`` of the best bid, or None.  O(1)."""
        sym = self.symbols[symbol_id]
        if sym.best_bid == NO_BID:
            return None
        return (sym.best_bid, self.lv_total[sym.bid_levels[sym.best_bid]])

    def best_ask(self, symbol_id):
        """``(price_ticks, total_qty_lots)`` of the best ask, or None.  O(1)."""
        sym = self.symbols[symbol_id]
        if sym.best_ask == NO_ASK:
            return None
        return (sym.best_ask, self.lv_total[sym.ask_levels[sym.best_ask]])

    def last_price(self, symbol_id):
        return self.symbols[symbol_id].last_price or None

    def balance(self, account_id, asset_id):
        """``(available, held)`` in minor units; (0, 0) for an unknown account."""
        a = self.acct_slot.get(account_id, -1)
        if a < 0:
            return (0, 0)
        j = a * self.W + self.index[asset_id]
        return (self.bal[j], self.bal[j + 1])

    def depth(self, symbol_id, side, n=None):
        """Best-first ``[(price, total)]`` of one side.  O(n)."""
        sym = self.symbols[symbol_id]
        if side == BUY:
            levels = sym.bid_levels
            prices = sorted(levels, reverse=True)
        else:
            levels = sym.ask_levels
            prices = sorted(levels)
        if n is not None:
            prices = prices[:n]
        return [(p, self.lv_total[levels[p]]) for p in prices]

    def _resting_slots(self, sym):
        ob = self.ob
        out = []
        for side in (BUY, SELL):
            levels = sym.bid_levels if side == BUY else sym.ask_levels
            for price, _ in self.depth(sym.symbol_id, side):
                s = self.lv_head[levels[price]]
                while s >= 0:
                    out.append(s)
                    s = ob[s + O_NEXT]
        return out

    def _stop_slots(self, sym):
        keys = sorted(list(sym.rising) + list(sym.falling))
        return [sym.stops[oid] for _, oid in keys]

    # ==================================================================
    # snapshot / restore / hash (same bytes as Matcher)
    # ==================================================================
    def _encode(self, clock=True):
        ob = self.ob
        n_assets = self.n_assets
        out = [struct.pack("<qqH", self.last_seq, self.now, n_assets) if clock else b""]
        out.append(struct.pack("<%dq" % n_assets, *self.supply))
        ids = sorted(self.acct_slot)
        out.append(struct.pack("<I", len(ids)))
        fmt = struct.Struct("<I%dq" % self.W)
        W = self.W
        for aid in ids:
            a = self.acct_slot[aid]
            out.append(fmt.pack(aid, *self.bal[a * W:(a + 1) * W]))
        pack = _ORDER.pack
        for sid, sym in self.symbols.items():
            resting = self._resting_slots(sym)
            stops = self._stop_slots(sym)
            out.append(_SYM_HDR.pack(sid, 1 if sym.halted else 0, sym.last_price,
                                     sym.trade_id, len(resting), len(stops)))
            for s in resting + stops:
                out.append(pack(ob[s + O_ID], ob[s + O_ACCT], ob[s + O_SYM], ob[s + O_SIDE],
                                ob[s + O_TYPE], ob[s + O_TIF], ob[s + O_FLAGS], ob[s + O_STP],
                                0, ob[s + O_PRICE], ob[s + O_QTY], ob[s + O_REM],
                                ob[s + O_FILLED], self.o_coid[s >> SHIFT], ob[s + O_PROD],
                                ob[s + O_EXP], ob[s + O_STOP], ob[s + O_FUNDS],
                                ob[s + O_HOLD],
                                self.o_feenum[s >> SHIFT].to_bytes(16, "little", signed=True),
                                ob[s + O_FEEPAID]))
        if clock and self.clock:
            out.append(_CLOCK_TRAILER + struct.pack("<q", self.clock))
        return b"".join(out)

    def state_hash(self):
        """64-bit blake2b of the canonical state encoding (= Matcher.state_hash).  O(state)."""
        h = hashlib.blake2b(self._encode(), digest_size=8,
                            key=hashlib.sha256(self.config.fingerprint()).digest()[:16])
        return int.from_bytes(h.digest(), "little")

    def snapshot(self):
        """Full state as bytes, the encoding of :meth:`engine.matcher.Matcher.snapshot`."""
        fp = hashlib.sha256(self.config.fingerprint()).digest()[:8]
        return _MAGIC + struct.pack("<I", SNAPSHOT_VERSION) + fp + self._encode()

    @classmethod
    def restore(cls, config, data, sink):
        """A SoaMatcher in the state of ``data`` (a Matcher or SoaMatcher snapshot).

        Raises SnapshotError on a bad magic, version or configuration fingerprint.
        """
        data = bytes(data)
        if data[:8] != _MAGIC:
            raise SnapshotError("not a matcher snapshot")
        (version,) = struct.unpack_from("<I", data, 8)
        if version != SNAPSHOT_VERSION:
            raise SnapshotError("snapshot version %d, expected %d" % (version,
                                                                       SNAPSHOT_VERSION))
        if data[12:20] != hashlib.sha256(config.fingerprint()).digest()[:8]:
            raise SnapshotError("snapshot was taken with a different exchange configuration")
        m = cls(config, sink)
        off = 20
        m.last_seq, m.now, n_assets = struct.unpack_from("<qqH", data, off)
        off += 18
        if n_assets != m.n_assets:
            raise SnapshotError("asset count mismatch")
        m.supply = list(struct.unpack_from("<%dq" % n_assets, data, off))
        off += 8 * n_assets
        (n_accts,) = struct.unpack_from("<I", data, off)
        off += 4
        W = m.W
        fmt = struct.Struct("<I%dq" % W)
        for _ in range(n_accts):
            values = fmt.unpack_from(data, off)
            off += fmt.size
            a = m.acct_slot.get(values[0], -1)
            if a < 0:
                a = m._new_account(values[0])
            m.bal[a * W:(a + 1) * W] = list(values[1:])
        size = _ORDER.size
        live = []
        for sid in m.symbols:
            hs, halted, last, trade_id, n_rest, n_stop = _SYM_HDR.unpack_from(data, off)
            off += _SYM_HDR.size
            if hs != sid:
                raise SnapshotError("symbol order mismatch")
            sym = m.symbols[sid]
            sym.halted = bool(halted)
            sym.last_price = last
            sym.trade_id = trade_id
            for i in range(n_rest + n_stop):
                v = _ORDER.unpack_from(data, off)
                off += size
                a = m.acct_slot[v[1]]
                s = m._alloc(v[0], v[1], a, v[2], v[3], v[4], v[5], v[6], v[7], v[9], v[10],
                             v[13], v[14], v[15], v[16], v[17])
                m.ob[s + O_REM] = v[11]
                m.ob[s + O_FILLED] = v[12]
                m.ob[s + O_HOLD] = v[18]
                m.o_feenum[s >> SHIFT] = int.from_bytes(v[19], "little", signed=True)
                m.ob[s + O_FEEPAID] = v[20]
                if i < n_rest:
                    m._book_insert(sym, s)
                    live.append((s, RESTING))
                else:
                    m._stop_add(sym, s)
                    live.append((s, WAITING))
        if data[off:off + 4] == _CLOCK_TRAILER and len(data) == off + 12:
            (m.clock,) = struct.unpack_from("<q", data, off + 4)
            off += 12
        if off != len(data):
            raise SnapshotError("trailing bytes in snapshot")
        if live:
            m.win_base = min(m.ob[s + O_ID] for s, _ in live)
        else:
            m.win_base = m.last_seq + 1
        for s, state in live:
            m._register(s, state)
        m.expiry = sorted((m.ob[s + O_EXP], m.ob[s + O_ID]) for s, _ in live if m.ob[s + O_TIF] == GTT)
        return m

    # ==================================================================
    # invariants
    # ==================================================================
    def _check(self):
        """Assert every invariant: links, totals, indexes, holds == needs, conservation,
        free lists disjoint from live slots."""
        ob = self.ob
        W = self.W
        need = [0] * len(self.bal)
        live = 0
        seen = set()
        for sid, sym in self.symbols.items():
            for side, levels, heap, sign in ((BUY, sym.bid_levels, sym.bid_heap, -1),
                                             (SELL, sym.ask_levels, sym.ask_heap, 1)):
                assert set(levels) <= set(sign * p for p in heap), "level price not in heap"
                assert all(heap[(i - 1) >> 1] <= heap[i] for i in range(1, len(heap))), \
                    "heap order"
                for price, lv in levels.items():
                    assert self.lv_price[lv] == price
                    assert self.lv_count[lv] > 0, "empty level kept"
                    total = count = 0
                    prev = -1
                    s = self.lv_head[lv]
                    while s >= 0:
                        assert ob[s + O_PREV] == prev, "broken back link"
                        assert ob[s + O_LVL] == lv and ob[s + O_SIDE] == side
                        assert ob[s + O_PRICE] == price and ob[s + O_SYM] == sid
                        assert ob[s + O_STATE] == RESTING
                        assert ob[s + O_REM] > 0
                        assert ob[s + O_FILLED] + ob[s + O_REM] == ob[s + O_QTY]
                        assert self._lookup(ob[s + O_ID]) == s, "resting order not indexed"
                        assert ob[s + O_HOLD] == self._need_rest(s, sym), "hold != need"
                        need[ob[s + O_ASLOT] * W + (sym.quote_i if side == BUY
                                                    else sym.base_i) + 1] += ob[s + O_HOLD]
                        total += ob[s + O_REM]
                        count += 1
                        live += 1
                        seen.add(s)
                        prev = s
                        s = ob[s + O_NEXT]
                    assert self.lv_tail[lv] == prev
                    assert total == self.lv_total[lv] and count == self.lv_count[lv]
            assert sym.best_bid == (max(sym.bid_levels) if sym.bid_levels else NO_BID)
            assert sym.best_ask == (min(sym.ask_levels) if sym.ask_levels else NO_ASK)
            if sym.bid_levels and sym.ask_levels:
                assert sym.best_bid < sym.best_ask, "book crossed"
            assert len(sym.rising) + len(sym.falling) == len(sym.stops)
            for stop_price, oid in list(sym.rising) + list(sym.falling):
                s = sym.stops[oid]
                assert ob[s + O_STOP] == stop_price and ob[s + O_STATE] == WAITING
                assert self._lookup(oid) == s, "stop order not indexed"
                assert ob[s + O_HOLD] == self._need_stop(s, sym)
                need[ob[s + O_ASLOT] * W + (sym.quote_i if ob[s + O_SIDE] == BUY
                                            else sym.base_i) + 1] += ob[s + O_HOLD]
                live += 1
                seen.add(s)
            for stop_price, oid in sym.rising:
                assert self._rises(sym.stops[oid])
            for stop_price, oid in sym.falling:
                assert not self._rises(sym.stops[oid])
            if sym.last_price:
                assert sym.trade_id > 0
        assert live == self.n_live
        assert not seen.intersection(self.o_free), "live slot on the free list"
        assert len(set(self.o_free)) == len(self.o_free)
        assert sum(1 for v in self.win if v) + len(self.old) == live
        for s in seen:
            if ob[s + O_TIF] == GTT:
                assert (ob[s + O_EXP], ob[s + O_ID]) in self.expiry
        per_account = [0] * len(self.a_id)
        for s in seen:
            per_account[ob[s + O_ASLOT]] += 1
        for s in self.o_free:       # free slots are unlinked (S1: reuse skips these writes)
            assert ob[s + O_STATE] == FREE
            assert ob[s + O_PREV] == ob[s + O_NEXT] == ob[s + O_LVL] == -1
        totals = [0] * self.n_assets
        for aid, a in self.acct_slot.items():
            assert self.a_id[a] == aid
            assert per_account[a] == self.a_norders[a]
            d = self.a_coid[a] or {}
            for coid, s in d.items():
                assert s in seen and self.o_coid[s >> SHIFT] == coid and ob[s + O_ASLOT] == a
            for j in range(W):
                v = self.bal[a * W + j]
                assert v >= 0, "negative balance"
                totals[j >> 1] += v
                if j & 1:
                    assert v == need[a * W + j], "account %d held %d != need %d" % (
                        aid, v, need[a * W + j])
        assert totals == self.supply
        assert self.acct_slot[self.fee_account_id] == 0, "fee account not slot 0"
