"""The replication wire protocol: frames between a primary and its standby.

Theory of operation (numbered rules; sender.py and receiver.py refer to them):

1. One TCP connection per primary/standby pair.  The *primary's replicator
   connects* to the standby (the address in the primary's ``standby:
   {host, port}``); the standby listens.  Every message is one frame: a fixed
   48-byte header followed by ``payload_len`` payload bytes.
2. Header (little endian)::

       0  4s  magic        b"RMRP"
       4  u8  version      PROTOCOL_VERSION
       5  u8  type         FrameType
       6  u16 flags        0 (reserved)
       8  u64 epoch        the sender's epoch (fencing, rule 7)
       16 i64 first_seq    DATA: sequence of the first record; ACK: durable seq;
                           RESUME/NACK: next sequence wanted; STATE_HASH: the seq
       24 u32 count        DATA: number of records (payload = count * record size)
       28 u32 payload_len
       32 u32 payload_crc  zlib.crc32 (IEEE CRC-32) of the payload
       36 u32 (reserved, 0)
       40 u32 header_crc   zlib.crc32 of bytes 0..40
       44 4x  (reserved)

   The checksum is zlib's CRC-32 (stdlib, C speed on CPython and PyPy, ~1 GB/s);
   the journal's CRC32C is not needed on the wire because TCP already carries
   a checksum and ours is only the end-to-end check against corruption in
   between (a proxy, a NIC, memory).  Records are the raw ring bytes.
3. A header whose magic, version or header CRC is wrong cannot be trusted to
   say where the next frame starts: ``HeaderCorrupt`` -- the receiver drops the
   connection and the primary reconnects (rule 5 resumes it exactly).
4. A header that is valid with a payload whose CRC is wrong: ``PayloadCorrupt``
   (the stream is still framed).  The standby discards it and every later DATA
   frame until one starts exactly at the sequence it needs, and sends one
   NACK(first_seq = that sequence): the primary re-sends from there
   (go-back-N).  So a corrupted frame is detected and re-requested.
5. Handshake: the primary sends HELLO (its epoch, shard, schema hash, record
   size).  The standby answers RESUME(next sequence it needs) -- where it is --
   or FENCED (rule 7) or ERROR (shard / schema / record size mismatch).  The
   primary streams DATA from the RESUME sequence, out of its ring or, when the
   ring no longer holds it, its journal.
6. The standby sends ACK(first_seq = highest sequence durable in its journal)
   whenever that advances.  Acks are cumulative; a lost or late ack is
   superseded by the next.
7. Fencing: epochs only grow (epoch.py persists them).  A standby whose epoch
   is higher than a HELLO's, or that has been promoted, answers FENCED with its
   epoch; a primary that receives FENCED persists the higher epoch and the
   role ``fenced`` and never advances its gate again: its matcher cannot act
   on anything new.  A DATA frame whose epoch is not the session's is refused.
"""
import json
import struct
import zlib
from enum import IntEnum

__all__ = [
    "MAGIC", "PROTOCOL_VERSION", "HEADER_SIZE", "MAX_PAYLOAD", "FrameType", "Frame",
    "ProtocolError", "HeaderCorrupt", "PayloadCorrupt", "ConnectionClosed",
    "encode_header", "encode_frame", "decode_header", "check_payload", "read_frame",
    "hello", "resume", "data_header", "ack", "nack", "state_hash", "fenced", "error",
    "heartbeat", "hello_info", "state_hash_value",
]

MAGIC = b"RMRP"
PROTOCOL_VERSION = 1
HEADER_SIZE = 48
#: largest payload accepted (a DATA frame of 64K records of 64 bytes is 4 MiB)
MAX_PAYLOAD = 16 << 20

_HEAD = struct.Struct("<4sBBHQqIIII")      # bytes 0..40
_HCRC = struct.Struct("<I4x")               # bytes 40..48
assert _HEAD.size == 40 and _HEAD.size + _HCRC.size == HEADER_SIZE

_crc32 = zlib.crc32


