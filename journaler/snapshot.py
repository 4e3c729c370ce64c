"""Snapshot files: the matcher's full state at one input sequence.

Theory of operation:

1. A SNAPSHOT command travels the input ring; the matcher process, after
   processing it at sequence ``seq``, calls ``write_snapshot(data_dir, shard,
   seq, matcher)``.  Every replica therefore snapshots the same state.
2. Writing: ``<data>/snapshots/.<name>.tmp-<pid>`` is written (header +
   payload), fsynced, renamed atomically to ``<shard>-<seq, 20 digits>.snap``
   and the directory is fsynced.  A crash leaves either the old set of
   snapshots or the old set plus the complete new one (and maybe a stale temp
   file, removed by the next write).
3. Header (little endian, 104 bytes)::

       0  8s  magic          b"RMSNAPSH"
       8  u32 format_version 1
       12 u32 header_size    104
       16 u64 schema_hash    ringbuf.records.SCHEMA_HASH
       24 i64 seq            input sequence the state is at (inclusive)
       32 u64 state_hash     matcher.state_hash() at seq
       40 u64 payload_len    bytes of matcher.snapshot() that follow
       48 u32 payload_crc    CRC32C of the payload
       52 u32 (reserved, 0)
       56 i64 created_ns     wall clock (information only)
       64 32s shard          utf-8, NUL padded
       96 4x  (reserved, 0)
       100 u32 header_crc    CRC32C of bytes 0..100

4. A snapshot is valid when its header CRC, schema hash, length and payload
   CRC check out; ``load_latest`` also restores it and checks that the
   restored matcher's ``state_hash()`` equals the header's.  An invalid newest
   snapshot is reported and the previous one is tried.
5. Retention (``prune``): keep the newest ``keep`` snapshots (invalid ones are
   deleted, never counted); delete journal segments whose every record is at
   or before the oldest kept snapshot's sequence.  The newest segment is never
   deleted.
"""
import os
import re
import struct
import time

from journaler.crc import crc32c
from journaler.errors import SnapshotError

__all__ = [
    "snapshot_dir", "snapshot_name", "list_snapshots", "write_snapshot", "write_snapshot_bytes",
    "read_snapshot", "SnapshotFile", "load_latest", "prune", "SnapshotSchedule",
]

SNAPSHOT_MAGIC = b"RMSNAPSH"
SNAPSHOT_VERSION = 1
SNAPSHOT_HEADER_SIZE = 104
_HDR = struct.Struct("<8sIIQqQQIIq32s4x")
_HDR_CRC = struct.Struct("<I")
assert _HDR.size + _HDR_CRC.size == SNAPSHOT_HEADER_SIZE, _HDR.size
_NAME_RE = re.compile(r"^(?P<shard>[A-Za-z0-9_-]+)-(?P<seq>\d{20})\.snap$")


def snapshot_dir(data_dir):
    """``<data dir>/snapshots``."""
    return os.path.join(data_dir, "snapshots")


def snapshot_name(shard, seq):
    """File name of ``shard``'s snapshot at ``seq``.

    >>> snapshot_name("shard0", 42)
    'shard0-00000000000000000042.snap'
    """
    return "%s-%020d.snap" % (shard, seq)


