"""The columnar read model: the publisher's fold over events, one numpy pass per batch.

Same views as ``publisher.read_model.ReadModel`` (the object model, kept as the
reference implementation in tests): books, tickers, trades, 24h statistics, order
states and balances, built from events only.  Where the object model touches one
Python object per event, this one applies a whole batch with vectorized operations.

Theory of operation (numbered rules; the code refers to them; the object model's
rules 1-8 hold unchanged, these say how):

1. Input.  A batch is a numpy structured array of ``EVENT_DTYPE`` records
   (``EventBatch``: decoded zero-copy with ``np.frombuffer`` over bytes; the ring
   feed copies the ring's slots out once per batch, one bytes copy, before it
   commits: numpy's own copy of a structured dtype is ~30x slower).  Lists of event
   tuples are accepted too (tests, the ListSink).
2. Python work per batch is bounded by what changed for readers, not by the event
   count: the L2 books are sorted numpy price/size arrays per side (``BookSide``),
   each side set once per batch from its touched levels' final sizes;
   ``Changes.level2`` (``LazyLevels``) and ``Changes.trades`` (``TradeList``) become
   Python objects only when the hub sends them to a subscriber (conflation merges
   them lazily too); execution reports are built only for the accounts someone
   listens to (``report_accounts``, the hub's user subscriptions).  Everything else
   is a fixed number of numpy operations per batch (~150 at the ring feed's 4096):
   one stable sort of the batch by kind group and one copy of the records put each
   section's events (order creations, rejections, order updates, balances, book
   deltas, trades) in one contiguous slice, in event order, with their batch
   positions; sections whose event kinds are absent are skipped.  Costs to avoid,
   measured: ``searchsorted`` with many unsorted keys (~80 ns a key in branch
   misses), casts in mixed-dtype arithmetic on strided fields, per-batch
   ``np.unique``/``lexsort``.
3. Orders are rows of column arrays (``_Orders``) in increasing order id (= the
   input sequence of the NEW_ORDER, so ACCEPTED events append), grown by doubling;
   an event finds its row through a dense map ``row_of[id - dbase]`` (binary search
   only for ids below ``dbase``: orders resting since before the last compaction).
   Within a batch a field written by several events of one order gets the last
   write: plain fancy assignment, numpy assigning repeated indices in order
   (checked at import, ``_sequential_assign``; else events are sorted by row,
   ``_apply_order_updates_sorted``); sums (executed value, fees, fills)
   use ``np.add.at``; the status is the fold of its transitions (every FILL maps
   pending -> open, then the constant transitions in event order).  The table is
   preallocated for 2^17 rows (untouched pages cost nothing).  Done orders enter
   the done log in the order they first became done; beyond ``done_orders_keep``
   the oldest are forgotten at the end of the batch (the object model: at once;
   this differs only for events about an order forgotten earlier in the same
   batch, which needs ``done_orders_keep`` newer done orders).  Forgotten rows are
   dropped by a compaction when they outnumber the rest (the dense map is rebuilt
   to span ~4 rows' worth of ids), so memory is bounded by open orders plus about
   twice the done window.
4. Balances: totals per (account, asset) key (key = account * 65536 + asset) in a
   dense array by slot (``_Totals``: slots in order of first sight, found through
   an open-addressing hash table, vectorized, or a dict in the per-event path).
   Per key, a batch's final total is the last BALANCE set (or the previous total)
   plus the FILL moves after it.  An order's ``hold`` column is the ``aux`` of the
   last event that gives it (ACCEPTED, FILL, AMENDED, the BOOK_DELTA naming it when
   it rests: ``_apply_holds``, docs/records.md); held = the sum over the account's
   open orders, on request.  The matcher's hold rule M4 is never re-derived.
5. Trades go to a numpy ring per symbol (``trades_keep``); the 24h window is an
   append-only array per symbol with a moving head (stream time never goes back),
   volumes kept as running sums, high/low from per-block extrema.
6. Order objects are ``OrderView``s: live views of a row, resolved by order id
   (so they stay right across compactions), exposing the ``OrderState``
   attributes (read-only: everything in them came from events).
   Rejections are kept as raw records (newest ``rejections_keep``) and turned into
   ``OrderState``s on demand (cached, so a caller's change sticks as in the object
   model).  Client order ids are indexed lazily: creations with a client id are
   appended to arrays and folded into the dict on the first lookup.
7. A batch of at most ``SMALL_BATCH`` events is applied one event at a time on the
   same columns (``_apply_small``, the object model's loop): the vectorized path's
   fixed ~150 numpy calls per batch would cost ~100 us per event at low load,
   where batches hold a few events.  That path makes no numpy call per event: the
   records are tuples (``struct.iter_unpack``, shared with the service), columns,
   totals, the done log, the trade ring and the 24h window are read and written as
   Python ints through memoryviews (refreshed when an array is replaced), book
   levels are set in place from the batch's L2 changes (numpy copies only for an
   inserted or removed level).  It costs about what the object model costs per
   event, plus a few microseconds per batch.
"""
from bisect import bisect_left as _bisect_left
from collections.abc import Mapping

import numpy as np

from ringbuf.records import (EVENT_SLOTS, CommandKind, EventFlags, EventKind, OrderType,
                             Reason, Side)
from ringbuf import records as _records
from ringbuf.records import event_struct as _event_struct
from publisher.event_decoder import PublishedEvent
from publisher.read_model import DAY_NS, OrderState, SymbolView, Trade, _reason_name

__all__ = ["ColumnarReadModel", "EventBatch", "OrderView", "as_event_array", "ColumnarChanges"]

EVENT_DTYPE = _records.EVENT_DTYPE
_iter_unpack = _event_struct.iter_unpack
assert tuple(EVENT_DTYPE.names) == tuple(EVENT_SLOTS)
# positions of the fields in an event record's ``tolist()`` tuple (the per-event path)
(_E_KIND, _E_SIDE, _E_ORDER_TYPE, _E_TIF, _E_FLAGS, _E_COMMAND_KIND, _E_SYMBOL_ID, _E_REASON,
 _E_PRODUCER_ID, _E_ACCOUNT_ID, _E_SEQ, _E_ORDER_ID, _E_PRICE, _E_QTY, _E_REMAINING, _E_FILLED,
 _E_FEE, _E_AMOUNT, _E_TRADE_ID, _E_COUNTER_ORDER_ID, _E_COUNTER_ACCOUNT_ID, _E_EVENT_INDEX,
 _E_TIMESTAMP_NS, _E_CLIENT_ORDER_ID, _E_AUX) = range(25)
assert EVENT_DTYPE.names == (
    "kind", "side", "order_type", "tif", "flags", "command_kind", "symbol_id", "reason",
    "producer_id", "account_id", "seq", "order_id", "price", "qty", "remaining", "filled", "fee",
    "amount", "trade_id", "counter_order_id", "counter_account_id", "event_index",
    "timestamp_ns", "client_order_id", "aux")

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
_LAST = int(EventFlags.LAST)
_BUY = int(Side.BUY)
_SELL = int(Side.SELL)
_HALTED = int(Reason.SYMBOL_HALTED)
_STOP_TYPES = (int(OrderType.STOP_LOSS), int(OrderType.STOP_LIMIT), int(OrderType.TAKE_PROFIT),
               int(OrderType.TAKE_PROFIT_LIMIT))
_USER_KINDS = (_K_ACCEPTED, _K_REJECTED, _K_FILL, _K_CANCELLED, _K_EXPIRED, _K_TRIGGERED,
               _K_AMENDED, _K_BALANCE)
_UPDATE_KINDS = (_K_FILL, _K_CANCELLED, _K_EXPIRED, _K_AMENDED, _K_TRIGGERED)

_USER_KIND = np.zeros(256, bool)
_USER_KIND[list(_USER_KINDS)] = True
_UPDATE_KIND = np.zeros(256, bool)
_UPDATE_KIND[list(_UPDATE_KINDS)] = True
_HOLD_KIND = np.zeros(256, bool)                # events whose aux is their order's hold
_HOLD_KIND[[_K_FILL, _K_AMENDED, _K_BOOK_DELTA]] = True
_STOP_TYPE = np.zeros(256, bool)
_STOP_TYPE[list(_STOP_TYPES)] = True
_USER_KIND_T = tuple(_USER_KIND.tolist())      # Python bools (the per-event path)
_STOP_TYPE_T = tuple(_STOP_TYPE.tolist())
_CX_KIND = np.zeros(256, bool)                # CANCELLED, EXPIRED
_CX_KIND[[_K_CANCELLED, _K_EXPIRED]] = True
_DONE_REASON = np.zeros(256, np.int8)          # done event kind -> done_reason code
_DONE_REASON[[_K_FILL, _K_CANCELLED, _K_EXPIRED]] = (1, 2, 3)
# kind groups of the vectorized path (rule 2): one stable sort by group per batch
_G_OTHER, _G_ACCEPTED, _G_REJECTED, _G_UPDATE, _G_BALANCE, _G_BOOK, _G_TRADE, _G_STATUS = range(8)
_N_GROUPS = 8
_GROUP = np.zeros(256, np.uint8)
_GROUP[_K_ACCEPTED] = _G_ACCEPTED
_GROUP[_K_REJECTED] = _G_REJECTED
_GROUP[list(_UPDATE_KINDS)] = _G_UPDATE
_GROUP[_K_BALANCE] = _G_BALANCE
_GROUP[_K_BOOK_DELTA] = _G_BOOK
_GROUP[_K_TRADE] = _G_TRADE
_GROUP[_K_SYMBOL_STATUS] = _G_STATUS

# status codes (OrderState.status strings) and done reasons
_PENDING, _OPEN, _DONE = 0, 1, 2
_STATUS_NAMES = ("pending", "open", "done")
_DONE_NAMES = (None, "filled", "canceled", "expired")

_EMPTY_I = np.zeros(0, np.int64)

#: batches of at most this many events take the per-event path (``_apply_small``)
SMALL_BATCH = 128


def _nz(mask):
    """np.flatnonzero of a 1-d mask without its Python-level wrappers."""
    return mask.nonzero()[0]


def _take(arr, mask):
    """``arr[mask]`` for a structured array (take is ~9x faster than boolean indexing)."""
    return arr.take(np.nonzero(mask)[0])


