"""Segment format, writer, reader, verify and tail recovery."""
import errno
import os
import random

import numpy as np
import pytest

from journaler import writer as writer_module
from journaler.errors import (JournalCorruptError, JournalGapError, JournalIOError,
                              JournalOverlapError, JournalSchemaError)
from journaler.reader import JournalReader, recover_journal, verify_journal
from journaler.segment import (BLOCK_HEADER_SIZE, SEGMENT_HEADER_SIZE, list_segments,
                               unpack_segment_header)
from journaler.writer import JournalWriter
from ringbuf import records

from helpers import check_content, make_records
from _integrity import flip_byte, tree_digest

pytestmark = [pytest.mark.timeout(60)]
RS = records.COMMAND_SIZE


def write_journal(data_dir, total, seed=1, segment_bytes=20000, fsync="off", shard="s0"):
    """Write records 1..total in random batch sizes, some split in two chunks."""
    rng = random.Random(seed)
    with JournalWriter(data_dir, shard, segment_bytes=segment_bytes, fsync=fsync) as w:
        seq = 1
        while seq <= total:
            n = min(rng.randint(1, 90), total - seq + 1)
            raw = make_records(seq, n).tobytes()
            if n > 1 and rng.random() < 0.3:      # a batch wrapping the ring: two chunks
                cut = rng.randint(1, n - 1) * RS
                data = [memoryview(raw)[:cut], memoryview(raw)[cut:]]
            else:
                data = raw
            w.append(seq, data)
            w._check()
            seq += n
        return w.durable_sequence


@pytest.mark.pypy
def test_round_trip_records_and_segment_roll(tmp_path):
    d = str(tmp_path)
    assert write_journal(d, 3000) == 3000
    segs = list_segments(d, "s0")
    assert len(segs) > 5, "segments should roll at 20000 bytes"
    for first, path in segs:
        assert os.path.getsize(path) <= 20000
        with open(path, "rb") as f:
            h = unpack_segment_header(f.read(SEGMENT_HEADER_SIZE), path)
        assert h.first_seq == first and h.schema_hash == records.SCHEMA_HASH
        assert h.record_size == RS and h.shard == "s0"
    reader = JournalReader(d, "s0")
    seqs, arr = reader.array()
    check_content(seqs, arr)
    assert seqs[-1] == 3000
    got = [(seq, rec.qty, rec.client_order_id) for seq, rec in reader.records(after=2990)]
    assert got == [(s, s, s * 7 + 3) for s in range(2991, 3001)]
    seqs, arr = reader.array(after=1000, last=1500)
    assert seqs[0] == 1001 and seqs[-1] == 1500
    check_content(seqs, arr)
    report = verify_journal(d, "s0", RS, records.SCHEMA_HASH)
    assert report.ok and report.last_seq == 3000 and report.records == 3000


@pytest.mark.pypy
def test_reopen_continues_and_refuses_gap_and_overlap(tmp_path):
    d = str(tmp_path)
    write_journal(d, 500)
    w = JournalWriter(d, "s0", segment_bytes=20000)
    try:
        assert w.next_sequence == 501 and w.durable_sequence == 500
        with pytest.raises(JournalGapError) as gap:
            w.append(503, make_records(503, 2).tobytes())
        assert gap.value.expected == 501 and "2 missing" in str(gap.value)
        with pytest.raises(JournalOverlapError) as overlap:
            w.append(499, make_records(499, 5).tobytes())
        assert "2 already journaled" in str(overlap.value)
        with pytest.raises(ValueError):
            w.append(501, b"x" * 65)
        w.append(501, make_records(501, 10).tobytes())
        w._check()
    finally:
        w.close()
    seqs, arr = JournalReader(d, "s0").array()
    check_content(seqs, arr)
    assert seqs[-1] == 510
    with pytest.raises(JournalGapError):
        JournalWriter(d, "s0", start_seq=600)


@pytest.mark.pypy
def test_schema_mismatch_is_refused_not_cut(tmp_path):
    d = str(tmp_path)
    write_journal(d, 100)
    sizes = [os.path.getsize(p) for _, p in list_segments(d, "s0")]
    with pytest.raises(JournalSchemaError):
        JournalWriter(d, "s0", schema_hash=records.SCHEMA_HASH ^ 1)
    assert [os.path.getsize(p) for _, p in list_segments(d, "s0")] == sizes
    assert not verify_journal(d, "s0", RS, records.SCHEMA_HASH ^ 1).ok


