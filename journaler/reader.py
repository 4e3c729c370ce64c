"""Reading journals: block walks, verification, tail recovery, replay iteration.

Theory of operation (the numbered recovery rules of ``docs/journal.md``):

1. Segments are taken in first-sequence order.  A segment's header must be
   intact and its first sequence must equal its file name's and continue the
   previous segment exactly (previous last + 1).
2. A segment written with another schema hash or record size is refused
   (``JournalSchemaError``): that is a deployment mistake, not corruption, and
   nothing is cut.
3. Blocks are walked from the header on.  A block is valid when its header is
   complete, its magic is ``RMBK``, ``count >= 1``, its records are wholly in
   the file, its first sequence continues the previous block exactly and its
   CRC32C matches.
4. The journal is the longest valid prefix.  The first invalid thing (a block,
   a segment header, a gap between segments) and everything after it is the
   *tail*; the last durable sequence is the last record of the prefix.
5. Recovery cuts the tail: the bytes of a partial segment are copied to
   ``journal/quarantine/`` and the file is truncated at the offset of the first
   invalid block; whole later segments are moved into the quarantine.  Each cut
   is reported (file, offset, block first sequence, reason, bytes).
6. ``verify`` never changes a file: it walks every segment (continuing past a
   bad CRC when the block header is sane) and names each offending block.
7. Readers (replay, export, the matcher's start-up) read only the valid
   prefix and stop at the first invalid block: a tail being written right now
   by the journaler is simply not there yet.
"""
import mmap
import os
import shutil
import time

from journaler.crc import crc32c
from journaler.errors import JournalFormatError, JournalSchemaError
from journaler.segment import (
    BLOCK_HEADER_SIZE, BLOCK_MAGIC, SEGMENT_HEADER_SIZE, block_crc, journal_dir,
    list_segments, unpack_block_header, unpack_segment_header,
)

__all__ = [
    "Problem", "Cut", "SegmentScan", "RecoveryReport", "VerifyReport", "scan_segment",
    "scan_journal", "recover_journal", "verify_journal", "JournalReader", "last_sequence",
]

#: no block is this large; a larger count in a header means a corrupt header
MAX_BLOCK_RECORDS = 1 << 24


def _rel(path):
    parent = os.path.basename(os.path.dirname(path))
    return os.path.join(parent, os.path.basename(path))


class Problem(object):
    """One offending place in the journal: file, byte offset, block first seq, reason."""

    __slots__ = ("path", "offset", "first_seq", "count", "reason", "detail")

    def __init__(self, path, offset, first_seq, reason, detail, count=None):
        self.path = path
        self.offset = offset
        self.first_seq = first_seq
        self.count = count
        self.reason = reason
        self.detail = detail

    def __str__(self):
        where = "%s offset %d" % (_rel(self.path), self.offset)
        if self.first_seq is not None:
            where += " block first_seq=%d" % self.first_seq
            if self.count is not None:
                where += " count=%d" % self.count
        return "%s: %s (%s)" % (where, self.reason, self.detail)

    __repr__ = __str__

    def as_fields(self):
        return {"file": self.path, "offset": self.offset,
                "block_first_seq": -1 if self.first_seq is None else self.first_seq,
                "reason": self.reason, "detail": self.detail}


class Cut(object):
    """What recovery removed: a file tail (offset > 0) or a whole file, and why."""

    __slots__ = ("path", "offset", "length", "problem", "quarantine")

    def __init__(self, path, offset, length, problem, quarantine):
        self.path = path
        self.offset = offset
        self.length = length
        self.problem = problem
        self.quarantine = quarantine

    def __str__(self):
        return "cut %s from offset %d (%d bytes) -> %s: %s" % (
            _rel(self.path), self.offset, self.length, self.quarantine or "deleted", self.problem)

    __repr__ = __str__


class SegmentScan(object):
    """Result of walking one segment: its header, valid blocks, where validity ends."""

    __slots__ = ("path", "header", "blocks", "end_offset", "size", "problems")

    def __init__(self, path, header, size):
        self.path = path
        self.header = header
        self.blocks = []        # (offset, first_seq, count) of valid blocks
        self.end_offset = SEGMENT_HEADER_SIZE if header is not None else 0
        self.size = size
        self.problems = []

    @property
    def first_seq(self):
        return self.header.first_seq if self.header is not None else None

    @property
    def last_seq(self):
        """Last sequence of the valid blocks (first_seq - 1 when there are none)."""
        if self.blocks:
            _, first, count = self.blocks[-1]
            return first + count - 1
        return self.header.first_seq - 1 if self.header is not None else None


