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
2a. Before that, the journal segments holding the snapshot's binding records
   (``seq-k+1 .. seq``) are fsynced (``sync_journal_through``; earlier
   segments were fsynced when the journal rolled past them).  Under the
   ``interval`` and ``off`` policies the matcher may run ahead of what the
   journal has synced; without this a power loss could keep the snapshot and
   lose its journal tail, and retention (rule 6), counting that snapshot,
   would already have deleted the segments an older snapshot or a full
   replay needs: start-up would fail with a gap.  A snapshot on disk thus
   always has its history 1..seq on disk.
3. Header (little endian, 104 bytes)::

       0  8s  magic          b"RMSNAPSH"
       8  u32 format_version 2
       12 u32 header_size    104
       16 u64 schema_hash    ringbuf.records.SCHEMA_HASH
       24 i64 seq            input sequence the state is at (inclusive)
       32 u64 state_hash     matcher.state_hash() at seq
       40 u64 payload_len    bytes of matcher.snapshot() that follow
       48 u32 payload_crc    CRC32C of the payload
       52 u32 binding_count  k: records ``seq-k+1 .. seq`` bind the snapshot (v1: 0)
       56 i64 created_ns     wall clock (information only)
       64 32s shard          utf-8, NUL padded
       96 u32 binding_crc    CRC32C of those k input records (v1: 0)
       100 u32 header_crc    CRC32C of bytes 0..100

4. A snapshot is valid when its header CRC, schema hash, length and payload
   CRC check out; ``load_latest`` also restores it and checks that the
   restored matcher's ``state_hash()`` equals the header's.  An invalid newest
   snapshot is reported and the previous one is tried.
5. Binding to the journal: a snapshot summarises one history 1..seq.  A cut
   of the journal (a torn tail under ``interval``/``off`` after an OS crash,
   or ``ringmatch journal truncate``) followed by new commands makes another
   history with the same sequence numbers.  So the header carries the count k
   (1..BINDING_MAX_RECORDS) and CRC32C of the last k input records ending at
   seq, exactly as the journal holds them.  ``load_latest`` uses a snapshot
   only when the journal's durable end is >= seq and the journal's records
   ``seq-k+1 .. seq`` have that CRC; otherwise it logs ``snapshot_stale``
   (both digests) and tries the next older one.  Version-1 files carry no
   binding and are refused the same way (``unbound_v1``): the fall-back is an
   older v2 snapshot or a fresh matcher + full replay.
6. Retention (``prune``): snapshots newer than the one just written, or whose
   binding the journal does not match, are from a discarded history and are
   moved to ``snapshots/quarantine/`` (never deleted, never counted); keep the
   newest ``keep`` valid snapshots (corrupt ones are deleted, never counted);
   delete journal segments whose every record is before ``S - k + 1``, where
   S is the oldest kept snapshot's seq and k its binding count (the journal
   keeps what the binding check and the replay need).  The newest segment is
   never deleted.
7. Files are private: snapshot files are created 0600, ``snapshots/`` and
   ``snapshots/quarantine/`` 0700 (an existing wider directory is narrowed).
