"""Turn output-ring bytes into event tuples (the read model's only input).

The output ring holds 128-byte event records (``ringbuf.records.EVENT_FIELDS``).
The publisher copies each polled batch out of shared memory at once (the
slots may be reused as soon as the batch is committed), unpacking it with the
one ``struct.Struct`` the records module derives from the layout.
"""
from collections import namedtuple
from functools import partial

from ringbuf.records import EVENT_SIZE, EVENT_SLOTS, event_struct

__all__ = ["PublishedEvent", "decode_chunk", "decode_batch", "encode_event"]

try:  # the engine's Event is the same namedtuple of every event field, when present
    from engine.events import Event as PublishedEvent  # noqa: F401
    if tuple(PublishedEvent._fields) != tuple(EVENT_SLOTS):
        raise ImportError("engine.events.Event fields differ from EVENT_SLOTS")
except ImportError:
    #: One output event; attributes are the ``EVENT_FIELDS`` names.
    PublishedEvent = namedtuple("PublishedEvent", EVENT_SLOTS)


#: tuple.__new__ bound to the event class: what ``_make`` does, without its per-call
#: Python frame and length check (iter_unpack always yields EVENT_SLOTS values)
_new_event = partial(tuple.__new__, PublishedEvent)


def decode_chunk(chunk, out):
    """Append the events in ``chunk`` (bytes-like, n*128 bytes) to ``out``.

    O(n).  Raises ``struct.error`` if the chunk is not a whole number of records.
    """
    out.extend(map(_new_event, event_struct.iter_unpack(chunk)))
    return out


def decode_batch(batch):
    """Return the list of events of a ``Consumer.poll`` batch (copied out of the ring)."""
    chunks = batch.chunks
    if len(chunks) == 1:
        return list(map(_new_event, event_struct.iter_unpack(chunks[0][1])))
    out = []
    for _first, view in chunks:
        decode_chunk(view, out)
    return out


def encode_event(event):
    """Pack one event (any object with the event attributes) into 128 bytes."""
    return event_struct.pack(*(int(getattr(event, name)) for name in EVENT_SLOTS))


assert event_struct.size == EVENT_SIZE
