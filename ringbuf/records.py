"""Record layouts and wire enums: the single source of truth.

Every fixed-size record that crosses a process boundary (the input ring, the
output ring, the journal, the replication stream) is defined here once, as a
list of ``(name, type)`` slots.  From that one definition this module derives

* the numpy structured dtype (``COMMAND_DTYPE``, ``EVENT_DTYPE``; built lazily so
  that importing this module, e.g. from the cffi build step, does not need numpy),
* the C struct declaration used by cffi (``COMMAND_CDEF``, ``EVENT_CDEF``),
* a schema hash (``SCHEMA_HASH``) over the layouts *and* the enum codes, stored
  in every ring header and journal segment header so that a reader built from a
  different schema is refused at attach/open time.

A slot may carry several names (a C anonymous union, a numpy field alias at the
same offset) when the meanings never apply to the same command kind; see
``docs/records.md`` for which name applies to which kind.

Codes are never renumbered: new members are appended with new values.
"""
import hashlib
import struct
from enum import IntEnum, IntFlag

__all__ = [
    "COMMAND_SIZE", "EVENT_SIZE", "COMMAND_FIELDS", "EVENT_FIELDS",
    "COMMAND_CDEF", "EVENT_CDEF", "SCHEMA_HASH", "LAYOUT_VERSION",
    "CommandKind", "Side", "OrderType", "TimeInForce", "OrderFlags", "StpMode",
    "EventKind", "EventFlags", "Reason", "command_struct", "event_struct",
    "PRIVILEGED_PRODUCER_ID_MIN", "PRIVILEGED_PRODUCER_ID_MAX", "SUPERVISOR_PRODUCER_ID",
    "CLI_PRODUCER_ID", "AUTO_PRODUCER_ID_BASE", "MAX_CLOCK_SKEW_NS", "is_privileged",
]

LAYOUT_VERSION = 2     # 2: FILL/AMENDED/rest BOOK_DELTA carry the order's hold, stop ACCEPTED its stop price

# numpy type code -> (C type, struct module code, size)
_TYPES = {
    "u1": ("uint8_t", "B", 1),
    "u2": ("uint16_t", "H", 2),
    "u4": ("uint32_t", "I", 4),
    "u8": ("uint64_t", "Q", 8),
    "i4": ("int32_t", "i", 4),
    "i8": ("int64_t", "q", 8),
}

# ---------------------------------------------------------------------------
# Input command record: 64 bytes, one cache line.
# ---------------------------------------------------------------------------
COMMAND_SIZE = 64
COMMAND_FIELDS = (
    ("kind", "u1"),            # CommandKind
    ("side", "u1"),            # Side
    ("order_type", "u1"),      # OrderType
    ("tif", "u1"),             # TimeInForce
    ("stp", "u1"),             # StpMode (the taker's mode decides)
    ("flags", "u1"),           # OrderFlags
    ("symbol_id", "u2"),       # symbol; DEPOSIT/WITHDRAW: asset id; 0 = all (MASS_CANCEL)
    ("account_id", "u4"),
    ("producer_id", "u2"),     # logical producer (ring attach order); NOP: the dead producer
    ("check", "u2"),           # producer-defined check value, ignored by the matcher
    ("price", "i8"),           # ticks; AMEND: new price (0 = keep)
    ("qty", "i8"),             # lots; AMEND: new total qty (0 = keep); DEPOSIT/WITHDRAW: amount
    (("funds", "expire_ns", "order_id"), "i8"),
    #   funds:     NEW market buy by quote funds (quote minor units)
    #   expire_ns: NEW with tif GTT (stream time in ns)
    #   order_id:  CANCEL/AMEND target order id (= its input sequence); NOP: dead pid
    ("stop_price", "i8"),      # ticks; stop / take-profit trigger price
    ("timestamp_ns", "i8"),    # producer's clock; the stream's time for the matcher
    ("client_order_id", "u8"),  # per account; CANCEL with BY_CLIENT_ID: the target
)