"""
import os
import re
import struct
import time

from journaler import fsio
from journaler.crc import crc32c
from journaler.errors import SnapshotError, SnapshotStaleError
from journaler.segment import private_dir

__all__ = [
    "snapshot_dir", "snapshot_name", "list_snapshots", "write_snapshot", "write_snapshot_bytes",
    "read_snapshot", "SnapshotFile", "load_latest", "prune", "SnapshotSchedule",
    "BINDING_MAX_RECORDS", "binding_of", "binding_from_chunks", "journal_binding",
    "check_binding", "quarantine_snapshot", "sync_journal_through",
]

SNAPSHOT_MAGIC = b"RMSNAPSH"
SNAPSHOT_VERSION = 2
SNAPSHOT_HEADER_SIZE = 104
#: at most this many input records (ending at the snapshot's seq) bind it (rule 5)
BINDING_MAX_RECORDS = 64
_HDR = struct.Struct("<8sIIQqQQIIq32sI")
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


def binding_of(record_bytes, record_size=64, max_records=BINDING_MAX_RECORDS):
    """(k, CRC32C) of the last ``k = min(n, max_records)`` of the n records in ``record_bytes``.

    ``record_bytes`` (bytes-like or a list of them, in sequence order) must end
    with the snapshot's own record.  O(k).

    >>> binding_of(b"\\0" * 128)[0]
    2
    """
    chunks = [record_bytes] if isinstance(record_bytes, (bytes, bytearray, memoryview)) \
        else list(record_bytes)
    joined = b"".join(bytes(c) for c in chunks)
    if not joined or len(joined) % record_size:
        raise ValueError("binding needs whole %d-byte records, got %d bytes"
                         % (record_size, len(joined)))
    count = min(len(joined) // record_size, max_records)
    return count, crc32c(joined[len(joined) - count * record_size:])


def binding_from_chunks(chunks, seq, record_size=64, max_records=BINDING_MAX_RECORDS):
    """Binding of a snapshot at ``seq`` from ring batch chunks ``[(first_seq, view)]``.

    For the matcher process: the records of its current batch are still in
    the input ring (not yet released), so ``batch.chunks`` and the SNAPSHOT
    record's ``seq`` give up to ``max_records`` records ending at ``seq``.  O(k).
    """
    parts = []
    for first, view in chunks:
        view = memoryview(view).cast("B")
        n = len(view) // record_size
        lo, hi = max(first, seq - max_records + 1), min(first + n - 1, seq)
        if lo <= hi:
            parts.append(view[(lo - first) * record_size:(hi - first + 1) * record_size])
    if not parts:
        raise ValueError("seq %d is not in the chunks" % seq)
    return binding_of(parts, record_size, max_records)


def journal_binding(data_dir, shard, seq, count=None, record_size=None):
    """(k, CRC32C) of the journal's records ``seq-k+1 .. seq``, or None if it does not hold them.

    ``count`` None: the largest k <= BINDING_MAX_RECORDS the journal holds
    (for writing); else exactly ``count`` records (for checking).  Reads only
    the journal's valid prefix.  O(k + blocks of one segment).
    """
    from journaler.reader import JournalReader
    from journaler.segment import list_segments
    segments = list_segments(data_dir, shard)
    if not segments or seq < 1:
        return None
    if count is None:
        lo = max(seq - BINDING_MAX_RECORDS + 1, segments[0][0], 1)
    else:
        lo = seq - count + 1
    if lo < segments[0][0] or lo > seq:
        return None
    reader = JournalReader(data_dir, shard, record_size=record_size, check_crc=False)
    parts = [bytes(view) for _f, _n, view in reader.blocks(after=lo - 1, last=seq)]
    joined = b"".join(parts)
    if len(joined) != (seq - lo + 1) * reader.record_size:
        return None
    return seq - lo + 1, crc32c(joined)


def _digest(binding):
    return "-" if binding is None else "%d:%08x" % binding


def check_binding(data_dir, shard, snap, journal_end=None):
    """Raise SnapshotStaleError unless ``snap`` is bound to this journal (rule 5).  O(k)."""
    name = os.path.basename(snap.path)
    mine = (snap.binding_count, snap.binding_crc) if snap.version >= 2 else None
    if mine is None:
        raise SnapshotStaleError("%s: format version 1 carries no journal binding; it cannot "
                                 "be checked against the journal and is not used" % name,
                                 "unbound_v1")
    if journal_end is not None and snap.seq > journal_end:
        raise SnapshotStaleError("%s: seq %d is beyond the journal's durable end %d: it "
                                 "summarises a history the journal no longer has"
                                 % (name, snap.seq, journal_end), "beyond_journal_end",
                                 _digest(mine))
    theirs = journal_binding(data_dir, shard, snap.seq, count=snap.binding_count)
    if theirs is None:
        raise SnapshotStaleError("%s: the journal does not hold records %d..%d that bind it"
                                 % (name, snap.seq - snap.binding_count + 1, snap.seq),
                                 "journal_missing", _digest(mine))
    if theirs != mine:
        raise SnapshotStaleError("%s: journal records %d..%d have digest %s, the snapshot "
                                 "was taken after records with digest %s: another history"
                                 % (name, snap.seq - snap.binding_count + 1, snap.seq,
                                    _digest(theirs), _digest(mine)),
                                 "binding_mismatch", _digest(mine), _digest(theirs))


def quarantine_snapshot(path, reason="stale"):
    """Move a snapshot to ``snapshots/quarantine/`` (0700 dir, 0600 file); returns the new path."""
    directory = private_dir(os.path.dirname(path))
    qdir = private_dir(os.path.join(directory, "quarantine"))
    name = "%s.%s.%s" % (os.path.basename(path), time.strftime("%Y%m%dT%H%M%S"), reason)
    target = os.path.join(qdir, name)
    n = 0
    while os.path.exists(target):
        n += 1
        target = os.path.join(qdir, "%s.%d" % (name, n))
    os.chmod(path, 0o600)
    fsio.rename(path, target)
    fsio.fsync_dir(qdir)
    fsio.fsync_dir(directory)
    return target


def sync_journal_through(data_dir, shard, first, last):
    """fsync the journal segments holding records ``first .. last`` (rule 2a).  O(segments).

    Returns the paths synced.  A segment that is missing meanwhile is skipped.
    """
    from journaler.segment import list_segments
    segments = list_segments(data_dir, shard)
    synced = []
    for i, (seg_first, path) in enumerate(segments):
        seg_next = segments[i + 1][0] if i + 1 < len(segments) else None
        if seg_first > last or (seg_next is not None and seg_next <= first):
            continue
        try:
            fd = fsio.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fsio.fdatasync(fd)
        finally:
            fsio.close(fd)
        synced.append(path)
    return synced


def write_snapshot_bytes(data_dir, shard, seq, state_hash, payload, schema_hash=None,
                         binding=None):
    """Write one snapshot file durably (rules 2, 2a) and return its path.  O(len(payload)).

    ``binding`` (k, crc) of rule 5; None: taken from the journal
    (``journal_binding``), which must hold ``seq``, else SnapshotError.
    """
    from ringbuf import records
    schema = records.SCHEMA_HASH if schema_hash is None else schema_hash
    if binding is None:
        binding = journal_binding(data_dir, shard, seq)
        if binding is None:
            raise SnapshotError("cannot bind the snapshot at seq %d: the journal of %s in %s "
                                "does not hold that record" % (seq, shard, data_dir))
    try:    # rule 2a: the records that bind the snapshot are durable before it is
        sync_journal_through(data_dir, shard, seq - binding[0] + 1, seq)
    except OSError as exc:
        raise SnapshotError("cannot write the snapshot at seq %d: fsync of the journal "
                            "failed: %s" % (seq, exc))
    directory = private_dir(snapshot_dir(data_dir))          # rule 7
    name = snapshot_name(shard, seq)
    for stale in os.listdir(directory):     # temp files of writers that died
        if stale.startswith(".") and ".tmp-" in stale:
            pid = stale.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                try:
                    fsio.unlink(os.path.join(directory, stale))
                except OSError:
                    pass
    tmp = os.path.join(directory, ".%s.tmp-%d" % (name, os.getpid()))
    payload = bytes(payload)
    body = _HDR.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SNAPSHOT_HEADER_SIZE, schema, seq,
                     state_hash & 0xFFFFFFFFFFFFFFFF, len(payload), crc32c(payload),
                     binding[0], time.time_ns(), shard.encode("utf-8")[:32].ljust(32, b"\0"),
                     binding[1])
    header = body + _HDR_CRC.pack(crc32c(body))
    path = os.path.join(directory, name)
    fd = fsio.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            if os.fstat(fd).st_mode & 0o077:     # a wider temp file left by a dead writer
                os.fchmod(fd, 0o600)
            view = memoryview(header + payload)
            while view:
                n = fsio.write(fd, view)
                view = view[n:]
            fsio.fsync(fd)
        finally:
            fsio.close(fd)
        fsio.replace(tmp, path)
        fsio.fsync_dir(directory)
    except OSError as exc:
        try:
            fsio.unlink(tmp)
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


def write_snapshot(data_dir, shard, seq, matcher, keep=None, log=None, binding=None):
    """Snapshot ``matcher`` (its state after processing ``seq``) to disk; prune if ``keep``.

    The call the matcher process makes on a SNAPSHOT command (rule 1).
    ``binding`` (rule 5): ``binding_from_chunks(batch.chunks, seq)`` from the
    ring, or None to read it from the journal (which holds ``seq``: the
    matcher is gated on the journaler).  Returns the snapshot path.
    O(state size).  Raises SnapshotError.
    """
    path = write_snapshot_bytes(data_dir, shard, seq, matcher.state_hash(), matcher.snapshot(),
                                binding=binding)
    if log is not None:
        log.event("snapshot_file_written", seq=seq, file=path)
    if keep:
        prune(data_dir, shard, keep, log=log, current_seq=seq)
    return path


class SnapshotFile(object):
    """A decoded snapshot: ``seq``, ``state_hash``, ``payload``, ``path``, ``created_ns``,
    ``version`` and the journal binding ``binding_count`` / ``binding_crc`` (rule 5)."""

    __slots__ = ("path", "seq", "state_hash", "payload", "created_ns", "shard", "version",
                 "binding_count", "binding_crc")

    def __init__(self, path, seq, state_hash, payload, created_ns, shard, version=SNAPSHOT_VERSION,
                 binding_count=0, binding_crc=0):
        self.path = path
        self.seq = seq
        self.state_hash = state_hash
        self.payload = payload
        self.created_ns = created_ns
        self.shard = shard
        self.version = version
        self.binding_count = binding_count
        self.binding_crc = binding_crc

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
    (magic, version, header_size, file_schema, seq, state_hash, length, payload_crc,
     binding_count, created_ns, shard, binding_crc) = _HDR.unpack_from(data, 0)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError("%s: not a snapshot (magic %r)" % (path, magic))
    (stored,) = _HDR_CRC.unpack_from(data, _HDR.size)
    if crc32c(data[:_HDR.size]) != stored:
        raise SnapshotError("%s: header CRC mismatch" % path)
    if version not in (1, SNAPSHOT_VERSION) or header_size != SNAPSHOT_HEADER_SIZE:
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
    if version >= 2 and not 1 <= binding_count <= BINDING_MAX_RECORDS:
        raise SnapshotError("%s: binding count %d out of range" % (path, binding_count))
    return SnapshotFile(path, seq, state_hash, payload, created_ns,
                        shard.rstrip(b"\0").decode("utf-8", "replace"), version,
                        binding_count if version >= 2 else 0, binding_crc if version >= 2 else 0)


def load_latest(data_dir, shard, restore=None, max_seq=None, log=None):
    """Newest valid snapshot bound to the journal, at or before ``max_seq`` (rules 4, 5).

    ``max_seq`` is the journal's durable end (None: not checked beyond what
    the binding check reads).  A snapshot past it, or whose binding the
    journal does not match, is logged ``snapshot_stale`` and skipped; a
    corrupt one ``snapshot_invalid``.  ``restore(payload) -> matcher``
    (optional) is applied and its ``state_hash()`` compared with the
    header's; a mismatch makes the snapshot invalid too.  Returns
    (SnapshotFile, matcher-or-None, rejected) where ``rejected`` lists (path,
    reason) of the newer snapshots not used; (None, None, rejected) when no
    usable snapshot exists.  Never changes a file.  O(snapshot size + k).
    """
    rejected = []
    for seq, path in reversed(list_snapshots(data_dir, shard)):
        try:
            if max_seq is not None and seq > max_seq:
                raise SnapshotStaleError("%s: seq %d is beyond the journal's durable end %d: it "
                                         "summarises a history the journal no longer has"
                                         % (os.path.basename(path), seq, max_seq),
                                         "beyond_journal_end")
            snap = read_snapshot(path)
            if snap.seq != seq:
                raise SnapshotError("%s: header seq %d does not match the name" % (path, snap.seq))
            check_binding(data_dir, shard, snap, journal_end=max_seq)
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
        except SnapshotStaleError as exc:
            rejected.append((path, str(exc)))
            if log is not None:
                log.error("snapshot_stale", file=path, seq=seq, reason=exc.reason,
                          snapshot_digest=exc.snapshot_digest, journal_digest=exc.journal_digest,
                          journal_end=-1 if max_seq is None else max_seq, detail=str(exc))
        except SnapshotError as exc:
            rejected.append((path, str(exc)))
            if log is not None:
                log.error("snapshot_invalid", file=path, seq=seq, reason=str(exc))
    return None, None, rejected


def prune(data_dir, shard, keep, log=None, current_seq=None):
    """Retention (rule 6): keep the newest ``keep`` valid snapshots and the journal they need.

    ``current_seq``: the seq of the snapshot just written (the matcher's
    position); a snapshot past it, or one whose binding the journal does not
    match, is quarantined (moved, never deleted).  Returns (deleted snapshot
    paths, deleted segment paths).  O(snapshots x k + segments).
    """
    from journaler.segment import list_segments
    if keep < 1:
        raise ValueError("keep must be >= 1")
    kept, deleted_snaps, quarantined = [], [], []
    for seq, path in reversed(list_snapshots(data_dir, shard)):
        if current_seq is not None and seq > current_seq:
            quarantined.append((path, "beyond_current_seq"))
            continue
        if len(kept) < keep:
            try:
                snap = read_snapshot(path)
                check_binding(data_dir, shard, snap)
                kept.append((seq, snap.binding_count))
                continue
            except SnapshotStaleError as exc:
                quarantined.append((path, exc.reason))
                continue
            except SnapshotError:
                pass
        deleted_snaps.append(path)
    for path, reason in quarantined:
        try:
            target = quarantine_snapshot(path)
        except OSError:
            continue
        if log is not None:
            log.warning("snapshot_quarantined", file=path, reason=reason, quarantine=target)
    for path in deleted_snaps:
        try:
            fsio.unlink(path)
        except OSError:
            pass
    deleted_segments = []
    if len(kept) == keep:   # only prune the journal once `keep` snapshots exist
        oldest, binding_count = kept[-1]
        first_needed = oldest - binding_count + 1   # rule 6: the binding's records stay
        segments = list_segments(data_dir, shard)
        for i in range(len(segments) - 1):       # never the newest segment
            next_first = segments[i + 1][0]
            if next_first <= first_needed:       # every record of segment i < first_needed
                try:
                    fsio.unlink(segments[i][1])
                    deleted_segments.append(segments[i][1])
                except OSError:
                    pass
                else:
                    # oldest first, each deletion durable before the next: a power
                    # loss brings back at most a contiguous run of the oldest
                    # segments, never a gap (reader rule 5a)
                    fsio.fsync_dir(os.path.dirname(segments[i][1]))
            else:
                break
    if log is not None and (deleted_snaps or deleted_segments):
        log.event("pruned", snapshots=len(deleted_snaps), segments=len(deleted_segments),
                  oldest_kept=kept[-1][0] if kept else -1)
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
