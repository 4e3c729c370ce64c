"""JournalWriter: append ring batches to segment files under a durability policy.

Theory of operation:

1. Opening a writer runs tail recovery (``reader.recover_journal``): the
   journal is cut back to its longest valid prefix and the writer continues
   the last segment at that prefix's end.
2. ``append(first_seq, chunks)`` must continue the journal exactly: a gap or
   an overlap raises JournalGapError / JournalOverlapError and writes nothing.
3. One append is one block per segment it touches (header + the 1-2 chunks,
   written with one ``writev``); a segment rolls before a block would take it
   past ``segment_bytes`` (a segment holds at least one block).  Rolling
   fsyncs the old segment -- under every policy, ``off`` included -- and only
   then creates the new one with its header fsynced and the directory
   fsynced: a segment is never durable while the one before it is not (after
   a power loss that would be a gap, which start-up treats as damage).
4. Durability policy (``fsync``): ``"batch"`` fdatasyncs after every append
   (group commit: one sync per ring batch; the journaler process lets small
   batches grow first, journaler/process.py rule 3); ``"interval"`` fdatasyncs when
   ``fsync_interval_ms`` have passed since the last sync (``sync_if_due()``
   is also called by the process loop when idle); ``"off"`` syncs only at a
   segment roll (rule 3) and counts a record durable once ``write`` returned
   (it survives a process crash; after an OS crash or power loss only the
   records before the last segment are certain to remain).  ``durable_sequence`` is the last
   sequence the policy made durable; only that may be acknowledged.
5. Every block header records ``synced_through``: how many bytes of its
   segment a completed fsync/fdatasync of this writer had covered when the
   block was written (the segment header's at least: it is fsynced at
   creation; a segment the writer continues after a restart is fsynced at
   open, so all of it).  It never claims a byte that is not durable, and it
   only grows within a segment (a rewind, rule 6, never goes below it).  The
   reader trusts it to tell a power loss's writeback hole in the last
   segment from damage (reader rule 5).  The writer never appends to a
   format 1 segment (no watermark): after a restart on one it fsyncs it and
   rolls to a new segment at the first append.
6. A failed write (disk full, EIO) or fsync raises JournalIOError after
   truncating the current segment back to its last durable offset (after a
   failed fsync the page cache can no longer be trusted) and rewinding
   ``next_sequence`` to ``durable_sequence + 1``.  The caller re-appends from
   there: the ring still holds those records, since the gating sequence never
   passes ``durable_sequence``.  Only the current segment can hold non-durable
   bytes (a roll fsyncs the old one).
7. Files are private: segments are created 0600 and the journal directory
   0700 (an existing wider one is narrowed).
"""
import errno as errno_module
import os
import time

from journaler import fsio
from journaler.errors import (
    JournalError, JournalGapError, JournalIOError, JournalOverlapError,
)
from journaler.reader import recover_journal
from journaler.segment import (
    BLOCK_HEADER_SIZE, FORMAT_VERSION, SEGMENT_HEADER_SIZE, block_crc, journal_dir,
    pack_block_header, pack_segment_header, private_dir, segment_name,
)

__all__ = ["JournalWriter", "POLICIES"]

POLICIES = ("batch", "interval", "off")
#: mode of segment files (rule 7; the directory: segment.private_dir)
FILE_MODE = 0o600
#: records per block at most (a block's count is u32; keep blocks modest)
MAX_BLOCK_RECORDS = 1 << 16

# Every call that changes a file or a directory entry goes through journaler.fsio
# (the one I/O layer, pass-through by default; tests install a crash simulation
# there).  Bound once as module aliases: the hot path does one global lookup, and
# tests can still monkeypatch one call site (``_writev``, ``_fsync``) to inject
# failures (disk full, EIO).
_write_joined = fsio._write_joined
fsio.bind(globals(), _writev="writev", _fsync="fdatasync", _open="open", _close="close",
          _ftruncate="ftruncate", _unlink="unlink", _fsync_dir="fsync_dir")