def _blocks(path):
    """[(offset, first_seq, count)] of a segment, walked independently of the reader."""
    import struct
    out = []
    with open(path, "rb") as f:
        data = f.read()
    off = SEGMENT_HEADER_SIZE
    while off + BLOCK_HEADER_SIZE <= len(data):
        magic, count, first = struct.unpack_from("<4sIq", data, off)
        out.append((off, first, count))
        off += BLOCK_HEADER_SIZE + count * RS
    return out


@pytest.mark.pypy
def test_torn_tail_is_cut_and_reported(tmp_path):
    d = str(tmp_path)
    write_journal(d, 2000)
    last_first, last_path = list_segments(d, "s0")[-1]
    blocks = _blocks(last_path)
    off, first, count = blocks[-1]
    size = os.path.getsize(last_path)
    with open(last_path, "r+b") as f:      # tear the last block in the middle of a record
        f.truncate(size - RS * count // 2 - 7)
    report = verify_journal(d, "s0", RS, records.SCHEMA_HASH)
    assert not report.ok
    p = report.problems[0]
    assert (p.path, p.offset, p.first_seq, p.reason) == (last_path, off, first, "torn_block")
    assert report.last_seq == first - 1
    rec = recover_journal(d, "s0", RS, records.SCHEMA_HASH)
    assert rec.last_seq == first - 1
    assert len(rec.cuts) == 1
    cut = rec.cuts[0]
    assert (cut.path, cut.offset, cut.problem.first_seq) == (last_path, off, first)
    assert os.path.getsize(last_path) == off
    assert os.path.exists(cut.quarantine) and os.path.getsize(cut.quarantine) == cut.length
    assert verify_journal(d, "s0", RS, records.SCHEMA_HASH).ok
    # the writer continues exactly after the cut
    with JournalWriter(d, "s0", segment_bytes=20000) as w:
        assert w.next_sequence == first
        w.append(first, make_records(first, 2000 - first + 1).tobytes())
    seqs, arr = JournalReader(d, "s0").array()
    check_content(seqs, arr)
    assert seqs[-1] == 2000


@pytest.mark.pypy
def test_flipped_byte_in_middle_names_block_and_recovery_stops(tmp_path):
    """A CRC mismatch in a middle segment is damage, not a torn tail: nothing is cut."""
    d = str(tmp_path)
    write_journal(d, 3000)
    segs = list_segments(d, "s0")
    mid_first, mid_path = segs[len(segs) // 2]
    blocks = _blocks(mid_path)
    off, first, count = blocks[len(blocks) // 2]
    flip_byte(mid_path, off + BLOCK_HEADER_SIZE + (count // 2) * RS + 17)
    report = verify_journal(d, "s0", RS, records.SCHEMA_HASH)
    assert [(p.path, p.offset, p.first_seq, p.reason) for p in report.problems] == \
        [(mid_path, off, first, "crc_mismatch")]
    assert "block first_seq=%d" % first in str(report.problems[0])
    assert report.last_seq == first - 1 and report.startup == "stop"
    # readers stop before the bad block
    seqs, arr = JournalReader(d, "s0").array()
    check_content(seqs, arr)
    assert seqs[-1] == first - 1
    before = tree_digest(d)
    with pytest.raises(JournalCorruptError) as err:
        recover_journal(d, "s0", RS, records.SCHEMA_HASH)
    e = err.value
    assert (e.path, e.offset, e.reason) == (mid_path, off, "crc_mismatch")
    assert (e.valid_through, e.first_lost_seq, e.last_lost_seq) == (first - 1, first, 3000)
    assert e.records_after == 3000 - (first + count - 1)
    assert tree_digest(d) == before, "start-up must leave every file as it was"


@pytest.mark.pypy
def test_corrupt_segment_header_of_last_segment(tmp_path):
    d = str(tmp_path)
    write_journal(d, 1000)
    segs = list_segments(d, "s0")
    last_first, last_path = segs[-1]
    with open(last_path, "r+b") as f:     # a segment created but its header torn
        f.truncate(40)
    rec = recover_journal(d, "s0", RS, records.SCHEMA_HASH)
    assert rec.last_seq == last_first - 1
    assert rec.cuts[0].problem.reason == "short_header" and not os.path.exists(last_path)


def _failing(after_calls, err=errno.ENOSPC):
    real = writer_module._writev
    state = {"calls": 0, "fail": True}

    def writev(fd, parts):
        state["calls"] += 1
        if state["fail"] and state["calls"] > after_calls:
            raise OSError(err, os.strerror(err))
        return real(fd, parts)
    return writev, state


@pytest.mark.pypy
@pytest.mark.parametrize("policy", ["batch", "interval", "off"])
def test_disk_full_loses_nothing_acknowledged(tmp_path, monkeypatch, policy):
    d = str(tmp_path)
    writev, state = _failing(after_calls=25)
    monkeypatch.setattr(writer_module, "_writev", writev)
    w = JournalWriter(d, "s0", segment_bytes=8000, fsync=policy, fsync_interval_ms=0)
    acked = 0
    seq = 1
    errors = 0
    rng = random.Random(7)
    while seq <= 1500:
        n = min(rng.randint(1, 40), 1501 - seq)
        try:
            w.append(seq, make_records(seq, n).tobytes())
            seq += n
        except JournalIOError as exc:
            errors += 1
            assert exc.errno == errno.ENOSPC
            assert w.next_sequence == w.durable_sequence + 1
            seq = w.next_sequence            # re-append from what is durable (ring semantics)
            if errors == 3:
                state["fail"] = False         # space returns
        w._check()
        assert w.durable_sequence >= acked
        acked = w.durable_sequence
        # what the writer acknowledged is readable and intact at every step
        seqs, arr = JournalReader(d, "s0").array()
        assert len(seqs) >= acked
        check_content(seqs, arr)
    assert errors == 3
    w.close()
    seqs, arr = JournalReader(d, "s0").array()
    check_content(seqs, arr)
    assert seqs[-1] == 1500
    assert verify_journal(d, "s0", RS, records.SCHEMA_HASH).ok


@pytest.mark.pypy
def test_fsync_failure_rewinds_to_durable(tmp_path, monkeypatch):
    d = str(tmp_path)
    calls = {"n": 0}
    real = writer_module._fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)
    monkeypatch.setattr(writer_module, "_fsync", fsync)
    w = JournalWriter(d, "s0", fsync="batch")
    seq = 1
    failed = 0
    while seq <= 100:
        try:
            w.append(seq, make_records(seq, 10).tobytes())
            seq += 10
        except JournalIOError as exc:
            failed += 1
            assert exc.op == "fsync"
            seq = w.next_sequence
            assert seq == w.durable_sequence + 1
            w._check()
    w.close()
    assert failed == 1
    seqs, arr = JournalReader(d, "s0").array()
    check_content(seqs, arr)
    assert seqs[-1] == 100


def test_disk_full_on_real_tmpfs(tmp_path):
    """A real 1 MiB tmpfs, when this machine lets us mount one (root, CAP_SYS_ADMIN)."""
    import subprocess
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                         capture_output=True)
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % res.stderr.decode().strip())
    try:
        d = str(mnt)
        w = JournalWriter(d, "s0", segment_bytes=256 << 10, fsync="batch")
        seq = 1
        full = None
        while seq < 100000:
            try:
                w.append(seq, make_records(seq, 100).tobytes())
                seq += 100
            except JournalIOError as exc:
                full = exc
                break
        assert full is not None and full.errno == errno.ENOSPC
        acked = w.durable_sequence
        w.close()
        seqs, arr = JournalReader(d, "s0").array()
        check_content(seqs, arr)
        assert seqs[-1] == acked
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.pypy
def test_interval_policy_syncs_when_due(tmp_path):
    now = [0.0]
    w = JournalWriter(str(tmp_path), "s0", fsync="interval", fsync_interval_ms=10,
                      clock=lambda: now[0])
    try:
        w.append(1, make_records(1, 5).tobytes())
        assert w.written_sequence == 5 and w.durable_sequence == 0
        assert w.seconds_until_sync() == pytest.approx(0.01)
        now[0] = 0.011
        assert w.sync_if_due() == 5 and w.syncs == 1
        w.append(6, make_records(6, 5).tobytes())
        assert w.durable_sequence == 5
    finally:
        w.close()
    assert w.durable_sequence == 10
