"""Matcher: the single-threaded business-logic processor.

Theory of operation (rules referred to in the code and in docs/engine.md):

M1. ``process(seq, cmd)`` handles one command.  NOP does nothing at all (no event, no
    time).  Every other command first advances stream time ``now = max(now,
    cmd.timestamp_ns)``, then expires every GTT order (resting or stop) with
    ``expire_ns <= now`` in ascending ``(expire_ns, order_id)`` (EXPIRED events), then is
    validated and executed.  Expiry belongs to the passage of time, not to the command,
    so it happens even if the command is then rejected.
M2. Every non-NOP command produces exactly one outcome event, ACCEPTED or
    REJECTED(reason), before any other event the command itself causes.  A rejected
    command changes no state.  The last event of a command carries ``EventFlags.LAST``.
M3. Order id = the input seq of its NEW_ORDER.  ``seq`` must increase (ValueError
    otherwise: a wiring bug, not bad input).
M4. Holds.  Accepting an order moves what it may spend from available to held: a buy
    limit ``price*qty*u + ceil(price*qty*u*taker/10000)`` quote (``u`` = quote minor units
    per tick x lot); a sell ``qty*base_per_lot`` base; a market buy by funds the funds; a
    market buy by size the account's whole available quote for the duration of the
    command (it never rests).  When an order rests, its hold is set to exactly what it
    still needs as a maker (``need_rest``), and the excess released.  Cancel, expiry or
    completion release the rest.  Every change of a live order's hold is in an event
    (``aux`` = the hold after it: ACCEPTED, both FILLs, AMENDED, the BOOK_DELTA of the
    rest, which names the order), so readers fold holds and never re-derive this rule.
M5. Fills settle both sides at the maker's price.  Fees are in the quote asset; an
    order's fees so far are ``ceil(fee_num/10000)`` where ``fee_num`` sums
    ``notional * rate_bps`` over its fills (taker rate while it takes, maker rate while
    it rests), so per-fill fees telescope and never exceed the hold.  The fee account
    receives taker + maker fee of each fill (a maker rebate is negative).
M6. Self-trade prevention is decided by the taker's mode when the next maker belongs
    to the same account: CANCEL_OLDEST cancels the maker and continues;
    CANCEL_NEWEST cancels the taker's remainder; CANCEL_BOTH both;
    DECREMENT_AND_CANCEL cancels the smaller and decrements the larger by it (both if
    equal; a taker with no size -- a market buy by funds -- acts as CANCEL_OLDEST).
M7. After a command's trades, stop orders of that symbol whose trigger holds at the last
    trade price are triggered in rounds: each round pops all triggered orders in
    ascending (stop_price, order_id) and enters them one by one as takers; their trades
    may trigger the next round.
M8. Duplicate client order ids: a non-zero client order id must be unique among the
    account's live orders (resting or waiting stops, all symbols); ids of finished
    orders may be reused.
M9. Trust.  A CLOCK command from a privileged producer (ids 0x7F00..0x7FFF, which the
    ring gives only to the supervisor, the CLI and the replicator and stamps out of
    every other producer's records) is a trusted tick: ``clock = max(clock, ts)``.
    From the first tick on the stream is *supervised* (``clock > 0``): before rule M1
    uses a producer's timestamp it is clamped to ``clock + MAX_CLOCK_SKEW_NS`` (so one
    record stamped 2^63-1 cannot move stream time beyond the skew), and an admin
    command (SNAPSHOT, HALT, RESUME, STATE_HASH) from an unprivileged producer is
    REJECTED(NOT_PRIVILEGED) and does nothing else.  A CLOCK from an unprivileged
    producer is always rejected so.  A stream without ticks (in-process matchers,
    LOBSTER replays, journals older than this rule) keeps M1 unchanged.  Everything
    is a pure function of the input records, so replay gives the same result.
"""
import hashlib
import heapq
import struct

from engine.accounts import Accounts
from engine.events import writer_for
from engine.order_book import NO_ASK, NO_BID, Order, OrderBook
from engine.stop_book import StopBook
from ringbuf.records import (MAX_CLOCK_SKEW_NS, PRIVILEGED_PRODUCER_ID_MAX,
                             PRIVILEGED_PRODUCER_ID_MIN)

__all__ = ["Matcher", "SnapshotError", "SNAPSHOT_VERSION"]

SNAPSHOT_VERSION = 1
_MAGIC = b"RMSNAP\x00\x01"

# command kinds
K_NOP, K_NEW, K_CANCEL, K_AMEND, K_MASS, K_DEPOSIT, K_WITHDRAW, K_SNAPSHOT, K_HALT, \
    K_RESUME, K_HASH, K_CLOCK = range(12)
BUY, SELL = 1, 2
LIMIT, MARKET, STOP_LOSS, STOP_LIMIT, TAKE_PROFIT, TAKE_PROFIT_LIMIT = 1, 2, 3, 4, 5, 6
GTC, GTT, IOC, FOK = 1, 2, 3, 4
F_POST, F_REPRICE, F_BY_CID, F_FUNDS = 1, 2, 4, 8
STP_DC, STP_CO, STP_CN, STP_CB = 0, 1, 2, 3
# event kinds
E_ACCEPTED, E_REJECTED, E_FILL, E_CANCELLED, E_EXPIRED, E_TRIGGERED, E_TRADE, E_DELTA, \
    E_AMENDED, E_BALANCE, E_SNAPSHOT, E_STATUS, E_HASH = range(1, 14)
EF_MAKER, EF_TAKER, EF_LAST, EF_REPRICED, EF_STOP = 1, 2, 4, 8, 16
# reasons
R_OK = 0
R_UNKNOWN_COMMAND, R_UNKNOWN_SYMBOL, R_INVALID_SIDE, R_INVALID_ORDER_TYPE, R_INVALID_TIF, \
    R_INVALID_PRICE, R_PRICE_OFF_TICK, R_INVALID_QTY, R_QTY_OFF_LOT, R_QTY_BELOW_MIN, \
    R_QTY_ABOVE_MAX, R_INVALID_STOP_PRICE, R_INVALID_EXPIRY, R_INVALID_FLAGS, R_INVALID_STP, \
    R_UNKNOWN_ACCOUNT, R_INVALID_FUNDS, R_VALUE_OVERFLOW, R_DUPLICATE_CLIENT_ORDER_ID, \
    R_UNKNOWN_ASSET, R_INVALID_AMOUNT = range(100, 121)