# ---------------------------------------------------------------------------
# Output event record: 128 bytes (two cache lines).  A fill must carry the
# order, the counterparty, price, qty, fee, remaining and cumulative filled,
# trade id, the causing input seq and the client order id: more than 64 bytes.
# ---------------------------------------------------------------------------
EVENT_SIZE = 128
EVENT_FIELDS = (
    ("kind", "u1"),            # EventKind
    ("side", "u1"),            # Side of the order (TRADE: the taker's side)
    ("order_type", "u1"),
    ("tif", "u1"),
    ("flags", "u1"),           # EventFlags
    ("command_kind", "u1"),    # CommandKind of the input that caused the event
    ("symbol_id", "u2"),       # BALANCE: asset id
    ("reason", "u2"),          # Reason
    ("producer_id", "u2"),     # producer of the causing command (routing of exec reports)
    ("account_id", "u4"),
    ("seq", "i8"),             # input sequence that caused this event
    ("order_id", "i8"),        # order concerned (its input sequence)
    ("price", "i8"),           # ticks: fill/trade price, order price, level price
    ("qty", "i8"),             # fill/trade qty; BOOK_DELTA: new level total; ACCEPTED: order qty
    ("remaining", "i8"),       # order qty still open after the event
    ("filled", "i8"),          # cumulative filled qty of the order
    ("fee", "i8"),             # fee charged (negative: rebate), in the asset received
    ("amount", "i8"),          # fill: quote amount; BALANCE: available after; FUNDS orders: funds
    ("trade_id", "i8"),        # per-symbol trade id (FILL, TRADE)
    ("counter_order_id", "i8"),  # FILL/TRADE: the other side's order
    ("counter_account_id", "u4"),
    ("event_index", "u4"),     # 0, 1, 2... within one input command
    ("timestamp_ns", "i8"),    # stream time of the causing command
    ("client_order_id", "u8"),
    ("aux", "i8"),             # kind-specific: stop price, held amount, snapshot state hash low bits
)


def _layout(fields, size, cname):
    """Return (cdef, numpy dtype spec, struct format, flat names) for a slot list."""
    offset = 0
    lines = ["typedef struct {"]
    names, formats, offsets = [], [], []
    fmt = "<"
    flat = []
    for slot_names, code in fields:
        ctype, scode, width = _TYPES[code]
        if offset % width:
            raise ValueError("%s: slot %r is not aligned" % (cname, slot_names))
        if isinstance(slot_names, tuple):
            lines.append("    union { %s };" % " ".join(
                "%s %s;" % (ctype, n) for n in slot_names))
            for n in slot_names:
                names.append(n)
                formats.append("<" + code)
                offsets.append(offset)
            flat.append(slot_names[0])
        else:
            lines.append("    %s %s;" % (ctype, slot_names))
            names.append(slot_names)
            formats.append("<" + code)
            offsets.append(offset)
            flat.append(slot_names)
        fmt += scode
        offset += width
    if offset != size:
        raise ValueError("%s is %d bytes, declared %d" % (cname, offset, size))
    lines.append("} %s;" % cname)
    spec = {"names": names, "formats": formats, "offsets": offsets, "itemsize": size}
    return "\n".join(lines), spec, fmt, tuple(flat)


COMMAND_CDEF, _COMMAND_SPEC, COMMAND_STRUCT_FORMAT, COMMAND_SLOTS = _layout(
    COMMAND_FIELDS, COMMAND_SIZE, "rm_command_t")
EVENT_CDEF, _EVENT_SPEC, EVENT_STRUCT_FORMAT, EVENT_SLOTS = _layout(
    EVENT_FIELDS, EVENT_SIZE, "rm_event_t")

#: struct.Struct packing a command in slot order (union slots: first name).
command_struct = struct.Struct(COMMAND_STRUCT_FORMAT)
#: struct.Struct packing an event in slot order.
event_struct = struct.Struct(EVENT_STRUCT_FORMAT)
assert command_struct.size == COMMAND_SIZE and event_struct.size == EVENT_SIZE


# ---------------------------------------------------------------------------
# Wire enums.  Fixed codes; append only.
# ---------------------------------------------------------------------------
class CommandKind(IntEnum):
    """Input command kinds.  ``MUTATES`` lists those that can change state."""
    NOP = 0             # filler (e.g. slots of a dead producer); no outcome event
    NEW_ORDER = 1
    CANCEL = 2
    AMEND = 3
    MASS_CANCEL = 4
    DEPOSIT = 5
    WITHDRAW = 6
    SNAPSHOT = 7
    HALT = 8            # halt trading of symbol_id
    RESUME = 9
    STATE_HASH = 10     # emit the state hash at this sequence (replica comparison)
    CLOCK = 11          # privileged clock tick: timestamp_ns is the trusted time