def list_snapshots(data_dir, shard):
    """[(seq, path)] of ``shard``'s snapshot files, oldest first.  O(n log n)."""
    directory = snapshot_dir(data_dir)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _NAME_RE.match(name)
        if m and m.group("shard") == shard:
            out.append((int(m.group("seq")), os.path.join(directory, name)))
    out.sort()
    return out


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot_bytes(data_dir, shard, seq, state_hash, payload, schema_hash=None):
    """Write one snapshot file durably (rule 2) and return its path.  O(len(payload))."""
    from ringbuf import records
    schema = records.SCHEMA_HASH if schema_hash is None else schema_hash
    directory = snapshot_dir(data_dir)
    os.makedirs(directory, exist_ok=True)
    name = snapshot_name(shard, seq)
    for stale in os.listdir(directory):     # temp files of writers that died
        if stale.startswith(".") and ".tmp-" in stale:
            pid = stale.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                try:
                    os.unlink(os.path.join(directory, stale))
                except OSError:
                    pass
    tmp = os.path.join(directory, ".%s.tmp-%d" % (name, os.getpid()))
    payload = bytes(payload)
    body = _HDR.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SNAPSHOT_HEADER_SIZE, schema, seq,
                     state_hash & 0xFFFFFFFFFFFFFFFF, len(payload), crc32c(payload), 0,
                     time.time_ns(), shard.encode("utf-8")[:32].ljust(32, b"\0"))
    header = body + _HDR_CRC.pack(crc32c(body))
    path = os.path.join(directory, name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(header + payload)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise SnapshotError("cannot write snapshot %s: %s" % (path, exc))
    return path


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_snapshot(data_dir, shard, seq, matcher, keep=None, log=None):
    """Snapshot ``matcher`` (its state after processing ``seq``) to disk; prune if ``keep``.

    The call the matcher process makes on a SNAPSHOT command (rule 1).
    Returns the snapshot path.  O(state size).  Raises SnapshotError.
    """
    path = write_snapshot_bytes(data_dir, shard, seq, matcher.state_hash(), matcher.snapshot())
    if log is not None:
        log.event("snapshot_file_written", seq=seq, file=path)
    if keep:
        prune(data_dir, shard, keep, log=log)
    return path


class SnapshotFile(object):
    """A decoded snapshot: ``seq``, ``state_hash``, ``payload``, ``path``, ``created_ns``."""

    __slots__ = ("path", "seq", "state_hash", "payload", "created_ns", "shard")

    def __init__(self, path, seq, state_hash, payload, created_ns, shard):
        self.path = path
        self.seq = seq
        self.state_hash = state_hash
        self.payload = payload
        self.created_ns = created_ns
        self.shard = shard

    def __repr__(self):
        return "SnapshotFile(%r, seq=%d, state_hash=%016x, %d bytes)" % (
            self.path, self.seq, self.state_hash, len(self.payload))


def read_snapshot(path, schema_hash=None):
    """Read and check one snapshot file (rule 4, without restoring).  O(size).

    Raises SnapshotError naming the file and what is wrong.
    """
    from ringbuf import records
    schema = records.SCHEMA_HASH if schema_hash is None else schema_hash
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SnapshotError("%s: cannot read: %s" % (path, exc))
    if len(data) < SNAPSHOT_HEADER_SIZE:
        raise SnapshotError("%s: %d bytes, shorter than the header" % (path, len(data)))
    (magic, version, header_size, file_schema, seq, state_hash, length, payload_crc, _r,
     created_ns, shard) = _HDR.unpack_from(data, 0)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError("%s: not a snapshot (magic %r)" % (path, magic))
    (stored,) = _HDR_CRC.unpack_from(data, _HDR.size)
    if crc32c(data[:_HDR.size]) != stored:
        raise SnapshotError("%s: header CRC mismatch" % path)
    if version != SNAPSHOT_VERSION or header_size != SNAPSHOT_HEADER_SIZE:
        raise SnapshotError("%s: snapshot format version %d, this reader knows %d"
                            % (path, version, SNAPSHOT_VERSION))
    if file_schema != schema:
        raise SnapshotError("%s: written with schema %016x, this reader has %016x"
                            % (path, file_schema, schema))
    payload = data[SNAPSHOT_HEADER_SIZE:]
    if len(payload) != length:
        raise SnapshotError("%s: payload is %d bytes, header says %d" % (path, len(payload), length))
    if crc32c(payload) != payload_crc:
        raise SnapshotError("%s: payload CRC mismatch" % path)
    return SnapshotFile(path, seq, state_hash, payload, created_ns,
                        shard.rstrip(b"\0").decode("utf-8", "replace"))


def load_latest(data_dir, shard, restore=None, max_seq=None, log=None):
    """Newest valid snapshot at or before ``max_seq``, falling back past invalid ones (rule 4).

    ``restore(payload) -> matcher`` (optional) is applied and its
    ``state_hash()`` compared with the header's; a mismatch makes the
    snapshot invalid too.  Returns (SnapshotFile, matcher-or-None, rejected)
    where ``rejected`` lists (path, reason) of the invalid newer snapshots;
    (None, None, rejected) when no valid snapshot exists.  O(snapshot size).
    """
    rejected = []
    for seq, path in reversed(list_snapshots(data_dir, shard)):
        if max_seq is not None and seq > max_seq:
            continue
        try:
            snap = read_snapshot(path)
            if snap.seq != seq:
                raise SnapshotError("%s: header seq %d does not match the name" % (path, snap.seq))
            matcher = None
            if restore is not None:
                try:
                    matcher = restore(snap.payload)
                except SnapshotError:
                    raise
                except Exception as exc:  # a payload the matcher cannot read is corrupt
                    raise SnapshotError("%s: restore failed: %r" % (path, exc))
                got = matcher.state_hash() & 0xFFFFFFFFFFFFFFFF
                if got != snap.state_hash:
                    raise SnapshotError("%s: restored state hash %016x != header %016x"
                                        % (path, got, snap.state_hash))
            return snap, matcher, rejected
        except SnapshotError as exc:
            rejected.append((path, str(exc)))
            if log is not None:
                log.error("snapshot_invalid", file=path, seq=seq, reason=str(exc))
    return None, None, rejected


def prune(data_dir, shard, keep, log=None):
    """Retention (rule 5): keep the newest ``keep`` valid snapshots and the journal they need.

    Returns (deleted snapshot paths, deleted segment paths).  O(snapshots + segments).
    """
    from journaler.segment import list_segments
    if keep < 1:
        raise ValueError("keep must be >= 1")
    kept, deleted_snaps = [], []
    for seq, path in reversed(list_snapshots(data_dir, shard)):
        if len(kept) < keep:
            try:
                read_snapshot(path)
                kept.append(seq)
                continue
            except SnapshotError:
                pass
        deleted_snaps.append(path)
    for path in deleted_snaps:
        try:
            os.unlink(path)
        except OSError:
            pass
    deleted_segments = []
    if len(kept) == keep:   # only prune the journal once `keep` snapshots exist
        oldest = kept[-1]
        segments = list_segments(data_dir, shard)
        for i in range(len(segments) - 1):       # never the newest segment
            next_first = segments[i + 1][0]
            if next_first - 1 <= oldest:         # every record of segment i <= oldest
                try:
                    os.unlink(segments[i][1])
                    deleted_segments.append(segments[i][1])
                except OSError:
                    pass
            else:
                break
    if log is not None and (deleted_snaps or deleted_segments):
        log.event("pruned", snapshots=len(deleted_snaps), segments=len(deleted_segments),
                  oldest_kept=kept[-1] if kept else -1)
    return deleted_snaps, deleted_segments


class SnapshotSchedule(object):
    """When to issue the next periodic SNAPSHOT command: every N commands or T seconds.

    >>> s = SnapshotSchedule(every_commands=1000, every_seconds=0)
    >>> s.due(cursor=999, now=0.0), s.due(cursor=1000, now=0.0)
    (False, True)
    >>> s.issued(seq=1001, now=0.0); s.due(cursor=1500, now=5.0)
    False

    The caller (the supervisor, or any producer) publishes a SNAPSHOT command
    when ``due`` says so and reports the sequence it got with ``issued``;
    ``publish(producer)`` does both through a ring producer.  O(1).
    """

    def __init__(self, every_commands=0, every_seconds=0, start_seq=0, start_time=None):
        self.every_commands = every_commands or 0
        self.every_seconds = every_seconds or 0
        self.last_seq = start_seq
        self.last_time = start_time

    def due(self, cursor, now=None):
        now = time.monotonic() if now is None else now
        if self.last_time is None:
            self.last_time = now
        if self.every_commands and cursor - self.last_seq >= self.every_commands:
            return True
        if self.every_seconds and now - self.last_time >= self.every_seconds and \
                cursor > self.last_seq:
            return True
        return False

    def issued(self, seq, now=None):
        self.last_seq = seq
        self.last_time = time.monotonic() if now is None else now

    def publish(self, producer, timestamp_ns=0):
        """Claim a slot, write a SNAPSHOT command, publish; returns its sequence."""
        from ringbuf.records import CommandKind
        seq = producer.claim()
        rec = producer.record(seq)
        for name in ("side", "order_type", "tif", "stp", "flags", "symbol_id", "account_id",
                     "check", "price", "qty", "order_id", "stop_price", "client_order_id"):
            setattr(rec, name, 0)
        rec.kind = int(CommandKind.SNAPSHOT)
        rec.producer_id = getattr(producer, "producer_id", 0) or 0
        rec.timestamp_ns = timestamp_ns
        producer.publish(seq)
        self.issued(seq)
        return seq
