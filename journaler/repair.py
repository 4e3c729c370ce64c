"""The operator's explicit repair: ``ringmatch journal truncate --at SEQ --i-understand``.

Theory of operation:

1. Start-up never cuts damage that is not a torn tail (``reader`` rule 5a);
   truncation is the operator's choice, made after ``journal verify`` (or a
   repair from the standby's journal, docs/journal.md).
2. ``plan_truncate`` reads only.  SEQ must leave an intact journal: the
   journal's records ``first .. SEQ`` must all lie in its valid prefix
   (``first - 1 <= SEQ <= prefix end``).  The plan lists every byte range that
   would go (per segment: the tail from the end of SEQ's block, or the whole
   file), the block split when SEQ falls inside a block, the intact records
   after SEQ (their count and range), and every snapshot whose seq > SEQ.
3. Nothing runs while the shard's engine runs: the supervisor holds an
   exclusive ``flock`` on ``<data>/run/<shard>.lock``; truncate takes the same
   lock (non-blocking) and holds it until it is done, so an engine cannot
   start half way.
4. ``apply_truncate`` never deletes.  Order, so that a crash at any point
   leaves a journal that is an intact prefix (at worst longer than SEQ; run
   truncate again):
   a. later segments, newest first, are fsynced and moved whole into
      ``journal/quarantine/`` (0600 files, 0700 directory, both directories
      fsynced);
   b. the tail bytes of SEQ's segment (from the start of SEQ's block when it
      is split, so the quarantine holds that block whole) are copied to a
      quarantine file and fsynced (and the quarantine directory fsynced)
      before the segment is truncated at the end of SEQ's block and fsynced;
   c. a split block gets a new header (count, CRC of the kept records)
      written and fsynced before the file is truncated to the kept records;
   d. every snapshot with seq > SEQ is moved to ``snapshots/quarantine/``.
"""
import fcntl
import os
import time

from journaler.errors import JournalError
from journaler.reader import (
    _intact_after, _prefix_end, fsync_dir, quarantine_copy, quarantine_dir, quarantine_move,
    scan_journal,
)
from journaler.segment import BLOCK_HEADER_SIZE, SEGMENT_HEADER_SIZE, block_crc, pack_block_header
from journaler import snapshot as snapshots

__all__ = ["TruncateError", "EngineRunningError", "SegmentCut", "TruncatePlan", "plan_truncate",
           "apply_truncate", "shard_lock"]


class TruncateError(JournalError):
    """The requested truncation cannot be done (SEQ outside the intact journal, ...)."""


class EngineRunningError(TruncateError):
    """The shard's engine holds ``<data>/run/<shard>.lock`` (rule 3)."""


class SegmentCut(object):
    """One segment's part of a plan: discard bytes ``[offset, size)``; ``offset == 0``: the file.

    ``split``: (block offset, block first seq, records kept) when SEQ is inside a block.
    """

    __slots__ = ("path", "offset", "size", "split")

    def __init__(self, path, offset, size, split=None):
        self.path = path
        self.offset = offset
        self.size = size
        self.split = split

    def describe(self):
        name = os.path.basename(self.path)
        if self.offset == 0:
            text = "%s: whole file, bytes 0..%d (moved to the quarantine)" % (name, self.size)
        else:
            text = "%s: bytes %d..%d (%d bytes, copied to the quarantine, then cut)" % (
                name, self.offset, self.size, self.size - self.offset)
        if self.split is not None:
            text += ("; the block at offset %d (first_seq=%d) is split, keeping %d record(s) "
                     "(the quarantine gets the whole block)" % self.split)
        return text


class TruncatePlan(object):
    """What ``truncate --at seq`` keeps and discards (rule 2); see ``describe()``."""

    def __init__(self, data_dir, shard, seq, first_seq, prefix_end, cuts, lost_first, lost_last,
                 lost_records, snapshots_after):
        self.data_dir = data_dir
        self.shard = shard
        self.seq = seq
        self.first_seq = first_seq
        self.prefix_end = prefix_end
        self.cuts = cuts
        self.lost_first = lost_first
        self.lost_last = lost_last
        self.lost_records = lost_records
        self.snapshots_after = snapshots_after

    @property
    def empty(self):
        return not self.cuts and not self.snapshots_after

    def describe(self):
        """The lines ``truncate`` prints: what stays, every byte range and snapshot that goes."""
        lines = ["journal of %s in %s: first_seq=%d valid_through=%d" % (
            self.shard, self.data_dir, self.first_seq, self.prefix_end),
            "keep: records %d..%d" % (self.first_seq, self.seq) if self.seq >= self.first_seq
            else "keep: no records (the journal continues at %d)" % (self.seq + 1)]
        for cut in self.cuts:
            lines.append("discard segment %s" % cut.describe())
        if self.lost_records:
            lines.append("discard records: seqs %d..%d, %d intact record(s)" % (
                self.lost_first, self.lost_last, self.lost_records))
        else:
            lines.append("discard records: none intact")
        for seq, path in self.snapshots_after:
            lines.append("discard snapshot %s (seq %d > %d, moved to the quarantine)" % (
                os.path.basename(path), seq, self.seq))
        if self.empty:
            lines.append("nothing to discard")
        return lines