class FrameType(IntEnum):
    """Frame types.  Fixed codes; append only."""
    HELLO = 1        # primary -> standby: epoch, payload JSON {shard, schema_hash, record_size}
    RESUME = 2       # standby -> primary: first_seq = next sequence the standby needs
    DATA = 3         # primary -> standby: count records starting at first_seq
    ACK = 4          # standby -> primary: first_seq = highest durable sequence
    NACK = 5         # standby -> primary: re-send from first_seq (corrupt or missing frame)
    STATE_HASH = 6   # primary -> standby: state hash (payload u64) at first_seq
    FENCED = 7       # epoch = the higher epoch that fences the peer
    ERROR = 8        # fatal mismatch; payload: utf-8 reason
    HEARTBEAT = 9    # primary -> standby: first_seq = primary's cursor (lag display)


class ProtocolError(Exception):
    """Base class: the peer broke the protocol or the stream is damaged."""


class ConnectionClosed(ProtocolError):
    """The peer closed the connection (``partial``: it closed inside a frame)."""

    def __init__(self, message, partial=False):
        ProtocolError.__init__(self, message)
        self.partial = partial


class HeaderCorrupt(ProtocolError):
    """Bad magic, version or header CRC (rule 3): the connection must be dropped."""


class PayloadCorrupt(ProtocolError):
    """The header is sound but the payload CRC is not (rule 4); ``frame`` has the header."""

    def __init__(self, message, frame):
        ProtocolError.__init__(self, message)
        self.frame = frame


class Frame(object):
    """A decoded frame header plus its payload (a bytes-like object)."""

    __slots__ = ("type", "epoch", "first_seq", "count", "payload_len", "payload_crc", "payload")

    def __init__(self, type, epoch, first_seq, count, payload_len, payload_crc, payload=b""):
        self.type = type
        self.epoch = epoch
        self.first_seq = first_seq
        self.count = count
        self.payload_len = payload_len
        self.payload_crc = payload_crc
        self.payload = payload

    @property
    def last_seq(self):
        """DATA: sequence of the last record."""
        return self.first_seq + self.count - 1

    def __repr__(self):
        try:
            name = FrameType(self.type).name
        except ValueError:
            name = str(self.type)
        return "Frame(%s epoch=%d first_seq=%d count=%d len=%d)" % (
            name, self.epoch, self.first_seq, self.count, self.payload_len)


def encode_header(ftype, epoch, first_seq, count, payload_len, payload_crc):
    """The 48 header bytes (rule 2).  O(1).

    >>> len(encode_header(FrameType.ACK, 1, 42, 0, 0, 0))
    48
    """
    head = _HEAD.pack(MAGIC, PROTOCOL_VERSION, int(ftype), 0, epoch, first_seq, count,
                      payload_len, payload_crc, 0)
    return head + _HCRC.pack(_crc32(head))


def encode_frame(ftype, epoch, first_seq=0, count=0, payload=b""):
    """Header + payload as one bytes object.  O(len(payload)).

    >>> f = decode_header(encode_frame(FrameType.ACK, 3, 7))
    >>> (f.type, f.epoch, f.first_seq)
    (4, 3, 7)
    """
    return encode_header(ftype, epoch, first_seq, count, len(payload), _crc32(payload)) + \
        bytes(payload)


def data_header(epoch, first_seq, count, chunks):
    """Header of a DATA frame whose payload is ``chunks`` (1-2 ring or journal views).

    The chunks are sent after the header without copying.  O(payload) for the CRC.
    """
    crc = 0
    length = 0
    for chunk in chunks:
        crc = _crc32(chunk, crc)
        length += len(chunk)
    return encode_header(FrameType.DATA, epoch, first_seq, count, length, crc)