CommandKind.MUTATES = frozenset({
    CommandKind.NEW_ORDER, CommandKind.CANCEL, CommandKind.AMEND,
    CommandKind.MASS_CANCEL, CommandKind.DEPOSIT, CommandKind.WITHDRAW,
    CommandKind.HALT, CommandKind.RESUME, CommandKind.CLOCK,
})

#: admin command kinds: accepted only from privileged producers (docs/engine.md, M9)
CommandKind.ADMIN = frozenset({
    CommandKind.SNAPSHOT, CommandKind.HALT, CommandKind.RESUME, CommandKind.STATE_HASH,
    CommandKind.CLOCK,
})

# ---------------------------------------------------------------------------
# Producer ids (u16, the ``producer_id`` slot of both records).
#   0 .. 0x7EFF       fixed ids of ordinary producers (gateway, load generators)
#   0x7F00 .. 0x7FFF  privileged producers: the supervisor, the CLI, the replicator;
#                     ``Ring.producer`` hands them out only with ``privileged=True``
#   0x8000 .. 0xFFFF  automatic ids (``Ring.producer(producer_id=None)``): a counter
#                     in the ring header, so an id comes back only after 32768 later
#                     automatic attaches to the same ring
# ---------------------------------------------------------------------------
PRIVILEGED_PRODUCER_ID_MIN = 0x7F00
PRIVILEGED_PRODUCER_ID_MAX = 0x7FFF
SUPERVISOR_PRODUCER_ID = 0x7F00
CLI_PRODUCER_ID = 0x7F01
AUTO_PRODUCER_ID_BASE = 0x8000
#: how far (ns) a producer's timestamp may run ahead of the last trusted clock tick
MAX_CLOCK_SKEW_NS = 5 * 10 ** 9


def is_privileged(producer_id):
    """True for the reserved privileged producer ids.  O(1)."""
    return PRIVILEGED_PRODUCER_ID_MIN <= producer_id <= PRIVILEGED_PRODUCER_ID_MAX


class Side(IntEnum):
    BUY = 1
    SELL = 2


class OrderType(IntEnum):
    LIMIT = 1
    MARKET = 2
    STOP_LOSS = 3           # market on trigger
    STOP_LIMIT = 4          # limit on trigger
    TAKE_PROFIT = 5         # market on trigger
    TAKE_PROFIT_LIMIT = 6   # limit on trigger


class TimeInForce(IntEnum):
    GTC = 1
    GTT = 2     # expires at expire_ns (stream time)
    IOC = 3
    FOK = 4


class OrderFlags(IntFlag):
    NONE = 0
    POST_ONLY = 1           # reject if it would take
    POST_ONLY_REPRICE = 2   # with POST_ONLY: re-price one tick behind the opposite best instead
    BY_CLIENT_ID = 4        # CANCEL/AMEND: target named by client_order_id
    BY_FUNDS = 8            # MARKET buy: size given as quote funds


class StpMode(IntEnum):
    """Self-trade prevention, decided by the taker (Coinbase dc/co/cn/cb)."""
    DECREMENT_AND_CANCEL = 0    # default
    CANCEL_OLDEST = 1
    CANCEL_NEWEST = 2
    CANCEL_BOTH = 3


class EventKind(IntEnum):
    NOP = 0
    ACCEPTED = 1        # the command's outcome: accepted
    REJECTED = 2        # the command's outcome: rejected with a Reason
    FILL = 3            # one side of a match (flags MAKER or TAKER)
    CANCELLED = 4       # order removed (reason says why)
    EXPIRED = 5         # GTT order expired
    TRIGGERED = 6       # stop / take-profit order triggered
    TRADE = 7           # tape: one per match, per-symbol trade id
    BOOK_DELTA = 8      # L2: symbol, side, price, new total qty (0 = level gone)
    AMENDED = 9         # order amended (price/qty now as given)
    BALANCE = 10        # account asset balance changed by deposit/withdraw
    SNAPSHOT = 11       # matcher state written; aux = low 63 bits of state hash
    SYMBOL_STATUS = 12  # halted (reason SYMBOL_HALTED) or resumed (reason OK)
    STATE_HASH = 13     # aux = low 63 bits of the state hash at seq
    DONE = 14           # reserved