def shard_lock(data_dir, shard):
    """Take ``<data>/run/<shard>.lock`` like the supervisor does (rule 3); returns the fd.

    Raises EngineRunningError when it is held.  Close the fd to release.
    """
    run_dir = os.path.join(data_dir, "run")
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    path = os.path.join(run_dir, "%s.lock" % shard)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        raise EngineRunningError("shard %r in %s is running (pid %s holds %s): stop it first"
                                 % (shard, data_dir, holder or "?", path))
    return fd


def plan_truncate(data_dir, shard, seq, record_size=None, schema_hash=None):
    """The TruncatePlan of keeping records up to ``seq`` (rule 2).  Reads only.  O(journal)."""
    from ringbuf import records
    record_size = record_size or records.COMMAND_SIZE
    schema_hash = records.SCHEMA_HASH if schema_hash is None else schema_hash
    scans, tail_index = scan_journal(data_dir, shard, record_size, schema_hash)
    if not scans:
        raise TruncateError("no journal segments of %s in %s" % (shard, data_dir))
    prefix_end = _prefix_end(scans, tail_index)
    first = scans[0].first_seq
    if first is None:
        raise TruncateError("the first segment %s has a damaged header: nothing intact to keep"
                            % scans[0].path)
    if not first - 1 <= seq <= prefix_end:
        raise TruncateError("cannot keep records up to %d: the journal's intact records are "
                            "%d..%d (truncate needs %d <= SEQ <= %d)"
                            % (seq, first, prefix_end, first - 1, prefix_end))
    index, cut_at, split = 0, SEGMENT_HEADER_SIZE, None
    for i, scan in enumerate(scans):
        if scan.header is None or not scan.blocks or scan.first_seq > seq:
            continue
        for offset, block_first, count in scan.blocks:
            if block_first <= seq <= block_first + count - 1:
                index = i
                cut_at = offset + BLOCK_HEADER_SIZE + count * record_size
                if seq < block_first + count - 1:
                    split = (offset, block_first, seq - block_first + 1)
    cuts = []
    keep_scan = scans[index]
    size = os.path.getsize(keep_scan.path)
    if cut_at < size or split is not None:
        cuts.append(SegmentCut(keep_scan.path, cut_at, size, split))
    intact = _intact_after(keep_scan.path, split[0] if split else cut_at, record_size)
    for scan in scans[index + 1:]:
        cuts.append(SegmentCut(scan.path, 0, os.path.getsize(scan.path)))
        intact.extend(_intact_after(scan.path, SEGMENT_HEADER_SIZE, record_size))
    lost = [(max(f, seq + 1), f + c - 1) for _o, f, c in intact if f + c - 1 > seq]
    lost_records = sum(hi - lo + 1 for lo, hi in lost)
    lost_last = max([seq] + [hi for _lo, hi in lost])
    snaps = [(s, p) for s, p in snapshots.list_snapshots(data_dir, shard) if s > seq]
    return TruncatePlan(data_dir, shard, seq, first, prefix_end, cuts, seq + 1, lost_last,
                        lost_records, snaps)


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def apply_truncate(plan, record_size=None, log=None):
    """Carry out ``plan`` (rule 4); returns the quarantine paths written.  O(bytes discarded).

    The caller holds ``shard_lock``.
    """
    from ringbuf import records
    from journaler.segment import journal_dir
    record_size = record_size or records.COMMAND_SIZE
    jdir = journal_dir(plan.data_dir)
    qdir = quarantine_dir(plan.data_dir)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for cut in reversed(plan.cuts):                       # rule 4a: newest first
        if cut.offset != 0:
            continue
        _fsync_file(cut.path)
        moved.append(quarantine_move(cut.path, qdir, "%s.0.%s.truncated" % (
            os.path.basename(cut.path), stamp)))
        fsync_dir(qdir)
        fsync_dir(jdir)
        if log is not None:
            log.warning("journal_truncated", file=cut.path, offset=0, bytes=cut.size,
                        quarantine=moved[-1], at_seq=plan.seq)
    for cut in plan.cuts:
        if cut.offset == 0:
            continue
        copy_from = cut.offset if cut.split is None else cut.split[0]
        with open(cut.path, "r+b") as f:                  # rule 4b
            target, copied = quarantine_copy(f, copy_from, qdir, "%s.%d.%s.truncated" % (
                os.path.basename(cut.path), copy_from, stamp))
            fsync_dir(qdir)
            moved.append(target)
            f.truncate(cut.offset)
            f.flush()
            os.fsync(f.fileno())
            if cut.split is not None:                     # rule 4c
                offset, first, keep = cut.split
                f.seek(offset + BLOCK_HEADER_SIZE)
                kept = f.read(keep * record_size)
                f.seek(offset)
                f.write(pack_block_header(first, keep, block_crc(first, keep, [kept])))
                f.flush()
                os.fsync(f.fileno())
                f.truncate(offset + BLOCK_HEADER_SIZE + keep * record_size)
                f.flush()
                os.fsync(f.fileno())
        if log is not None:
            log.warning("journal_truncated", file=cut.path, offset=cut.offset, bytes=copied,
                        quarantine=target, at_seq=plan.seq)
    fsync_dir(jdir)
    for _seq, path in plan.snapshots_after:               # rule 4d
        moved.append(snapshots.quarantine_snapshot(path, "truncated"))
    return moved