def decode_header(data):
    """Decode and check 48 header bytes (rules 2, 3).  O(1).

    Raises HeaderCorrupt on a bad magic, version, CRC or an oversized payload.
    """
    if len(data) < HEADER_SIZE:
        raise HeaderCorrupt("frame header is %d bytes, need %d" % (len(data), HEADER_SIZE))
    (magic, version, ftype, _flags, epoch, first_seq, count, payload_len, payload_crc,
     _r) = _HEAD.unpack_from(data, 0)
    (stored,) = _HCRC.unpack_from(data, _HEAD.size)
    if magic != MAGIC:
        raise HeaderCorrupt("bad frame magic %r" % (bytes(magic),))
    computed = _crc32(memoryview(data)[:_HEAD.size])
    if computed != stored:
        raise HeaderCorrupt("frame header CRC mismatch: stored %08x computed %08x"
                            % (stored, computed))
    if version != PROTOCOL_VERSION:
        raise HeaderCorrupt("protocol version %d, this side speaks %d" % (version, PROTOCOL_VERSION))
    if payload_len > MAX_PAYLOAD:
        raise HeaderCorrupt("payload length %d exceeds %d" % (payload_len, MAX_PAYLOAD))
    return Frame(ftype, epoch, first_seq, count, payload_len, payload_crc)


def check_payload(frame, payload):
    """Attach ``payload`` to ``frame`` after checking its CRC (rule 4).  O(n).

    Raises PayloadCorrupt (the stream is still framed).
    """
    computed = _crc32(payload)
    frame.payload = payload
    if computed != frame.payload_crc:
        raise PayloadCorrupt("payload CRC mismatch in %r: stored %08x computed %08x"
                             % (frame, frame.payload_crc, computed), frame)
    return frame


def _recv_exactly(sock, view, started_frame):
    got = 0
    n = len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            partial = started_frame or got > 0
            raise ConnectionClosed("peer closed the connection%s"
                                   % (" inside a frame" if partial else ""), partial)
        got += k


def read_frame(sock):
    """Read one whole frame from a blocking socket.  O(frame size).

    Raises ConnectionClosed, HeaderCorrupt, PayloadCorrupt, OSError
    (``socket.timeout`` included).
    """
    head = bytearray(HEADER_SIZE)
    _recv_exactly(sock, memoryview(head), False)
    frame = decode_header(head)
    if frame.payload_len:
        payload = bytearray(frame.payload_len)
        _recv_exactly(sock, memoryview(payload), True)
    else:
        payload = b""
    return check_payload(frame, payload)


# -- constructors of each frame type (rules 5-7) -------------------------------------
def hello(epoch, shard, schema_hash, record_size, cursor=0, node=""):
    """HELLO from a primary.  O(1)."""
    info = {"shard": shard, "schema_hash": "%016x" % schema_hash,
            "record_size": record_size, "node": node}
    return encode_frame(FrameType.HELLO, epoch, cursor, 0,
                        json.dumps(info, sort_keys=True).encode())


def hello_info(frame):
    """The decoded HELLO payload: dict with shard, schema_hash (int), record_size, node."""
    try:
        info = json.loads(bytes(frame.payload).decode())
        info["schema_hash"] = int(info["schema_hash"], 16)
        info["record_size"] = int(info["record_size"])
        str(info["shard"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError("malformed HELLO payload: %s" % exc)
    return info


def resume(epoch, next_seq):
    return encode_frame(FrameType.RESUME, epoch, next_seq)


def ack(epoch, durable_seq):
    return encode_frame(FrameType.ACK, epoch, durable_seq)


def nack(epoch, next_seq, reason=""):
    return encode_frame(FrameType.NACK, epoch, next_seq, 0, reason.encode())


_U64 = struct.Struct("<Q")


def state_hash(epoch, seq, value):
    """STATE_HASH: the primary's state hash at ``seq``."""
    return encode_frame(FrameType.STATE_HASH, epoch, seq, 0, _U64.pack(value & (2 ** 64 - 1)))


def state_hash_value(frame):
    return _U64.unpack(bytes(frame.payload[:8]))[0]


def fenced(epoch, reason=""):
    return encode_frame(FrameType.FENCED, epoch, 0, 0, reason.encode())


def error(epoch, reason):
    return encode_frame(FrameType.ERROR, epoch, 0, 0, reason.encode())


def heartbeat(epoch, cursor):
    return encode_frame(FrameType.HEARTBEAT, epoch, cursor)
