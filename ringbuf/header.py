"""Segment header: the layout of a ring's shared-memory segment.

Theory of operation
-------------------
One POSIX shared-memory segment holds one ring::

    offset  size              what
    0       256               fixed header (``HEADER_STRUCT``: magic, versions,
                              schema hash, capacity, record size, creator...)
    256     64                cursor line: int64 producer cursor
    320     64                futex line: int32 signal word, int32 waiter count
    384     64                reaper line: int64 pid holding the recovery lock,
                              int64 count of slots recovered as NOP records,
                              int64 count of automatic producer ids handed out
    512     64 * 16           consumer gating sequences, one per cache line
    1536    64 * 16           consumer descriptors: name[40], deps mask, flags
    2560    64 * 64           producer table (``ProducerEntry`` fields below)
    8192    8 * capacity      availability markers (multi-producer rings)
    ...     record_size * capacity, page aligned: the records

Every int64 that more than one process writes sits on its own 64-byte line
(``cache_line``) so producers and consumers do not false-share.

Rules
1. A reader refuses a segment whose magic, header version or schema hash
   differ from its own, or whose capacity / record size / consumers differ
   from what the caller asked for (``check``).
2. Fields after creation are written only through the atomics in
   ``_native`` (sequences, futex words, producer entries); the fixed header
   is written once, before the segment name is published by the kernel.
"""
import os
import struct
import time

from . import records
from .errors import RingConfigError, RingMismatchError

__all__ = ["CACHE_LINE", "MAGIC", "HEADER_VERSION", "MAX_CONSUMERS", "MAX_PRODUCERS",
           "Layout", "HeaderFields", "cache_line", "pack_header", "unpack_header"]

CACHE_LINE = 64
PAGE = 4096
MAGIC = b"RMRING\x00\x01"
HEADER_VERSION = 1
MAX_CONSUMERS = 16
MAX_PRODUCERS = 64
NAME_BYTES = 40

# record kinds stored in the header (what ``Producer.record`` casts a slot to)
RECORD_RAW, RECORD_COMMAND, RECORD_EVENT = 0, 1, 2
RECORD_TYPES = {RECORD_RAW: None, RECORD_COMMAND: "rm_command_t", RECORD_EVENT: "rm_event_t"}

# flags
FLAG_SINGLE_PRODUCER = 1

HEADER_SIZE = 256
CURSOR_OFFSET = 256
FUTEX_OFFSET = 320
REAPER_OFFSET = 384          # int64 lock pid, int64 recovered-slot count
AUTO_ID_OFFSET = REAPER_OFFSET + 16   # int64 automatic producer ids handed out (ring rule P2)
CONSUMER_SEQ_OFFSET = 512
CONSUMER_DESC_OFFSET = CONSUMER_SEQ_OFFSET + CACHE_LINE * MAX_CONSUMERS
PRODUCER_OFFSET = CONSUMER_DESC_OFFSET + CACHE_LINE * MAX_CONSUMERS
AVAIL_OFFSET = 8192

# producer entry: eight int64 words on one cache line
P_PID, P_START, P_ID, P_STATE, P_LO, P_HI, P_CLAIM_NS, P_SPARE = range(8)
P_FREE, P_ACTIVE = 0, 1

# magic, header version, header size, schema hash, records layout version,
# capacity, record size, record kind, flags, wait strategy, consumers, max producers,
# creator pid, creation time ns, claim timeout ns, avail offset, data offset, total size
HEADER_STRUCT = struct.Struct("<8sIIQIQIIIIIIqqqQQQ")
assert HEADER_STRUCT.size <= HEADER_SIZE
assert PRODUCER_OFFSET + CACHE_LINE * MAX_PRODUCERS <= AVAIL_OFFSET

WAIT_STRATEGY_CODES = {"busy-spin": 1, "yield": 2, "blocking": 3, "backoff": 4}
WAIT_STRATEGY_NAMES = {v: k for k, v in WAIT_STRATEGY_CODES.items()}


def cache_line(index, base):
    """Byte offset of the ``index``-th cache line of a table starting at ``base``."""
    return base + index * CACHE_LINE


def _round_up(n, to):
    return (n + to - 1) // to * to


class Layout(object):
    """Where everything is in a segment of the given capacity and record size.

    O(1).  Raises RingConfigError for a capacity that is not a power of two
    >= 2 or a record size that is not a positive multiple of 8.

    >>> Layout(8, 64).data_offset % 4096
    0
    """

    __slots__ = ("capacity", "record_size", "mask", "shift", "avail_offset",
                 "data_offset", "total_size")

    def __init__(self, capacity, record_size):
        if not isinstance(capacity, int) or capacity < 2 or capacity & (capacity - 1):
            raise RingConfigError("capacity must be a power of two >= 2, got %r" % (capacity,))
        if not isinstance(record_size, int) or record_size <= 0 or record_size % 8:
            raise RingConfigError("record size must be a positive multiple of 8, got %r"
                                  % (record_size,))
        self.capacity = capacity
        self.record_size = record_size
        self.mask = capacity - 1
        self.shift = capacity.bit_length() - 1
        self.avail_offset = AVAIL_OFFSET
        self.data_offset = _round_up(AVAIL_OFFSET + 8 * capacity, PAGE)
        self.total_size = _round_up(self.data_offset + record_size * capacity, PAGE)