R_INSUFFICIENT_FUNDS, R_PRICE_OUT_OF_BAND = 200, 201
R_POST_ONLY_WOULD_TAKE, R_FOK_NOT_FILLABLE, R_NO_LIQUIDITY, R_SYMBOL_HALTED, \
    R_ORDER_NOT_FOUND, R_NOT_ORDER_OWNER, R_AMEND_BELOW_FILLED, R_AMEND_NOT_ALLOWED, \
    R_ORDER_EXPIRED = range(300, 309)
R_ALREADY_HALTED, R_NOT_HALTED, R_NOT_PRIVILEGED = 400, 401, 403
R_CANCELLED_BY_USER, R_CANCELLED_IOC_REMAINDER, R_CANCELLED_MARKET_REMAINDER, \
    R_CANCELLED_STP, R_CANCELLED_MASS, R_CANCELLED_EXPIRED, R_CANCELLED_NO_FUNDS = \
    range(500, 507)

MAX_VALUE = 1 << 62          # largest price / funds / amount accepted
_MAX_TS = (1 << 63) - 1
_MASK63 = (1 << 63) - 1
_CLOCK_TRAILER = b"CLK1"      # snapshot trailer carrying the trusted clock (rule M9)
_STOP_TYPES = (STOP_LOSS, STOP_LIMIT, TAKE_PROFIT, TAKE_PROFIT_LIMIT)
_ALLOWED_TIF = {LIMIT: (GTC, GTT, IOC, FOK), MARKET: (GTC, IOC, FOK),
                STOP_LOSS: (GTC, GTT), TAKE_PROFIT: (GTC, GTT),
                STOP_LIMIT: (GTC, GTT, IOC), TAKE_PROFIT_LIMIT: (GTC, GTT, IOC)}


def _tune_pypy_jit():
    """PyPy: raise the JIT trace limit (default 6000) to its maximum.

    With the default, the trace of one command is cut and the event writer's methods
    (``fill``, ``order``, ``delta``...) become separately compiled functions reached by
    ``call_assembler`` with boxed arguments, once per event; at 16000 they are inlined
    into the command's trace (PYPYLOG=jit-log-opt shows the difference) and the
    benchmark workload runs ~15% faster (docs/engine.md, Speed).  Process-wide, only
    ever raises the limit; a no-op on CPython.
    """
    try:
        import pypyjit
    except ImportError:
        return
    try:
        pypyjit.set_param("trace_limit=16000")
    except Exception:      # pragma: no cover - a PyPy with another maximum
        pass


_tune_pypy_jit()


class SnapshotError(ValueError):
    """Snapshot bytes are not a snapshot of this version / configuration."""


class SymbolState(object):
    """Per-symbol runtime state with the spec's numbers flattened for the hot path."""

    __slots__ = ("symbol_id", "spec", "base_i", "quote_i", "bpl", "u", "maker", "taker", "band",
                 "min_qty", "max_qty", "halted", "last_price", "trade_id", "book", "stops")

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
        self.last_price = 0          # 0 = no trade yet
        self.trade_id = 0
        self.book = OrderBook(spec.symbol_id)
        self.stops = StopBook(spec.symbol_id)


