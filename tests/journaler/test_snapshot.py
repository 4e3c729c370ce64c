"""Snapshots, retention and recovery (snapshot + journal tail).

The contract tests run against a small deterministic stand-in matcher (so
they run before and without engine.matcher) and, when engine.matcher exists,
against the real Matcher.
"""
import os
import struct

import pytest

from journaler import recovery
from journaler import snapshot as snapshots
from journaler.errors import JournalGapError
from journaler.segment import list_segments
from journaler.writer import JournalWriter

from helpers import make_records

pytestmark = [pytest.mark.timeout(60)]


class ToyMatcher(object):
    """Deterministic state machine over command records: enough to test recovery."""

    def __init__(self, config, sink):
        self.h = 1469598103934665603
        self.n = 0
        self.last = 0

    def process(self, seq, cmd):
        assert seq == self.last + 1, "replay must be gap-free"
        self.last = seq
        self.n += 1
        for v in (seq, cmd.qty, cmd.account_id, cmd.price):
            self.h = ((self.h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF

    def state_hash(self):
        return self.h ^ self.n

    def snapshot(self):
        return struct.pack("<QQq", self.h, self.n, self.last)

    @classmethod
    def restore(cls, config, data, sink):
        m = cls(config, sink)
        m.h, m.n, m.last = struct.unpack("<QQq", data)
        return m


def journal(d, total, shard="s0", segment_bytes=16 << 10):
    with JournalWriter(d, shard, segment_bytes=segment_bytes, fsync="off") as w:
        seq = 1
        while seq <= total:
            n = min(97, total - seq + 1)
            w.append(seq, make_records(seq, n).tobytes())
            seq += n


def straight(d, last, shard="s0"):
    m = ToyMatcher(None, None)
    recovery.replay(m, d, shard, after=0, last=last)
    return m


@pytest.mark.pypy
def test_snapshot_restore_replay_same_hash(tmp_path):
    d = str(tmp_path)
    journal(d, 2000)
    m = straight(d, 800)
    path = snapshots.write_snapshot(d, "s0", 800, m)
    assert os.path.basename(path) == "s0-00000000000000000800.snap"
    snap = snapshots.read_snapshot(path)
    assert snap.seq == 800 and snap.state_hash == m.state_hash()
    recovered, last = recovery.recover(None, d, "s0", matcher_class=ToyMatcher)
    assert last == 2000 and recovered.last == 2000
    assert recovered.state_hash() == straight(d, 2000).state_hash()
    # restore without replay gives the snapshot's own hash
    restored, seq = recovery.restore_latest(None, d, "s0", matcher_class=ToyMatcher)
    assert seq == 800 and restored.state_hash() == m.state_hash()


@pytest.mark.pypy
@pytest.mark.parametrize("damage", ["payload_byte", "truncated", "header_byte", "wrong_hash"])
def test_invalid_newest_snapshot_falls_back(tmp_path, damage):
    d = str(tmp_path)
    journal(d, 1500)
    snapshots.write_snapshot(d, "s0", 500, straight(d, 500))
    m1000 = straight(d, 1000)
    if damage == "wrong_hash":   # valid file whose payload does not restore to its hash
        path = snapshots.write_snapshot_bytes(d, "s0", 1000, m1000.state_hash() ^ 1,
                                              m1000.snapshot())
    else:
        path = snapshots.write_snapshot(d, "s0", 1000, m1000)
        with open(path, "r+b") as f:
            size = os.path.getsize(path)
            if damage == "truncated":
                f.truncate(size - 3)
            else:
                pos = size - 5 if damage == "payload_byte" else 30
                f.seek(pos)
                b = f.read(1)
                f.seek(pos)
                f.write(bytes([b[0] ^ 1]))
    snap, matcher, rejected = snapshots.load_latest(
        d, "s0", restore=lambda p: ToyMatcher.restore(None, p, None))
    assert snap.seq == 500 and [r[0] for r in rejected] == [path]
    recovered, last = recovery.recover(None, d, "s0", matcher_class=ToyMatcher)
    assert last == 1500 and recovered.state_hash() == straight(d, 1500).state_hash()


@pytest.mark.pypy
def test_prune_keeps_k_snapshots_and_the_journal_they_need(tmp_path):
    d = str(tmp_path)
    journal(d, 5000)
    states = {seq: straight(d, seq) for seq in (1000, 2000, 3000, 4000)}
    final = straight(d, 5000).state_hash()
    before = list_segments(d, "s0")
    for seq in (1000, 2000, 3000, 4000):
        snapshots.write_snapshot(d, "s0", seq, states[seq], keep=2)
    assert [s for s, _ in snapshots.list_snapshots(d, "s0")] == [3000, 4000]
    segs = list_segments(d, "s0")
    assert len(segs) < len(before), "segments wholly before seq 3000 are deleted"
    assert segs[0][0] <= 3001 < segs[1][0], "the segment holding 3001 is kept"
    # the oldest kept snapshot can still be replayed to the end
    os.unlink(snapshots.list_snapshots(d, "s0")[-1][1])
    recovered, last = recovery.recover(None, d, "s0", matcher_class=ToyMatcher)
    assert last == 5000 and recovered.state_hash() == final


@pytest.mark.pypy
def test_snapshot_older_than_journal_start_is_a_gap(tmp_path):
    d = str(tmp_path)
    journal(d, 3000)
    snapshots.write_snapshot(d, "s0", 100, straight(d, 100))
    os.unlink(list_segments(d, "s0")[0][1])        # over-eager manual pruning
    with pytest.raises(JournalGapError):
        recovery.recover(None, d, "s0", matcher_class=ToyMatcher)


def test_snapshot_schedule():
    s = snapshots.SnapshotSchedule(every_commands=100, every_seconds=2.0)
    assert not s.due(cursor=50, now=0.0)
    assert s.due(cursor=100, now=0.5)
    s.issued(101, now=0.5)
    assert not s.due(cursor=150, now=1.0)
    assert s.due(cursor=150, now=2.6)
    s.issued(151, now=2.6)
    assert not s.due(cursor=151, now=10.0)   # nothing new: no snapshot
