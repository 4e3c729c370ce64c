"""One seeded power-loss trial of the journal + snapshot pipeline (tests/journaler/test_crashsim.py).

A trial is a few *epochs*.  Each epoch:

1. Start-up exactly as ringmatch does it: the supervisor's ring start
   (``recovery.durable_sequence``), the journaler's open (``JournalWriter``,
   which cuts a torn tail of the last segment), the matcher's snapshot
   selection (``recovery.restore_latest``, i.e. ``snapshot.load_latest`` with
   its journal-binding check) and its journal replay
   (``recovery.journal_records`` after the snapshot).  Then the checks below.
2. Load with the crash simulation installed: the journaler appends ring
   batches (1-2 chunks, as a ring wrap gives) under the fsync policy; what it
   acknowledges (``durable_sequence`` when the call returned) is what the
   matcher is gated on; the matcher (``ChainMatcher``: its state is a hash
   chain of every record it processed, so any record missing, reordered or
   from another history changes it) processes up to there and, on a SNAPSHOT
   record, writes a snapshot as engine/matcher_process.py does
   (``write_snapshot(..., keep=KEEP, binding=binding_from_chunks(batch, seq))``,
   which also prunes old snapshots and segments).  ``interval`` runs on a fake
   clock, with the journaler loop's ``sync_if_due`` after each step.
3. The machine loses power at a seeded I/O operation (``CrashSim``), with a
   seeded writeback model: in order (a prefix of the unsynced writes kept),
   none kept, or out of order (``scattered``: each write kept, dropped or
   torn; ``pages``: each dirty page written back or not) -- the last two
   leave holes followed by intact unsynced blocks in the last segment, which
   start-up must cut as a torn tail (reader rule 5: no later block claims
   the hole durable).

Checks after each power loss (``Trial.check``):

* start-up raises nothing (a JournalCorruptError here is a power-loss state
  the journal treats as damage: a bug);
* the journal is a gap-free prefix of what was appended, byte for byte; only
  the last segment was cut; the supervisor's ring start equals the
  journaler's end; the next append must continue right after it;
* ``batch`` and ``interval``: every acknowledged record survived; ``interval``:
  every lost record was appended less than ``fsync_interval_ms`` (+ one clock
  step) before the crash; every policy, ``off`` included: nothing before the
  newest segment of the moment of the crash is lost (segment rolls fsync);
* the snapshot used is at or before the journal's end and is the state of
  THIS history at its seq (a stale one would give another hash), and the
  state after the replay equals the hash chain of the surviving journal.
"""
import os
import random
import struct

import numpy as np

from journaler import recovery, snapshot as snapshots
from journaler.crc import crc32c
from journaler.reader import JournalReader
from journaler.segment import list_segments
from journaler.writer import JournalWriter
from ringbuf import records

from _crashsim import CrashSim, OUT_OF_ORDER, PowerLoss, TEARS

SHARD = "s0"
RS = records.COMMAND_SIZE
SNAPSHOT = int(records.CommandKind.SNAPSHOT)
SEGMENT_BYTES = 2048            # about 25 records a segment: rolls are frequent
MAX_BATCH = 24
SNAPSHOT_EVERY = 40             # records, on average
KEEP = 2                        # snapshots kept: prune deletes segments too
INTERVAL_MS = 5
STEP_MS = 3                     # fake-clock step between journaler loop turns (max)
MAX_OPS = 400                   # the crash point is uniform in 1..MAX_OPS I/O operations
MAX_RECORDS = 1500              # an epoch that reaches this loses power at its end
POLICIES = ("batch", "interval", "off")
#: the writeback model of an epoch, when a trial does not fix one (seeded choice)
WRITEBACK_CHOICE = ("ordered", "ordered", "none") + OUT_OF_ORDER
#: "pages": page sizes.  The trials' segments (2 KiB) and unsynced tails (a few hundred
#: bytes under interval) are scaled down from real ones (64 MiB; an interval's worth of
#: a busy journal is many 4 KiB pages), so the page is scaled down with them too
PAGE_SIZES = (256, 4096)

_FNV = 1099511628211
_MASK = 0xFFFFFFFFFFFFFFFF
_SEED_HASH = 14695981039346656037