class EventFlags(IntFlag):
    NONE = 0
    MAKER = 1
    TAKER = 2
    LAST = 4            # last event caused by this input command
    REPRICED = 8        # post-only order re-priced
    STOP = 16           # order is (was) a stop / take-profit order


class Reason(IntEnum):
    """One enum of result codes, banded by subsystem (exchange-core style)."""
    OK = 0
    # 100-199: validation of the command itself
    UNKNOWN_COMMAND = 100
    UNKNOWN_SYMBOL = 101
    INVALID_SIDE = 102
    INVALID_ORDER_TYPE = 103
    INVALID_TIF = 104
    INVALID_PRICE = 105
    PRICE_OFF_TICK = 106
    INVALID_QTY = 107
    QTY_OFF_LOT = 108
    QTY_BELOW_MIN = 109
    QTY_ABOVE_MAX = 110
    INVALID_STOP_PRICE = 111
    INVALID_EXPIRY = 112
    INVALID_FLAGS = 113
    INVALID_STP = 114
    UNKNOWN_ACCOUNT = 115
    INVALID_FUNDS = 116
    VALUE_OVERFLOW = 117
    DUPLICATE_CLIENT_ORDER_ID = 118
    UNKNOWN_ASSET = 119
    INVALID_AMOUNT = 120
    # 200-299: risk
    INSUFFICIENT_FUNDS = 200
    PRICE_OUT_OF_BAND = 201
    # 300-399: matching / order state
    POST_ONLY_WOULD_TAKE = 300
    FOK_NOT_FILLABLE = 301
    NO_LIQUIDITY = 302
    SYMBOL_HALTED = 303
    ORDER_NOT_FOUND = 304
    NOT_ORDER_OWNER = 305
    AMEND_BELOW_FILLED = 306
    AMEND_NOT_ALLOWED = 307
    ORDER_EXPIRED = 308
    # 400-499: admin
    ALREADY_HALTED = 400
    NOT_HALTED = 401
    SNAPSHOT_FAILED = 402
    NOT_PRIVILEGED = 403    # admin command (or clock tick) from an ordinary producer
    # 500-599: why an order left the book (CANCELLED / EXPIRED events)
    CANCELLED_BY_USER = 500
    CANCELLED_IOC_REMAINDER = 501
    CANCELLED_MARKET_REMAINDER = 502
    CANCELLED_STP = 503
    CANCELLED_MASS = 504
    CANCELLED_EXPIRED = 505
    CANCELLED_NO_FUNDS = 506
    # 600-699: ring / producer
    PRODUCER_DEAD = 600


def _schema_hash():
    h = hashlib.sha256()
    h.update(b"ringmatch-records/%d\n" % LAYOUT_VERSION)
    h.update(COMMAND_CDEF.encode())
    h.update(EVENT_CDEF.encode())
    for enum in (CommandKind, Side, OrderType, TimeInForce, OrderFlags, StpMode,
                 EventKind, EventFlags, Reason):
        h.update(enum.__name__.encode())
        # __members__ (not iteration): IntFlag iteration differs between 3.9 and 3.11
        for name, member in enum.__members__.items():
            h.update(b"%s=%d;" % (name.encode(), int(member)))
    return int.from_bytes(h.digest()[:8], "little")


#: 64-bit hash of every layout and code in this module.
SCHEMA_HASH = _schema_hash()

_dtypes = {}


def __getattr__(name):
    """Build ``COMMAND_DTYPE`` / ``EVENT_DTYPE`` on first use (numpy is imported lazily)."""
    if name in ("COMMAND_DTYPE", "EVENT_DTYPE"):
        if name not in _dtypes:
            import numpy as np
            spec = _COMMAND_SPEC if name == "COMMAND_DTYPE" else _EVENT_SPEC
            dtype = np.dtype(spec)
            if dtype.itemsize != (COMMAND_SIZE if name == "COMMAND_DTYPE" else EVENT_SIZE):
                raise AssertionError("dtype size mismatch for %s" % name)
            _dtypes[name] = dtype
        return _dtypes[name]
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
