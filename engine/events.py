"""Output events and the sinks that receive them.

A sink plays the role :class:`EventSink`; the matcher reaches it through an
:class:`EventWriter` (``writer_for(sink)``): the sink's own if it offers
``event_writer()`` (:class:`BytesSink` does: one ``struct.pack_into`` per record straight
into its buffer), else a :class:`SinkWriter` that makes exactly these two calls:

* ``emit_event(kind, side, order_type, tif, flags, command_kind, symbol_id, reason,
  producer_id, account_id, seq, order_id, price, qty, remaining, filled, fee, amount,
  trade_id, counter_order_id, counter_account_id, event_index, timestamp_ns,
  client_order_id, aux)`` -- 25 positional ints in event-record slot order, once per event;
* ``mark_last()`` -- once per command that produced events, right after its last event:
  set ``EventFlags.LAST`` on the most recent event.

Sinks:

* :class:`ListSink` -- keeps :class:`Event` namedtuples in ``.events`` (tests, tools);
* :class:`BytesSink` -- packs 128-byte records (``records.event_struct``) into a growing
  buffer; ``take()`` returns the bytes so far and clears it (the matcher process
  copies them into the output ring);
* :class:`CountingSink` -- counts events and commands (benchmarks);
* :class:`NullSink` -- drops everything.

Example::

    >>> sink = ListSink()
    >>> # Matcher(DEFAULT_CONFIG, sink).process(1, Command.deposit(7, 1, 100))
    >>> # sink.events[-1].kind == EventKind.BALANCE
"""
from array import array
from collections import namedtuple

from ringbuf.records import EVENT_SIZE, EVENT_SLOTS, EventFlags, EventKind, event_struct

try:
    from typing import Protocol
except ImportError:  # pragma: no cover - 3.7
    Protocol = object

__all__ = ["Event", "EventSink", "EventWriter", "SinkWriter", "writer_for", "ListSink",
           "BytesSink", "CountingSink", "NullSink"]

_LAST = int(EventFlags.LAST)
_FLAGS_OFFSET = 4      # byte offset of the flags slot in the event record
assert EVENT_SLOTS[4] == "flags"


class Event(namedtuple("Event", EVENT_SLOTS)):
    """One output event; fields are the event record slots (see docs/records.md)."""

    __slots__ = ()

    def pack(self):
        """The 128-byte record."""
        return event_struct.pack(*self)

    @classmethod
    def unpack(cls, data, offset=0):
        """Event from a 128-byte record at ``offset``."""
        return cls._make(event_struct.unpack_from(data, offset))

    @classmethod
    def unpack_all(cls, data):
        """List of events from concatenated records."""
        unpack_from = event_struct.unpack_from
        make = cls._make
        return [make(unpack_from(data, off)) for off in range(0, len(data), EVENT_SIZE)]


class EventSink(Protocol):
    """Role: receives the matcher's events (see module docstring)."""

    def emit_event(self, kind, side, order_type, tif, flags, command_kind, symbol_id, reason,
                   producer_id, account_id, seq, order_id, price, qty, remaining, filled, fee,
                   amount, trade_id, counter_order_id, counter_account_id, event_index,
                   timestamp_ns, client_order_id, aux):
        ...

    def mark_last(self):
        ...


class ListSink(object):
    """Collects :class:`Event` tuples in ``self.events``.  O(1) per event."""

    def __init__(self):
        self.events = []

    def emit_event(self, *fields):
        self.events.append(Event._make(fields))

    def mark_last(self):
        events = self.events
        last = events[-1]
        events[-1] = last._replace(flags=last.flags | _LAST)

    def take(self):
        """Return the events so far and clear."""
        out = self.events
        self.events = []
        return out

    def clear(self):
        self.events = []


_pack_into = event_struct.pack_into
_E_FILL, _E_TRADE, _E_DELTA = int(EventKind.FILL), int(EventKind.TRADE), \
    int(EventKind.BOOK_DELTA)