def _read_file(path):
    """(mmap or b'', size) of a whole file, read only."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return b"", 0
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size


def _close(buf):
    if isinstance(buf, mmap.mmap):
        try:
            buf.close()
        except BufferError:  # views still exported: the GC closes it later
            pass


def scan_segment(path, record_size, schema_hash, expected_first=None, check_crc=True,
                 keep_going=False, name_seq=None):
    """Walk one segment's blocks (rules 1-4, 6).  O(file size) with CRCs, O(blocks) without.

    Returns a SegmentScan whose ``problems`` is empty when the whole file is
    valid.  With ``keep_going`` the walk continues past a CRC or sequence
    mismatch whose block header is sane (for ``verify``); otherwise it stops
    at the first problem.  Raises JournalSchemaError on a schema / record
    size mismatch (rule 2).
    """
    buf, size = _read_file(path)
    try:
        try:
            header = unpack_segment_header(buf[:SEGMENT_HEADER_SIZE], path)
        except JournalFormatError as exc:
            scan = SegmentScan(path, None, size)
            scan.problems.append(Problem(path, 0, None, exc.reason, str(exc)))
            return scan
        if header.schema_hash != schema_hash or header.record_size != record_size:
            raise JournalSchemaError(
                "%s: written with schema %016x / record size %d; this reader has schema "
                "%016x / record size %d" % (path, header.schema_hash, header.record_size,
                                            schema_hash, record_size))
        scan = SegmentScan(path, header, size)
        if name_seq is not None and name_seq != header.first_seq:
            scan.problems.append(Problem(path, 0, None, "name_mismatch",
                                         "file name says first_seq=%d, header says %d"
                                         % (name_seq, header.first_seq)))
            return scan
        if expected_first is not None and header.first_seq != expected_first:
            reason = "sequence_gap" if header.first_seq > expected_first else "sequence_overlap"
            scan.problems.append(Problem(path, 0, None, reason,
                                         "segment starts at %d, journal continues at %d"
                                         % (header.first_seq, expected_first)))
            return scan
        offset = SEGMENT_HEADER_SIZE
        expected = header.first_seq
        while offset < size:
            if size - offset < BLOCK_HEADER_SIZE:
                scan.problems.append(Problem(path, offset, None, "torn_block_header",
                                             "%d bytes left, a block header is %d"
                                             % (size - offset, BLOCK_HEADER_SIZE)))
                break
            magic, count, first_seq, stored = unpack_block_header(buf, offset)
            if magic != BLOCK_MAGIC or count < 1 or count > MAX_BLOCK_RECORDS:
                detail = ("magic %r" % magic) if magic != BLOCK_MAGIC else "count %d" % count
                scan.problems.append(Problem(path, offset, None, "bad_block_header", detail))
                break
            end = offset + BLOCK_HEADER_SIZE + count * record_size
            if end > size:
                scan.problems.append(Problem(
                    path, offset, first_seq, "torn_block",
                    "block needs %d bytes, file has %d" % (end - offset, size - offset), count))
                break
            bad = None
            if first_seq != expected:
                bad = Problem(path, offset, first_seq,
                              "sequence_gap" if first_seq > expected else "sequence_overlap",
                              "expected first_seq %d" % expected, count)
            elif check_crc:
                computed = crc32c(buf[offset + BLOCK_HEADER_SIZE:end],
                                  block_crc(first_seq, count, ()))
                if computed != stored:
                    bad = Problem(path, offset, first_seq, "crc_mismatch",
                                  "stored %08x computed %08x" % (stored, computed), count)
            if bad is not None:
                scan.problems.append(bad)
                if not keep_going:
                    break
            elif not scan.problems:
                scan.blocks.append((offset, first_seq, count))
                scan.end_offset = end
            expected = first_seq + count
            offset = end
        return scan
    finally:
        _close(buf)


def scan_journal(data_dir, shard, record_size, schema_hash, check_crc=True, keep_going=False):
    """Walk every segment of ``shard`` in order (rules 1-4).  O(journal size).

    Returns (scans, tail_index): ``tail_index`` is the index of the first scan
    with a problem (or None); continuity across segments is checked.  With
    ``keep_going`` every segment is scanned in full, for verify.
    """
    scans = []
    expected = None
    tail_index = None
    for name_seq, path in list_segments(data_dir, shard):
        scan = scan_segment(path, record_size, schema_hash,
                            expected_first=expected if tail_index is None else None,
                            check_crc=check_crc, keep_going=keep_going, name_seq=name_seq)
        scans.append(scan)
        if scan.problems and tail_index is None:
            tail_index = len(scans) - 1
            if not keep_going:
                # everything after is tail too: list it without reading
                for _, later in list_segments(data_dir, shard)[len(scans):]:
                    scans.append(SegmentScan(later, None, os.path.getsize(later)))
                break
        if scan.header is not None:
            expected = scan.last_seq + 1
    return scans, tail_index


class RecoveryReport(object):
    """What ``recover_journal`` found and did.

    ``first_seq``/``last_seq``: the journal's valid range (last_seq 0 and
    first_seq None when empty); ``next_seq``: the sequence the next append
    must have (None when the journal has no segment at all); ``cuts``: list
    of Cut; ``segments``: the remaining SegmentScan list.
    """

    def __init__(self, segments, cuts):
        self.segments = segments
        self.cuts = cuts
        self.first_seq = segments[0].first_seq if segments else None
        last = segments[-1].last_seq if segments else None
        self.next_seq = None if last is None else last + 1
        self.last_seq = 0 if last is None else last

    @property
    def records(self):
        return sum(c for s in self.segments for _, _, c in s.blocks)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_journal(data_dir, shard, record_size, schema_hash, quarantine=True, log=None):
    """Find the last durable sequence and cut the torn or corrupt tail (rules 4, 5).  O(journal).

    Returns a RecoveryReport.  Raises JournalSchemaError (rule 2).  The cut
    bytes go to ``journal/quarantine/`` unless ``quarantine`` is False (then
    they are dropped).  ``log`` (an engine.log.Logger) gets one
    ``journal_tail_cut`` line per cut.
    """
    scans, tail_index = scan_journal(data_dir, shard, record_size, schema_hash)
    cuts = []
    if tail_index is not None:
        problem = scans[tail_index].problems[0]
        qdir = os.path.join(journal_dir(data_dir), "quarantine")
        if quarantine:
            os.makedirs(qdir, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for i in range(tail_index, len(scans)):
            scan = scans[i]
            # a block-level problem keeps the file up to it; a bad header or a
            # segment that does not continue the journal goes whole (rule 5)
            keep_file = i == tail_index and scan.header is not None and problem.offset > 0
            cut_at = scan.end_offset if keep_file else 0
            target = None
            length = scan.size - cut_at
            if quarantine:
                target = os.path.join(qdir, "%s.%d.%s.cut" % (
                    os.path.basename(scan.path), cut_at, stamp))
            if keep_file:
                with open(scan.path, "r+b") as f:
                    if target is not None:
                        f.seek(cut_at)
                        with open(target, "wb") as out:
                            shutil.copyfileobj(f, out)
                            out.flush()
                            os.fsync(out.fileno())
                    f.truncate(cut_at)
                    f.flush()
                    os.fsync(f.fileno())
                scan.problems = []
                scan.size = cut_at
            else:
                if target is not None:
                    os.rename(scan.path, target)
                else:
                    os.unlink(scan.path)
            cut = Cut(scan.path, cut_at, length, problem if i == tail_index else Problem(
                scan.path, 0, None, "after_cut", "follows the cut at %s" % _rel(problem.path)),
                target)
            cuts.append(cut)
            if log is not None:
                p = cut.problem
                log.warning("journal_tail_cut", file=scan.path, offset=cut_at, bytes=length,
                            block_first_seq=-1 if p.first_seq is None else p.first_seq,
                            reason=p.reason, detail=p.detail, quarantine=target or "-")
        _fsync_dir(journal_dir(data_dir))
        if quarantine:
            _fsync_dir(qdir)
        kept = [s for s in scans[:tail_index + 1] if os.path.exists(s.path) and s.header is not None]
        scans = kept
    return RecoveryReport(scans, cuts)


class VerifyReport(object):
    """What ``verify_journal`` found: ``ok``, ``problems`` (each names its block), ranges."""

    def __init__(self, scans, problems, error=None):
        self.scans = scans
        self.problems = problems
        self.error = error
        valid = [s for s in scans if s.header is not None]
        self.first_seq = valid[0].first_seq if valid else None
        self.last_seq = 0
        for s in scans:   # end of the valid prefix
            if s.header is None:
                break
            self.last_seq = s.last_seq
            if s.problems:
                break
        self.blocks = sum(len(s.blocks) for s in scans)
        self.records = sum(c for s in scans for _, _, c in s.blocks)

    @property
    def ok(self):
        return not self.problems and self.error is None


def verify_journal(data_dir, shard, record_size, schema_hash):
    """Check CRCs, continuity and schema of every segment, changing nothing (rule 6).  O(journal)."""
    try:
        scans, _ = scan_journal(data_dir, shard, record_size, schema_hash, keep_going=True)
    except JournalSchemaError as exc:
        return VerifyReport([], [], error=str(exc))
    problems = [p for s in scans for p in s.problems]
    return VerifyReport(scans, problems)


def last_sequence(data_dir, shard, record_size, schema_hash):
    """Last sequence of the valid prefix (0 when empty), read only.  O(journal)."""
    scans, tail_index = scan_journal(data_dir, shard, record_size, schema_hash)
    last = 0
    for scan in scans[:None if tail_index is None else tail_index + 1]:
        if scan.header is not None:
            last = scan.last_seq if scan.last_seq is not None else last
    return last


class JournalReader(object):
    """Read the valid prefix of one shard's journal (rule 7), memory-mapped.

    >>> reader = JournalReader(data_dir, "shard0")          # doctest: +SKIP
    >>> for first_seq, count, view in reader.blocks(after=100): ...
    >>> arr = reader.array(first=1, last=1000)               # numpy COMMAND_DTYPE

    ``check_crc`` (default True) verifies each block's CRC32C while reading;
    iteration stops at the first invalid block and ``problem`` names it.
    """

    def __init__(self, data_dir, shard, record_size=None, schema_hash=None, check_crc=True):
        from ringbuf import records
        self.data_dir = data_dir
        self.shard = shard
        self.record_size = record_size or records.COMMAND_SIZE
        self.schema_hash = records.SCHEMA_HASH if schema_hash is None else schema_hash
        self.check_crc = check_crc
        self.problem = None

    def segments(self):
        """[(first_seq, path)] of the shard's segment files."""
        return list_segments(self.data_dir, self.shard)

    def blocks(self, after=0, last=None):
        """Yield (first_seq, count, memoryview of count records) for seqs in (after, last].

        The view is valid until the next item is requested.  O(records read).
        Raises JournalSchemaError on a schema mismatch.
        """
        record_size = self.record_size
        expected = None
        segs = self.segments()
        # skip segments wholly before `after`
        start = 0
        for i in range(len(segs)):
            if segs[i][0] <= after + 1:
                start = i
        for index in range(start, len(segs)):
            name_seq, path = segs[index]
            if last is not None and name_seq > last:
                return
            scan = scan_segment(path, record_size, self.schema_hash, expected_first=expected,
                                check_crc=self.check_crc, name_seq=name_seq)
            if scan.header is None and not scan.problems:
                return
            if scan.blocks:
                buf, _ = _read_file(path)
                try:
                    mv = memoryview(buf)
                    try:
                        for offset, first_seq, count in scan.blocks:
                            end_seq = first_seq + count - 1
                            if end_seq <= after:
                                continue
                            lo = max(first_seq, after + 1)
                            hi = end_seq if last is None else min(end_seq, last)
                            if hi < lo:
                                return
                            base = offset + BLOCK_HEADER_SIZE
                            view = mv[base + (lo - first_seq) * record_size:
                                      base + (hi - first_seq + 1) * record_size]
                            yield lo, hi - lo + 1, view
                            view.release()
                    finally:
                        mv.release()
                finally:
                    _close(buf)
            if scan.problems:
                self.problem = scan.problems[0]
                return
            expected = scan.last_seq + 1

    def records(self, after=0, last=None):
        """Yield (seq, record) for the valid prefix after ``after`` (replay order).

        ``record`` is a cffi ``rm_command_t`` struct reference into the
        memory map (field access by attribute, as the matcher expects); it is
        valid until the next item.  O(records).
        """
        from ringbuf._ringbuf_cffi import ffi
        cast = ffi.cast
        from_buffer = ffi.from_buffer
        for first_seq, count, view in self.blocks(after, last):
            ptr = cast("rm_command_t *", from_buffer(view))
            for i in range(count):
                yield first_seq + i, ptr[i]

    def arrays(self, after=0, last=None):
        """Yield (first_seq, numpy COMMAND_DTYPE array) per block (copies).  O(records)."""
        import numpy as np
        from ringbuf import records
        dtype = records.COMMAND_DTYPE if self.record_size == records.COMMAND_SIZE else \
            np.dtype((np.void, self.record_size))
        for first_seq, count, view in self.blocks(after, last):
            yield first_seq, np.frombuffer(view, dtype=dtype, count=count).copy()

    def array(self, after=0, last=None):
        """(seqs int64 array, records COMMAND_DTYPE array) of the whole range, one copy.  O(records)."""
        import numpy as np
        from ringbuf import records
        parts, seqs = [], []
        for first_seq, arr in self.arrays(after, last):
            parts.append(arr)
            seqs.append(np.arange(first_seq, first_seq + len(arr), dtype=np.int64))
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, records.COMMAND_DTYPE
                                                   if self.record_size == records.COMMAND_SIZE
                                                   else np.dtype((np.void, self.record_size)))
        # not np.concatenate: it would repack the union fields of the dtype
        out = np.empty(sum(len(p) for p in parts), dtype=parts[0].dtype)
        pos = 0
        for part in parts:
            out[pos:pos + len(part)] = part
            pos += len(part)
        return np.concatenate(seqs), out