def _raw(arr):
    """The records of a contiguous structured array as an (n, itemsize/8) int64 view."""
    return arr.view(np.int64).reshape(len(arr), arr.dtype.itemsize // 8)


def _concat(parts):
    """np.concatenate of structured arrays through int64 views (~20x faster)."""
    dt = parts[0].dtype
    return np.concatenate([_raw(np.ascontiguousarray(p)) for p in parts]).view(dt).reshape(-1)


def _new_event(values):
    return tuple.__new__(PublishedEvent, values)


def _events_of(arr):
    """PublishedEvent tuples of a structured array (O(n) Python: only for what readers need)."""
    return list(map(_new_event, arr.tolist()))


def _records_of(arr):
    """The records of a structured event array as tuples of ints (``tolist`` order):
    ``struct.iter_unpack`` over its buffer when contiguous (2.5x faster than tolist)."""
    if arr.flags.c_contiguous:
        return list(_iter_unpack(arr))
    return arr.tolist()


def as_event_array(events):
    """A structured ``EVENT_DTYPE`` array of ``events`` (EventBatch, array, bytes or tuples)."""
    if isinstance(events, EventBatch):
        return events.array
    if isinstance(events, np.ndarray):
        return events
    if isinstance(events, (bytes, bytearray, memoryview)):
        return np.frombuffer(events, EVENT_DTYPE)
    events = list(events)
    if not events:
        return np.zeros(0, EVENT_DTYPE)
    return np.array([tuple(int(v) for v in e) for e in events], dtype=EVENT_DTYPE)


class EventBatch(object):
    """A batch of events as numpy structured arrays (rule 1), list-like for old callers.

    ``len``, ``extend`` (the ring feed's merging), ``[i]`` and iteration (PublishedEvent
    tuples, decoded on demand), ``.array`` (one array; parts concatenated once).
    """
    __slots__ = ("parts", "count", "_array")

    def __init__(self, array=None):
        self.parts = [] if array is None or not len(array) else [array]
        self.count = 0 if array is None else len(array)
        self._array = array

    @classmethod
    def from_bytes(cls, data):
        """Zero-copy view of ``data`` (n * 128 bytes)."""
        return cls(np.frombuffer(data, EVENT_DTYPE))

    @classmethod
    def copy_of(cls, batch):
        """A ring ``Batch``'s records copied out of the ring (one memcpy per chunk)."""
        chunks = batch.chunks
        if len(chunks) == 1:       # bytes copy: numpy's copy of a structured dtype is ~30x slower
            return cls(np.frombuffer(bytes(chunks[0][1]), EVENT_DTYPE))
        return cls(np.frombuffer(b"".join(v for _, v in chunks), EVENT_DTYPE))

    def extend(self, other):
        arr = as_event_array(other)
        if len(arr):
            self.parts.append(arr)
            self.count += len(arr)
            self._array = None

    @property
    def array(self):
        a = self._array
        if a is None:
            parts = self.parts
            if not parts:
                a = np.zeros(0, EVENT_DTYPE)
            elif len(parts) == 1:
                a = parts[0]
            else:
                a = _concat(parts)
                self.parts = [a]
            self._array = a
        return a

    def __len__(self):
        return self.count

    def __iter__(self):
        return iter(_events_of(self.array))

    def __getitem__(self, i):
        a = self.array
        if isinstance(i, slice):
            return EventBatch(a[i])
        return _new_event(a[i].tolist())

    def filter_after(self, seq):
        """Return a new batch of the events with ``seq`` greater than ``seq``."""
        a = self.array
        return EventBatch(a[a["seq"] > seq])


# --------------------------------------------------------------------------- orders
_ORDER_COLUMNS = (
    # name, dtype (the event field's width where the value comes from one)
    ("id", np.int64), ("account_id", np.uint32), ("symbol_id", np.uint16), ("side", np.uint8),
    ("order_type", np.uint8), ("tif", np.uint8), ("flags", np.uint8), ("price", np.int64),
    ("qty", np.int64), ("stop_price", np.int64), ("funds", np.int64), ("filled", np.int64),
    ("remaining", np.int64), ("executed_value", np.int64), ("fees", np.int64),
    ("status", np.int8), ("done_reason", np.int8), ("reason", np.uint16),
    ("client_order_id", np.uint64), ("created_ns", np.int64), ("done_ns", np.int64),
    ("last_seq", np.int64), ("fills", np.int64), ("hold", np.int64),
    ("ever_done", np.bool_), ("forgotten", np.bool_),
)


#: columns the per-event path writes for FILL / CANCELLED / EXPIRED, and for ACCEPTED
_UPDATE_COLS = ("last_seq", "filled", "remaining", "executed_value", "fees", "fills",
                "status", "done_reason", "done_ns", "ever_done", "id", "reason", "hold")
_CREATE_COLS = ("id", "account_id", "symbol_id", "side", "order_type", "tif", "flags", "price",
                "qty", "filled", "remaining", "reason", "client_order_id", "funds", "status",
                "created_ns", "last_seq", "hold", "stop_price")


class _Orders(object):
    """Column arrays of order rows in increasing id (rule 3)."""

    def __init__(self, capacity=1 << 17):
        self.n = 0
        self.cap = capacity
        self.cols = {name: np.zeros(capacity, dt) for name, dt in _ORDER_COLUMNS}
        self.forgotten_count = 0
        self.gen = 0                      # bumped by every compaction (OrderView cache)
        self.dbase = 0                    # dense map: row_of[id - dbase] = row, or -1
        self.row_of = np.full(1024, -1, np.int32)
        self.indexed = 0
        self._scratch = None
        self._refresh()

    def _refresh(self):
        """Memoryviews of the columns and the dense map (the per-event path reads and
        writes Python ints through them: ~20 ns, a numpy scalar ~50-150 ns)."""
        mv = self.mv = {name: memoryview(col) for name, col in self.cols.items()}
        self.row_mv = memoryview(self.row_of)
        self.update_mvs = tuple(mv[name] for name in _UPDATE_COLS)
        self.create_mvs = tuple(mv[name] for name in _CREATE_COLS)

    def scratch(self, k):
        """An int64 scratch array indexable by row (contents undefined)."""
        s = self._scratch
        if s is None or len(s) < self.cap:
            s = self._scratch = np.empty(self.cap, np.int64)
        return s

    def reserve(self, k):
        need = self.n + k
        if need <= self.cap:
            return
        cap = self.cap
        while cap < need:
            cap *= 2
        for name, col in self.cols.items():
            new = np.zeros(cap, col.dtype)
            new[:self.n] = col[:self.n]
            self.cols[name] = new
        self.cap = cap
        self._refresh()

    def index_rows(self, a, b):
        """Enter appended rows ``a .. b-1`` (ids above every indexed one) in the dense map."""
        ids = self.cols["id"][a:b]
        if not len(ids):
            return
        if self.indexed == 0:
            self.dbase = int(ids[0])
        hi = int(ids[-1]) - self.dbase + 1
        if hi > len(self.row_of):
            cap = len(self.row_of)
            while cap < hi:
                cap *= 2
            new = np.full(cap, -1, np.int32)
            new[:len(self.row_of)] = self.row_of
            self.row_of = new
            self.row_mv = memoryview(new)
        off = ids - self.dbase
        sel = off >= 0
        self.row_of[off[sel]] = np.arange(a, b, dtype=np.int32)[sel]
        self.indexed += b - a

    def reindex(self):
        """Rebuild the dense map (after a compaction or an insertion): ids from ``dbase``,
        chosen so the map spans at most ~4 rows' worth of ids; older ids (orders resting
        long) are found by binary search."""
        n = self.n
        ids = self.cols["id"][:n]
        self.indexed = n
        if not n:
            self.dbase = 0
            self.row_of = np.full(1024, -1, np.int32)
            self.row_mv = memoryview(self.row_of)
            return
        self.dbase = max(int(ids[0]), int(ids[-1]) + 1 - (4 * n + 65536))
        span = int(ids[-1]) - self.dbase + 1
        cap = 1024
        while cap < span:
            cap *= 2
        self.row_of = np.full(cap, -1, np.int32)
        self.row_mv = memoryview(self.row_of)
        start = int(np.searchsorted(ids, self.dbase))
        self.row_of[ids[start:] - self.dbase] = np.arange(start, n, dtype=np.int32)

    def lookup(self, ids):
        """(rows, found) of ``ids``: found rows exist and are not forgotten.  O(1) each
        (the dense map), O(log n) for ids below its base."""
        k = len(ids)
        if not self.n:
            return np.zeros(k, np.int64), np.zeros(k, bool)
        off = ids - self.dbase
        size = len(self.row_of)
        inr = (off >= 0) & (off < size)
        rows = self.row_of[np.where(inr, off, 0)].astype(np.int64)
        found = inr & (rows >= 0)
        old = _nz(off < 0)
        if len(old):
            n = self.n
            idcol = self.cols["id"][:n]
            pos = np.minimum(np.searchsorted(idcol, ids[old]), n - 1)
            hit = idcol[pos] == ids[old]
            rows[old[hit]] = pos[hit]
            found[old[hit]] = True
        rows[~found] = 0
        found &= ~self.cols["forgotten"][rows]
        return rows, found

    def row(self, oid):
        n = self.n
        if not n:
            return -1
        off = oid - self.dbase
        if off >= 0:
            if off >= len(self.row_mv):
                return -1
            i = self.row_mv[off]
        else:
            idcol = self.cols["id"]
            i = int(np.searchsorted(idcol[:n], oid))
            if i >= n or idcol[i] != oid:
                i = -1
        if i >= 0 and not self.mv["forgotten"][i]:
            return i
        return -1

    def compact(self):
        """Drop forgotten rows (rule 3)."""
        n = self.n
        keep = ~self.cols["forgotten"][:n]
        m = int(keep.sum())
        for name, col in self.cols.items():
            col[:m] = col[:n][keep]
            col[m:n] = 0
        self.n = m
        self.forgotten_count = 0
        self.gen += 1
        self.reindex()


class OrderView(object):
    """A live view of one order row with the ``OrderState`` attributes (rule 6)."""
    __slots__ = ("_model", "order_id", "_row", "_gen")

    def __init__(self, model, order_id, row):
        self._model = model
        self.order_id = order_id
        self._row = row
        self._gen = model._orders.gen

    def _r(self):
        t = self._model._orders
        if self._gen != t.gen:
            self._row = t.row(self.order_id)
            self._gen = t.gen
        return self._row

    @property
    def status(self):
        return _STATUS_NAMES[self._model._orders.cols["status"][self._r()]]

    @property
    def done_reason(self):
        return _DONE_NAMES[self._model._orders.cols["done_reason"][self._r()]]

    @property
    def is_open(self):
        return self.status in ("open", "pending")

    @property
    def stop_price(self):
        return int(self._model._orders.cols["stop_price"][self._r()])

    def __repr__(self):
        return "OrderView(%d, %s)" % (self.order_id, self.status)


def _int_getter(col):
    def get(self):
        return int(self._model._orders.cols[col][self._r()])
    return property(get)


for _name in ("account_id", "symbol_id", "side", "order_type", "tif", "flags", "price", "qty",
              "funds", "filled", "remaining", "executed_value", "fees", "reason",
              "client_order_id", "created_ns", "done_ns", "last_seq", "fills", "hold"):
    setattr(OrderView, _name, _int_getter(_name))
del _name


def _sequential_assign():
    """True when ``a[idx] = v`` with repeated indices keeps the last value (numpy does so
    for 1-d arrays; checked here for the dtypes and shapes the model uses)."""
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 61, 20000)
    src = np.zeros((20000, 2), np.int64)
    src[:, 0] = np.arange(20000)
    expect = np.full(61, -1, np.int64)
    np.maximum.at(expect, idx, np.arange(20000))
    for dt in (np.int64, np.int8, np.uint16, np.uint32):
        a = np.full(61, -1, np.int64).astype(dt)
        a[idx] = (src[:, 0] % 100).astype(dt)            # strided source
        if not (a[expect >= 0] == (expect[expect >= 0] % 100).astype(dt)).all():
            return False
    return True


_SEQUENTIAL_ASSIGN = _sequential_assign()


def _runs_last(sorted_keys):
    """Mask of the last element of each run of equal values in a sorted array."""
    last = np.empty(len(sorted_keys), bool)
    if len(sorted_keys):
        np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=last[:-1])
        last[-1] = True
    return last


def _runs_first(sorted_keys):
    first = np.empty(len(sorted_keys), bool)
    if len(sorted_keys):
        first[0] = True
        np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
    return first


class _ByRow(object):
    """Events of a batch sorted by row (stable): last/first writer per row (rule 3)."""
    __slots__ = ("order", "rows")

    def __init__(self, rows):
        self.order = np.argsort(rows, kind="stable")
        self.rows = rows[self.order]

    def last(self, mask):
        """(rows, event indices) of the last event per row among ``mask`` (event order)."""
        sel = _nz(mask[self.order])
        r = self.rows[sel]
        keep = _runs_last(r)
        return r[keep], self.order[sel[keep]]

    def first(self, mask):
        sel = _nz(mask[self.order])
        r = self.rows[sel]
        keep = _runs_first(r)
        return r[keep], self.order[sel[keep]]


# --------------------------------------------------------------------------- trades
TRADE_DTYPE = np.dtype([("trade_id", np.int64), ("price", np.int64), ("qty", np.int64),
                        ("taker_side", np.int64), ("timestamp_ns", np.int64), ("seq", np.int64),
                        ("maker_order_id", np.int64), ("taker_order_id", np.int64)])


