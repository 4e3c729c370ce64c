"""Journal segment files: naming, the segment header and the block header.

A journal is a directory ``<data dir>/journal`` of append-only segment files
``<shard>-<first seq, 20 digits>.seg``.  Each file is a 128-byte segment header
followed by blocks; a block is a 32-byte block header followed by ``count``
fixed-size records, exactly the bytes the ring held.  The full layout, and why,
is in ``docs/journal.md``.

Segment header (little endian, 128 bytes)::

    0   8s  magic            b"RMJOURNL"
    8   u32 format_version   FORMAT_VERSION (2; 1 is still read, see below)
    12  u32 header_size      128
    16  u64 schema_hash      ringbuf.records.SCHEMA_HASH of the writer
    24  u32 record_size      64 for the input ring
    28  u32 (reserved, 0)
    32  i64 first_seq        sequence of the first record in the file
    40  i64 created_ns       wall clock at creation (information only)
    48  u32 pid              writer's pid (information only)
    52  32s shard            shard name, utf-8, NUL padded
    84  32s host             host name, utf-8, NUL padded (information only)
    116 8x  (reserved, 0)
    124 u32 header_crc       CRC32C of bytes 0..124

Block header (little endian, 32 bytes)::

    0   4s  magic            b"RMBK"
    4   u32 count            records in the block, >= 1
    8   i64 first_seq        sequence of the block's first record
    16  u32 crc              CRC32C over the block header (this field as 0) + records
    20  u64 synced_through   bytes of this segment the writer knew durable (covered
                             by a completed fsync/fdatasync) when it wrote the block
                             (format 2; format 1: reserved, always 0)
    28  4x  (reserved, 0)

``synced_through`` is covered by the block's CRC.  It is the durable watermark
the reader trusts to tell a power loss's writeback hole in the LAST segment
from damage (reader rule 5): bytes at or beyond every later intact block's
watermark were never known durable, so a hole there is a torn tail.  A format
1 segment carries no watermark (its reserved bytes are 0) and is read with
the format 1 rule (any intact block after damage stops start-up).
"""
import os
import re
import socket
import struct
import time

from journaler.crc import crc32c
from journaler.errors import JournalFormatError

__all__ = [
    "SEGMENT_MAGIC", "BLOCK_MAGIC", "FORMAT_VERSION", "READABLE_VERSIONS", "WATERMARK_VERSION",
    "SEGMENT_HEADER_SIZE",
    "BLOCK_HEADER_SIZE", "SegmentHeader", "JournalFormatError", "journal_dir", "private_dir",
    "segment_name", "parse_segment_name", "list_segments", "pack_segment_header",
    "unpack_segment_header", "pack_block_header", "unpack_block_header", "block_crc",
]

SEGMENT_MAGIC = b"RMJOURNL"
BLOCK_MAGIC = b"RMBK"
FORMAT_VERSION = 2
#: segment format versions this reader accepts (1: blocks carry no synced_through)
READABLE_VERSIONS = (1, 2)
#: the first format whose block headers carry ``synced_through``
WATERMARK_VERSION = 2
SEGMENT_HEADER_SIZE = 128
BLOCK_HEADER_SIZE = 32

_SEG = struct.Struct("<8sIIQIIqqI32s32s8x")
_SEG_CRC = struct.Struct("<I")
_BLK = struct.Struct("<4sIqIQ4x")
assert _SEG.size + _SEG_CRC.size == SEGMENT_HEADER_SIZE
assert _BLK.size == BLOCK_HEADER_SIZE

_NAME_RE = re.compile(r"^(?P<shard>[A-Za-z0-9_-]+)-(?P<seq>\d{20})\.seg$")


class SegmentHeader(object):
    """Decoded segment header (see the module docstring for the layout)."""

    __slots__ = ("format_version", "schema_hash", "record_size", "first_seq",
                 "created_ns", "pid", "shard", "host")

    def __init__(self, format_version, schema_hash, record_size, first_seq,
                 created_ns, pid, shard, host):
        self.format_version = format_version
        self.schema_hash = schema_hash
        self.record_size = record_size
        self.first_seq = first_seq
        self.created_ns = created_ns
        self.pid = pid
        self.shard = shard
        self.host = host

    def __repr__(self):
        return ("SegmentHeader(version=%d, schema=%016x, record_size=%d, first_seq=%d, "
                "shard=%r, pid=%d, host=%r)" % (
                    self.format_version, self.schema_hash, self.record_size,
                    self.first_seq, self.shard, self.pid, self.host))


def journal_dir(data_dir):
    """``<data dir>/journal``."""
    return os.path.join(data_dir, "journal")