_EF_MAKER, _EF_TAKER = int(EventFlags.MAKER), int(EventFlags.TAKER)
_E2 = 2 * EVENT_SIZE
_E3 = 3 * EVENT_SIZE


class EventWriter(Protocol):
    """Role: the matcher's specialised, per-event-shape emission interface.

    A sink offering ``event_writer()`` returns an object with these methods and the
    matcher calls them instead of ``emit_event`` (fewer arguments per event, three
    records per fill in one call, no tuple building).  Any other sink is wrapped in
    :class:`SinkWriter`, which turns each call back into ``emit_event`` calls, so both
    paths produce the same events (tests/engine/test_matcher_golden.py).

    Per-command context: ``begin(seq, timestamp_ns, command_kind)`` sets the ``seq``,
    ``timestamp_ns`` and ``command_kind`` slots of the command's events and resets
    ``event_index``; it only stores the attributes ``seq``, ``ts``, ``ck`` and ``ei``
    (= 0), which the matcher may also set directly (it does, per command); ``ei`` is
    incremented per event.  Shapes (``o``/``m``: an order with the :class:`engine.order_book.Order`
    attributes):

    * ``order(kind, o, flags, reason, price, qty, fee, amount, trade_id, counter_order_id,
      counter_account_id, aux)`` -- an event about order ``o`` (side, type, tif, symbol,
      producer, account, order id, remaining, filled, client order id from ``o``);
    * ``delta(symbol_id, side, price, total)`` -- BOOK_DELTA;
    * ``fill(m, o, price, qty, maker_fee, taker_fee, notional, trade_id)`` -- FILL (maker
      ``m``), FILL (taker ``o``), TRADE, in that order; each FILL's ``aux`` is its order's
      ``hold`` (called after the fill has been settled: the hold after it);
    * ``event(kind, side, order_type, tif, flags, symbol_id, reason, producer_id,
      account_id, order_id, price, qty, remaining, filled, fee, amount, trade_id,
      counter_order_id, counter_account_id, client_order_id, aux)`` -- anything else;
    * ``mark_last()``.
    """


class SinkWriter(object):
    """:class:`EventWriter` over any sink with ``emit_event`` and ``mark_last``.  O(1)/event."""

    def __init__(self, sink):
        self.sink = sink
        self._emit = sink.emit_event
        self.mark_last = sink.mark_last
        self.seq = 0
        self.ts = 0
        self.ck = 0
        self.ei = 0

    def begin(self, seq, ts, ck):
        self.seq = seq
        self.ts = ts
        self.ck = ck
        self.ei = 0

    def order(self, kind, o, flags, reason, price, qty, fee, amount, trade_id, c_oid, c_acct,
              aux):
        ei = self.ei
        self.ei = ei + 1
        self._emit(kind, o.side, o.order_type, o.tif, flags, self.ck, o.symbol_id, reason,
                   o.producer_id, o.account_id, self.seq, o.order_id, price, qty, o.remaining,
                   o.filled, fee, amount, trade_id, c_oid, c_acct, ei, self.ts,
                   o.client_order_id, aux)

    def delta(self, symbol_id, side, price, total):
        ei = self.ei
        self.ei = ei + 1
        self._emit(_E_DELTA, side, 0, 0, 0, self.ck, symbol_id, 0, 0, 0, self.seq, 0, price,
                   total, 0, 0, 0, 0, 0, 0, 0, ei, self.ts, 0, 0)

    def fill(self, m, o, price, q, mfee, tfee, n, trade_id):
        ei = self.ei
        self.ei = ei + 3
        emit = self._emit
        ck = self.ck
        seq = self.seq
        ts = self.ts
        symbol_id = o.symbol_id
        emit(_E_FILL, m.side, m.order_type, m.tif, _EF_MAKER, ck, symbol_id, 0, m.producer_id,
             m.account_id, seq, m.order_id, price, q, m.remaining, m.filled, mfee, n, trade_id,
             o.order_id, o.account_id, ei, ts, m.client_order_id, m.hold)
        emit(_E_FILL, o.side, o.order_type, o.tif, _EF_TAKER, ck, symbol_id, 0, o.producer_id,
             o.account_id, seq, o.order_id, price, q, o.remaining, o.filled, tfee, n, trade_id,
             m.order_id, m.account_id, ei + 1, ts, o.client_order_id, o.hold)
        emit(_E_TRADE, o.side, 0, 0, 0, ck, symbol_id, 0, 0, o.account_id, seq, o.order_id,
             price, q, 0, 0, 0, n, trade_id, m.order_id, m.account_id, ei + 2, ts, 0, 0)

    def event(self, kind, side, order_type, tif, flags, symbol_id, reason, producer_id,
              account_id, order_id, price, qty, remaining, filled, fee, amount, trade_id,
              c_oid, c_acct, client_order_id, aux):
        ei = self.ei
        self.ei = ei + 1
        self._emit(kind, side, order_type, tif, flags, self.ck, symbol_id, reason, producer_id,
                   account_id, self.seq, order_id, price, qty, remaining, filled, fee, amount,
                   trade_id, c_oid, c_acct, ei, self.ts, client_order_id, aux)