def _trade_words():
    """Word index (of an event record as 16 int64) of each TRADE_DTYPE field; the
    taker side is the byte after ``kind`` in word 0."""
    off = {n: EVENT_DTYPE.fields[n][1] for n in EVENT_DTYPE.names}
    src = ("trade_id", "price", "qty", "kind", "timestamp_ns", "seq", "counter_order_id",
           "order_id")
    assert EVENT_DTYPE.fields["side"][1] == 1 and off["kind"] == 0
    assert all(off[n] % 8 == 0 for n in src) and np.little_endian
    return np.array([off[n] // 8 for n in src], np.intp)


_TRADE_WORDS = _trade_words()


def _trades_of(arr):
    """Trade objects of a TRADE_DTYPE array or a list of trade tuples (the per-event path)."""
    return [Trade(*t) for t in (arr if isinstance(arr, list) else arr.tolist())]


class TradeList(object):
    """The trades of a batch (``Changes.trades`` values): Trade objects built on access."""
    __slots__ = ("parts", "_list")

    def __init__(self, arr):
        self.parts = [arr]
        self._list = None

    def _items(self):
        if self._list is None:
            out = []
            for p in self.parts:
                out.extend(_trades_of(p))
            self._list = out
        return self._list

    def extend(self, other):
        if isinstance(other, TradeList):
            self.parts.extend(other.parts)
            if self._list is not None and other._list is not None:
                self._list.extend(other._list)
            else:
                self._list = None
        else:
            self._items().extend(other)
            self.parts.append(np.array([(t.trade_id, t.price, t.qty, t.taker_side,
                                         t.timestamp_ns, t.seq, t.maker_order_id,
                                         t.taker_order_id) for t in other], TRADE_DTYPE))

    def __len__(self):
        return sum(len(p) for p in self.parts)

    def __iter__(self):
        return iter(self._items())

    def __getitem__(self, i):
        return self._items()[i]


class TradeRing(object):
    """The newest ``maxlen`` trades of a symbol (rule 5); deque-like reads, oldest first."""

    def __init__(self, maxlen):
        self.maxlen = maxlen
        self.buf = np.zeros(max(1, maxlen), TRADE_DTYPE)
        self._flat = None              # memoryview of buf as int64 words (append_rows)
        self.start = 0                 # index of the oldest
        self.count = 0

    def append_array(self, arr):
        m = self.maxlen
        if not m:
            return
        k = len(arr)
        buf = _raw(self.buf)
        src = _raw(arr)
        if k >= m:
            buf[:] = src[k - m:]
            self.start, self.count = 0, m
            return
        end = (self.start + self.count) % m
        first = min(k, m - end)
        buf[end:end + first] = src[:first]
        if k > first:
            buf[:k - first] = src[first:]
        total = self.count + k
        if total > m:
            self.start = (self.start + total - m) % m
            total = m
        self.count = total

    def append_rows(self, rows):
        """``append_array`` for a few trade tuples, without numpy calls (rule 7)."""
        m = self.maxlen
        k = len(rows)
        if not m:
            return
        if k >= m:
            self.append_array(np.array(rows, TRADE_DTYPE))
            return
        flat = self._flat
        if flat is None:
            flat = self._flat = memoryview(self.buf.view(np.int64))
        end = (self.start + self.count) % m
        for r in rows:
            b = end * 8
            flat[b], flat[b + 1], flat[b + 2], flat[b + 3], flat[b + 4], flat[b + 5], \
                flat[b + 6], flat[b + 7] = r
            end += 1
            if end == m:
                end = 0
        total = self.count + k
        if total > m:
            self.start = (self.start + total - m) % m
            total = m
        self.count = total

    def clear(self):
        self.start, self.count = 0, 0

    def _ordered(self):
        m, s, c = self.maxlen, self.start, self.count
        if s + c <= m:
            return self.buf[s:s + c]
        return _concat([self.buf[s:], self.buf[:s + c - m]])

    def __len__(self):
        return self.count

    def __iter__(self):
        return iter(_trades_of(self._ordered()))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _trades_of(self._ordered()[i])
        c = self.count
        if i < 0:
            i += c
        if not 0 <= i < c:
            raise IndexError("trade index out of range")
        return Trade(*self.buf[(self.start + i) % self.maxlen].tolist())


class _Window(object):
    """24h window of (ts, price, qty), stream time (rule 5); extrema per block of ``B``."""
    B = 4096

    def __init__(self):
        self.ts = np.zeros(1024, np.int64)
        self.price = np.zeros(1024, np.int64)
        self.qty = np.zeros(1024, np.int64)
        self.off = 0                  # absolute index of element 0 of the arrays
        self.head = 0                 # absolute index of the oldest in the window
        self.tail = 0                 # absolute index past the newest
        self.volume = 0
        self.quote_volume = 0
        self.blocks = {}              # complete block -> (max, min)
        self._mv = None               # memoryviews of ts, price, qty (add_rows)

    def add(self, ts, price, qty):
        k = len(ts)
        if not k:
            return
        if self.head - self.off > max(1024, (self.tail - self.off) // 2):
            s = self.head - self.off
            live = self.tail - self.head
            for a in (self.ts, self.price, self.qty):
                a[:live] = a[s:s + live]
            self.off = self.head
        need = self.tail - self.off + k
        if need > len(self.ts):
            cap = len(self.ts)
            while cap < need:
                cap *= 2
            for name in ("ts", "price", "qty"):
                old = getattr(self, name)
                new = np.zeros(cap, np.int64)
                new[:len(old)] = old
                setattr(self, name, new)
        t0 = self.tail - self.off
        self.ts[t0:t0 + k] = ts
        self.price[t0:t0 + k] = price
        self.qty[t0:t0 + k] = qty
        self.tail += k
        self.volume += int(qty.sum())
        self.quote_volume += int((price * qty).sum())
        cutoff = int(ts[-1]) - DAY_NS              # object model: evict ts <= cutoff
        if self.ts[self.head - self.off] <= cutoff:
            self._evict(cutoff)

    def add_rows(self, rows):
        """``add`` for a few trade tuples (TRADE_DTYPE order), without numpy calls unless
        the arrays move or more than a few trades leave the window (rule 7)."""
        k = len(rows)
        t0 = self.tail - self.off
        h0 = self.head - self.off
        if (h0 > 1024 and h0 > t0 // 2) or t0 + k > len(self.ts):
            self.add(np.array([r[4] for r in rows], np.int64),
                     np.array([r[1] for r in rows], np.int64),
                     np.array([r[2] for r in rows], np.int64))
            return
        mv = self._mv
        if mv is None or mv[0].obj is not self.ts:
            mv = self._mv = (memoryview(self.ts), memoryview(self.price), memoryview(self.qty))
        mts, mp, mq = mv
        vol, qv = self.volume, self.quote_volume
        for r in rows:
            price, qty = r[1], r[2]
            mts[t0], mp[t0], mq[t0] = r[4], price, qty
            vol += qty
            qv += price * qty
            t0 += 1
        self.tail += k
        self.volume, self.quote_volume = vol, qv
        cutoff = rows[-1][4] - DAY_NS
        h = self.head - self.off
        if mts[h] > cutoff:
            return
        t1 = self.tail - self.off
        stop = min(t1, h + 8)
        while h < stop and mts[h] <= cutoff:
            vol -= mq[h]
            qv -= mp[h] * mq[h]
            h += 1
        self.volume, self.quote_volume = vol, qv
        self.head = h + self.off
        if h < t1 and mts[h] <= cutoff:                 # more leave: the vectorized way
            self._evict(cutoff)
        else:
            self._drop_blocks()

    def _evict(self, cutoff):
        h0 = self.head - self.off
        t1 = self.tail - self.off
        h1 = h0 + int(np.searchsorted(self.ts[h0:t1], cutoff, side="right"))
        if h1 > h0:
            self.volume -= int(self.qty[h0:h1].sum())
            self.quote_volume -= int((self.price[h0:h1] * self.qty[h0:h1]).sum())
            self.head = h1 + self.off
            self._drop_blocks()

    def _drop_blocks(self):
        blocks = self.blocks
        if blocks:
            lim = self.head // self.B            # blocks b with (b + 1) * B <= head
            for b in [b for b in blocks if b < lim]:
                del blocks[b]

    def clear(self):
        self.__init__()

    def __len__(self):
        return self.tail - self.head

    def extrema(self):
        """(max, min) price over the window; O(B + window/B)."""
        B = self.B
        h, t = self.head, self.tail
        hi, lo = None, None
        b0 = (h + B - 1) // B                      # first complete block inside [h, t)
        b1 = t // B
        parts = []
        if b0 >= b1:
            parts.append((h, t))
        else:
            parts.append((h, b0 * B))
            parts.append((b1 * B, t))
            for b in range(b0, b1):
                mm = self.blocks.get(b)
                if mm is None:
                    seg = self.price[b * B - self.off:(b + 1) * B - self.off]
                    mm = (int(seg.max()), int(seg.min()))
                    self.blocks[b] = mm
                hi = mm[0] if hi is None else max(hi, mm[0])
                lo = mm[1] if lo is None else min(lo, mm[1])
        for a, z in parts:
            if z > a:
                seg = self.price[a - self.off:z - self.off]
                mx, mn = int(seg.max()), int(seg.min())
                hi = mx if hi is None else max(hi, mx)
                lo = mn if lo is None else min(lo, mn)
        return hi, lo

    def first_price(self):
        return int(self.price[self.head - self.off])


class BookSide(object):
    """One side of an L2 book: sorted price and size arrays (rule 2), dict-like reads.

    ``set_levels`` applies a batch's touched levels (sorted prices, final sizes, 0 =
    gone) with a few numpy operations: O(levels in the book) without Python per level.
    """
    __slots__ = ("prices", "sizes", "_mp", "_mq")

    def __init__(self):
        self.prices = _EMPTY_I
        self.sizes = _EMPTY_I
        self._mp = self._mq = None         # memoryviews of prices, sizes (set_few)

    def set_levels(self, prices, sizes):
        if len(prices) <= 4:
            for p, size in zip(prices.tolist(), sizes.tolist()):
                self._set_one(p, size)
            return
        e, q = self.prices, self.sizes
        if not len(e):
            keep = sizes != 0
            self.prices, self.sizes = prices[keep], sizes[keep]
            return
        # both sorted: a stable sort of the two runs (a merge) keeps the new size last
        allp = np.concatenate((e, prices))
        alls = np.concatenate((q, sizes))
        o = allp.argsort(kind="stable")
        allp, alls = allp[o], alls[o]
        k = len(allp)
        keep = np.empty(k, bool)
        keep[-1] = True
        np.not_equal(allp[1:], allp[:-1], out=keep[:-1])   # the last of equal prices
        keep &= alls != 0
        self.prices, self.sizes = allp[keep], alls[keep]

    def set_few(self, levels, side, other):
        """Set a few levels ({(side, price): size}, 0 = gone; ``side``'s on this book,
        the others' on ``other``) in place where they exist, numpy copies only for
        inserted or removed levels (rule 7)."""
        for (sd, price), size in levels.items():
            book = self if sd == side else other
            me = book._mp
            if me is None or me.obj is not book.prices:
                me = book._mp = memoryview(book.prices)
            i = _bisect_left(me, price)
            if i < len(me) and me[i] == price:
                if size:
                    mq = book._mq
                    if mq is None or mq.obj is not book.sizes:
                        mq = book._mq = memoryview(book.sizes)
                    mq[i] = size
                    continue
                e, q = book.prices, book.sizes
                book.prices = np.concatenate((e[:i], e[i + 1:]))
                book.sizes = np.concatenate((q[:i], q[i + 1:]))
            elif size:
                e, q = book.prices, book.sizes
                book.prices = np.concatenate((e[:i], np.array((price,), np.int64), e[i:]))
                book.sizes = np.concatenate((q[:i], np.array((size,), np.int64), q[i:]))

    def _set_one(self, price, size):
        e, q = self.prices, self.sizes
        i = int(e.searchsorted(price))
        if i < len(e) and e[i] == price:
            if size:
                q[i] = size
            else:
                self.prices = np.concatenate((e[:i], e[i + 1:]))
                self.sizes = np.concatenate((q[:i], q[i + 1:]))
        elif size:
            self.prices = np.concatenate((e[:i], np.array([price], np.int64), e[i:]))
            self.sizes = np.concatenate((q[:i], np.array([size], np.int64), q[i:]))

    def clear(self):
        self.prices, self.sizes = _EMPTY_I, _EMPTY_I

    def __setitem__(self, price, size):
        self._set_one(price, size)

    def pop(self, price, default=None):
        i = int(np.searchsorted(self.prices, price))
        if i < len(self.prices) and self.prices[i] == price:
            size = int(self.sizes[i])
            self.set_levels(np.array([price], np.int64), np.array([0], np.int64))
            return size
        return default

    def __getitem__(self, price):
        i = int(np.searchsorted(self.prices, price))
        if i < len(self.prices) and self.prices[i] == price:
            return int(self.sizes[i])
        raise KeyError(price)

    def __contains__(self, price):
        i = int(np.searchsorted(self.prices, price))
        return i < len(self.prices) and self.prices[i] == price

    def __len__(self):
        return len(self.prices)

    def __iter__(self):
        return iter(self.prices.tolist())

    def keys(self):
        return self.prices.tolist()

    def items(self):
        """(price, size) ascending."""
        return list(zip(self.prices.tolist(), self.sizes.tolist()))

    def values(self):
        return self.sizes.tolist()

    def peekitem(self, index=-1):
        return int(self.prices[index]), int(self.sizes[index])


class LazyLevels(Mapping):
    """``Changes.level2`` values: {(side, price): size}, built on first access (rule 2)."""
    __slots__ = ("_parts", "_d")

    def __init__(self, sides, prices, sizes):
        self._parts = [(sides, prices, sizes)]
        self._d = None

    def _dict(self):
        d = self._d
        if d is None:
            d = {}
            for sides, prices, sizes in self._parts:
                d.update(zip(zip(sides.tolist(), prices.tolist()), sizes.tolist()))
            self._d = d
            self._parts = []
        return d

    def update(self, other):
        """Fold later levels in (the hub's conflation); stays lazy when both are."""
        if isinstance(other, LazyLevels) and self._d is None and other._d is None:
            self._parts.extend(other._parts)
            return
        self._dict().update(other._dict() if isinstance(other, LazyLevels) else other)

    def __getitem__(self, key):
        return self._dict()[key]

    def __iter__(self):
        return iter(self._dict())

    def __len__(self):
        return len(self._dict())

    def items(self):
        return self._dict().items()


class ColumnarSymbolView(SymbolView):
    """A symbol's L2 book (BookSide arrays), trade ring and 24h window (rules 2, 5)."""

    def __init__(self, symbol_id, trades_keep):
        SymbolView.__init__(self, symbol_id, trades_keep)
        self.bids = BookSide()
        self.asks = BookSide()
        self.trades = TradeRing(trades_keep)
        self.window = _Window()
        self.win_max = self.win_min = None

    def best_bid(self):
        """(price, qty) of the best bid or None.  O(1)."""
        b = self.bids
        return b.peekitem(-1) if len(b.prices) else None

    def best_ask(self):
        a = self.asks
        return a.peekitem(0) if len(a.prices) else None

    def depth(self, levels=None):
        """(bids best first, asks best first) as lists of (price, qty).  O(levels)."""
        bp, bs, ap, as_ = self.bids.prices, self.bids.sizes, self.asks.prices, self.asks.sizes
        if levels is not None:
            bp, bs, ap, as_ = bp[len(bp) - levels:] if levels < len(bp) else bp, \
                bs[len(bs) - levels:] if levels < len(bs) else bs, ap[:levels], as_[:levels]
        return (list(zip(bp[::-1].tolist(), bs[::-1].tolist())),
                list(zip(ap.tolist(), as_.tolist())))

    @property
    def volume(self):
        return self.window.volume

    @volume.setter
    def volume(self, value):
        pass

    @property
    def quote_volume(self):
        return self.window.quote_volume

    @quote_volume.setter
    def quote_volume(self, value):
        pass

    def _add_trade(self, trade):
        arr = np.array([(trade.trade_id, trade.price, trade.qty, trade.taker_side,
                         trade.timestamp_ns, trade.seq, trade.maker_order_id,
                         trade.taker_order_id)], TRADE_DTYPE)
        self._add_trades(arr)

    def _add_trades(self, arr):
        self.trades.append_array(arr)
        last = arr[-1].item()                      # TRADE_DTYPE order
        self.last_price = last[1]
        self.last_qty = last[2]
        self.last_trade_id = last[0]
        self.window.add(arr["timestamp_ns"], arr["price"], arr["qty"])

    def _add_trade_rows(self, rows):
        """``_add_trades`` for a few trade tuples (TRADE_DTYPE order; rule 7): the trade
        ring's and the 24h window's arrays written through memoryviews."""
        last = rows[-1]
        self.last_price = last[1]
        self.last_qty = last[2]
        self.last_trade_id = last[0]
        self.trades.append_rows(rows)
        self.window.add_rows(rows)

    def stats(self):
        w = self.window
        if not len(w):
            return {"open": None, "high": None, "low": None, "last": self.last_price,
                    "volume": 0, "quote_volume": 0}
        hi, lo = w.extrema()
        return {"open": w.first_price(), "high": hi, "low": lo, "last": self.last_price,
                "volume": w.volume, "quote_volume": w.quote_volume}


class ColumnarChanges(object):
    """What one ``apply`` changed (the object model's ``Changes``; rule 2).

    ``level2`` symbol -> {(side, price): qty}; ``trades`` symbol -> TradeList;
    ``ticker`` set of symbols; ``user`` account -> [(event, order)] for
    ``report_accounts`` only; ``closed_seqs`` numpy array; ``status`` events.
    """
    __slots__ = ("level2", "trades", "ticker", "user", "closed_seqs", "status", "ts_ns")

    def __init__(self):
        self.ts_ns = 0
        self.level2 = {}
        self.trades = {}
        self.ticker = set()
        self.user = {}
        self.closed_seqs = _EMPTY_I
        self.status = []

    def merge(self, later):
        for sym, levels in later.level2.items():
            mine = self.level2.get(sym)
            if mine is None:
                self.level2[sym] = levels
            else:
                mine.update(levels)
        for sym, tlist in later.trades.items():
            mine = self.trades.get(sym)
            if mine is None:
                self.trades[sym] = tlist
            else:
                mine.extend(tlist)
        self.ticker.update(later.ticker)
        for account, reports in later.user.items():
            self.user.setdefault(account, []).extend(reports)
        self.closed_seqs = np.concatenate([np.asarray(self.closed_seqs, np.int64),
                                           np.asarray(later.closed_seqs, np.int64)])
        self.status.extend(later.status)
        self.ts_ns = max(self.ts_ns, later.ts_ns)
        return self


_HASH_MULT_INT = 0x9E3779B97F4A7C15
_HASH_MULT = np.uint64(_HASH_MULT_INT)


class _Totals(object):
    """Totals per (account, asset) key (rule 4): a dense value array by slot (slots in
    order of first sight, never moved), found by key through an open-addressing hash
    table (vectorized: one gather for nearly every key; ``searchsorted`` over unsorted
    keys costs ~80 ns a key in branch misses) and through a dict (the per-event path)."""

    def __init__(self):
        self.n = 0
        self.keys = np.zeros(1024, np.int64)          # slot -> key
        self.vals = np.zeros(1024, np.int64)          # slot -> total
        self.vals_mv = memoryview(self.vals)          # (the per-event path)
        self.slot_of = {}                             # key -> slot
        self._bits = 12
        self.hkeys = np.full(1 << 12, -1, np.int64)   # -1: empty (keys are >= 0)
        self.hslot = np.zeros(1 << 12, np.int64)
        self._hk_mv, self._hs_mv = memoryview(self.hkeys), memoryview(self.hslot)
        self._sorted_n = 0
        self._skeys = _EMPTY_I
        self._sslots = _EMPTY_I

    def _hash(self, keys):
        k = np.ascontiguousarray(keys, np.int64).view(np.uint64)
        return (k * _HASH_MULT >> np.uint64(64 - self._bits)).astype(np.intp)

    def slots(self, keys):
        """Slots of int64 ``keys`` (new keys get new slots with total 0)."""
        h = self._hash(keys)
        out = self.hslot.take(h)
        hit = self.hkeys.take(h) == keys
        if hit.all():
            return out
        todo = (~hit).nonzero()[0]
        hh = h[todo]
        mask = (1 << self._bits) - 1
        missing = []
        while len(todo):
            hk = self.hkeys.take(hh)
            found = hk == keys[todo]
            if found.any():
                out[todo[found]] = self.hslot.take(hh[found])
            empty = hk == -1
            if empty.any():
                missing.append(todo[empty])
            more = ~(found | empty)
            todo = todo[more]
            hh = (hh[more] + 1) & mask
        if missing:
            miss = np.concatenate(missing)
            new = np.unique(keys[miss])
            self._insert(new)
            out[miss] = self.slots(keys[miss])
        return out

    def slot(self, key):
        """The slot of one key (Python int), inserted when new (without numpy calls
        unless the arrays grow)."""
        i = self.slot_of.get(key)
        if i is not None:
            return i
        n = self.n
        if n + 1 > len(self.keys) or 2 * (n + 1) > (1 << self._bits):
            self._insert(np.array([key], np.int64))
            return self.slot_of[key]
        self.keys[n] = key
        self.slot_of[key] = n
        self.n = n + 1
        mask = (1 << self._bits) - 1
        h = ((key * _HASH_MULT_INT) & 0xFFFFFFFFFFFFFFFF) >> (64 - self._bits)
        hk = self._hk_mv
        while hk[h] != -1:
            h = (h + 1) & mask
        hk[h] = key
        self._hs_mv[h] = n
        return n

    def _insert(self, new):
        """Enter unique absent keys ``new``."""
        k = len(new)
        n = self.n
        if n + k > len(self.keys):
            cap = len(self.keys)
            while cap < n + k:
                cap *= 2
            for name in ("keys", "vals"):
                old = getattr(self, name)
                a = np.zeros(cap, np.int64)
                a[:n] = old[:n]
                setattr(self, name, a)
            self.vals_mv = memoryview(self.vals)
        self.keys[n:n + k] = new
        slots = np.arange(n, n + k, dtype=np.int64)
        self.slot_of.update(zip(new.tolist(), slots.tolist()))
        self.n = n + k
        if 2 * self.n > (1 << self._bits):            # load <= 1/2: rebuild larger
            while 2 * self.n > (1 << self._bits):
                self._bits += 1
            self.hkeys = np.full(1 << self._bits, -1, np.int64)
            self.hslot = np.zeros(1 << self._bits, np.int64)
            self._hk_mv, self._hs_mv = memoryview(self.hkeys), memoryview(self.hslot)
            self._place(self.keys[:self.n].copy(), np.arange(self.n, dtype=np.int64))
        else:
            self._place(new, slots)

    def _place(self, keys, slots):
        mask = (1 << self._bits) - 1
        h = self._hash(keys)
        hkeys, hslot = self.hkeys, self.hslot
        mark = np.empty(1 << self._bits, np.int64)
        while len(keys):
            busy = hkeys.take(h) != -1
            h[busy] = (h[busy] + 1) & mask
            free = (~busy).nonzero()[0]
            if not len(free):
                continue
            hf = h[free]
            mark[hf[::-1]] = free[::-1]                # the first key per free position
            win = free[mark[hf] == free]
            hkeys[h[win]] = keys[win]
            hslot[h[win]] = slots[win]
            rest = np.ones(len(keys), bool)
            rest[win] = False
            keys, slots, h = keys[rest], slots[rest], h[rest]

    def _check(self):
        """Assert the invariants: every key is in the table once, at its slot."""
        n = self.n
        keys = self.keys[:n]
        assert len(self.slot_of) == n
        assert int((self.hkeys != -1).sum()) == n
        assert self.slots(keys.copy()).tolist() == list(range(n))
        assert all(self.slot_of[k] == i for i, k in enumerate(keys.tolist()))

    def account_items(self, account_id):
        """[(asset, total)] of an account, by asset."""
        if self._sorted_n != self.n:
            o = self.keys[:self.n].argsort(kind="stable")
            self._skeys, self._sslots = self.keys[o], o
            self._sorted_n = self.n
        sk = self._skeys
        a = int(sk.searchsorted(account_id * 65536))
        b = int(sk.searchsorted((account_id + 1) * 65536))
        keys = sk[a:b].tolist()
        vals = self.vals[self._sslots[a:b]].tolist()
        return [(key - account_id * 65536, v) for key, v in zip(keys, vals)]


class ColumnarReadModel(object):
    """Books, tickers, trades, 24h stats, order states and balances, one numpy pass a batch.

    The interface of ``publisher.read_model.ReadModel`` (``apply``, ``symbol``,
    ``order``, ``order_by_client_id``, ``open_orders``, ``account_orders``,
    ``account_balances``, ``seed_from_matcher``, ``applied_seq``, ``events_applied``).

    >>> ColumnarReadModel([1, 2]).applied_seq
    0
    """

    def __init__(self, symbol_ids, trades_keep=1000, done_orders_keep=200000, specs=None,
                 rejections_keep=10000):
        self.trades_keep = trades_keep
        self.symbols = {int(s): ColumnarSymbolView(int(s), trades_keep) for s in symbol_ids}
        self.specs = dict(specs or {})
        self.done_orders_keep = done_orders_keep
        self.rejections_keep = rejections_keep
        self.applied_seq = 0
        self.events_applied = 0
        self._open_seq = 0
        self.last_timestamp_ns = 0
        #: accounts whose execution reports ``apply`` builds (``Changes.user``); None = all.
        #: The publisher sets it to the hub's user subscriptions (rule 2).
        self.report_accounts = None
        self._orders = _Orders()
        self._done_log = np.zeros(1024, np.int64)
        self._done_mv = memoryview(self._done_log)
        self._done_head = 0
        self._done_tail = 0
        self.done_total = 0                # orders ever done (tests, stats)
        self._rej = np.zeros(max(16, min(rejections_keep, 1024)), EVENT_DTYPE)
        self._rej_head = 0
        self._rej_tail = 0
        self._rej_cache = {}
        self._coid_parts = []              # arrays (account, coid, id) not yet in _client_ids
        self._coid_pending = []            # (account, coid, id) of the per-event path, newer
        self._client_ids = {}
        self._totals = _Totals()
        sym_ok = np.zeros(65536, bool)
        sym_ok[list(self.symbols)] = True
        self._sym_ok = sym_ok
        self._spec_ok = np.zeros(65536, bool)
        self._spec_base = np.zeros(65536, np.int64)
        self._spec_quote = np.zeros(65536, np.int64)
        self._spec_bpl = np.zeros(65536, np.int64)
        for sid, spec in self.specs.items():
            self._spec_ok[sid] = True
            self._spec_base[sid] = spec.base_asset
            self._spec_quote[sid] = spec.quote_asset
            self._spec_bpl[sid] = spec.base_per_lot

    def reset(self):
        """Back to empty (the rebuild's start-over), keeping the configuration."""
        report = self.report_accounts
        self.__init__(list(self.symbols), trades_keep=self.trades_keep,
                      done_orders_keep=self.done_orders_keep, specs=self.specs,
                      rejections_keep=self.rejections_keep)
        self.report_accounts = report

    # ------------------------------------------------------------------ apply
    def apply(self, events, _records=None):
        """Apply a batch in stream order; return the ``ColumnarChanges`` (rules 1-5).
        ``_records``: the batch's ``tolist()`` when the caller made it (small batches)."""
        arr = as_event_array(events)
        changes = ColumnarChanges()
        n = len(arr)
        if not n:
            changes.ts_ns = self.last_timestamp_ns
            return changes
        if n <= SMALL_BATCH:
            return self._apply_small(arr, changes, _records)
        # one stable sort by kind group, one copy of the records: every section below
        # reads a contiguous slice of its own events (rule 2)
        grp = _GROUP[arr["kind"]]
        order = grp.argsort(kind="stable")
        counts = np.bincount(grp, minlength=_N_GROUPS).tolist()
        srt = _raw(arr).take(order, axis=0).view(EVENT_DTYPE).reshape(n)
        bounds = [0]
        for c in counts:
            bounds.append(bounds[-1] + c)
        seqs = arr["seq"]
        # rule 2 of the object model: applied_seq
        applied = self.applied_seq
        closed = seqs[(arr["flags"] & _LAST).astype(bool)]
        if len(closed):
            applied = max(applied, int(closed.max()))
        prev = np.empty(n, np.int64)
        prev[0] = self._open_seq
        prev[1:] = seqs[:-1]
        up = prev[seqs > prev]
        if len(up):
            applied = max(applied, int(up.max()))
        self.applied_seq = applied
        self._open_seq = int(seqs[-1])
        ts_max = int(arr["timestamp_ns"].max())
        if ts_max > self.last_timestamp_ns:
            self.last_timestamp_ns = ts_max
        changes.closed_seqs = closed

        def group(g):
            return srt[bounds[g]:bounds[g + 1]], order[bounds[g]:bounds[g + 1]]

        if counts[_G_ACCEPTED]:
            acc = srt[bounds[_G_ACCEPTED]:bounds[_G_ACCEPTED + 1]]
            new = acc["command_kind"] == _C_NEW
            if not new.all():
                acc = _take(acc, new)
            if len(acc):
                self._create(acc)
        if counts[_G_REJECTED]:
            rej = srt[bounds[_G_REJECTED]:bounds[_G_REJECTED + 1]]
            new = rej["command_kind"] == _C_NEW
            if not new.all():
                rej = _take(rej, new)
            if len(rej):
                self._add_rejections(rej)
        fe = fpos = None
        if counts[_G_UPDATE]:
            ev, upos = group(_G_UPDATE)
            rows, found = self._orders.lookup(ev["order_id"])
            if not found.all():
                sel = found.nonzero()[0]
                ev, rows, upos = ev.take(sel), rows[sel], upos[sel]
            if len(rows):
                fe, fpos = self._apply_order_updates(ev, rows, upos)
        if counts[_G_UPDATE] or counts[_G_BOOK]:
            self._apply_holds(arr)
        if counts[_G_BALANCE] or fe is not None:
            be, bpos = group(_G_BALANCE)
            self._apply_totals(be, bpos, fe, fpos)
        if counts[_G_BOOK]:
            self._apply_books(group(_G_BOOK)[0], changes)
        if counts[_G_TRADE]:
            self._apply_trades(group(_G_TRADE)[0], changes)
        if counts[_G_STATUS]:
            for e in _events_of(group(_G_STATUS)[0]):
                view = self.symbols.get(e.symbol_id)
                if view is not None:
                    view.halted = e.reason == _HALTED
                    changes.status.append(e)
        self._forget_done()
        report = self.report_accounts
        if report is None or report:
            um = _USER_KIND[arr["kind"]]
            if report is not None and um.any():
                um &= np.isin(arr["account_id"], np.fromiter(report, np.int64, len(report)))
            if um.any():
                self._reports(_take(arr, um), changes.user)
        self.events_applied += n
        changes.ts_ns = self.last_timestamp_ns
        changes.ticker.update(changes.level2)
        changes.ticker.update(changes.trades)
        return changes

    def _apply_small(self, arr, changes, recs=None):
        """``apply`` for a batch of at most ``SMALL_BATCH`` events, one event at a time
        (rule 7): the vectorized path costs ~100-200 numpy calls per batch whatever its
        size, this one Python ints read and written through memoryviews of the same
        columns (no numpy call per event; a few per batch for book inserts and removals,
        rejections).  The equality test feeds batches of 1 to 600 events, so it checks
        both.  ``recs``: ``arr.tolist()`` when the caller has it."""
        t = self._orders
        symbols = self.symbols
        specs = self.specs
        tot = self._totals
        slot_of = tot.slot_of
        tv = tot.vals_mv
        l2 = changes.level2
        trades = None                     # sym -> [trade tuples]
        closed = []
        open_seq, applied = self._open_seq, self.applied_seq
        ts_max = self.last_timestamp_ns
        report = self.report_accounts
        want_reports = report is None or report
        user_rows = []
        rejected = status_events = cols = None
        if recs is None:
            recs = _records_of(arr)
        dmv = self._done_mv
        dlen = len(dmv)
        for pos, e in enumerate(recs):
            kind = e[0]
            seq = e[10]
            if seq != open_seq:
                if seq > open_seq and open_seq > applied:
                    applied = open_seq
                open_seq = seq
            if kind == _K_BOOK_DELTA:
                sym = e[6]
                if sym in symbols:
                    symbols[sym].book_seq = seq
                    d = l2.get(sym)
                    if d is None:
                        d = l2[sym] = {}
                    d[(e[1], e[12])] = e[13]
                if e[11]:                       # an order rests: its hold (rule 4)
                    row = t.row(e[11])
                    if row >= 0:
                        t.mv["hold"][row] = e[24]
            elif kind == _K_TRADE:
                sym = e[6]
                if sym in symbols:
                    row = (e[18], e[12], e[13], e[1], e[22], seq, e[19], e[11])
                    if trades is None:
                        trades = {sym: [row]}
                    else:
                        lst = trades.get(sym)
                        if lst is None:
                            trades[sym] = [row]
                        else:
                            lst.append(row)
            elif kind == _K_SYMBOL_STATUS:
                view = symbols.get(e[6])
                if view is not None:
                    view.halted = e[7] == _HALTED
                    if status_events is None:
                        status_events = []
                    status_events.append(_new_event(e))
            elif _USER_KIND_T[kind]:
                if want_reports:
                    user_rows.append(pos)
                if cols is not t.update_mvs:
                    cols = t.update_mvs
                    (m_last, m_filled, m_rem, m_exec, m_fees, m_fills, m_status,
                     m_done_reason, m_done_ns, m_ever, m_id, m_reason, m_hold) = cols
                if kind == _K_FILL:
                    row = t.row(e[11])
                    if row >= 0:
                        m_last[row] = seq
                        amount, fee = e[17], e[16]
                        spec = specs.get(e[6])
                        if spec is not None:                           # balances (rule 4)
                            acct = e[9] * 65536
                            b = e[13] * spec.base_per_lot
                            if e[1] == _BUY:
                                vb, vq = b, -amount - fee
                            else:
                                vb, vq = -b, amount - fee
                            i = slot_of.get(acct + spec.base_asset)
                            if i is None:
                                i = tot.slot(acct + spec.base_asset)
                                tv = tot.vals_mv
                            tv[i] += vb
                            i = slot_of.get(acct + spec.quote_asset)
                            if i is None:
                                i = tot.slot(acct + spec.quote_asset)
                                tv = tot.vals_mv
                            tv[i] += vq
                        m_filled[row] = e[15]
                        m_hold[row] = e[24]                            # rule 4
                        rem = e[14]
                        m_rem[row] = rem
                        m_exec[row] += amount
                        m_fees[row] += fee
                        m_fills[row] += 1
                        if rem == 0:
                            m_status[row] = _DONE
                            m_done_reason[row] = 1
                            m_done_ns[row] = e[22]
                            if not m_ever[row]:
                                m_ever[row] = True
                                tail = self._done_tail
                                if tail < dlen:
                                    dmv[tail] = m_id[row]
                                    self._done_tail = tail + 1
                                    self.done_total += 1
                                else:
                                    self._log_done_one(m_id[row])
                                    dmv = self._done_mv
                                    dlen = len(dmv)
                        elif m_status[row] == _PENDING:
                            m_status[row] = _OPEN
                elif kind == _K_ACCEPTED:
                    if e[5] == _C_NEW:
                        self._create_one(e, arr, pos)
                elif kind == _K_CANCELLED or kind == _K_EXPIRED:
                    row = t.row(e[11])
                    if row >= 0:
                        m_last[row] = seq
                        m_rem[row] = 0
                        m_status[row] = _DONE
                        m_done_reason[row] = 3 if kind == _K_EXPIRED else 2
                        m_reason[row] = e[7]
                        m_done_ns[row] = e[22]
                        if not m_ever[row]:
                            m_ever[row] = True
                            tail = self._done_tail
                            if tail < dlen:
                                dmv[tail] = m_id[row]
                                self._done_tail = tail + 1
                                self.done_total += 1
                            else:
                                self._log_done_one(m_id[row])
                                dmv = self._done_mv
                                dlen = len(dmv)
                elif kind == _K_BALANCE:
                    key = e[9] * 65536 + e[6]
                    i = slot_of.get(key)
                    if i is None:
                        i = tot.slot(key)
                        tv = tot.vals_mv
                    tv[i] = e[17] + e[24]
                elif kind == _K_REJECTED:
                    if e[5] == _C_NEW:
                        if rejected is None:
                            rejected = [pos]
                        else:
                            rejected.append(pos)
                else:
                    row = t.row(e[11])
                    if row >= 0:
                        self._update_one(t.mv, row, e)
            if e[22] > ts_max:
                ts_max = e[22]
            if e[4] & _LAST:
                if seq > applied:
                    applied = seq
                closed.append(seq)
        self._open_seq, self.applied_seq, self.last_timestamp_ns = open_seq, applied, ts_max
        if rejected:
            self._add_rejections(arr.take(rejected))
        if l2:
            for sym, d in l2.items():                   # final sizes of the touched levels
                view = symbols[sym]
                view.bids.set_few(d, _BUY, view.asks)
            changes.ticker.update(l2)
        if trades:
            ct = changes.trades
            for sym, rows in trades.items():
                symbols[sym]._add_trade_rows(rows)
                ct[sym] = TradeList(rows)
            changes.ticker.update(trades)
        if status_events is not None:
            changes.status = status_events
        changes.closed_seqs = closed
        if self._done_tail - self._done_head > self.done_orders_keep:
            self._forget_done()
        if user_rows:
            if report is not None:
                user_rows = [i for i in user_rows if recs[i][9] in report]
            if user_rows:
                self._reports(arr.take(user_rows), changes.user)
        self.events_applied += len(recs)
        changes.ts_ns = ts_max
        return changes

    def _create_one(self, e, arr, pos):
        """ACCEPTED of one NEW_ORDER (``_create`` for one record tuple, rule 7)."""
        t = self._orders
        oid = e[11] or e[10]
        n = t.n
        if n and oid <= t.create_mvs[0][n - 1]:
            self._create(arr[pos:pos + 1])
            return
        if n >= t.cap:
            t.reserve(1)
        (m_id, m_acct, m_sym, m_side, m_type, m_tif, m_flags, m_price, m_qty, m_filled, m_rem,
         m_reason, m_coid, m_funds, m_status, m_created, m_last, m_hold, m_stop) = t.create_mvs
        m_id[n] = oid
        m_acct[n] = e[9]
        m_sym[n] = e[6]
        m_side[n] = e[1]
        m_type[n] = e[2]
        m_tif[n] = e[3]
        m_flags[n] = e[4]
        m_price[n] = e[12]
        m_qty[n] = e[13]
        m_filled[n] = e[15]
        m_rem[n] = e[14]
        m_reason[n] = e[7]
        m_coid[n] = e[23]
        m_funds[n] = e[17]
        m_status[n] = _PENDING if _STOP_TYPE_T[e[2]] else _OPEN
        m_created[n] = e[22]
        m_last[n] = e[10]
        m_hold[n] = e[24]
        m_stop[n] = e[18]                 # a stop's ACCEPTED: its stop price (else 0)
        t.n = n + 1
        if t.indexed == 0:
            t.dbase = oid
        off = oid - t.dbase
        if 0 <= off < len(t.row_mv):
            t.row_mv[off] = n
            t.indexed += 1
        else:
            t.index_rows(n, n + 1)
        if e[23]:
            self._coid_pending.append((e[9], e[23], oid))

    def _update_one(self, m, row, e):
        """One AMENDED or TRIGGERED on ``row`` (the object model's ``_apply_order_event``;
        rule 7; FILL, CANCELLED and EXPIRED are inline in ``_apply_small``)."""
        m["last_seq"][row] = e[10]
        if e[0] == _K_AMENDED:
            m["hold"][row] = e[24]
            if e[12]:
                m["price"][row] = e[12]
            m["qty"][row] = e[13]
            m["remaining"][row] = e[14]
        elif e[0] == _K_TRIGGERED:
            m["status"][row] = _OPEN
            if e[24]:
                m["stop_price"][row] = e[24]

    def _log_done_one(self, oid):
        tail = self._done_tail
        if tail < len(self._done_mv):
            self._done_mv[tail] = oid
            self._done_tail = tail + 1
            self.done_total += 1
        else:
            self._log_done(np.array((oid,), np.int64))

    def _create(self, ev):
        """ACCEPTED of NEW_ORDER: new rows (rule 3)."""
        t = self._orders
        oid = ev["order_id"]
        ids = oid if oid.all() else np.where(oid != 0, oid, ev["seq"])
        k = len(ids)
        if t.n and ids[0] <= t.cols["id"][t.n - 1] or (k > 1 and (np.diff(ids) <= 0).any()):
            self._create_slow(ev, ids)
            return
        t.reserve(k)
        a, b = t.n, t.n + k
        self._fill_rows(t.cols, slice(a, b), ev, ids)
        t.n = b
        t.index_rows(a, b)
        coid = ev["client_order_id"]
        has = coid != 0
        if has.any():
            self._flush_coid_pending()
            self._coid_parts.append((ev["account_id"][has], coid[has], ids[has]))

    @staticmethod
    def _fill_rows(c, where, ev, ids):
        """Rows ``where`` from ACCEPTED events; the other columns are 0 already (reserve,
        compact and ``_create_slow`` leave unused rows zeroed)."""
        c["id"][where] = ids
        for name in ("account_id", "symbol_id", "side", "order_type", "tif", "flags", "price",
                     "qty", "filled", "remaining", "reason", "client_order_id"):
            c[name][where] = ev[name]
        c["funds"][where] = ev["amount"]
        c["status"][where] = np.where(_STOP_TYPE[ev["order_type"]], _PENDING, _OPEN)
        c["created_ns"][where] = ev["timestamp_ns"]
        c["last_seq"][where] = ev["seq"]
        c["hold"][where] = ev["aux"]
        c["stop_price"][where] = ev["trade_id"]      # a stop's ACCEPTED: its stop price

    def _create_slow(self, ev, ids):
        """Ids not above every existing one (never from one matcher): one at a time."""
        for i in range(len(ids)):
            t = self._orders
            oid = int(ids[i])
            n = t.n
            idcol = t.cols["id"][:n]
            pos = int(np.searchsorted(idcol, oid))
            if pos < n and idcol[pos] == oid:
                if t.cols["forgotten"][pos]:
                    t.forgotten_count -= 1
                for col in t.cols.values():
                    col[pos] = 0
                self._fill_rows(t.cols, slice(pos, pos + 1), ev[i:i + 1], ids[i:i + 1])
            else:
                t.reserve(1)
                for col in t.cols.values():
                    col[pos + 1:n + 1] = col[pos:n].copy()
                    col[pos] = 0
                t.n = n + 1
                t.gen += 1
                self._fill_rows(t.cols, slice(pos, pos + 1), ev[i:i + 1], ids[i:i + 1])
                t.reindex()
            if ev["client_order_id"][i]:
                self._flush_coid_pending()
                self._coid_parts.append((ev["account_id"][i:i + 1], ev["client_order_id"][i:i + 1],
                                         ids[i:i + 1]))

    def _apply_order_updates(self, ev, rows, upos):
        """FILL, CANCELLED, EXPIRED, AMENDED, TRIGGERED of known orders at ``rows`` (rule 3);
        ``upos`` their positions in the batch.  Returns (FILL events, their positions)
        for the totals, or (None, None).

        Last writer per field by plain fancy assignment (numpy assigns repeated indices in
        order, checked at import by ``_sequential_assign``; else the sorted variant).
        Status: every FILL maps pending -> open, then the constant transitions (TRIGGERED
        -> open, done events -> done) in event order, the last one winning: the object
        model's fold, because no constant transition leads to pending.
        """
        if not _SEQUENTIAL_ASSIGN:
            return self._apply_order_updates_sorted(ev, rows, upos)
        c = self._orders.cols
        k = ev["kind"]
        rem = ev["remaining"]
        c["last_seq"][rows] = ev["seq"]
        is_fill = k == _K_FILL
        fi = is_fill.nonzero()[0]
        nf = len(fi)
        fe = fpos = None
        status = c["status"]
        if nf:
            fr = rows[fi]
            fe = ev.take(fi)
            fpos = upos[fi]
            c["filled"][fr] = fe["filled"]
            amount = fe["amount"]
            np.add.at(c["executed_value"], fr, amount)
            np.add.at(c["fees"], fr, fe["fee"])
            np.add.at(c["fills"], fr, 1)
            status[fr] = np.maximum(status[fr], _OPEN)      # pending -> open
            if nf == len(k):                                 # fills only (the usual batch)
                frem = fe["remaining"]
                c["remaining"][fr] = frem
                done = (frem == 0).nonzero()[0]
                if len(done):
                    dr = fr[done]
                    status[dr] = _DONE
                    c["done_reason"][dr] = 1
                    c["done_ns"][dr] = fe["timestamp_ns"][done]
                    self._first_done(dr)
                return fe, fpos
        is_tr = k == _K_TRIGGERED
        is_cx = _CX_KIND[k]
        wi = (~is_tr).nonzero()[0]
        c["remaining"][rows[wi]] = np.where(is_cx, 0, rem)[wi]
        xi = is_cx.nonzero()[0]
        if len(xi):
            c["reason"][rows[xi]] = ev["reason"][xi]
        if len(k) > nf + len(xi):                        # AMENDED or TRIGGERED events
            ai = (k == _K_AMENDED).nonzero()[0]
            if len(ai):
                ra = rows[ai]
                ea = ev.take(ai)
                m = ea["price"] != 0
                c["price"][ra[m]] = ea["price"][m]
                c["qty"][ra] = ea["qty"]
            ti = (is_tr & (ev["aux"] != 0)).nonzero()[0]
            if len(ti):
                c["stop_price"][rows[ti]] = ev["aux"][ti]
        done_ev = is_cx | (is_fill & (rem == 0))
        ci = (is_tr | done_ev).nonzero()[0]
        if len(ci):
            status[rows[ci]] = np.where(done_ev[ci], _DONE, _OPEN)
            di = done_ev.nonzero()[0]
            if len(di):
                dr = rows[di]
                c["done_reason"][dr] = _DONE_REASON[k[di]]
                c["done_ns"][dr] = ev["timestamp_ns"][di]
                self._first_done(dr)
        return fe, fpos

    def _apply_holds(self, arr):
        """Holds (rule 4): every FILL and AMENDED, and a BOOK_DELTA naming an order (it
        rests), set that order's hold to the event's ``aux``; the last in event order
        wins (``arr`` is the batch in event order)."""
        hm = _HOLD_KIND[arr["kind"]] & (arr["order_id"] != 0)
        hi = hm.nonzero()[0]
        if not len(hi):
            return
        rows, found = self._orders.lookup(arr["order_id"][hi])
        vals = arr["aux"][hi]
        if not found.all():
            rows, vals = rows[found], vals[found]
        hold = self._orders.cols["hold"]
        if _SEQUENTIAL_ASSIGN:
            hold[rows] = vals
        else:
            r, i = _ByRow(rows).last(np.ones(len(rows), bool))
            hold[r] = vals[i]

    def _first_done(self, dr):
        """Rows ``dr`` (done events, event order) not done before: into the done log,
        each once, in the order of its first done event (rule 3)."""
        t = self._orders
        ever = t.cols["ever_done"]
        dr = dr[~ever[dr]]
        k = len(dr)
        if not k:
            return
        if k > 1:                                   # first done event per row
            mark = t.scratch(k)
            back = np.arange(k - 1, -1, -1)
            mark[dr[back]] = back                   # the first write of a row lands last
            dr = dr[mark[dr] == np.arange(k)]
        ever[dr] = True
        self._log_done(t.cols["id"][dr])

    def _apply_order_updates_sorted(self, ev, rows, upos):
        """``_apply_order_updates`` without relying on the order of repeated assignments."""
        t = self._orders
        c = t.cols
        k = ev["kind"]
        rem = ev["remaining"]
        is_fill = k == _K_FILL
        is_can = k == _K_CANCELLED
        is_exp = k == _K_EXPIRED
        is_cx = is_can | is_exp
        is_am = k == _K_AMENDED
        is_tr = k == _K_TRIGGERED
        fill_done = is_fill & (rem == 0)
        done_ev = fill_done | is_cx
        by = _ByRow(rows)
        everything = np.ones(len(rows), bool)
        r, i = by.last(everything)
        c["last_seq"][r] = ev["seq"][i]
        if is_fill.any():
            r, i = by.last(is_fill)
            c["filled"][r] = ev["filled"][i]
            fr = rows[is_fill]
            fe = _take(ev, is_fill)
            np.add.at(c["executed_value"], fr, fe["amount"])
            np.add.at(c["fees"], fr, fe["fee"])
            np.add.at(c["fills"], fr, 1)
        remw = is_fill | is_cx | is_am
        r, i = by.last(remw)
        c["remaining"][r] = np.where(is_cx[i], 0, rem[i])
        if is_am.any():
            r, i = by.last(is_am & (ev["price"] != 0))
            c["price"][r] = ev["price"][i]
            r, i = by.last(is_am)
            c["qty"][r] = ev["qty"][i]
        if is_cx.any():
            r, i = by.last(is_cx)
            c["reason"][r] = ev["reason"][i]
        if is_tr.any():
            r, i = by.last(is_tr & (ev["aux"] != 0))
            c["stop_price"][r] = ev["aux"][i]
        if done_ev.any():
            r, i = by.last(done_ev)
            c["done_reason"][r] = np.where(is_exp[i], 3, np.where(is_can[i], 2, 1))
            c["done_ns"][r] = ev["timestamp_ns"][i]
        # status: the last constant transition (TRIGGERED -> open, done events -> done),
        # then a partial FILL after it maps pending -> open
        const = is_tr | done_ev
        cr, ci = by.last(const)
        if len(cr):
            c["status"][cr] = np.where(done_ev[ci], _DONE, _OPEN)
        partial = is_fill & (rem != 0)
        if partial.any():
            pr, pi = by.last(partial)
            lastc = np.full(len(pr), -1, np.int64)
            if len(cr):
                pos = np.searchsorted(cr, pr)
                np.minimum(pos, len(cr) - 1, out=pos)
                hit = cr[pos] == pr
                lastc[hit] = ci[pos[hit]]
            sel = (pi > lastc) & (c["status"][pr] == _PENDING)
            c["status"][pr[sel]] = _OPEN
        if done_ev.any():
            dr, di = by.first(done_ev)
            new = ~c["ever_done"][dr]
            if new.any():
                dr, di = dr[new], di[new]
                dr = dr[np.argsort(di, kind="stable")]
                c["ever_done"][dr] = True
                self._log_done(c["id"][dr])
        fi = is_fill.nonzero()[0]
        if not len(fi):
            return None, None
        return ev.take(fi), upos[fi]

    def _log_done(self, ids):
        k = len(ids)
        log = self._done_log
        if self._done_tail + k > len(log):
            live = self._done_tail - self._done_head
            cap = len(log)
            while cap < 2 * (live + k):
                cap *= 2
            new = np.zeros(cap, np.int64)
            new[:live] = log[self._done_head:self._done_tail]
            self._done_log = log = new
            self._done_mv = memoryview(new)
            self._done_head, self._done_tail = 0, live
        log[self._done_tail:self._done_tail + k] = ids
        self._done_tail += k
        self.done_total += k

    def _forget_done(self):
        """Done orders beyond ``done_orders_keep`` are forgotten, oldest first (rule 3)."""
        excess = self._done_tail - self._done_head - self.done_orders_keep
        if excess <= 0:
            return
        t = self._orders
        old = self._done_log[self._done_head:self._done_head + excess]
        self._done_head += excess
        rows, found = t.lookup(old)
        rows = rows[found]
        t.cols["forgotten"][rows] = True
        t.forgotten_count += len(rows)
        if t.forgotten_count > max(4096, t.n // 2):
            t.compact()

    def _add_rejections(self, ev):
        """REJECTED NEW_ORDER of this model's symbols: raw records, newest kept (rule 6)."""
        ev = _take(ev, self._sym_ok[ev["symbol_id"]])
        k = len(ev)
        if not k:
            return
        keep = self.rejections_keep
        if k > keep:
            ev = ev[k - keep:]
            k = keep
        if self._rej_tail + k > len(self._rej):
            live = self._rej_tail - self._rej_head
            cap = len(self._rej)
            while cap < 2 * (live + k):
                cap *= 2
            new = np.zeros(cap, EVENT_DTYPE)
            _raw(new)[:live] = _raw(self._rej[self._rej_head:self._rej_tail])
            self._rej = new
            self._rej_head, self._rej_tail = 0, live
        _raw(self._rej)[self._rej_tail:self._rej_tail + k] = _raw(np.ascontiguousarray(ev))
        self._rej_tail += k
        excess = self._rej_tail - self._rej_head - keep
        if excess > 0:
            if self._rej_cache:
                for s in self._rej["seq"][self._rej_head:self._rej_head + excess].tolist():
                    self._rej_cache.pop(s, None)
            self._rej_head += excess

    @staticmethod
    def _rejection_state(e):
        order = OrderState(e)
        order.order_id = e.seq
        order.status = "rejected"
        order.done_reason = _reason_name(e.reason)
        order.remaining = 0
        return order

    def _rejection(self, seq):
        order = self._rej_cache.get(seq)
        if order is not None:
            return order
        h, tl = self._rej_head, self._rej_tail
        if h == tl:
            return None
        s = self._rej["seq"][h:tl]
        i = int(np.searchsorted(s, seq))
        if i >= len(s) or s[i] != seq:
            return None
        order = self._rejection_state(_new_event(self._rej[h + i].tolist()))
        self._rej_cache[seq] = order
        return order

    def _apply_totals(self, be, bpos, fe, fpos):
        """BALANCE sets (events ``be`` at batch positions ``bpos``) and the moves of the
        FILLs of known orders (``fe`` at ``fpos``, or None) of the totals per
        (account, asset) (rule 4)."""
        nb = len(be)
        keys, vals, pos = [], [], []
        if nb:
            keys.append(be["account_id"] * np.int64(65536) + be["symbol_id"])
            vals.append(be["amount"] + be["aux"])
        if fe is not None:
            sid = fe["symbol_id"]
            ok = self._spec_ok[sid]
            if not ok.all():
                sel = ok.nonzero()[0]
                fe, fpos, sid = fe.take(sel), fpos[sel], sid[sel]
            if len(fe):
                acct = fe["account_id"] * np.int64(65536)
                buy = fe["side"] == _BUY
                b = fe["qty"] * self._spec_bpl[sid]
                amount, fee = fe["amount"], fe["fee"]
                keys.append(acct + self._spec_base[sid])
                keys.append(acct + self._spec_quote[sid])
                vals.append(np.where(buy, b, -b))
                vals.append(np.where(buy, -amount, amount) - fee)
            else:
                fe = None
        if not keys:
            return
        keys = np.concatenate(keys) if len(keys) > 1 else keys[0]
        vals = np.concatenate(vals) if len(vals) > 1 else vals[0]
        tot = self._totals
        idx = tot.slots(keys)
        tv = tot.vals
        if not nb:
            np.add.at(tv, idx, vals)
            return
        sk = idx[:nb]
        last_set = np.full(tot.n, -1, np.int64)
        if _SEQUENTIAL_ASSIGN:
            tv[sk] = vals[:nb]                         # the last set of a key wins
            last_set[sk] = bpos
        else:
            order = sk.argsort(kind="stable")
            sel = order[_runs_last(sk[order])]
            tv[sk[sel]] = vals[:nb][sel]
            last_set[sk[sel]] = bpos[sel]
        if fe is not None:
            ak, av = idx[nb:], vals[nb:]
            ap = np.concatenate((fpos, fpos))
            after = (ap > last_set[ak]).nonzero()[0]
            np.add.at(tv, ak[after], av[after])

    def _apply_books(self, bd, changes, general=False):
        """BOOK_DELTA: each level touched set once to its final size of the batch (rule 2);
        no Python per level (the books are BookSides, ``Changes.level2`` LazyLevels)."""
        symc = bd["symbol_id"]
        s0 = int(symc[0])
        price = bd["price"]
        if not general and (symc == s0).all() and self._sym_ok[s0] and int(price.min()) >= 0 \
                and int(price.max()) < (1 << 40):
            return self._apply_books_one(bd, s0, price, changes)
        ok = self._sym_ok[symc]
        if not ok.all():
            bd = _take(bd, ok)
        k = len(bd)
        if not k:
            return
        sym = bd["symbol_id"].astype(np.int64)
        side = bd["side"].astype(np.int64)
        price = bd["price"]
        qty = bd["qty"]
        if int(price.min()) >= 0 and int(price.max()) < (1 << 40):
            key = (sym << 42) | ((side & 3) << 40) | price
            order = np.argsort(key, kind="stable")
            ks = key[order]
            lastm = _runs_last(ks)
            first, last = order[_runs_first(ks)], order[lastm]
        else:                                              # huge prices: sort by the triple
            order = np.lexsort((np.arange(k), price, side, sym))
            ks = np.stack([sym[order], side[order], price[order]], axis=1)
            brk = np.ones(k, bool)
            brk[1:] = (ks[1:] != ks[:-1]).any(axis=1)
            starts = _nz(brk)
            ends = np.append(starts[1:], k) - 1
            first, last = order[starts], order[ends]
        # unique levels sorted by (symbol, side, price): set each book side once
        u_sym, u_side, u_price, u_qty = sym[last], side[last], price[last], qty[last]
        group = u_sym * 4 + u_side
        brk = _nz(np.diff(group)) + 1
        starts = [0] + brk.tolist()
        ends = brk.tolist() + [len(group)]
        symbols = self.symbols
        for a, b in zip(starts, ends):
            view = symbols[int(u_sym[a])]
            book = view.bids if int(u_side[a]) == _BUY else view.asks
            book.set_levels(u_price[a:b], u_qty[a:b])
        # Changes.level2: per symbol, levels in the order of their first event
        o = np.argsort(first, kind="stable")
        f_sym = u_sym[o]
        bseq = bd["seq"]
        if f_sym[0] == f_sym[-1] and (f_sym == f_sym[0]).all():
            order_syms = [int(f_sym[0])]
        else:
            _u, fi = np.unique(f_sym, return_index=True)
            order_syms = f_sym[np.sort(fi)].tolist()
        for s in order_syms:                             # symbols in first-event order
            sel = o[f_sym == s]
            changes.level2[s] = LazyLevels(u_side[sel], u_price[sel], u_qty[sel])
            view = symbols[s]
            view.book_seq = int(bseq[_nz(sym == s)[-1]])

    def _apply_books_one(self, bd, sym, price, changes):
        """``_apply_books`` for events of one symbol (the usual batch), prices in 0..2^40."""
        key = (bd["side"] & np.int64(3)) << 40 | price
        order = key.argsort(kind="stable")
        ks = key[order]
        k = len(ks)
        brk = np.empty(k + 1, bool)                      # brk[i]: a level starts at i
        brk[0] = brk[k] = True
        np.not_equal(ks[1:], ks[:-1], out=brk[1:k])
        starts = brk[:k].nonzero()[0]
        last = order[brk[1:].nonzero()[0]]
        first = order[starts]
        u_key = ks[starts]
        u_qty = bd["qty"][last]
        u_price = u_key & ((1 << 40) - 1)
        if int(u_key[0]) >> 40 != _BUY or int(u_key[-1]) >> 40 != _SELL:
            if not (u_key[0] >> 40 in (_BUY, _SELL) and u_key[-1] >> 40 in (_BUY, _SELL)):
                return self._apply_books(bd, changes, general=True)
        view = self.symbols[sym]
        split = int(u_key.searchsorted(np.int64(_SELL) << 40))       # bids | asks
        if split:
            view.bids.set_levels(u_price[:split], u_qty[:split])
        if split < len(u_key):
            view.asks.set_levels(u_price[split:], u_qty[split:])
        o = first.argsort(kind="stable")                 # levels in first-event order
        changes.level2[sym] = LazyLevels(u_key[o] >> 40, u_price[o], u_qty[o])
        view.book_seq = int(bd["seq"][-1])

    def _apply_trades(self, tr, changes):
        ok = self._sym_ok[tr["symbol_id"]]
        if not ok.all():
            tr = _take(tr, ok)
        if not len(tr):
            return
        # TRADE_DTYPE rows straight from the records' int64 words (one take)
        raw = _raw(tr).take(_TRADE_WORDS, axis=1)
        raw[:, 3] = (raw[:, 3] >> 8) & 0xFF                  # the side byte
        arr = raw.view(TRADE_DTYPE).reshape(len(tr))
        sym = tr["symbol_id"]
        s0 = int(sym[0])
        if (sym == s0).all():
            self.symbols[s0]._add_trades(arr)
            changes.trades[s0] = TradeList(arr)
            return
        for s in np.unique(sym).tolist():
            part = _take(arr, sym == s)
            self.symbols[s]._add_trades(part)
            changes.trades[s] = TradeList(part)

    def _reports(self, ev, user):
        """(event, order) execution reports of ``ev`` (subscribed accounts' user events)."""
        t = self._orders
        for e in _events_of(ev):
            kind = e.kind
            order = None
            if kind == _K_BALANCE:
                order = None
            elif kind == _K_REJECTED and e.command_kind == _C_NEW:
                order = self._rejection(e.seq) if self._sym_ok[e.symbol_id] else None
                if order is None:
                    order = self._rejection_state(e)
            elif kind == _K_REJECTED and e.order_id == e.seq:
                order = None
            else:
                oid = (e.order_id or e.seq) if (kind == _K_ACCEPTED
                                                and e.command_kind == _C_NEW) else e.order_id
                row = t.row(oid)
                order = OrderView(self, oid, row) if row >= 0 else None
            user.setdefault(e.account_id, []).append((e, order))

    # ------------------------------------------------------------------ seeding
    def seed_from_matcher(self, matcher, seq):
        """Load the state of a restored ``engine.matcher.Matcher`` at input ``seq``
        (the object model's rule 7).  O(orders + accounts)."""
        for sid, view in self.symbols.items():
            sym = matcher.symbols.get(sid)
            if sym is None:
                continue
            for side, levels in ((view.bids, sym.book.bid_levels), (view.asks, sym.book.ask_levels)):
                pairs = sorted((p, lv.total) for p, lv in levels.items())
                side.prices = np.array([p for p, _q in pairs], np.int64)
                side.sizes = np.array([q for _p, q in pairs], np.int64)
            view.last_price = sym.last_price or None
            view.last_trade_id = sym.trade_id
            view.halted = bool(sym.halted)
        oids = sorted(matcher.orders)
        if oids:
            t = self._orders
            k = len(oids)
            t.reserve(k)
            rec = np.zeros(k, EVENT_DTYPE)
            for j, oid in enumerate(oids):
                o = matcher.orders[oid]
                rec[j] = (0, o.side, o.order_type, o.tif, o.flags, _C_NEW, o.symbol_id, 0, 0,
                          o.account_id, seq, oid, o.price, o.qty, o.remaining, o.filled, 0,
                          o.funds, 0, 0, 0, 0, 0, o.client_order_id, o.hold)
            ids = np.array(oids, np.int64)
            if t.n and ids[0] <= t.cols["id"][t.n - 1]:
                self._create_slow(rec, ids)
            else:
                self._create(rec)
            c = t.cols
            rows, _found = t.lookup(ids)
            c["created_ns"][rows] = 0
            c["last_seq"][rows] = seq
            c["reason"][rows] = 0
            c["stop_price"][rows] = [matcher.orders[o].stop_price for o in oids]
            c["fees"][rows] = [matcher.orders[o].fee_paid for o in oids]
            c["status"][rows] = [_OPEN if matcher.orders[o].level is not None else _PENDING
                                 for o in oids]
        accounts = matcher.accounts
        keys, vals = [], []
        for account_id, acct in accounts.accounts.items():
            if account_id == getattr(accounts, "fee_account_id", None):
                continue
            for asset_id, i in accounts.index.items():
                keys.append(account_id * 65536 + asset_id)
                vals.append(acct.bal[i] + acct.bal[i + 1])
        if keys:
            tot = self._totals
            tot.vals[tot.slots(np.array(keys, np.int64))] = vals
        self.applied_seq = max(self.applied_seq, seq)
        self._open_seq = max(self._open_seq, seq)

    # ------------------------------------------------------------------ reads
    def symbol(self, symbol_id):
        """The symbol's view; KeyError when unknown."""
        return self.symbols[symbol_id]

    def order(self, order_id):
        """OrderView (or a remembered rejection) or None.  O(log n)."""
        row = self._orders.row(order_id)
        if row >= 0:
            return OrderView(self, order_id, row)
        return self._rejection(order_id)

    def _flush_coid_pending(self):
        """Keep ``_coid_parts`` older than ``_coid_pending`` (the later entry wins)."""
        if self._coid_pending:
            acct, coid, oid = zip(*self._coid_pending)
            self._coid_parts.append((np.array(acct, np.int64), np.array(coid, np.uint64),
                                     np.array(oid, np.int64)))
            self._coid_pending = []

    def order_by_client_id(self, account_id, client_order_id):
        self._flush_coid_pending()
        if self._coid_parts:
            ids = self._client_ids
            for acct, coid, oid in self._coid_parts:
                ids.update(zip(zip(acct.tolist(), coid.tolist()), oid.tolist()))
            self._coid_parts = []
        oid = self._client_ids.get((account_id, client_order_id))
        if oid is None:
            return None
        row = self._orders.row(oid)
        return OrderView(self, oid, row) if row >= 0 else None

    def _account_rows(self, account_id, symbol_id=None, open_only=False):
        t = self._orders
        c = t.cols
        n = t.n
        m = c["account_id"][:n] == account_id
        if symbol_id is not None:
            m &= c["symbol_id"][:n] == symbol_id
        if open_only:
            m &= ~c["ever_done"][:n]
        else:
            m &= ~c["forgotten"][:n]
        return _nz(m)

    def _views(self, rows):
        ids = self._orders.cols["id"][rows].tolist()
        return [OrderView(self, oid, r) for oid, r in zip(ids, rows.tolist())]

    def open_orders(self, account_id, symbol_id=None):
        """Open (and pending stop) orders of an account, oldest first.  O(rows)."""
        return self._views(self._account_rows(account_id, symbol_id, open_only=True))

    def account_orders(self, account_id, symbol_id=None):
        """Every remembered order of an account (open and done), oldest first.  O(rows)."""
        return self._views(self._account_rows(account_id, symbol_id))

    def account_balances(self, account_id):
        """{asset_id: (available, held)} (rule 4).  O(log keys + rows)."""
        items = self._totals.account_items(account_id)
        if not items:
            return {}
        held = {}                  # the open orders' last event-given holds (rule 4)
        rows = self._account_rows(account_id, open_only=True)
        if len(rows):
            c = self._orders.cols
            specs = self.specs
            for sid, side, h in zip(c["symbol_id"][rows].tolist(), c["side"][rows].tolist(),
                                    c["hold"][rows].tolist()):
                spec = specs.get(sid)
                if spec is not None:
                    asset = spec.quote_asset if side == _BUY else spec.base_asset
                    held[asset] = held.get(asset, 0) + h
        out = {}
        for asset, total in items:
            h = held.get(asset, 0)
            out[asset] = (total - h, h)
        return out

    @property
    def orders(self):
        """{order_id: OrderView} of every remembered order (O(n): tests and tools only)."""
        t = self._orders
        rows = _nz(~t.cols["forgotten"][:t.n])
        return {o.order_id: o for o in self._views(rows)}

    def _check(self):
        """Assert structural invariants (tests)."""
        for view in self.symbols.values():
            for side in (view.bids, view.asks):
                for price, qty in side.items():
                    assert qty > 0, (view.symbol_id, price, qty)
            bb, ba = view.best_bid(), view.best_ask()
            if bb is not None and ba is not None:
                assert bb[0] < ba[0], ("crossed book", view.symbol_id, bb, ba)
            w = view.window
            h, tl = w.head - w.off, w.tail - w.off
            assert w.volume == int(w.qty[h:tl].sum())
        t = self._orders
        c = t.cols
        ids = c["id"][:t.n]
        assert (np.diff(ids) > 0).all(), "order ids not increasing"
        assert not (c["forgotten"][:t.n] & ~c["ever_done"][:t.n]).any(), "open order forgotten"
        st = c["status"][:t.n]
        assert ((st != _DONE) | c["ever_done"][:t.n]).all()
        self._totals._check()


# ---------------------------------------------------------------- REST history (issue 16)
# Appended methods only (publisher/history.py rule 1); the services feed ``history``.
def _columnar_history(self):
    """This model's ``History`` (fills, candles); ``reset`` (a new ``symbols``) gives a new one."""
    h = self.__dict__.get("_history")
    if h is None or h[0] is not self.symbols:
        from publisher.history import History
        h = self._history = (self.symbols, History(
            self.symbols, fills_keep=getattr(self, "history_fills_keep", None)))
    return h[1]


def _columnar_level3(self, symbol_id):
    """Every resting order of a symbol: ([(price, qty, order_id)] bids, asks), best price
    first, within a price by order id (as ``ReadModel.level3``).  O(rows)."""
    t = self._orders
    c = t.cols
    n = t.n
    rows = _nz((c["symbol_id"][:n] == symbol_id) & ~c["ever_done"][:n]
               & (c["status"][:n] == _OPEN) & (c["remaining"][:n] > 0))
    bids, asks = [], []
    for side, price, qty, oid in zip(c["side"][rows].tolist(), c["price"][rows].tolist(),
                                     c["remaining"][rows].tolist(), c["id"][rows].tolist()):
        (bids if side == _BUY else asks).append((price, qty, oid))
    bids.sort(key=lambda r: (-r[0], r[2]))
    asks.sort(key=lambda r: (r[0], r[2]))
    return bids, asks


ColumnarReadModel.history = property(_columnar_history)
ColumnarReadModel.level3 = _columnar_level3
