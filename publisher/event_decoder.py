"""Turn output-ring bytes into event tuples (the read model's only input).

The output ring holds 128-byte event records (``ringbuf.records.EVENT_FIELDS``).
The publisher copies each polled batch out of shared memory at once (the
slots may be reused as soon as the batch is committed), unpacking it with the
one ``struct.Struct`` the records module derives from the layout.
"""
from collections import namedtuple

from ringbuf.records import EVENT_SIZE, EVENT_SLOTS, event_struct

__all__ = ["PublishedEvent", "decode_chunk", "decode_batch", "encode_event"]

try:  # the engine's Event is the same namedtuple of every event field, when present
    from engine.events import Event as PublishedEvent  # noqa: F401
    if tuple(PublishedEvent._fields) != tuple(EVENT_SLOTS):
        raise ImportError("engine.events.Event fields differ from EVENT_SLOTS")
except ImportError:
    #: One output event; attributes are the ``EVENT_FIELDS`` names.
    PublishedEvent = namedtuple("PublishedEvent", EVENT_SLOTS)


def decode_chunk(chunk, out):
    """Append the events in ``chunk`` (bytes-like, n*128 bytes) to ``out``.

    O(n).  Raises ``struct.error`` if the chunk is not a whole number of records.
    """
    make = PublishedEvent._make
    out.extend(make(t) for t in event_struct.iter_unpack(chunk))
    return out


def decode_batch(batch):
    """Return the list of events of a ``Consumer.poll`` batch (copied out of the ring)."""
    out = []
    for _first, view in batch.chunks:
        decode_chunk(view, out)
    return out


def encode_event(event):
    """Pack one event (any object with the event attributes) into 128 bytes."""
    return event_struct.pack(*(int(getattr(event, name)) for name in EVENT_SLOTS))


assert event_struct.size == EVENT_SIZE