def _as_chunks(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [data]
    return list(data)


def _split(chunks, nbytes):
    """(head, rest): the first ``nbytes`` of ``chunks`` and the remainder, as views."""
    head, rest = [], []
    need = nbytes
    for chunk in chunks:
        if need <= 0:
            rest.append(chunk)
            continue
        n = len(chunk)
        if n <= need:
            head.append(chunk)
            need -= n
        else:
            mv = memoryview(chunk)
            head.append(mv[:need])
            rest.append(mv[need:])
            need = 0
    return head, rest


class JournalWriter(object):
    """Append-only writer of one shard's journal.

    >>> w = JournalWriter(data_dir, "shard0", fsync="batch")   # doctest: +SKIP
    >>> w.append(1, batch_bytes)         # records 1..n; returns the last seq written
    >>> w.durable_sequence               # n (batch policy)
    >>> w.close()

    Construction runs tail recovery (rule 1) and raises JournalSchemaError
    when existing segments have another schema.  ``start_seq`` is the first
    sequence of an empty journal (None: taken from the first append).
    """

    def __init__(self, data_dir, shard, record_size=None, schema_hash=None,
                 segment_bytes=64 << 20, fsync="batch", fsync_interval_ms=5,
                 start_seq=None, log=None, clock=time.monotonic):
        from ringbuf import records
        if fsync not in POLICIES:
            raise ValueError("fsync must be one of %s, not %r" % (", ".join(POLICIES), fsync))
        self.record_size = record_size or records.COMMAND_SIZE
        self.schema_hash = records.SCHEMA_HASH if schema_hash is None else schema_hash
        if segment_bytes < SEGMENT_HEADER_SIZE + BLOCK_HEADER_SIZE + self.record_size:
            raise ValueError("segment_bytes=%d cannot hold one record" % segment_bytes)
        self.data_dir = data_dir
        self.shard = shard
        self.segment_bytes = segment_bytes
        self.policy = fsync
        self.interval_s = fsync_interval_ms / 1000.0
        self.log = log
        self.clock = clock
        self.directory = journal_dir(data_dir)
        private_dir(self.directory)
        self.recovery = recover_journal(data_dir, shard, self.record_size, self.schema_hash, log=log)
        self._fd = None
        self._path = None
        self._size = 0              # bytes in the current segment file
        self._durable_offset = 0    # bytes of the current segment the policy counts durable
        self._synced_offset = 0     # bytes of the current segment covered by a completed fsync
        self._last_sync = clock()
        self.syncs = 0
        self.closed = False
        self._start_seq = start_seq
        report = self.recovery
        if report.segments:
            last = report.segments[-1]
            self._open_existing(last.path, last.end_offset)
            if last.header.format_version != FORMAT_VERSION:
                # rule 5: no block with a watermark goes into a format 1 segment;
                # it is fsynced (at open), the first append rolls
                _close(self._fd)
                self._fd = None
            self._next = report.next_seq
        else:
            self._next = start_seq
        if start_seq is not None and self._next != start_seq:
            # the caller asserts where the journal must continue
            cls = JournalGapError if start_seq > self._next else JournalOverlapError
            raise cls("journal ends at %d but start_seq=%d was required"
                      % (self._next - 1, start_seq), expected=self._next, got=start_seq)
        self._written = (self._next - 1) if self._next is not None else 0
        self._durable = self._written

    # -- properties -----------------------------------------------------------
    @property
    def durable_sequence(self):
        """Last sequence the policy made durable (0: nothing).  O(1)."""
        return self._durable

    @property
    def written_sequence(self):
        """Last sequence handed to the OS (>= durable_sequence).  O(1)."""
        return self._written

    @property
    def next_sequence(self):
        """Sequence the next append must start with (None: empty journal, any).  O(1)."""
        return self._next

    # -- segment management ---------------------------------------------------
    def _open_existing(self, path, end_offset):
        fd = _open(path, os.O_WRONLY | os.O_APPEND)
        size = os.fstat(fd).st_size
        if size != end_offset:   # recovery truncated it; be exact anyway
            _ftruncate(fd, end_offset)
        self._fd, self._path, self._size = fd, path, end_offset
        self._durable_offset = end_offset
        # a previous writer (policy ``off``, or killed) may have left it unsynced:
        # fsync it before writing after it, so that the blocks appended now can
        # claim all of it durable (rule 5) and a roll away from it is safe (rule 3)
        try:
            _fsync(fd)
        except OSError as exc:
            _close(fd)
            self._fd = None
            raise JournalIOError("cannot fsync segment %s at open: %s" % (path, exc),
                                 exc.errno, "fsync", path)
        self.syncs += 1
        self._synced_offset = end_offset

    def _close_segment(self, roll=False):
        """Close the current segment; ``roll``: fsync it first under every policy (rule 3)."""
        if self._fd is not None:
            if self.policy != "off" and self._size > self._durable_offset:
                self._sync()
            if roll and self._synced_offset < self._size:
                # policy ``off`` (or a segment a previous writer left unsynced): the
                # next segment is made durable below, so this one must be first, or
                # a power loss could leave a durable segment after a torn one -- a
                # gap, which start-up must treat as damage (reader rule 5a)
                try:
                    _fsync(self._fd)
                except OSError as exc:
                    self._rewind()
                    self._failure("fsync", exc, self._durable + 1)
                self.syncs += 1
                self._synced_offset = self._size
            _close(self._fd)
            self._fd = None

    def _new_segment(self, first_seq):
        """Rule 3: fsync + close the old segment, create the next one durably."""
        self._close_segment(roll=True)
        path = os.path.join(self.directory, segment_name(self.shard, first_seq))
        header = pack_segment_header(self.schema_hash, self.record_size, first_seq, self.shard)
        try:
            fd = _open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        except FileExistsError:
            # left by a creation that failed half way (e.g. disk full): it holds no
            # records (recovery would have kept it otherwise), so start it again
            _unlink(path)
            fd = _open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        except OSError as exc:
            raise JournalIOError("cannot create segment %s: %s" % (path, exc),
                                 exc.errno, "create", path)
        try:
            written = _writev(fd, [header])
            if written != len(header):
                raise OSError(errno_module.ENOSPC, "short write of segment header")
            _fsync(fd)
            _fsync_dir(self.directory)
        except OSError as exc:
            _close(fd)
            try:
                _unlink(path)
            except OSError:
                pass
            raise JournalIOError("cannot create segment %s: %s" % (path, exc),
                                 exc.errno, "create", path)
        self._fd, self._path, self._size = fd, path, len(header)
        self._durable_offset = self._synced_offset = len(header)
        if self.log is not None:
            self.log.event("segment_created", file=path, first_seq=first_seq)

    # -- appending ----------------------------------------------------------
    def append(self, first_seq, data):
        """Append records ``first_seq ..`` given as bytes / memoryview / list of them.

        Returns the last sequence written.  O(bytes).  Raises JournalGapError /
        JournalOverlapError (rule 2), ValueError (not whole records),
        JournalIOError (rule 6).  Under the ``batch`` policy the records are
        durable when this returns.
        """
        if self.closed:
            raise JournalError("append on a closed JournalWriter")
        chunks = _as_chunks(data)
        nbytes = 0
        for chunk in chunks:
            nbytes += len(chunk) if not isinstance(chunk, memoryview) else chunk.nbytes
        record_size = self.record_size
        if nbytes % record_size or nbytes == 0:
            raise ValueError("append of %d bytes is not a positive number of %d-byte records"
                             % (nbytes, record_size))
        expected = self._next
        if expected is not None and first_seq != expected:
            if first_seq > expected:
                raise JournalGapError(
                    "gap: journal continues at %d but records start at %d (%d missing)"
                    % (expected, first_seq, first_seq - expected), expected, first_seq)
            raise JournalOverlapError(
                "overlap: journal continues at %d but records start at %d (%d already journaled)"
                % (expected, first_seq, expected - first_seq), expected, first_seq)
        count = nbytes // record_size
        seq = first_seq
        while count:
            if self._fd is None:
                self._new_segment(seq)
            room = (self.segment_bytes - self._size - BLOCK_HEADER_SIZE) // record_size
            if room < 1:
                if self._size > SEGMENT_HEADER_SIZE:
                    self._new_segment(seq)
                    continue
                room = 1    # a fresh segment always takes one block
            n = min(count, room, MAX_BLOCK_RECORDS)
            part, chunks = _split(chunks, n * record_size)
            self._write_block(seq, n, part)
            seq += n
            count -= n
        if self.policy == "batch":
            self._sync()
        elif self.policy == "interval":
            self.sync_if_due()
        else:   # "off": durable once written (rule 4)
            self._durable = self._written
            self._durable_offset = self._size
        return self._written

    def _write_block(self, first_seq, count, parts):
        fd = self._fd
        synced = self._synced_offset        # rule 5: what an fsync covered, never more
        header = pack_block_header(first_seq, count, block_crc(first_seq, count, parts, synced),
                                   synced)
        total = BLOCK_HEADER_SIZE + count * self.record_size
        start = self._size
        try:
            written = _writev(fd, [header] + parts)
            if written != total:
                # short write: finish it byte by byte (rare; a full disk ends in ENOSPC)
                rest = b"".join([header] + [bytes(p) for p in parts])[written:]
                while rest:
                    n = _writev(fd, [rest])
                    if n <= 0:
                        raise OSError(errno_module.ENOSPC, "no progress writing block")
                    rest = rest[n:]
        except OSError as exc:
            self._rewind()
            self._failure("write", exc, first_seq)
        self._size = start + total
        self._written = first_seq + count - 1
        self._next = self._written + 1

    def _rewind(self):
        """Rule 6: drop everything not yet durable (file and counters)."""
        self._truncate(self._durable_offset)
        self._size = self._durable_offset
        self._written = self._durable
        if self._durable == 0 and self._start_seq is None:
            # nothing was ever durable in a journal without a fixed start: forget
            # the header-only segment too, so the next append may start anywhere
            if self._fd is not None and self._size == SEGMENT_HEADER_SIZE:
                _close(self._fd)
                self._fd = None
                try:
                    _unlink(self._path)
                except OSError:
                    pass
            self._next = None
        else:
            self._next = self._durable + 1

    def _truncate(self, offset):
        try:
            _ftruncate(self._fd, offset)
        except OSError:
            pass  # recovery will cut the torn block at the next start

    def _failure(self, op, exc, seq):
        if self.log is not None:
            self.log.error("journal_io_error", op=op, file=self._path, seq=seq,
                           errno=exc.errno, error=exc.strerror or str(exc),
                           durable_seq=self._durable)
        raise JournalIOError("journal %s failed at seq %d in %s: %s" % (
            op, seq, self._path, exc), exc.errno, op, self._path)

    def _sync(self):
        if self._fd is None or self._size == self._durable_offset:
            self._durable = self._written
            self._last_sync = self.clock()
            return
        try:
            _fsync(self._fd)
        except OSError as exc:
            # rule 6: the page cache may have dropped the dirty pages; rewind to
            # what is known durable and let the caller write it again
            self._rewind()
            self._failure("fsync", exc, self._durable + 1)
        self.syncs += 1
        self._durable_offset = self._synced_offset = self._size
        self._durable = self._written
        self._last_sync = self.clock()

    def sync(self):
        """Make everything written durable now (any policy).  O(dirty bytes)."""
        self._sync()
        return self._durable

    def sync_if_due(self):
        """``interval`` policy: sync when the interval has passed.  Returns durable_sequence."""
        if self._written > self._durable:
            if self.policy == "off":
                self._durable = self._written
                self._durable_offset = self._size
            elif self.policy == "batch" or self.clock() - self._last_sync >= self.interval_s:
                self._sync()
        return self._durable

    def seconds_until_sync(self):
        """Seconds until an ``interval`` sync is due (None: nothing pending)."""
        if self._written == self._durable:
            return None
        return max(0.0, self.interval_s - (self.clock() - self._last_sync))

    # -- lifecycle ------------------------------------------------------------
    def close(self):
        """Sync (unless policy ``off``) and close.  Safe to call twice."""
        if self.closed:
            return
        try:
            self._close_segment()
        finally:
            self.closed = True
            self._fd = None
        if self.policy == "off":
            self._durable = self._written

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check(self):
        """Assert the writer's invariants (tests call this after each step)."""
        assert self._durable <= self._written
        if self._next is not None:
            assert self._next == self._written + 1
        if self._fd is not None:
            assert os.fstat(self._fd).st_size == self._size, (os.fstat(self._fd).st_size, self._size)
            # rule 5: the watermark the next block claims is within what is counted
            # durable (a rewind never cuts below it) and covers at least the header
            assert SEGMENT_HEADER_SIZE <= self._synced_offset <= self._durable_offset, \
                (self._synced_offset, self._durable_offset)
            if self.policy != "off":
                # batch/interval count durable only what an fsync covered
                assert self._synced_offset == self._durable_offset, \
                    (self._synced_offset, self._durable_offset)
            assert SEGMENT_HEADER_SIZE <= self._durable_offset <= self._size <= max(
                self.segment_bytes, SEGMENT_HEADER_SIZE + BLOCK_HEADER_SIZE + MAX_BLOCK_RECORDS
                * self.record_size)