def chain(h, seq, raw):
    """The ChainMatcher state after processing ``raw`` (64 bytes) at ``seq`` from state ``h``."""
    return ((((h ^ crc32c(raw)) * _FNV) & _MASK ^ seq) * _FNV) & _MASK


class ChainMatcher(object):
    """The matcher interface recovery needs; its state is a hash chain of what it processed."""

    def __init__(self, config=None, sink=None):
        self.h = _SEED_HASH
        self.last = 0

    def process(self, seq, record):
        assert seq == self.last + 1, "replay is not gap-free: %d after %d" % (seq, self.last)
        if not isinstance(record, (bytes, bytearray, memoryview)):
            from ringbuf._ringbuf_cffi import ffi
            record = ffi.buffer(ffi.addressof(record))
        self.h = chain(self.h, seq, bytes(record))
        self.last = seq

    def state_hash(self):
        return self.h

    def snapshot(self):
        return struct.pack("<Qq", self.h, self.last)

    @classmethod
    def restore(cls, config, payload, sink):
        m = cls()
        m.h, m.last = struct.unpack("<Qq", payload)
        return m


class Lines(object):
    """A Logger stand-in that keeps (event, fields)."""

    def __init__(self):
        self.lines = []

    def event(self, event, **fields):
        self.lines.append((event, fields))

    warning = error = event

    def named(self, name):
        return [f for e, f in self.lines if e == name]


class Clock(object):
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class TrialFailure(AssertionError):
    pass