def writer_for(sink):
    """The :class:`EventWriter` the matcher uses for ``sink``: its own if it offers
    ``event_writer()``, else a :class:`SinkWriter` around it."""
    make = getattr(sink, "event_writer", None)
    if make is not None:
        return make()
    return SinkWriter(sink)


class BytesSink(object):
    """Packs each event into a 128-byte record in a growing byte buffer.

    ``take()`` returns ``bytes`` of all records since the last take and clears.
    Amortised O(1) per event; raises struct.error if a value does not fit its slot
    (a matcher bug: every value the matcher emits is range-checked first).

    Besides the generic ``emit_event`` it is its own :class:`EventWriter`
    (``event_writer()`` returns self): the matcher then packs each record with one
    precompiled ``struct.pack_into`` call straight into the buffer.  The buffer is an
    ``array('B')`` (copied out by ``take()`` several times faster than a bytearray on
    PyPy 3.9) and is replaced, never resized in place, when it fills up, so a view of
    it left alive cannot make a later write fail.
    """

    def __init__(self, initial_events=4096):
        self._buf = array("B", bytes(EVENT_SIZE * max(4, initial_events)))
        self._limit = len(self._buf) - _E3     # room for 3 more records while end <= limit
        self._end = 0
        self._taken = 0
        self.seq = 0
        self.ts = 0
        self.ck = 0
        self.ei = 0

    def _grow(self):
        old = self._buf
        buf = array("B", bytes(2 * len(old)))
        buf[:self._end] = old[:self._end]
        self._buf = buf
        self._limit = len(buf) - _E3

    def emit_event(self, *fields):
        end = self._end
        if end > self._limit:
            self._grow()
        _pack_into(self._buf, end, *fields)
        self._end = end + EVENT_SIZE

    def mark_last(self):
        self._buf[self._end - EVENT_SIZE + _FLAGS_OFFSET] |= _LAST

    # -- EventWriter ------------------------------------------------------------------
    def event_writer(self):
        return self

    def begin(self, seq, ts, ck):
        self.seq = seq
        self.ts = ts
        self.ck = ck
        self.ei = 0

    def order(self, kind, o, flags, reason, price, qty, fee, amount, trade_id, c_oid, c_acct,
              aux):
        end = self._end
        if end > self._limit:
            self._grow()
        ei = self.ei
        _pack_into(self._buf, end, kind, o.side, o.order_type, o.tif, flags, self.ck,
                   o.symbol_id, reason, o.producer_id, o.account_id, self.seq, o.order_id,
                   price, qty, o.remaining, o.filled, fee, amount, trade_id, c_oid, c_acct, ei,
                   self.ts, o.client_order_id, aux)
        self.ei = ei + 1
        self._end = end + EVENT_SIZE

    def delta(self, symbol_id, side, price, total):
        end = self._end
        if end > self._limit:
            self._grow()
        ei = self.ei
        _pack_into(self._buf, end, _E_DELTA, side, 0, 0, 0, self.ck, symbol_id, 0, 0, 0,
                   self.seq, 0, price, total, 0, 0, 0, 0, 0, 0, 0, ei, self.ts, 0, 0)
        self.ei = ei + 1
        self._end = end + EVENT_SIZE

    def fill(self, m, o, price, q, mfee, tfee, n, trade_id):
        end = self._end
        if end > self._limit:
            self._grow()
        buf = self._buf
        ei = self.ei
        ck = self.ck
        seq = self.seq
        ts = self.ts
        symbol_id = o.symbol_id
        taker_side = o.side
        taker_id = o.order_id
        taker_acct = o.account_id
        maker_id = m.order_id
        maker_acct = m.account_id
        _pack_into(buf, end, _E_FILL, m.side, m.order_type, m.tif, _EF_MAKER, ck, symbol_id,
                   0, m.producer_id, maker_acct, seq, maker_id, price, q, m.remaining,
                   m.filled, mfee, n, trade_id, taker_id, taker_acct, ei, ts,
                   m.client_order_id, m.hold)
        _pack_into(buf, end + EVENT_SIZE, _E_FILL, taker_side, o.order_type, o.tif, _EF_TAKER,
                   ck, symbol_id, 0, o.producer_id, taker_acct, seq, taker_id, price, q,
                   o.remaining, o.filled, tfee, n, trade_id, maker_id, maker_acct, ei + 1, ts,
                   o.client_order_id, o.hold)
        _pack_into(buf, end + _E2, _E_TRADE, taker_side, 0, 0, 0, ck, symbol_id, 0, 0,
                   taker_acct, seq, taker_id, price, q, 0, 0, 0, n, trade_id, maker_id,
                   maker_acct, ei + 2, ts, 0, 0)
        self.ei = ei + 3
        self._end = end + _E3

    def event(self, kind, side, order_type, tif, flags, symbol_id, reason, producer_id,
              account_id, order_id, price, qty, remaining, filled, fee, amount, trade_id,
              c_oid, c_acct, client_order_id, aux):
        end = self._end
        if end > self._limit:
            self._grow()
        ei = self.ei
        _pack_into(self._buf, end, kind, side, order_type, tif, flags, self.ck, symbol_id,
                   reason, producer_id, account_id, self.seq, order_id, price, qty, remaining,
                   filled, fee, amount, trade_id, c_oid, c_acct, ei, self.ts, client_order_id,
                   aux)
        self.ei = ei + 1
        self._end = end + EVENT_SIZE

    # -- output -------------------------------------------------------------------------
    def getvalue(self):
        """The records since the last take (does not clear)."""
        return memoryview(self._buf)[:self._end].tobytes()

    def take(self):
        end = self._end
        out = memoryview(self._buf)[:end].tobytes()
        self._taken += end // EVENT_SIZE
        self._end = 0
        return out

    def take_view(self):
        """Zero-copy :meth:`take`: a read-only memoryview of the records since the last
        take, then clears.  The view aliases the sink's buffer: it is valid only until
        the next event is written (consume or copy it first).  O(1)."""
        end = self._end
        out = memoryview(self._buf)[:end].toreadonly()
        self._taken += end // EVENT_SIZE
        self._end = 0
        return out

    @property
    def count(self):
        """Events emitted so far (taken or not)."""
        return self._taken + self._end // EVENT_SIZE

    def __len__(self):
        return self._end // EVENT_SIZE


class CountingSink(object):
    """Counts events (``events``) and commands with events (``commands``)."""

    def __init__(self):
        self.events = 0
        self.commands = 0

    def emit_event(self, *fields):
        self.events += 1

    def mark_last(self):
        self.commands += 1


class NullSink(object):
    """Drops every event."""

    def emit_event(self, *fields):
        pass

    def mark_last(self):
        pass