def private_dir(path):
    """Create directory ``path`` 0700 (parents as needed) or narrow an existing wider one.  O(1).

    The journal, the snapshots and their quarantines are private: 0700
    directories, 0600 files (docs/journal.md, "Files").  Returns ``path``.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_mode & 0o077 and st.st_uid == os.getuid():    # (another user's dir: left alone)
        os.chmod(path, 0o700)
    return path


def segment_name(shard, first_seq):
    """File name of the segment of ``shard`` starting at ``first_seq``.

    >>> segment_name("shard0", 1)
    'shard0-00000000000000000001.seg'
    """
    return "%s-%020d.seg" % (shard, first_seq)


def parse_segment_name(name):
    """``(shard, first_seq)`` of a segment file name, or None if it is not one."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return m.group("shard"), int(m.group("seq"))


def list_segments(data_dir, shard):
    """Paths of ``shard``'s segments sorted by first sequence: [(first_seq, path)].  O(n log n)."""
    directory = journal_dir(data_dir)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        parsed = parse_segment_name(name)
        if parsed is not None and parsed[0] == shard:
            out.append((parsed[1], os.path.join(directory, name)))
    out.sort()
    return out


def _fixed(text, size):
    raw = text.encode("utf-8")[:size]
    return raw + b"\0" * (size - len(raw))


def pack_segment_header(schema_hash, record_size, first_seq, shard, created_ns=None,
                        pid=None, host=None, format_version=FORMAT_VERSION):
    """The 128 header bytes of a new segment.  O(1).

    ``format_version`` other than FORMAT_VERSION is for tests that need an old
    segment (the writer always writes the current one).
    """
    body = _SEG.pack(SEGMENT_MAGIC, format_version, SEGMENT_HEADER_SIZE, schema_hash,
                     record_size, 0, first_seq,
                     time.time_ns() if created_ns is None else created_ns,
                     os.getpid() if pid is None else pid,
                     _fixed(shard, 32), _fixed(socket.gethostname() if host is None else host, 32))
    return body + _SEG_CRC.pack(crc32c(body))


def unpack_segment_header(data, path=None):
    """Decode and check a segment header.  O(1).

    Raises JournalFormatError (reason ``short_header``, ``bad_magic``,
    ``header_crc``, ``version``) when the bytes are not a valid header.  Whether
    the schema and record size fit the reader is the caller's decision.
    """
    if len(data) < SEGMENT_HEADER_SIZE:
        raise JournalFormatError("%s: segment header is %d bytes, need %d" % (
            path, len(data), SEGMENT_HEADER_SIZE), path, 0, "short_header")
    data = bytes(data[:SEGMENT_HEADER_SIZE])
    (magic, version, header_size, schema_hash, record_size, _r, first_seq, created_ns,
     pid, shard, host) = _SEG.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        raise JournalFormatError("%s: not a journal segment (magic %r)" % (path, magic),
                                 path, 0, "bad_magic")
    (stored,) = _SEG_CRC.unpack_from(data, _SEG.size)
    if crc32c(data[:_SEG.size]) != stored:
        raise JournalFormatError("%s: segment header CRC mismatch" % path, path, 0, "header_crc")
    if version not in READABLE_VERSIONS or header_size != SEGMENT_HEADER_SIZE:
        raise JournalFormatError("%s: journal format version %d (header %d bytes); this "
                                 "reader knows versions %s" % (
                                     path, version, header_size,
                                     ", ".join(str(v) for v in READABLE_VERSIONS)),
                                 path, 0, "version")
    return SegmentHeader(version, schema_hash, record_size, first_seq, created_ns, pid,
                         shard.rstrip(b"\0").decode("utf-8", "replace"),
                         host.rstrip(b"\0").decode("utf-8", "replace"))


def pack_block_header(first_seq, count, crc, synced_through=0):
    """The 32 block header bytes.  O(1).

    ``synced_through``: bytes of the segment known durable when the block is
    written (0 claims nothing, which is always true).
    """
    return _BLK.pack(BLOCK_MAGIC, count, first_seq, crc, synced_through)


def unpack_block_header(data, offset=0):
    """``(magic, count, first_seq, crc, synced_through)`` of the block header at ``offset``.  O(1)."""
    return _BLK.unpack_from(data, offset)


def block_crc(first_seq, count, chunks, synced_through=0):
    """CRC32C of a block: its header with crc = 0, then the record bytes.  O(n).

    ``chunks`` is an iterable of bytes-like objects (1-2 ring chunks).  A
    format 1 block (``synced_through`` 0) has the CRC format 1 gave it.
    """
    crc = crc32c(_BLK.pack(BLOCK_MAGIC, count, first_seq, 0, synced_through))
    for chunk in chunks:
        crc = crc32c(chunk, crc)
    return crc