class HeaderFields(object):
    """The fixed header, decoded (plain attributes)."""

    __slots__ = ("magic", "header_version", "header_size", "schema_hash", "layout_version",
                 "capacity", "record_size", "record_kind", "flags", "wait_strategy",
                 "n_consumers", "max_producers", "creator_pid", "creation_time_ns",
                 "claim_timeout_ns", "avail_offset", "data_offset", "total_size")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw[k])

    @property
    def single_producer(self):
        return bool(self.flags & FLAG_SINGLE_PRODUCER)

    def as_dict(self):
        d = {k: getattr(self, k) for k in self.__slots__}
        d["magic"] = self.magic.hex()
        d["single_producer"] = self.single_producer
        d["wait_strategy"] = WAIT_STRATEGY_NAMES.get(self.wait_strategy, self.wait_strategy)
        return d


def new_header(layout, record_kind, single_producer, wait_strategy, n_consumers, claim_timeout_ns,
               schema_hash=None):
    """HeaderFields for a segment about to be created by this process."""
    return HeaderFields(
        magic=MAGIC, header_version=HEADER_VERSION, header_size=HEADER_SIZE,
        schema_hash=records.SCHEMA_HASH if schema_hash is None else schema_hash,
        layout_version=records.LAYOUT_VERSION, capacity=layout.capacity,
        record_size=layout.record_size, record_kind=record_kind,
        flags=FLAG_SINGLE_PRODUCER if single_producer else 0,
        wait_strategy=WAIT_STRATEGY_CODES[wait_strategy], n_consumers=n_consumers,
        max_producers=MAX_PRODUCERS, creator_pid=os.getpid(), creation_time_ns=time.time_ns(),
        claim_timeout_ns=int(claim_timeout_ns), avail_offset=layout.avail_offset,
        data_offset=layout.data_offset, total_size=layout.total_size)


def pack_header(buf, h):
    """Write the fixed header into ``buf`` (the mapped segment)."""
    HEADER_STRUCT.pack_into(buf, 0, *(getattr(h, k) for k in HeaderFields.__slots__))


def unpack_header(buf):
    """Decode the fixed header from ``buf``."""
    return HeaderFields(**dict(zip(HeaderFields.__slots__, HEADER_STRUCT.unpack_from(buf, 0))))


def check(name, h, expected_schema_hash=None, capacity=None, record_size=None, consumers=None,
          table=None):
    """Refuse a header that is not ours or differs from what the caller asked for (rule 1).

    O(consumers).  Raises RingMismatchError naming the first field that differs.
    """
    if h.magic != MAGIC:
        raise RingMismatchError(name, "magic", h.magic, MAGIC)
    if h.header_version != HEADER_VERSION:
        raise RingMismatchError(name, "header version", h.header_version, HEADER_VERSION)
    if h.layout_version != records.LAYOUT_VERSION:
        raise RingMismatchError(name, "records layout version", h.layout_version,
                                records.LAYOUT_VERSION)
    want = records.SCHEMA_HASH if expected_schema_hash is None else expected_schema_hash
    if h.schema_hash != want:
        raise RingMismatchError(name, "schema hash", h.schema_hash, want)
    if capacity is not None and h.capacity != capacity:
        raise RingMismatchError(name, "capacity", h.capacity, capacity)
    if record_size is not None and h.record_size != record_size:
        raise RingMismatchError(name, "record size", h.record_size, record_size)
    layout = Layout(h.capacity, h.record_size)
    if (h.data_offset, h.avail_offset, h.total_size) != (
            layout.data_offset, layout.avail_offset, layout.total_size):
        raise RingMismatchError(name, "segment layout",
                                (h.avail_offset, h.data_offset, h.total_size),
                                (layout.avail_offset, layout.data_offset, layout.total_size))
    if consumers is not None and table is not None:
        found = {n: sorted(d) for n, d in table.items()}
        exp = {n: sorted(d) for n, d in dict(consumers).items()}
        if found != exp:
            raise RingMismatchError(name, "consumers", found, exp)
    return layout


def pack_consumer(buf, index, name, deps_mask):
    """Write consumer descriptor ``index``: name and the bit mask of its dependencies."""
    raw = name.encode("utf-8")
    if not raw or len(raw) >= NAME_BYTES:
        raise RingConfigError("consumer name must be 1..%d bytes: %r" % (NAME_BYTES - 1, name))
    off = cache_line(index, CONSUMER_DESC_OFFSET)
    struct.pack_into("<%dsQI" % NAME_BYTES, buf, off, raw, deps_mask, 1)


def unpack_consumers(buf, n):
    """Return ``[(name, [dependency indexes])]`` for the first ``n`` descriptors."""
    out = []
    for i in range(n):
        raw, mask, active = struct.unpack_from("<%dsQI" % NAME_BYTES, buf,
                                               cache_line(i, CONSUMER_DESC_OFFSET))
        deps = [j for j in range(MAX_CONSUMERS) if mask >> j & 1]
        out.append((raw.rstrip(b"\0").decode("utf-8"), deps))
    return out
