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
5. Only a *torn tail* is cut automatically: the first problem, at offset X,
   is in the LAST segment and no intact block (magic, sane count, wholly in
   the file, CRC matching, found by searching every 32-byte aligned offset)
   after it says X was durable.  Format 2 (the block header's
   ``synced_through``, covered by its CRC, is how many bytes of the segment
   the writer knew fsynced when it wrote the block): torn when every intact
   block at or after X has ``synced_through <= X`` -- X was never known
   durable, so the damage is a write that never finished, the zeros /
   garbage a power loss leaves at the end of the file, or a hole that
   out-of-order writeback left before later unsynced blocks; those later
   blocks were never durable either and are cut with it.  Format 1 (no
   watermark): torn only when no intact block lies at or after X.  A bad
   header of the last segment is a torn creation when nothing intact lies
   after byte 128 (the header is fsynced before any block is written).
   The cut bytes are copied to ``journal/quarantine/`` (0600 files in a 0700
   directory, fsynced) before the file is truncated at the problem's offset;
   a torn header moves the whole file there.  Each cut is reported.  The
   search looks only below the size the scan saw: readers run beside the
   journaler, whose next complete block is not damage.
5a. Any other damage -- a CRC mismatch or bad block followed by an intact
   block that says it was durable (format 2: ``synced_through > X``; format
   1: any intact block), any problem in a segment that is not the last (a
   roll fsyncs the segment it leaves), a gap, overlap or name
   mismatch between segments -- is ``JournalCorruptError``: it names the file,
   the byte offset, the reason, the valid prefix's end and the sequences a cut
   would lose, and NO file is changed.  The operator decides (docs/journal.md:
   repair from the standby, or ``ringmatch journal truncate``).
6. ``verify`` never changes a file: it walks every segment (continuing past a
   bad CRC when the block header is sane) and names each offending block.