class Trial(object):
    """One seeded trial (module doc).  ``run()`` returns statistics; a failed check raises
    TrialFailure naming the seed, the epoch, the crash point and what the power loss did."""

    def __init__(self, data_dir, seed, policy=None, epochs=3, writeback=None, tears=TEARS,
                 fsync_lies=False, keep=KEEP, segment_bytes=SEGMENT_BYTES,
                 max_batch=MAX_BATCH, page_size=None, writebacks=WRITEBACK_CHOICE):
        self.d = data_dir
        self.seed = seed
        self.rng = random.Random(seed)
        self.policy = policy or POLICIES[seed % len(POLICIES)]
        self.epochs = epochs
        self.writeback = writeback
        self.tears = tears
        self.fsync_lies = fsync_lies
        self.keep = keep
        self.segment_bytes = segment_bytes
        self.max_batch = max_batch
        self.page_size = page_size
        self.writebacks = writebacks
        self.timeline = bytearray()     # records 1..n of the current history
        self.hashes = [_SEED_HASH]      # hashes[s]: ChainMatcher state after seq s
        self.append_time = {}
        self.stats = {"policy": self.policy, "cuts": 0, "stale_refused": 0, "lost": 0,
                      "lost_acknowledged": 0, "crashes": 0, "snapshot_used": 0,
                      "out_of_order": 0, "hole_cuts": 0, "journal_end": [], "ops": []}
        self.where = ""

    # -- the history --------------------------------------------------------
    def _extend(self, first, data):
        assert first == len(self.timeline) // RS + 1
        self.timeline += data
        h = self.hashes[-1]
        for i in range(len(data) // RS):
            h = chain(h, first + i, bytes(data[i * RS:(i + 1) * RS]))
            self.hashes.append(h)

    def _cut_history(self, last):
        del self.timeline[last * RS:]
        del self.hashes[last + 1:]

    def _batch(self, epoch, first, count):
        rng = self.rng
        arr = np.zeros(count, records.COMMAND_DTYPE)
        seqs = np.arange(first, first + count, dtype=np.int64)
        arr["kind"] = 1
        arr["side"] = 1 + (seqs % 2)
        arr["symbol_id"] = 1
        arr["account_id"] = 1 + epoch
        arr["price"] = rng.randrange(1, 1 << 30)
        arr["qty"] = seqs
        arr["timestamp_ns"] = seqs * 1000 + epoch
        arr["client_order_id"] = epoch * 1000000007 + seqs
        for i in range(count):
            if rng.random() < 1.0 / SNAPSHOT_EVERY:
                arr["kind"][i] = SNAPSHOT
        return arr.tobytes()

    def fail(self, message):
        raise TrialFailure("seed=%d policy=%s %s: %s" % (self.seed, self.policy, self.where,
                                                          message))

    # -- a trial --------------------------------------------------------------
    def run(self):
        loss = None
        for epoch in range(self.epochs):
            self.where = "epoch %d start-up" % epoch
            matcher, end = self.check(loss)
            self.where = "epoch %d load" % epoch
            loss = self.load(epoch, matcher, end)
        self.where = "final start-up"
        self.check(loss)
        return self.stats

    def load(self, epoch, matcher, end):
        """Step 2 and 3 of the module doc; returns what the checks need about the crash."""
        rng = self.rng
        writeback = self.writeback or rng.choice(self.writebacks)
        page_size = self.page_size or (rng.choice(PAGE_SIZES) if writeback == "pages" else 4096)
        sim = CrashSim(self.d, rng.getrandbits(32), crash_after=rng.randint(1, MAX_OPS),
                       writeback=writeback, tears=self.tears, fsync_lies=self.fsync_lies,
                       page_size=page_size)
        self.stats["out_of_order"] += writeback in OUT_OF_ORDER
        clock = Clock()
        acked = end
        attempted = end
        sim.install()
        try:
            try:
                w = JournalWriter(self.d, SHARD, segment_bytes=self.segment_bytes,
                                  fsync=self.policy,
                                  fsync_interval_ms=INTERVAL_MS, clock=clock, start_seq=end + 1)
                seq = end + 1
                while seq <= end + MAX_RECORDS:
                    n = rng.randint(1, self.max_batch)
                    data = self._batch(epoch, seq, n)
                    self._extend(seq, data)
                    for s in range(seq, seq + n):
                        self.append_time[s] = clock.now
                    attempted = seq + n - 1
                    cut = rng.randrange(0, n) * RS      # two chunks when the ring wraps
                    chunks = [memoryview(data)[:cut], memoryview(data)[cut:]] if cut else [data]
                    w.append(seq, chunks)
                    w._check()
                    acked = max(acked, w.durable_sequence)
                    seq += n
                    clock.now += rng.uniform(0, STEP_MS / 1000.0)
                    acked = max(acked, w.sync_if_due())     # the journaler loop's timed wake-up
                    self._match(matcher, acked)
                sim.crash_now()
            except PowerLoss:
                pass
            segments_at_crash = list_segments(self.d, SHARD)
            crash_time = clock.now
            ops = sim.ops
        finally:
            report = sim.power_loss()
        self.stats["crashes"] += 1
        self.stats["ops"].append(ops)
        return {"acked": acked, "attempted": attempted, "crash_time": crash_time, "ops": ops,
                "newest_segment_first": segments_at_crash[-1][0] if segments_at_crash else 1,
                "report": report, "writeback": writeback}

    def _match(self, matcher, acked):
        """The matcher process's loop over one batch (records matcher.last+1 .. acked)."""
        first = matcher.last + 1
        if acked < first:
            return
        view = memoryview(self.timeline)[(first - 1) * RS:acked * RS]
        try:
            for i in range(acked - first + 1):
                seq = first + i
                raw = view[i * RS:(i + 1) * RS]
                matcher.process(seq, raw)
                if raw[0] == SNAPSHOT:
                    snapshots.write_snapshot(
                        self.d, SHARD, seq, matcher, keep=self.keep,
                        binding=snapshots.binding_from_chunks([(first, view)], seq))
        finally:
            view.release()

    # -- start-up and the checks -------------------------------------------
    def check(self, loss):
        """Step 1 of the module doc and every check; returns (matcher, journal end)."""
        from journaler.errors import JournalError
        segments = list_segments(self.d, SHARD)
        lines = Lines()
        try:
            ring_start = recovery.durable_sequence(self.d, SHARD)      # the supervisor
            writer = JournalWriter(self.d, SHARD, segment_bytes=self.segment_bytes,
                                   fsync=self.policy, log=lines)       # the journaler
        except JournalError as exc:
            self.fail("start-up refused the journal a power loss left: %r; loss=%s; segments %s"
                      % (exc, self._describe(loss), [os.path.basename(p) for _f, p in segments]))
        end = writer.durable_sequence
        next_seq = writer.next_sequence
        cuts = writer.recovery.cuts
        writer.close()
        if ring_start != end:
            self.fail("the supervisor's ring start %d != the journaler's end %d" % (ring_start, end))
        if next_seq is not None and next_seq != end + 1:
            self.fail("next sequence %d does not continue the journal's end %d" % (next_seq, end))
        for cut in cuts:
            if cut.path != segments[-1][1]:
                self.fail("cut %s is not in the last segment %s" % (cut, segments[-1][1]))
        self.stats["cuts"] += len(cuts)
        # cuts of a hole followed by intact (never durable) blocks: out-of-order writeback
        self.stats["hole_cuts"] += sum(1 for f in lines.named("journal_tail_cut")
                                       if f["intact_records_cut"] > 0)
        # the journal is a gap-free prefix of the history
        remaining = list_segments(self.d, SHARD)
        seqs, arr = JournalReader(self.d, SHARD).array()
        if len(seqs):
            first = int(seqs[0])
            if int(seqs[-1]) != end or len(seqs) != end - first + 1:
                self.fail("journal holds %d..%d (%d records), end %d"
                          % (first, int(seqs[-1]), len(seqs), end))
            if end > len(self.timeline) // RS or \
                    arr.tobytes() != bytes(self.timeline[(first - 1) * RS:end * RS]):
                self.fail("the journal's records %d..%d are not what was appended" % (first, end))
        elif end != (remaining[0][0] - 1 if remaining else 0):
            self.fail("journal end %d but no records" % end)
        # what was lost, against the policy's promise
        if loss is not None:
            lost = loss["attempted"] - end
            self.stats["lost"] += max(0, lost)
            self.stats["lost_acknowledged"] += max(0, loss["acked"] - end)
            if end > loss["attempted"]:
                self.fail("journal end %d is beyond the last record appended %d"
                          % (end, loss["attempted"]))
            if self.policy in ("batch", "interval") and end < loss["acked"]:
                self.fail("acknowledged records %d..%d lost (policy %s); loss=%s"
                          % (end + 1, loss["acked"], self.policy, self._describe(loss)))
            if end < loss["newest_segment_first"] - 1:
                self.fail("records %d..%d lost from a segment before the newest (first seq %d): "
                          "a segment roll did not make its segment durable; loss=%s"
                          % (end + 1, loss["newest_segment_first"] - 1,
                             loss["newest_segment_first"], self._describe(loss)))
            if self.policy == "interval":
                bound = (INTERVAL_MS + STEP_MS) / 1000.0
                for s in range(end + 1, loss["attempted"] + 1):
                    age = loss["crash_time"] - self.append_time[s]
                    if age > bound:
                        self.fail("record %d appended %.1f ms before the crash was lost: more "
                                  "than fsync_interval_ms=%d" % (s, age * 1000, INTERVAL_MS))
        self._cut_history(end)
        # the matcher's start-up, as engine/matcher_process.py does it (max_seq: the
        # journal's durable end, computed inside; replay up to the ring's start)
        matcher, snap_seq = recovery.restore_latest(None, self.d, SHARD, log=lines,
                                                    matcher_class=ChainMatcher)
        self.stats["stale_refused"] += len(lines.named("snapshot_stale"))
        if snap_seq > end:
            self.fail("snapshot at %d restored beyond the journal's end %d" % (snap_seq, end))
        if matcher.state_hash() != self.hashes[snap_seq]:
            self.fail("snapshot at %d restored a state of another history (stale)" % snap_seq)
        self.stats["snapshot_used"] += snap_seq > 0
        try:
            for seq, record in recovery.journal_records(self.d, SHARD, after=snap_seq,
                                                        last=max(ring_start, snap_seq)):
                matcher.process(seq, record)
        except JournalError as exc:
            self.fail("replay after snapshot %d failed: %r; loss=%s"
                      % (snap_seq, exc, self._describe(loss)))
        if matcher.last != end or matcher.state_hash() != self.hashes[end]:
            self.fail("state after replay (seq %d) is not the replay of the surviving journal "
                      "(end %d)" % (matcher.last, end))
        self.stats["journal_end"].append(end)
        return matcher, end

    @staticmethod
    def _describe(loss):
        if loss is None:
            return "-"
        return ("{acked=%d attempted=%d ops=%d writeback=%s power loss: %s}"
                % (loss["acked"], loss["attempted"], loss["ops"], loss["writeback"],
                   loss["report"]))