def _ceil_div(a, b):
    return -((-a) // b)


def _need_rest(o, sym):
    """What a resting (maker) order still needs held (rule M4)."""
    if o.side == SELL:
        return o.remaining * sym.bpl
    n = o.price * o.remaining * sym.u
    m = sym.maker
    if m > 0:
        return n - ((-(o.fee_num + n * m)) // 10000) - o.fee_paid
    return n


def _need_stop(o, sym):
    """What a waiting stop order needs held (rule M4)."""
    if o.side == SELL:
        return o.qty * sym.bpl
    if o.flags & F_FUNDS:
        return o.funds
    if o.price == 0:
        return 0          # market buy by size: funded from available on trigger
    n = o.price * o.qty * sym.u
    return n + _ceil_div(n * sym.taker, 10000)


def _order_id(o):
    return o.order_id


def _i64(v):
    return v if -_MAX_TS - 1 <= v <= _MAX_TS else 0


class Matcher(object):
    """Books, accounts, fees and every order type for the symbols of one config.

    ``process`` is O(1) plus O(log L) per price level created/emptied plus O(1) per fill.
    Raises only on bugs (and ValueError for a non-increasing seq); bad commands are
    REJECTED events.
    """

    def __init__(self, config, sink):
        self.config = config
        self.sink = sink
        w = writer_for(sink)
        self._w = w
        self._w_begin = w.begin
        self._w_order = w.order
        self._w_delta = w.delta
        self._w_fill = w.fill
        self._w_event = w.event
        self._mark_last = w.mark_last
        self.accounts = Accounts(sorted(config.assets), config.fee_account_id)
        self._acct = self.accounts.accounts
        self.fee_account_id = config.fee_account_id
        self._fee_bal = self.accounts.fee_account.bal
        index = self.accounts.index
        self.symbols = dict((sid, SymbolState(config.symbols[sid], index))
                            for sid in sorted(config.symbols))
        self.orders = {}          # live orders: resting and waiting stops
        self.expiry = []          # heap of (expire_ns, order_id); stale entries skipped
        self.now = 0
        self.clock = 0            # last trusted clock tick (rule M9); 0 = unsupervised
        self.snapshot_seq = 0     # seq of the last accepted SNAPSHOT (not part of the state)
        self.last_seq = 0
        self.commands = 0

    # ==================================================================
    # dispatch
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
        if kind >= K_SNAPSHOT:        # admin kinds, CLOCK, unknown kinds (rule M9)
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
        w = self._w                   # EventWriter.begin(seq, now, kind), inlined
        w.seq = seq
        w.ts = now
        w.ck = kind
        w.ei = 0
        expiry = self.expiry
        if expiry and expiry[0][0] <= now:
            self._expire(now)
        if refused:
            self._reject(cmd, R_NOT_PRIVILEGED, 0)
        elif kind == K_NEW:
            self._new_order(seq, cmd)
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
                self.snapshot_seq = seq   # the process writes the state file (accepted only)
            h = self.state_hash() & _MASK63
            self._w_event(E_SNAPSHOT if kind == K_SNAPSHOT else E_HASH, 0, 0, 0, 0, 0, 0,
                          cmd.producer_id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, h)
        elif kind == K_CLOCK:
            self._ack(cmd)
        else:
            self._w.ck = kind & 0xFF
            self._reject(cmd, R_UNKNOWN_COMMAND, 0)
        self._mark_last()

    # ------------------------------------------------------------------
    def _reject(self, cmd, reason, order_id):
        """REJECTED outcome echoing the command's fields (masked to their slots)."""
        self._w_event(E_REJECTED, cmd.side & 0xFF, cmd.order_type & 0xFF, cmd.tif & 0xFF, 0,
                      cmd.symbol_id & 0xFFFF, reason, cmd.producer_id & 0xFFFF,
                      cmd.account_id & 0xFFFFFFFF, _i64(order_id), _i64(cmd.price),
                      _i64(cmd.qty), 0, 0, 0, 0, 0, 0, 0,
                      cmd.client_order_id & 0xFFFFFFFFFFFFFFFF, 0)

    def _ack(self, cmd, order_id=0, qty=0, amount=0, aux=0):
        """ACCEPTED outcome for a non-order command."""
        self._w_event(E_ACCEPTED, 0, 0, 0, 0, cmd.symbol_id, 0, cmd.producer_id,
                      cmd.account_id, order_id, 0, qty, 0, 0, 0, amount, 0, 0, 0,
                      cmd.client_order_id, aux)

    # Events about an order go straight to the writer: ``self._w_order(kind, o, flags,
    # reason, price, qty, fee, amount, trade_id, counter_order_id, counter_account_id,
    # aux)``; book deltas: ``self._w_delta(symbol_id, side, price, total)`` (see
    # engine.events.EventWriter).

    # ==================================================================
    # NEW_ORDER
    # ==================================================================
    def _new_order(self, seq, cmd):
        sym = self.symbols.get(cmd.symbol_id)
        if sym is None:
            return self._reject(cmd, R_UNKNOWN_SYMBOL, seq)
        account_id = cmd.account_id
        acct = self._acct.get(account_id)
        if acct is None or account_id == self.fee_account_id:
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
        # Fast test: a plain (no flags) non-GTT limit or market order whose fields pass
        # every check below.  It implies each of them, so the outcome is the same; any
        # other command goes through the checks in their documented order.
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
        if coid and coid in acct.by_coid:
            return self._reject(cmd, R_DUPLICATE_CLIENT_ORDER_ID, seq)
        band = sym.band
        if band and price and sym.last_price:
            last = sym.last_price
            if abs(price - last) * 10000 > last * band:
                return self._reject(cmd, R_PRICE_OUT_OF_BAND, seq)

        o = Order(seq, account_id, sym.symbol_id, side, otype, tif, flags, stp, price, qty,
                  coid, cmd.producer_id, expire_ns, stop_price, funds)
        if funds:
            o.qty = o.remaining = 0
        bal = acct.bal
        if otype >= STOP_LOSS:
            return self._new_stop(o, sym, acct, cmd)

        book = sym.book
        eflags = 0
        if otype == LIMIT:
            if flags & F_POST:
                if side == BUY:
                    if price >= book.best_ask:
                        if not flags & F_REPRICE or book.best_ask <= 1:
                            return self._reject(cmd, R_POST_ONLY_WOULD_TAKE, seq)
                        o.price = price = book.best_ask - 1
                        eflags = EF_REPRICED
                elif price <= book.best_bid:
                    if not flags & F_REPRICE:
                        return self._reject(cmd, R_POST_ONLY_WOULD_TAKE, seq)
                    o.price = price = book.best_bid + 1
                    eflags = EF_REPRICED
                hold = _need_rest(o, sym)
            elif side == BUY:
                n = price * qty * sym.u
                hold = n - ((-n * sym.taker) // 10000)
            else:
                hold = qty * sym.bpl
            hi = sym.quote_i if side == BUY else sym.base_i
            if hold > bal[hi]:
                return self._reject(cmd, R_INSUFFICIENT_FUNDS, seq)
            if tif == FOK and not self._fok_fillable(o, sym, bal):
                return self._reject(cmd, R_FOK_NOT_FILLABLE, seq)
        else:   # MARKET
            if side == BUY:
                if book.best_ask == NO_ASK:
                    return self._reject(cmd, R_NO_LIQUIDITY, seq)
                hi = sym.quote_i
                hold = funds if funds else bal[hi]
                if hold > bal[hi] or hold == 0:
                    return self._reject(cmd, R_INSUFFICIENT_FUNDS, seq)
            else:
                if book.best_bid == NO_BID:
                    return self._reject(cmd, R_NO_LIQUIDITY, seq)
                hi = sym.base_i
                hold = qty * sym.bpl
                if hold > bal[hi]:
                    return self._reject(cmd, R_INSUFFICIENT_FUNDS, seq)
            if tif == FOK and not self._fok_fillable(o, sym, bal):
                return self._reject(cmd, R_FOK_NOT_FILLABLE, seq)
        # accepted: take the hold, then match / rest
        bal[hi] -= hold
        bal[hi + 1] += hold
        o.hold = hold
        self._w_order(E_ACCEPTED, o, eflags, 0, price, qty, 0, funds, 0, 0, 0, hold)
        if flags & F_POST:
            self._rest(o, sym, acct)
        else:
            last = sym.last_price
            self._take(o, sym, acct)
            if sym.last_price != last and sym.stops.orders:
                self._run_triggers(sym)

    def _new_stop(self, o, sym, acct, cmd):
        last = sym.last_price
        if last and sym.stops.would_trigger(o, last):
            return self._reject(cmd, R_INVALID_STOP_PRICE, o.order_id)
        hold = _need_stop(o, sym)
        hi = sym.quote_i if o.side == BUY else sym.base_i
        bal = acct.bal
        if hold > bal[hi]:
            return self._reject(cmd, R_INSUFFICIENT_FUNDS, o.order_id)
        bal[hi] -= hold
        bal[hi + 1] += hold
        o.hold = hold
        sym.stops.add(o)
        self._register(o, acct)
        self._w_order(E_ACCEPTED, o, EF_STOP, 0, o.price, o.qty, 0, o.funds, o.stop_price, 0, 0,
                      hold)

    def _register(self, o, acct):
        oid = o.order_id
        self.orders[oid] = o
        acct.n_orders += 1
        if o.client_order_id:
            acct.by_coid[o.client_order_id] = o
        if o.tif == GTT:
            heapq.heappush(self.expiry, (o.expire_ns, oid))

    def _unregister(self, o, acct):
        del self.orders[o.order_id]
        acct.n_orders -= 1
        if o.client_order_id:
            del acct.by_coid[o.client_order_id]

    def _fok_fillable(self, o, sym, bal):
        """Would ``o`` fill completely right now (rule: FOK pre-check, no state change)?"""
        book = sym.book
        need = o.qty
        account_id = o.account_id
        skip_own = o.stp == STP_CO
        budget = bal[sym.quote_i] if (o.side == BUY and o.price == 0) else -1
        cost = 0
        fee_num = 0
        u = sym.u
        rate = sym.taker
        if o.side == BUY:
            limit = o.price or NO_ASK - 1
            prices = book.ask_prices
            levels = book.ask_levels
            sign = 1
        else:
            limit = o.price or 1
            prices = book.bid_prices
            levels = book.bid_levels
            sign = -1
        for key in prices:
            price = key * sign
            if (sign == 1 and price > limit) or (sign == -1 and price < limit):
                return False
            m = levels[price].head
            while m is not None:
                if m.account_id == account_id:
                    if not skip_own:
                        return False
                else:
                    q = m.remaining if m.remaining < need else need
                    if budget >= 0:
                        n = price * q * u
                        fee_num += n * rate
                        cost += n
                        if cost + _ceil_div(fee_num, 10000) > budget:
                            return False
                    need -= q
                    if need == 0:
                        return True
                m = m.next
        return False

    # ------------------------------------------------------------------
    def _rest(self, o, sym, acct):
        """Put a (post-only or partly filled) limit order on the book (rule M4)."""
        need = _need_rest(o, sym)
        extra = o.hold - need
        if extra:
            hi = sym.quote_i if o.side == BUY else sym.base_i
            bal = acct.bal
            bal[hi + 1] -= extra
            bal[hi] += extra
            o.hold = need
        sym.book.insert(o)
        oid = o.order_id
        self.orders[oid] = o
        acct.n_orders += 1
        if o.client_order_id:
            acct.by_coid[o.client_order_id] = o
        if o.tif == GTT:
            heapq.heappush(self.expiry, (o.expire_ns, oid))
        # the rest's BOOK_DELTA names the order and carries its hold (docs/records.md)
        self._w_event(E_DELTA, o.side, 0, 0, 0, sym.symbol_id, 0, 0, 0, oid, o.price,
                      o.level.total, 0, 0, 0, 0, 0, 0, 0, 0, o.hold)

    def _release(self, o, sym, acct):
        hold = o.hold
        if hold:
            hi = sym.quote_i if o.side == BUY else sym.base_i
            bal = acct.bal
            bal[hi + 1] -= hold
            bal[hi] += hold
            o.hold = 0
        return hold

    def _take(self, o, sym, acct):
        """Taker phase: match ``o`` against the opposite side, then rest or finish it."""
        book = sym.book
        # _match would stop at once (no trade, reason 0) if the best opposite price is
        # beyond the limit: skip the call
        if o.side == BUY:
            crosses = book.best_ask <= (o.price or NO_ASK - 1)
        else:
            crosses = book.best_bid >= (o.price or 1)
        stop_reason = self._match(o, sym, acct) if crosses else 0
        if o.remaining > 0 and stop_reason == 0 and o.order_type != MARKET and \
                o.order_type != STOP_LOSS and o.order_type != TAKE_PROFIT and \
                (o.tif == GTC or o.tif == GTT):
            self._rest(o, sym, acct)
            return
        if o.remaining > 0 or o.funds:
            if stop_reason == 0:
                if o.price == 0:
                    stop_reason = R_CANCELLED_MARKET_REMAINDER
                else:
                    stop_reason = R_CANCELLED_IOC_REMAINDER
            cancelled = o.remaining
            o.remaining = 0
            released = self._release(o, sym, acct)
            self._w_order(E_CANCELLED, o, 0, stop_reason, o.price, cancelled, 0, released, 0, 0, 0,
                      0)
        else:
            self._release(o, sym, acct)

    def _match(self, o, sym, acct):
        """Match taker ``o``; returns 0 or the reason its remainder must be cancelled."""
        book = sym.book
        w_fill = self._w_fill
        orders = self.orders
        accounts = self._acct
        fee_bal = self._fee_bal
        side = o.side
        by_funds = o.funds
        budget_limited = side == BUY and o.price == 0
        rem = MAX_VALUE if by_funds else o.remaining
        taker_rate = sym.taker
        maker_rate = sym.maker
        u = sym.u
        bpl = sym.bpl
        qi = sym.quote_i
        bi = sym.base_i
        tbal = acct.bal
        account_id = o.account_id
        symbol_id = sym.symbol_id
        if side == BUY:
            levels = book.ask_levels
            limit = o.price or NO_ASK - 1
            mside = SELL
        else:
            levels = book.bid_levels
            limit = o.price or 1
            mside = BUY
        stop_reason = 0
        last = 0
        while rem > 0:
            if side == BUY:
                price = book.best_ask
                if price > limit:
                    break
            else:
                price = book.best_bid
                if price < limit:
                    break
            level = levels[price]
            m = level.head
            while m is not None:
                nxt = m.next
                if m.account_id == account_id:
                    mode = o.stp
                    if mode == STP_CO or (mode == STP_DC and by_funds):
                        self._cancel_head(m, level, sym, R_CANCELLED_STP)
                        m = nxt
                        continue
                    if mode == STP_CN:
                        stop_reason = R_CANCELLED_STP
                        break
                    if mode == STP_CB:
                        self._cancel_head(m, level, sym, R_CANCELLED_STP)
                        stop_reason = R_CANCELLED_STP
                        break
                    # decrement and cancel
                    d = rem if rem < m.remaining else m.remaining
                    if m.remaining > d:
                        self._decrement_maker(m, level, sym, d)
                        stop_reason = R_CANCELLED_STP
                        break
                    self._cancel_head(m, level, sym, R_CANCELLED_STP)
                    if rem == d:
                        stop_reason = R_CANCELLED_STP
                        break
                    o.qty -= d
                    o.remaining -= d
                    rem -= d
                    self._w_order(E_AMENDED, o, 0, R_CANCELLED_STP, o.price, o.qty, 0, 0, 0,
                                  m.order_id, m.account_id, o.hold)
                    m = nxt
                    continue
                mrem = m.remaining
                q = mrem if mrem < rem else rem
                n = price * q * u
                fn = o.fee_num + n * taker_rate
                fp = -((-fn) // 10000)
                tfee = fp - o.fee_paid
                if budget_limited and n + tfee > o.hold:
                    q = self._affordable(o, price * u, q, taker_rate)
                    if q == 0:
                        stop_reason = R_CANCELLED_NO_FUNDS
                        break
                    n = price * q * u
                    fn = o.fee_num + n * taker_rate
                    fp = -((-fn) // 10000)
                    tfee = fp - o.fee_paid
                o.fee_num = fn
                o.fee_paid = fp
                fn = m.fee_num + n * maker_rate
                fp = -((-fn) // 10000)
                mfee = fp - m.fee_paid
                m.fee_num = fn
                m.fee_paid = fp
                b = q * bpl
                macct = accounts[m.account_id]
                mbal = macct.bal
                if side == BUY:
                    cost = n + tfee
                    o.hold -= cost
                    tbal[qi + 1] -= cost
                    tbal[bi] += b
                    m.hold -= b
                    mbal[bi + 1] -= b
                    mbal[qi] += n - mfee
                else:
                    o.hold -= b
                    tbal[bi + 1] -= b
                    tbal[qi] += n - tfee
                    if mfee >= 0:
                        cost = n + mfee
                        m.hold -= cost
                        mbal[qi + 1] -= cost
                    else:
                        m.hold -= n
                        mbal[qi + 1] -= n
                        mbal[qi] -= mfee
                    mbal[bi] += b
                fee_bal[qi] += tfee + mfee
                rem -= q
                o.filled += q
                if not by_funds:
                    o.remaining -= q
                m.filled += q
                mrem -= q
                m.remaining = mrem
                level.total -= q
                trade_id = sym.trade_id + 1
                sym.trade_id = trade_id
                last = price
                w_fill(m, o, price, q, mfee, tfee, n, trade_id)
                if mrem == 0:
                    # maker done: unlink the head (its hold is exactly 0 now, rule M4/M5)
                    level.head = nxt
                    if nxt is None:
                        level.tail = None
                    else:
                        nxt.prev = None
                    level.count -= 1
                    m.next = m.level = None
                    mhold = m.hold
                    if mhold:
                        hi = qi if mside == BUY else bi
                        mbal[hi + 1] -= mhold
                        mbal[hi] += mhold
                        m.hold = 0
                    oid = m.order_id
                    del orders[oid]
                    macct.n_orders -= 1
                    if m.client_order_id:
                        del macct.by_coid[m.client_order_id]
                    m = nxt
                    if rem == 0:
                        break
                else:
                    if rem:     # maker left, taker not done: only a budget stops this
                        stop_reason = R_CANCELLED_NO_FUNDS
                    break
            if level.count == 0:
                self._w_delta(symbol_id, mside, price, 0)
                book._drop_level(mside, price)
            else:
                self._w_delta(symbol_id, mside, price, level.total)
            if stop_reason:
                break
        if last:
            sym.last_price = last
        return stop_reason

    def _affordable(self, o, pu, q, rate):
        """Largest q' <= q whose cost (notional + fee delta) fits ``o.hold``."""
        hold = o.hold
        est = (hold * 10000) // (pu * (10000 + rate)) + 1
        if est < q:
            q = est
        fee_num = o.fee_num
        fee_paid = o.fee_paid
        while q > 0:
            n = pu * q
            if n - ((-(fee_num + n * rate)) // 10000) - fee_paid <= hold:
                return q
            q -= 1
        return 0

    def _cancel_head(self, m, level, sym, reason):
        """Cancel maker ``m`` at the head of ``level`` during matching (no delta here)."""
        nxt = m.next
        level.head = nxt
        if nxt is None:
            level.tail = None
        else:
            nxt.prev = None
        level.count -= 1
        level.total -= m.remaining
        m.next = m.level = None
        cancelled = m.remaining
        m.remaining = 0
        macct = self._acct[m.account_id]
        released = self._release(m, sym, macct)
        self._unregister(m, macct)
        self._w_order(E_CANCELLED, m, EF_MAKER, reason, m.price, cancelled, 0, released, 0, 0, 0, 0)

    def _decrement_maker(self, m, level, sym, d):
        m.qty -= d
        m.remaining -= d
        level.total -= d
        need = _need_rest(m, sym)
        extra = m.hold - need
        if extra:
            hi = sym.quote_i if m.side == BUY else sym.base_i
            bal = self._acct[m.account_id].bal
            bal[hi + 1] -= extra
            bal[hi] += extra
            m.hold = need
        self._w_order(E_AMENDED, m, EF_MAKER, R_CANCELLED_STP, m.price, m.qty, 0, extra, 0, 0, 0,
                      m.hold)

    # ------------------------------------------------------------------
    def _run_triggers(self, sym):
        """Rule M7: trigger waiting stops in rounds at the last trade price."""
        stops = sym.stops
        accounts = self._acct
        while stops.orders:
            batch = stops.pop_triggered(sym.last_price)
            if not batch:
                return
            for o in batch:
                acct = accounts[o.account_id]
                oid = o.order_id
                del self.orders[oid]
                acct.n_orders -= 1
                if o.client_order_id:
                    del acct.by_coid[o.client_order_id]
                self._w_order(E_TRIGGERED, o, EF_STOP, 0, o.price, o.qty, 0, o.funds, 0, 0, 0,
                          o.stop_price)
                if o.side == BUY and o.price == 0 and not o.funds:
                    # market buy by size: fund from whole available quote (rule M4)
                    bal = acct.bal
                    qi = sym.quote_i
                    avail = bal[qi]
                    bal[qi] = 0
                    bal[qi + 1] += avail
                    o.hold = avail
                if sym.halted:
                    self._finish_unfilled(o, sym, acct, R_SYMBOL_HALTED)
                elif o.side == BUY and o.price == 0 and o.hold == 0:
                    self._finish_unfilled(o, sym, acct, R_CANCELLED_NO_FUNDS)
                else:
                    self._take(o, sym, acct)

    def _finish_unfilled(self, o, sym, acct, reason):
        cancelled = o.remaining
        o.remaining = 0
        released = self._release(o, sym, acct)
        self._w_order(E_CANCELLED, o, EF_STOP, reason, o.price, cancelled, 0, released, 0, 0, 0, 0)

    # ------------------------------------------------------------------
    def _expire(self, now):
        """Rule M1: expire GTT orders with expire_ns <= now, ascending (expire_ns, id)."""
        expiry = self.expiry
        orders = self.orders
        while expiry and expiry[0][0] <= now:
            expire_ns, oid = heapq.heappop(expiry)
            o = orders.get(oid)
            if o is None or o.expire_ns != expire_ns:
                continue
            sym = self.symbols[o.symbol_id]
            acct = self._acct[o.account_id]
            self._remove_live(o, sym, acct, E_EXPIRED, R_CANCELLED_EXPIRED)

    def _remove_live(self, o, sym, acct, kind, reason):
        """Remove a resting order or waiting stop; release its hold; emit kind + delta."""
        level = o.level
        if level is not None:
            price = o.price
            sym.book.remove(o)
            total = level.total if level.count else 0
        else:
            sym.stops.remove(o)
        cancelled = o.remaining
        o.remaining = 0
        released = o.hold
        if released:
            hi = sym.quote_i if o.side == BUY else sym.base_i
            bal = acct.bal
            bal[hi + 1] -= released
            bal[hi] += released
            o.hold = 0
        oid = o.order_id
        del self.orders[oid]
        acct.n_orders -= 1
        if o.client_order_id:
            del acct.by_coid[o.client_order_id]
        flags = EF_STOP if level is None else 0
        self._w_order(kind, o, flags, reason, o.price, cancelled, 0, released, 0, 0, 0, 0)
        if level is not None:
            self._w_delta(sym.symbol_id, o.side, price, total)

    # ==================================================================
    # CANCEL / AMEND / MASS_CANCEL
    # ==================================================================
    def _target(self, cmd):
        """(acct, order, reason) for a CANCEL/AMEND command."""
        account_id = cmd.account_id
        acct = self._acct.get(account_id)
        if acct is None or account_id == self.fee_account_id:
            return None, None, R_UNKNOWN_ACCOUNT
        flags = cmd.flags
        if flags & ~F_BY_CID:
            return acct, None, R_INVALID_FLAGS
        if flags:
            coid = cmd.client_order_id
            o = acct.by_coid.get(coid) if coid else None
            if o is None:
                return acct, None, R_ORDER_NOT_FOUND
            return acct, o, 0
        o = self.orders.get(cmd.order_id)
        if o is None:
            return acct, None, R_ORDER_NOT_FOUND
        if o.account_id != account_id:
            return acct, None, R_NOT_ORDER_OWNER
        return acct, o, 0

    def _cancel(self, cmd):
        acct, o, reason = self._target(cmd)
        if reason:
            return self._reject(cmd, reason, cmd.order_id if not cmd.flags & F_BY_CID else 0)
        self._ack(cmd, o.order_id)
        self._remove_live(o, self.symbols[o.symbol_id], acct, E_CANCELLED, R_CANCELLED_BY_USER)

    def _amend(self, cmd):
        acct, o, reason = self._target(cmd)
        oid = cmd.order_id if not cmd.flags & F_BY_CID else 0
        if reason:
            return self._reject(cmd, reason, oid)
        oid = o.order_id
        sym = self.symbols[o.symbol_id]
        if o.level is None:          # a waiting stop
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
        new_price = price or o.price
        new_qty = qty or o.qty
        if new_qty <= o.filled:
            return self._reject(cmd, R_AMEND_BELOW_FILLED, oid)
        if new_qty < sym.min_qty:
            return self._reject(cmd, R_QTY_BELOW_MIN, oid)
        if new_qty > sym.max_qty:
            return self._reject(cmd, R_QTY_ABOVE_MAX, oid)
        if new_price == o.price and new_qty == o.qty:
            return self._reject(cmd, R_AMEND_NOT_ALLOWED, oid)
        book = sym.book
        if new_price != o.price:
            if sym.band and sym.last_price:
                last = sym.last_price
                if abs(new_price - last) * 10000 > last * sym.band:
                    return self._reject(cmd, R_PRICE_OUT_OF_BAND, oid)
            if (o.side == BUY and new_price >= book.best_ask) or \
                    (o.side == SELL and new_price <= book.best_bid):
                return self._reject(cmd, R_AMEND_NOT_ALLOWED, oid)
        # funds for the new need
        old_price, old_qty, old_rem = o.price, o.qty, o.remaining
        o.price = new_price
        o.qty = new_qty
        o.remaining = new_qty - o.filled
        need = _need_rest(o, sym)
        hi = sym.quote_i if o.side == BUY else sym.base_i
        bal = acct.bal
        diff = need - o.hold
        if diff > bal[hi]:
            o.price, o.qty, o.remaining = old_price, old_qty, old_rem
            return self._reject(cmd, R_INSUFFICIENT_FUNDS, oid)
        bal[hi] -= diff
        bal[hi + 1] += diff
        o.hold = need
        self._ack(cmd, oid)
        level = o.level
        if new_price == old_price and new_qty < old_qty:
            level.total -= old_rem - o.remaining          # keeps priority
            self._w_order(E_AMENDED, o, 0, 0, new_price, new_qty, 0, 0, 0, 0, 0, o.hold)
            self._w_delta(sym.symbol_id, o.side, new_price, level.total)
        else:
            new_rem = o.remaining
            o.remaining = old_rem
            o.price = old_price
            book.remove(o)
            old_total = level.total if level.count else 0
            o.price = new_price
            o.remaining = new_rem
            book.insert(o)
            self._w_order(E_AMENDED, o, 0, 0, new_price, new_qty, 0, 0, 0, 0, 0, o.hold)
            if new_price != old_price:
                self._w_delta(sym.symbol_id, o.side, old_price, old_total)
            self._w_delta(sym.symbol_id, o.side, new_price, o.level.total)

    def _orders_of(self, acct, symbol_id=0):
        """The account's live orders (of ``symbol_id``; 0 = all), ascending order id.

        O(live orders of the whole matcher) -- accounts keep only a count: storing each
        order in a per-account index cost ~35% of PyPy's time on the benchmark workload
        (young objects stored into 1000 old containers; docs/engine.md, Speed).  The
        scan stops once the account's ``n_orders`` orders are found.
        """
        left = acct.n_orders
        out = []
        if left:
            account_id = acct.account_id
            for o in self.orders.values():
                if o.account_id == account_id:
                    if not symbol_id or o.symbol_id == symbol_id:
                        out.append(o)
                    left -= 1
                    if not left:
                        break
            out.sort(key=_order_id)
        return out

    def _mass_cancel(self, cmd):
        account_id = cmd.account_id
        acct = self._acct.get(account_id)
        if acct is None or account_id == self.fee_account_id:
            return self._reject(cmd, R_UNKNOWN_ACCOUNT, 0)
        symbol_id = cmd.symbol_id
        if symbol_id and symbol_id not in self.symbols:
            return self._reject(cmd, R_UNKNOWN_SYMBOL, 0)
        if cmd.flags:
            return self._reject(cmd, R_INVALID_FLAGS, 0)
        targets = self._orders_of(acct, symbol_id)
        self._ack(cmd, 0, len(targets))
        symbols = self.symbols
        for o in targets:
            self._remove_live(o, symbols[o.symbol_id], acct, E_CANCELLED, R_CANCELLED_MASS)

    # ==================================================================
    # DEPOSIT / WITHDRAW / HALT / RESUME
    # ==================================================================
    def _transfer(self, kind, cmd):
        account_id = cmd.account_id
        accounts = self.accounts
        if account_id == self.fee_account_id or account_id < 0 or account_id >= (1 << 32):
            return self._reject(cmd, R_UNKNOWN_ACCOUNT, 0)
        acct = accounts.get(account_id)
        if acct is None and kind == K_WITHDRAW:
            return self._reject(cmd, R_UNKNOWN_ACCOUNT, 0)
        asset_id = cmd.symbol_id
        i = accounts.index.get(asset_id)
        if i is None:
            return self._reject(cmd, R_UNKNOWN_ASSET, 0)
        amount = cmd.qty
        if amount <= 0:
            return self._reject(cmd, R_INVALID_AMOUNT, 0)
        if kind == K_DEPOSIT:
            if amount > MAX_VALUE or accounts.supply[i >> 1] + amount > MAX_VALUE:
                return self._reject(cmd, R_VALUE_OVERFLOW, 0)
            if acct is None:
                acct = accounts.create(account_id)
            accounts.deposit(acct, asset_id, amount)
        else:
            if amount > acct.bal[i]:
                return self._reject(cmd, R_INSUFFICIENT_FUNDS, 0)
            accounts.withdraw(acct, asset_id, amount)
        self._ack(cmd, 0, amount)
        self._w_event(E_BALANCE, 0, 0, 0, 0, asset_id, 0, cmd.producer_id, account_id, 0, 0,
                      amount, 0, 0, 0, acct.bal[i], 0, 0, 0, 0, acct.bal[i + 1])

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
        self._w_event(E_STATUS, 0, 0, 0, 0, sym.symbol_id, R_SYMBOL_HALTED if sym.halted
                      else R_OK, cmd.producer_id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    # ==================================================================
    # queries
    # ==================================================================
    def best_bid(self, symbol_id):
        """``(price_ticks, total_qty_lots)`` of the best bid, or None.  O(1)."""
        return self.symbols[symbol_id].book.best_bid_level()

    def best_ask(self, symbol_id):
        """``(price_ticks, total_qty_lots)`` of the best ask, or None.  O(1)."""
        return self.symbols[symbol_id].book.best_ask_level()

    def last_price(self, symbol_id):
        """Last trade price in ticks, or None before the first trade."""
        return self.symbols[symbol_id].last_price or None

    def balance(self, account_id, asset_id):
        """``(available, held)`` in minor units; (0, 0) for an unknown account."""
        return self.accounts.balance(account_id, asset_id)

    def book(self, symbol_id):
        return self.symbols[symbol_id].book

    def order(self, order_id):
        """The live Order (resting or stop) or None."""
        return self.orders.get(order_id)

    # ==================================================================
    # snapshot / restore / hash
    # ==================================================================
    _ORDER = struct.Struct("<qIHBBBBBBqqqqQHqqqq16sq")

    def _encode(self, clock=True):
        """Canonical bytes of the whole state (independent of history and interpreter).

        ``clock=False`` leaves out last_seq and stream time (tests: "a reject changes
        no state" compares everything else).
        """
        out = [struct.pack("<qqH", self.last_seq, self.now, self.accounts.n_assets)
               if clock else b""]
        accts = self.accounts
        out.append(struct.pack("<%dq" % accts.n_assets, *accts.supply))
        ids = accts.sorted_ids()
        out.append(struct.pack("<I", len(ids)))
        fmt = struct.Struct("<I%dq" % (2 * accts.n_assets))
        for aid in ids:
            out.append(fmt.pack(aid, *accts.accounts[aid].bal))
        pack = self._ORDER.pack
        for sid, sym in self.symbols.items():
            resting = list(sym.book.iter_orders())
            stops = sym.stops.iter_orders()
            out.append(struct.pack("<HBqqII", sid, 1 if sym.halted else 0, sym.last_price,
                                   sym.trade_id, len(resting), len(stops)))
            for o in resting + stops:
                out.append(pack(o.order_id, o.account_id, o.symbol_id, o.side, o.order_type,
                                o.tif, o.flags, o.stp, 0, o.price, o.qty, o.remaining,
                                o.filled, o.client_order_id, o.producer_id, o.expire_ns,
                                o.stop_price, o.funds, o.hold,
                                o.fee_num.to_bytes(16, "little", signed=True), o.fee_paid))
        if clock and self.clock:
            # only a supervised stream has a clock (rule M9): unsupervised states keep
            # their encoding (and golden hashes) byte for byte
            out.append(_CLOCK_TRAILER + struct.pack("<q", self.clock))
        return b"".join(out)

    def state_hash(self):
        """64-bit blake2b of the canonical state encoding.  O(state)."""
        h = hashlib.blake2b(self._encode(), digest_size=8,
                            key=hashlib.sha256(self.config.fingerprint()).digest()[:16])
        return int.from_bytes(h.digest(), "little")

    def snapshot(self):
        """Full state as bytes: magic, version, config fingerprint hash, canonical state."""
        fp = hashlib.sha256(self.config.fingerprint()).digest()[:8]
        return _MAGIC + struct.pack("<I", SNAPSHOT_VERSION) + fp + self._encode()

    @classmethod
    def restore(cls, config, data, sink):
        """A Matcher in the state of ``data`` (from :meth:`snapshot`); emits nothing.

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
        accts = m.accounts
        if n_assets != accts.n_assets:
            raise SnapshotError("asset count mismatch")
        accts.supply = list(struct.unpack_from("<%dq" % n_assets, data, off))
        off += 8 * n_assets
        (n_accts,) = struct.unpack_from("<I", data, off)
        off += 4
        fmt = struct.Struct("<I%dq" % (2 * n_assets))
        for _ in range(n_accts):
            values = fmt.unpack_from(data, off)
            off += fmt.size
            acct = accts.accounts.get(values[0]) or accts.create(values[0])
            acct.bal[:] = list(values[1:])
        unpack = cls._ORDER.unpack_from
        size = cls._ORDER.size
        for sid in m.symbols:
            hs, halted, last, trade_id, n_rest, n_stop = struct.unpack_from("<HBqqII", data, off)
            off += struct.calcsize("<HBqqII")
            if hs != sid:
                raise SnapshotError("symbol order mismatch")
            sym = m.symbols[sid]
            sym.halted = bool(halted)
            sym.last_price = last
            sym.trade_id = trade_id
            for i in range(n_rest + n_stop):
                v = unpack(data, off)
                off += size
                o = Order(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[9], v[10], v[13],
                          v[14], v[15], v[16], v[17])
                o.remaining = v[11]
                o.filled = v[12]
                o.hold = v[18]
                o.fee_num = int.from_bytes(v[19], "little", signed=True)
                o.fee_paid = v[20]
                acct = accts.accounts[o.account_id]
                if i < n_rest:
                    sym.book.insert(o)
                else:
                    sym.stops.add(o)
                m.orders[o.order_id] = o
                acct.n_orders += 1
                if o.client_order_id:
                    acct.by_coid[o.client_order_id] = o
        if data[off:off + 4] == _CLOCK_TRAILER and len(data) == off + 12:
            (m.clock,) = struct.unpack_from("<q", data, off + 4)
            off += 12
        if off != len(data):
            raise SnapshotError("trailing bytes in snapshot")
        # expiry heap rebuilt (account order lists: in snapshot order; nothing
        # depends on their order -- mass cancel sorts by order id)
        m.expiry = sorted((o.expire_ns, oid) for oid, o in m.orders.items() if o.tif == GTT)
        return m

    # ==================================================================
    # invariants
    # ==================================================================
    def _check(self):
        """Assert every invariant: books, stops, accounts, holds == needs, conservation."""
        self.accounts._check()
        need = {}
        live = 0
        for sid, sym in self.symbols.items():
            sym.book._check()
            sym.stops._check()
            for o in sym.book.iter_orders():
                assert self.orders.get(o.order_id) is o, "resting order not indexed"
                assert o.order_type in (LIMIT, STOP_LIMIT, TAKE_PROFIT_LIMIT)
                assert o.hold == _need_rest(o, sym), "order %d hold %d != need %d" % (
                    o.order_id, o.hold, _need_rest(o, sym))
                hi = sym.quote_i if o.side == BUY else sym.base_i
                key = (o.account_id, hi)
                need[key] = need.get(key, 0) + o.hold
                live += 1
            for o in sym.stops.iter_orders():
                assert self.orders.get(o.order_id) is o, "stop order not indexed"
                assert o.hold == _need_stop(o, sym)
                hi = sym.quote_i if o.side == BUY else sym.base_i
                key = (o.account_id, hi)
                need[key] = need.get(key, 0) + o.hold
                live += 1
            if sym.last_price:
                assert sym.trade_id > 0
        assert live == len(self.orders), "orders index has %d, books %d" % (len(self.orders),
                                                                             live)
        for o in self.orders.values():
            if o.tif == GTT:
                assert (o.expire_ns, o.order_id) in self.expiry
        per_account = {}
        for o in self.orders.values():
            per_account[o.account_id] = per_account.get(o.account_id, 0) + 1
        for acct in self._acct.values():
            assert acct.n_orders == per_account.get(acct.account_id, 0), \
                "account %d counts %d live orders" % (acct.account_id, acct.n_orders)
            for o in acct.by_coid.values():
                assert self.orders.get(o.order_id) is o, "client id of a dead order"
        for acct in self._acct.values():
            bal = acct.bal
            for hi in range(1, len(bal), 2):
                expected = need.get((acct.account_id, hi - 1), 0)
                assert bal[hi] == expected, "account %d held %d != open orders need %d" % (
                    acct.account_id, bal[hi], expected)