7. Readers (replay, export, the matcher's start-up) read only the valid
   prefix and stop at the first invalid block: a tail being written right now
   by the journaler is simply not there yet.
"""
import mmap
import os
import time

from journaler.crc import crc32c
from journaler.errors import JournalCorruptError, JournalFormatError, JournalSchemaError
from journaler.segment import (
    BLOCK_HEADER_SIZE, BLOCK_MAGIC, SEGMENT_HEADER_SIZE, WATERMARK_VERSION, block_crc,
    journal_dir, list_segments, private_dir, unpack_block_header, unpack_segment_header,
)

__all__ = [
    "Problem", "Cut", "SegmentScan", "RecoveryReport", "VerifyReport", "Assessment",
    "scan_segment", "scan_journal", "assess_journal", "recover_journal", "verify_journal",
    "JournalReader", "last_sequence", "intact_blocks", "quarantine_dir", "quarantine_open",
    "fsync_dir",
]

#: no block is this large; a larger count in a header means a corrupt header
MAX_BLOCK_RECORDS = 1 << 24
#: every block starts at a multiple of this (128-byte segment header, 32-byte
#: block headers, 64-byte records): the resync search of rule 5 looks only there
BLOCK_ALIGN = 32
#: first problems that a torn write can leave (rule 5); anything else stops start-up
TORN_BLOCK_REASONS = ("torn_block_header", "torn_block", "bad_block_header", "crc_mismatch",
                      "sequence_gap", "sequence_overlap")
TORN_HEADER_REASONS = ("short_header", "bad_magic", "header_crc")


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

    __slots__ = ("path", "header", "blocks", "end_offset", "size", "problems", "seen_last")

    def __init__(self, path, header, size):
        self.path = path
        self.header = header
        self.blocks = []        # (offset, first_seq, count) of valid blocks
        self.end_offset = SEGMENT_HEADER_SIZE if header is not None else 0
        self.size = size
        self.problems = []
        self.seen_last = None   # last seq of the last sane block header walked (verify)

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
            if header.first_seq > expected_first:
                reason = "sequence_gap"
                detail = ("records %d..%d are in no segment: this segment starts at %d, the "
                          "journal before it ends at %d" % (
                              expected_first, header.first_seq - 1, header.first_seq,
                              expected_first - 1))
            else:
                reason = "sequence_overlap"
                detail = ("segment starts at %d but the journal before it already holds "
                          "records up to %d" % (header.first_seq, expected_first - 1))
            scan.problems.append(Problem(path, 0, None, reason, detail))
            if not keep_going:
                return scan
        offset = SEGMENT_HEADER_SIZE
        expected = header.first_seq
        while offset < size:
            if size - offset < BLOCK_HEADER_SIZE:
                scan.problems.append(Problem(path, offset, None, "torn_block_header",
                                             "%d bytes left, a block header is %d"
                                             % (size - offset, BLOCK_HEADER_SIZE)))
                break
            magic, count, first_seq, stored, synced = unpack_block_header(buf, offset)
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
            scan.seen_last = first_seq + count - 1
            if first_seq != expected:
                bad = Problem(path, offset, first_seq,
                              "sequence_gap" if first_seq > expected else "sequence_overlap",
                              "expected first_seq %d" % expected, count)
            elif check_crc:
                computed = crc32c(buf[offset + BLOCK_HEADER_SIZE:end],
                                  block_crc(first_seq, count, (), synced))
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


def scan_journal(data_dir, shard, record_size, schema_hash, check_crc=True, keep_going=False,
                 on_segment=None):
    """Walk every segment of ``shard`` in order (rules 1-4).  O(journal size).

    Returns (scans, tail_index): ``tail_index`` is the index of the first scan
    with a problem (or None); continuity across segments is checked.  With
    ``keep_going`` every segment is scanned in full, for verify.
    ``on_segment(path)`` is called after each segment is scanned (progress).
    """
    scans = []
    expected = None
    tail_index = None
    for name_seq, path in list_segments(data_dir, shard):
        scan = scan_segment(path, record_size, schema_hash,
                            expected_first=expected if tail_index is None or keep_going else None,
                            check_crc=check_crc, keep_going=keep_going, name_seq=name_seq)
        scans.append(scan)
        if on_segment is not None:
            on_segment(path)
        if scan.problems and tail_index is None:
            tail_index = len(scans) - 1
            if not keep_going:
                # everything after is tail too: list it without reading
                for _, later in list_segments(data_dir, shard)[len(scans):]:
                    scans.append(SegmentScan(later, None, os.path.getsize(later)))
                break
        if scan.header is not None:
            if keep_going and scan.problems:
                # verify: continue the continuity check from what this file holds
                expected = (scan.seen_last if scan.seen_last is not None
                            else scan.header.first_seq - 1) + 1
            else:
                expected = scan.last_seq + 1
        elif keep_going:
            expected = None
    return scans, tail_index


def intact_blocks(buf, start, size, record_size, watermarks=False):
    """Yield (offset, first_seq, count) of every intact block at or after ``start`` (rule 5).

    Intact: magic ``RMBK``, ``1 <= count <= MAX_BLOCK_RECORDS``, records
    wholly inside ``size`` and CRC32C matching.  Blocks are found by searching
    the magic at ``BLOCK_ALIGN``-aligned offsets, so a damaged block header
    does not hide the blocks after it.  ``watermarks``: yield
    (offset, first_seq, count, synced_through) instead.  O(bytes searched +
    bytes of the candidate blocks).
    """
    pos = start
    while pos + BLOCK_HEADER_SIZE <= size:
        hit = buf.find(BLOCK_MAGIC, pos, size)
        if hit < 0 or hit + BLOCK_HEADER_SIZE > size:
            return
        if hit % BLOCK_ALIGN:
            pos = hit + BLOCK_ALIGN - hit % BLOCK_ALIGN
            continue
        _magic, count, first_seq, stored, synced = unpack_block_header(buf, hit)
        end = hit + BLOCK_HEADER_SIZE + count * record_size
        if 1 <= count <= MAX_BLOCK_RECORDS and end <= size and crc32c(
                buf[hit + BLOCK_HEADER_SIZE:end],
                block_crc(first_seq, count, (), synced)) == stored:
            yield (hit, first_seq, count, synced) if watermarks else (hit, first_seq, count)
            pos = end
        else:
            pos = hit + BLOCK_ALIGN


def _intact_after(path, start, record_size, size=None, watermarks=False):
    """[(offset, first_seq, count)] of the intact blocks of ``path`` at or after ``start``.

    ``size``: look only below this offset -- the size the scan saw, so that a
    block the journaler completed since (readers run beside it) does not make
    a torn tail look like damage.  ``watermarks``: 4-tuples with each block's
    ``synced_through`` (``intact_blocks``).
    """
    buf, file_size = _read_file(path)
    try:
        end = file_size if size is None else min(size, file_size)
        return list(intact_blocks(buf, max(start, SEGMENT_HEADER_SIZE), end, record_size,
                                  watermarks=watermarks))
    finally:
        _close(buf)


class Assessment(object):
    """What start-up would do with a journal (rules 4, 5, 5a).

    ``prefix_end``: last seq of the valid prefix (0: empty); ``problem``: the
    first problem (None: clean); ``cuttable``: it is a torn tail of the last
    segment (rule 5); ``error``: the JournalCorruptError of rule 5a (None when
    clean or cuttable); ``scans``: the SegmentScan list.  ``intact_after``:
    [(offset, first_seq, count, synced_through)] of the intact blocks of the
    damaged segment after the problem (a cut discards them: they were never
    durable); ``watermark``: the highest ``synced_through`` they claim (None:
    format 1 segment or none after it).
    """

    def __init__(self, scans, tail_index, prefix_end, problem, cuttable, error,
                 intact_after=(), watermark=None):
        self.scans = scans
        self.tail_index = tail_index
        self.prefix_end = prefix_end
        self.problem = problem
        self.cuttable = cuttable
        self.error = error
        self.intact_after = list(intact_after)
        self.watermark = watermark

    @property
    def records_cut(self):
        """Intact records after the problem that a cut discards.  O(blocks)."""
        return sum(c for _o, _f, c, _s in self.intact_after)

    @property
    def seqs_cut(self):
        """``"first..last"`` of those intact records, or ``"-"``."""
        if not self.intact_after:
            return "-"
        lo = min(f for _o, f, _c, _s in self.intact_after)
        hi = max(f + c - 1 for _o, f, c, _s in self.intact_after)
        return "%d..%d" % (lo, hi)

    def raise_if_corrupt(self):
        if self.error is not None:
            raise self.error


def _prefix_end(scans, tail_index):
    last = 0
    for i, scan in enumerate(scans):
        if tail_index is not None and i > tail_index:
            break
        if scan.header is None:
            break
        if tail_index == i and scan.problems[0].offset == 0:
            break       # header-level problem (gap, overlap, name): nothing of it counts
        last = scan.last_seq
    return last


def _assess(scans, tail_index, record_size):
    """Classify the first problem of ``scans`` (rules 5, 5a).  O(bytes after the problem)."""
    prefix_end = _prefix_end(scans, tail_index)
    if tail_index is None:
        return Assessment(scans, None, prefix_end, None, False, None)
    scan = scans[tail_index]
    problem = scan.problems[0]
    header_level = scan.header is None or problem.offset == 0
    start = SEGMENT_HEADER_SIZE if header_level else problem.offset
    after = _intact_after(scan.path, start, record_size, size=scan.size, watermarks=True)
    is_last = tail_index == len(scans) - 1
    watermark = None
    durable_claim = None            # (offset, first_seq, count, synced) of a block saying X was durable
    if header_level:
        torn = scan.header is None and problem.reason in TORN_HEADER_REASONS and not after
    else:
        torn = problem.reason in TORN_BLOCK_REASONS
        if scan.header.format_version >= WATERMARK_VERSION:
            # rule 5, format 2: damage at X is torn unless a later intact block
            # says bytes beyond X were covered by a completed fsync
            if after:
                watermark = max(s for _o, _f, _c, s in after)
            for block in after:
                if block[3] > problem.offset:
                    durable_claim = block
                    break
            torn = torn and durable_claim is None
        else:
            torn = torn and not after       # format 1: any intact block after it is damage
    if is_last and torn:
        return Assessment(scans, tail_index, prefix_end, problem, True, None,
                          intact_after=after, watermark=watermark)
    # rule 5a: what a cut at the damage would discard
    later = [b[:3] for b in after]
    for other in scans[tail_index + 1:]:
        later.extend(_intact_after(other.path, SEGMENT_HEADER_SIZE, record_size))
    later = [(o, f, c) for o, f, c in later if f + c - 1 > prefix_end]
    first_lost = prefix_end + 1
    last_lost = max([first_lost] + [f + c - 1 for _o, f, c in later])
    records_after = sum(c for _o, _f, c in later)
    where = "last segment" if is_last else "segment %d of %d" % (tail_index + 1, len(scans))
    why = ""
    if durable_claim is not None:
        why = ("; offset %d was durable: the intact block at offset %d (seqs %d..%d) says "
               "synced_through=%d" % (problem.offset, durable_claim[0], durable_claim[1],
                                      durable_claim[1] + durable_claim[2] - 1,
                                      durable_claim[3]))
    message = (
        "journal damaged, start-up stopped: %s (%s) offset %d: %s (%s)%s; the journal is valid "
        "through seq %d; a cut there would discard seqs %d..%d (%d intact record(s) after "
        "the damage); no file was changed.  Repair from the standby's journal or run "
        "`ringmatch journal truncate --at SEQ` (docs/journal.md)" % (
            scan.path, where, problem.offset, problem.reason, problem.detail, why, prefix_end,
            first_lost, last_lost, records_after))
    error = JournalCorruptError(message, path=scan.path, offset=problem.offset,
                                reason=problem.reason, detail=problem.detail,
                                valid_through=prefix_end, first_lost_seq=first_lost,
                                last_lost_seq=last_lost, records_after=records_after)
    return Assessment(scans, tail_index, prefix_end, problem, False, error,
                      intact_after=after, watermark=watermark)


def assess_journal(data_dir, shard, record_size, schema_hash):
    """Walk the journal and classify its first problem, changing nothing (rules 4, 5, 5a).

    Returns an Assessment.  O(journal) with CRCs.  Raises JournalSchemaError
    (rule 2).
    """
    scans, tail_index = scan_journal(data_dir, shard, record_size, schema_hash)
    return _assess(scans, tail_index, record_size)


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


def fsync_dir(path):
    """fsync a directory (its entries: creations, renames).  O(1)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync_dir = fsync_dir


def quarantine_dir(data_dir):
    """``<data>/journal/quarantine``, created 0700 (an existing wider one is narrowed)."""
    return private_dir(os.path.join(private_dir(journal_dir(data_dir)), "quarantine"))


def quarantine_open(directory, name):
    """(fd, path) of a new 0600 file ``name`` in ``directory`` (``.1``, ``.2``... if taken)."""
    path = os.path.join(directory, name)
    n = 0
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path
        except FileExistsError:
            n += 1
            path = os.path.join(directory, "%s.%d" % (name, n))


def quarantine_copy(src, offset, directory, name):
    """Copy the bytes of open file ``src`` from ``offset`` to a new quarantine file, fsynced.

    Returns (path, bytes copied).  O(bytes).
    """
    fd, path = quarantine_open(directory, name)
    copied = 0
    try:
        src.seek(offset)
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
                copied += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return path, copied


def quarantine_move(path, directory, name):
    """Move ``path`` into the quarantine as ``name`` (0600); returns the new path.  O(1)."""
    target = os.path.join(directory, name)
    n = 0
    while os.path.exists(target):
        n += 1
        target = os.path.join(directory, "%s.%d" % (name, n))
    os.chmod(path, 0o600)
    os.rename(path, target)
    return target


def recover_journal(data_dir, shard, record_size, schema_hash, quarantine=True, log=None):
    """Find the last durable sequence and cut a torn tail (rules 4, 5, 5a).  O(journal).

    Returns a RecoveryReport.  Raises JournalSchemaError (rule 2) and
    JournalCorruptError (rule 5a: damage that is not a torn tail of the last
    segment; then no file has been changed).  The cut bytes go to
    ``journal/quarantine/`` unless ``quarantine`` is False (then they are
    dropped).  ``log`` (an engine.log.Logger) gets one ``journal_tail_cut``
    line per cut.
    """
    assessment = assess_journal(data_dir, shard, record_size, schema_hash)
    assessment.raise_if_corrupt()
    scans = assessment.scans
    cuts = []
    if assessment.cuttable:
        scan = scans[assessment.tail_index]          # the last segment (rule 5)
        problem = assessment.problem
        qdir = quarantine_dir(data_dir) if quarantine else None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        keep_file = scan.header is not None          # block-level: keep the file up to it
        cut_at = scan.end_offset if keep_file else 0
        name = "%s.%d.%s.cut" % (os.path.basename(scan.path), cut_at, stamp)
        length = scan.size - cut_at
        target = None
        if keep_file:
            with open(scan.path, "r+b") as f:
                if qdir is not None:
                    target, _ = quarantine_copy(f, cut_at, qdir, name)
                    fsync_dir(qdir)                  # the copy is durable before the cut
                f.truncate(cut_at)
                f.flush()
                os.fsync(f.fileno())
            scan.problems = []
            scan.size = cut_at
        elif qdir is not None:
            target = quarantine_move(scan.path, qdir, name)
        else:
            os.unlink(scan.path)
        cut = Cut(scan.path, cut_at, length, problem, target)
        cuts.append(cut)
        if log is not None:
            log.warning("journal_tail_cut", file=scan.path, offset=cut_at, bytes=length,
                        block_first_seq=-1 if problem.first_seq is None else problem.first_seq,
                        reason=problem.reason, detail=problem.detail,
                        first_cut_seq=scan.last_seq + 1 if keep_file else -1,
                        intact_seqs_cut=assessment.seqs_cut,
                        intact_records_cut=assessment.records_cut,
                        watermark=-1 if assessment.watermark is None else assessment.watermark,
                        quarantine=target or "-")
        fsync_dir(journal_dir(data_dir))
        if qdir is not None:
            fsync_dir(qdir)
        scans = [s for s in scans if s.header is not None and os.path.exists(s.path)]
    return RecoveryReport(scans, cuts)


class VerifyReport(object):
    """What ``verify_journal`` found: ``ok``, ``problems`` (each names its block), ranges."""

    def __init__(self, scans, problems, error=None, assessment=None):
        self.scans = scans
        self.problems = problems
        self.error = error
        self.assessment = assessment
        valid = [s for s in scans if s.header is not None]
        self.first_seq = valid[0].first_seq if valid else None
        tail_index = next((i for i, s in enumerate(scans) if s.problems), None)
        self.last_seq = _prefix_end(scans, tail_index)     # end of the valid prefix
        self.blocks = sum(len(s.blocks) for s in scans)
        self.records = sum(c for s in scans for _, _, c in s.blocks)

    @property
    def ok(self):
        return not self.problems and self.error is None

    @property
    def startup(self):
        """What the journaler's start-up would do: ``ok``, ``cut_torn_tail`` or ``stop``."""
        a = self.assessment
        if a is None or a.problem is None:
            return "ok"
        return "cut_torn_tail" if a.cuttable else "stop"


def verify_journal(data_dir, shard, record_size, schema_hash, on_segment=None):
    """Check CRCs, continuity and schema of every segment, changing nothing (rule 6).  O(journal).

    ``on_segment(path)``: called after each segment (progress).
    """
    try:
        scans, tail_index = scan_journal(data_dir, shard, record_size, schema_hash,
                                         keep_going=True, on_segment=on_segment)
    except JournalSchemaError as exc:
        return VerifyReport([], [], error=str(exc))
    problems = [p for s in scans for p in s.problems]
    return VerifyReport(scans, problems, assessment=_assess(scans, tail_index, record_size))


def last_sequence(data_dir, shard, record_size, schema_hash):
    """Last sequence of the valid prefix (0 when empty), read only.  O(journal).

    Raises JournalCorruptError when the first problem is not a torn tail
    (rule 5a): the prefix's end is then not the journal's durable end.
    """
    assessment = assess_journal(data_dir, shard, record_size, schema_hash)
    assessment.raise_if_corrupt()
    return assessment.prefix_end


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
