"""Output events and the sinks that receive them.

The matcher calls exactly two sink methods (role :class:`EventSink`):

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
from collections import namedtuple

from ringbuf.records import EVENT_SIZE, EVENT_SLOTS, EventFlags, event_struct

try:
    from typing import Protocol
except ImportError:  # pragma: no cover - 3.7
    Protocol = object

__all__ = ["Event", "EventSink", "ListSink", "BytesSink", "CountingSink", "NullSink"]

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


class BytesSink(object):
    """Packs each event into a 128-byte record in a growing bytearray.

    ``take()`` returns ``bytes`` of all records since the last take and clears.
    Amortised O(1) per event; raises struct.error if a value does not fit its slot
    (a matcher bug: every value the matcher emits is range-checked first).
    """

    def __init__(self, initial_events=4096):
        self._buf = bytearray(EVENT_SIZE * max(1, initial_events))
        self._end = 0
        self.count = 0
        self._pack_into = event_struct.pack_into

    def emit_event(self, *fields):
        end = self._end
        buf = self._buf
        if end + EVENT_SIZE > len(buf):
            buf.extend(bytes(len(buf)))
        self._pack_into(buf, end, *fields)
        self._end = end + EVENT_SIZE
        self.count += 1

    def mark_last(self):
        self._buf[self._end - EVENT_SIZE + _FLAGS_OFFSET] |= _LAST

    def getvalue(self):
        """The records since the last take (does not clear)."""
        return bytes(self._buf[:self._end])

    def take(self):
        out = bytes(self._buf[:self._end])
        self._end = 0
        return out

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
