"""Issue 11 defects 1-3: recovery that never lies.

Only the torn tail of the last segment is cut at start-up; any other damage
stops start-up naming file, offset and sequences, and leaves every file as it
was.  ``journal verify`` names a gap and the true end of the valid prefix.
``journal truncate`` is the operator's explicit repair.  A snapshot is bound
to the journal it summarises and is never restored over another history.
"""
import fcntl
import os
import stat
import struct

import pytest

from journaler import cli as journal_cli
from journaler import process as journaler_process
from journaler import recovery
from journaler import snapshot as snapshots
from journaler.errors import JournalCorruptError
from journaler.reader import JournalReader, recover_journal, verify_journal
from journaler.segment import (BLOCK_HEADER_SIZE, SEGMENT_HEADER_SIZE, block_crc, list_segments,
                               pack_block_header)
from journaler.writer import JournalWriter
from ringbuf import Ring, records

from _integrity import flip_byte, tree_digest
from helpers import check_content, make_records

pytestmark = [pytest.mark.timeout(60)]
RS = records.COMMAND_SIZE
SHARD = "s0"
PER_SEGMENT = 1000          # records per segment in four_segments()


def four_segments(d, total=4000, shard=SHARD, fsync="off"):
    """Records 1..total, blocks of 50, a new segment every PER_SEGMENT records.

    ``fsync="off"``: the last segment's blocks were never synced (each claims
    only its header durable); ``"batch"``: each block claims every block
    before it durable.
    """
    block = 50
    segment_bytes = SEGMENT_HEADER_SIZE + (PER_SEGMENT // block) * (BLOCK_HEADER_SIZE + block * RS)
    with JournalWriter(d, shard, segment_bytes=segment_bytes, fsync=fsync) as w:
        for seq in range(1, total + 1, block):
            w.append(seq, make_records(seq, block).tobytes())
    segs = list_segments(d, shard)
    assert [f for f, _ in segs] == [1 + i * PER_SEGMENT for i in range(total // PER_SEGMENT)]
    return segs


def block_offset(index):
    return SEGMENT_HEADER_SIZE + index * (BLOCK_HEADER_SIZE + 50 * RS)


class Lines(object):
    def __init__(self):
        self.lines = []

    def event(self, event, **fields):
        self.lines.append((event, fields))

    def error(self, event, **fields):
        self.lines.append((event, dict(fields, level="ERROR")))

    def warning(self, event, **fields):
        self.lines.append((event, dict(fields, level="WARN")))

    def named(self, name):
        return [f for e, f in self.lines if e == name]


def start_must_stop(d, expected):
    """Every start-up entry point refuses the journal; no file changes."""
    before = tree_digest(d)
    errors = []
    with pytest.raises(JournalCorruptError) as err:
        JournalWriter(d, SHARD)
    errors.append(err.value)
    with pytest.raises(JournalCorruptError) as err:     # the supervisor's ring start
        recovery.durable_sequence(d, SHARD)
    errors.append(err.value)
    with pytest.raises(JournalCorruptError) as err:
        recovery.recover(None, d, SHARD, matcher_class=ToyMatcher)
    errors.append(err.value)
    for e in errors:
        got = dict((k, getattr(e, k)) for k in expected)
        assert got == expected, str(e)
        assert os.path.basename(e.path) in str(e) and "offset %d" % e.offset in str(e)
    assert tree_digest(d) == before, "start-up must leave every file as it was"
    return errors[0]


# -- defect 1: damage in the middle is not a torn tail ------------------------------------


@pytest.mark.pypy
def test_flipped_byte_in_segment_2_of_4_stops_startup_and_changes_nothing(tmp_path):
    d = str(tmp_path)
    segs = four_segments(d)
    path = segs[1][1]
    off = block_offset(10)                     # block of seqs 1501..1550
    flip_byte(path, off + BLOCK_HEADER_SIZE + 7 * RS + 3)
    e = start_must_stop(d, {"path": path, "offset": off, "reason": "crc_mismatch",
                            "valid_through": 1500, "first_lost_seq": 1501,
                            "last_lost_seq": 4000, "records_after": 2450})
    assert "seqs 1501..4000" in str(e) and "no file was changed" in str(e)
    # readers still read the valid prefix
    seqs, arr = JournalReader(d, SHARD).array()
    check_content(seqs, arr)
    assert seqs[-1] == 1500


@pytest.mark.pypy
@pytest.mark.parametrize("field_offset", [40, 52, 124])   # created_ns, shard, header_crc
def test_damaged_header_of_middle_segment_stops_startup(tmp_path, field_offset):
    d = str(tmp_path)
    segs = four_segments(d)
    flip_byte(segs[1][1], field_offset)
    start_must_stop(d, {"path": segs[1][1], "offset": 0, "reason": "header_crc",
                        "valid_through": 1000, "first_lost_seq": 1001, "last_lost_seq": 4000,
                        "records_after": 3000})


@pytest.mark.pypy
def test_damaged_header_of_last_segment_with_records_stops_startup(tmp_path):
    d = str(tmp_path)
    segs = four_segments(d)
    flip_byte(segs[3][1], 44)
    start_must_stop(d, {"path": segs[3][1], "offset": 0, "reason": "header_crc",
                        "valid_through": 3000, "first_lost_seq": 3001, "last_lost_seq": 4000})


def zero_block(path, index):
    """Zeros over block ``index`` of a four_segments() segment: its bytes lost, later ones intact."""
    off = block_offset(index)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\0" * (BLOCK_HEADER_SIZE + 50 * RS))
    return off


@pytest.mark.pypy
def test_zeros_in_synced_bytes_of_last_segment_followed_by_intact_blocks_stop_startup(tmp_path):
    """Rule 5a: the intact block after the zeros says they were fsynced: damage, not a tear."""
    d = str(tmp_path)
    segs = four_segments(d, fsync="batch")
    path = segs[3][1]
    off = zero_block(path, 5)
    e = start_must_stop(d, {"path": path, "offset": off, "reason": "bad_block_header",
                            "valid_through": 3250, "first_lost_seq": 3251, "last_lost_seq": 4000,
                            "records_after": 700})
    assert "offset %d was durable: the intact block at offset %d (seqs 3301..3350) says " \
        "synced_through=%d" % (off, block_offset(6), block_offset(6)) in str(e)
    assert verify_journal(d, SHARD, RS, records.SCHEMA_HASH).startup == "stop"


@pytest.mark.pypy
def test_zeros_in_never_synced_bytes_of_last_segment_are_a_torn_tail(tmp_path):
    """Rule 5: out-of-order writeback after a power loss -- a hole, then intact blocks that
    were never durable either (each claims only the segment header): cut at the hole."""
    d = str(tmp_path)
    segs = four_segments(d, fsync="off")
    path = segs[3][1]
    off = zero_block(path, 5)
    tail = os.path.getsize(path) - off
    assert verify_journal(d, SHARD, RS, records.SCHEMA_HASH).startup == "cut_torn_tail"
    assert recovery.durable_sequence(d, SHARD) == 3250
    log = Lines()
    with JournalWriter(d, SHARD, log=log) as w:
        assert w.next_sequence == 3251
    cut = log.named("journal_tail_cut")
    assert len(cut) == 1, log.lines
    c = cut[0]
    assert (c["level"], c["file"], c["offset"], c["bytes"], c["reason"]) == \
        ("WARN", path, off, tail, "bad_block_header")
    assert (c["first_cut_seq"], c["intact_seqs_cut"], c["intact_records_cut"], c["watermark"]) == \
        (3251, "3301..4000", 700, SEGMENT_HEADER_SIZE)
    assert os.path.getsize(path) == off and os.path.getsize(c["quarantine"]) == tail
    assert verify_journal(d, SHARD, RS, records.SCHEMA_HASH).ok


@pytest.mark.pypy
def test_journaler_process_cuts_a_writeback_hole_with_one_warn_and_starts(tmp_path):
    """As the supervisor runs it after a power loss: ring built from the journal's durable
    end, the journaler cuts the never-synced hole and the blocks after it, logs one WARN
    naming them, is ready and journals the next records right after the cut."""
    d = str(tmp_path)
    shard = "ih%d" % os.getpid()
    segs = four_segments(d, shard=shard, fsync="off")
    path = segs[3][1]
    with open(path, "r+b") as f:
        f.seek(block_offset(5))
        f.write(b"\0" * (BLOCK_HEADER_SIZE + 50 * RS))
    end = recovery.durable_sequence(d, shard)            # the supervisor's ring start
    assert end == 3250
    ring = Ring.create("rm-%s-in" % shard, capacity=1024, consumers={"journaler": []},
                       initial_sequence=end)
    try:
        log = Lines()
        assert journaler_process.run(ring, d, shard, log=log, stop=[1]) == \
            journaler_process.EXIT_OK
        cut = log.named("journal_tail_cut")
        assert len(cut) == 1 and not log.named("fatal")
        assert (cut[0]["level"], cut[0]["file"], cut[0]["offset"], cut[0]["first_cut_seq"],
                cut[0]["intact_seqs_cut"]) == ("WARN", path, block_offset(5), 3251, "3301..4000")
        assert [f["seq"] for f in log.named("ready")] == [3250]
    finally:
        ring.close()
        ring.unlink()
    with JournalWriter(d, shard) as w:
        assert w.next_sequence == 3251
        w.append(3251, make_records(3251, 50).tobytes())
    seqs, arr = JournalReader(d, shard).array()
    check_content(seqs, arr)
    assert seqs[-1] == 3300


def interval_segment(d, synced_blocks, blocks=10):
    """One segment of ``blocks`` blocks of 50 under ``interval``, synced after ``synced_blocks``."""
    with JournalWriter(d, SHARD, fsync="interval", fsync_interval_ms=10 ** 9,
                       clock=lambda: 0.0) as w:
        for i in range(blocks):
            w.append(1 + 50 * i, make_records(1 + 50 * i, 50).tobytes())
            if i + 1 == synced_blocks:
                w.sync()
        assert w.durable_sequence == 50 * synced_blocks
        w._fd, fd = None, w._fd             # a power loss: no close-time sync
        os.close(fd)


@pytest.mark.pypy
@pytest.mark.parametrize("zeroed", [0, 2, 3, 4, 7])
def test_last_segment_zeros_stop_when_synced_and_are_cut_when_never_synced(tmp_path, zeroed):
    """The exact rule: blocks 0..3 were fsynced (every later block says synced_through = end of
    block 3); zeros over block 0..3 stop start-up, zeros over block 4.. are a torn tail."""
    d = str(tmp_path)
    interval_segment(d, synced_blocks=4)
    path = list_segments(d, SHARD)[0][1]
    off = zero_block(path, zeroed)
    if zeroed < 4:
        start_must_stop(d, {"path": path, "offset": off, "reason": "bad_block_header",
                            "valid_through": 50 * zeroed, "first_lost_seq": 50 * zeroed + 1,
                            "last_lost_seq": 500, "records_after": 50 * (9 - zeroed)})
        return
    log = Lines()
    with JournalWriter(d, SHARD, log=log) as w:
        assert w.next_sequence == 50 * zeroed + 1
    c = log.named("journal_tail_cut")[0]
    assert (c["offset"], c["watermark"], c["intact_records_cut"]) == \
        (off, block_offset(4), 50 * (9 - zeroed))


@pytest.mark.pypy
def test_blocks_appended_after_a_restart_claim_the_segment_they_continue(tmp_path):
    """kill -9 after block 3's sync: blocks 4..9 are only in the page cache.  The next writer
    fsyncs the segment at open, so its first block claims all ten durable: zeros over block 6
    are then damage, not a torn tail (without that fsync they would be cut silently)."""
    d = str(tmp_path)
    interval_segment(d, synced_blocks=4)
    path = list_segments(d, SHARD)[0][1]
    with JournalWriter(d, SHARD, fsync="off") as w:
        assert w.next_sequence == 501
        w.append(501, make_records(501, 50).tobytes())
    with open(path, "rb") as f:
        f.seek(block_offset(10) + 20)
        assert struct.unpack("<Q", f.read(8))[0] == block_offset(10)
    off = zero_block(path, 6)
    start_must_stop(d, {"path": path, "offset": off, "reason": "bad_block_header",
                        "valid_through": 300, "first_lost_seq": 301, "last_lost_seq": 550,
                        "records_after": 200})


@pytest.mark.pypy
def test_flipped_byte_in_synced_bytes_of_last_segment_stops_startup(tmp_path):
    d = str(tmp_path)
    segs = four_segments(d, fsync="batch")
    path = segs[3][1]
    flip_byte(path, block_offset(8) + BLOCK_HEADER_SIZE + 11 * RS)
    start_must_stop(d, {"path": path, "offset": block_offset(8), "reason": "crc_mismatch",
                        "valid_through": 3400, "first_lost_seq": 3401, "last_lost_seq": 4000,
                        "records_after": 550})


@pytest.mark.pypy
def test_the_watermark_is_covered_by_the_block_crc(tmp_path):
    """A flipped watermark makes its block not intact: it can neither raise nor lower a claim."""
    d = str(tmp_path)
    segs = four_segments(d, fsync="batch")
    path = segs[3][1]
    with open(path, "rb") as f:
        f.seek(block_offset(19) + 20)
        assert struct.unpack("<Q", f.read(8))[0] == block_offset(19)
    flip_byte(path, block_offset(19) + 21)                 # the last block's synced_through
    assert recovery.durable_sequence(d, SHARD) == 3950     # its own claim was its offset: torn
    flip_byte(path, block_offset(19) + 21)
    flip_byte(path, block_offset(18) + 21)                 # a claim before an intact block
    start_must_stop(d, {"path": path, "offset": block_offset(18), "reason": "crc_mismatch",
                        "valid_through": 3900, "first_lost_seq": 3901, "last_lost_seq": 4000})


def as_format_1(path):
    """Rewrite a segment as the format 1 writer left it: version 1, no block watermarks."""
    from journaler.segment import pack_segment_header, unpack_segment_header
    with open(path, "r+b") as f:
        data = bytearray(f.read())
    h = unpack_segment_header(bytes(data[:SEGMENT_HEADER_SIZE]), path)
    data[:SEGMENT_HEADER_SIZE] = pack_segment_header(h.schema_hash, h.record_size, h.first_seq,
                                                     h.shard, h.created_ns, h.pid, h.host,
                                                     format_version=1)
    off = SEGMENT_HEADER_SIZE
    while off < len(data):
        _magic, count, first, _crc, _synced = struct.unpack_from("<4sIqIQ", data, off)
        body = bytes(data[off + BLOCK_HEADER_SIZE:off + BLOCK_HEADER_SIZE + count * RS])
        data[off:off + BLOCK_HEADER_SIZE] = pack_block_header(first, count,
                                                              block_crc(first, count, [body]))
        off += BLOCK_HEADER_SIZE + count * RS
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.pypy
def test_format_1_last_segment_keeps_the_format_1_rule(tmp_path):
    """No watermark to trust: zeros followed by intact blocks stop start-up as before."""
    d = str(tmp_path)
    segs = four_segments(d, fsync="off")
    for _first, path in segs:
        as_format_1(path)
    assert verify_journal(d, SHARD, RS, records.SCHEMA_HASH).ok
    path = segs[3][1]
    off = zero_block(path, 5)
    start_must_stop(d, {"path": path, "offset": off, "reason": "bad_block_header",
                        "valid_through": 3250, "first_lost_seq": 3251, "last_lost_seq": 4000,
                        "records_after": 700})


@pytest.mark.pypy
def test_writer_never_appends_to_a_format_1_segment(tmp_path):
    """It continues a format 1 journal in a new format 2 segment; the whole journal reads."""
    from journaler.segment import unpack_segment_header
    d = str(tmp_path)
    segs = four_segments(d, fsync="off")
    for _first, path in segs:
        as_format_1(path)
    size = os.path.getsize(segs[3][1])
    with JournalWriter(d, SHARD, fsync="batch") as w:
        assert w.next_sequence == 4001
        w.append(4001, make_records(4001, 50).tobytes())
    assert os.path.getsize(segs[3][1]) == size
    now = list_segments(d, SHARD)
    assert [f for f, _ in now] == [1, 1001, 2001, 3001, 4001]
    with open(now[-1][1], "rb") as f:
        assert unpack_segment_header(f.read(SEGMENT_HEADER_SIZE)).format_version == 2
    seqs, arr = JournalReader(d, SHARD).array()
    check_content(seqs, arr)
    assert seqs[-1] == 4050 and verify_journal(d, SHARD, RS, records.SCHEMA_HASH).ok


@pytest.mark.pypy
def test_torn_block_at_end_of_segment_2_of_4_stops_startup(tmp_path):
    d = str(tmp_path)
    segs = four_segments(d)
    path = segs[1][1]
    with open(path, "r+b") as f:               # a non-last segment is never torn by a crash
        f.truncate(os.path.getsize(path) - 100)
    start_must_stop(d, {"path": path, "reason": "torn_block", "valid_through": 1950,
                        "first_lost_seq": 1951, "last_lost_seq": 4000})


@pytest.mark.pypy
def test_journaler_process_logs_one_fatal_line_and_exits_fatal(tmp_path):
    d = str(tmp_path)
    shard = "it%d" % os.getpid()
    segs = four_segments(d, shard=shard)
    off = block_offset(3)
    flip_byte(segs[1][1], off + BLOCK_HEADER_SIZE + 5)
    ring = Ring.create("rm-%s-in" % shard, capacity=1024, consumers={"journaler": []},
                       initial_sequence=4000)
    try:
        before = tree_digest(d)
        log = Lines()
        assert journaler_process.run(ring, d, shard, log=log, stop=[1]) == \
            journaler_process.EXIT_FATAL
        fatal = log.named("fatal")
        assert len(fatal) == 1 and not log.named("journal_tail_cut")
        f = fatal[0]
        assert (f["reason"], f["file"], f["offset"], f["damage"]) == \
            ("journal_corrupt", segs[1][1], off, "crc_mismatch")
        assert (f["valid_through"], f["first_lost_seq"], f["last_lost_seq"]) == (1150, 1151, 4000)
        assert tree_digest(d) == before
        assert not log.named("ready")
    finally:
        ring.close()
        ring.unlink()


@pytest.mark.timeout(60)
def test_journaler_started_on_a_damaged_journal_exits_3_with_one_line(tmp_path):
    """As the supervisor starts it: ``python -m journaler.process``; every start stops."""
    import json
    import subprocess
    import sys
    shard = "ip%d" % os.getpid()
    data = str(tmp_path / "data")
    segs = four_segments(data, shard=shard)
    flip_byte(segs[2][1], block_offset(4) + BLOCK_HEADER_SIZE + 100)
    config = str(tmp_path / "config.json")
    with open(config, "w") as f:
        json.dump({"data_dir": data, "shards": [{"name": shard, "input_capacity": 1024,
                                                 "output_capacity": 1024}]}, f)
    ring = Ring.create("rm-%s-in" % shard, capacity=1024, consumers={"journaler": []},
                       initial_sequence=4000)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        before = tree_digest(data)
        for _attempt in range(2):
            proc = subprocess.run([sys.executable, "-m", "journaler.process", "--config", config,
                                   "--shard", shard], cwd=root, capture_output=True, timeout=40)
            assert proc.returncode == journaler_process.EXIT_FATAL
            lines = proc.stderr.decode().splitlines()
            fatal = [line for line in lines if "event=fatal" in line]
            assert len(fatal) == 1, lines
            for field in ("reason=journal_corrupt", "file=%s" % segs[2][1],
                          "offset=%d" % block_offset(4), "damage=crc_mismatch",
                          "valid_through=2200", "first_lost_seq=2201", "last_lost_seq=4000"):
                assert field in fatal[0]
            assert "Traceback" not in proc.stderr.decode()
            assert tree_digest(data) == before
    finally:
        ring.close()
        ring.unlink()


# -- the torn tail of the last segment is still cut --------------------------------------


@pytest.mark.pypy
@pytest.mark.parametrize("tear", ["mid_record", "block_header", "zeros", "garbage",
                                  "last_block_crc"])
def test_torn_tail_of_last_segment_is_cut_into_private_quarantine(tmp_path, tear):
    d = str(tmp_path)
    segs = four_segments(d)
    path = segs[3][1]
    last_off = block_offset(19)                # block 3951..4000
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if tear == "mid_record":
            f.truncate(size - 1000)
        elif tear == "block_header":
            f.truncate(last_off + 20)
        elif tear == "zeros":                  # power loss: the size grew, the data never came
            f.truncate(last_off)
            f.seek(last_off)
            f.write(b"\0" * 5000)
        elif tear == "garbage":
            f.truncate(last_off)
            f.seek(last_off)
            f.write(os.urandom(3000).replace(b"RMBK", b"XXXX"))
        else:                                  # the last block's records half written
            f.seek(last_off + BLOCK_HEADER_SIZE + 20 * RS)
            f.write(b"\0" * (30 * RS))
    tail = os.path.getsize(path) - last_off
    assert verify_journal(d, SHARD, RS, records.SCHEMA_HASH).startup == "cut_torn_tail"
    assert recovery.durable_sequence(d, SHARD) == 3950
    log = Lines()
    w = JournalWriter(d, SHARD, log=log)
    try:
        assert w.next_sequence == 3951
    finally:
        w.close()
    assert os.path.getsize(path) == last_off
    cut = log.named("journal_tail_cut")
    assert len(cut) == 1 and cut[0]["offset"] == last_off and cut[0]["bytes"] == tail
    q = cut[0]["quarantine"]
    assert os.path.getsize(q) == tail
    assert stat.S_IMODE(os.stat(q).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(q)).st_mode) == 0o700
    assert verify_journal(d, SHARD, RS, records.SCHEMA_HASH).ok


@pytest.mark.pypy
def test_block_completed_while_a_reader_classifies_the_tail_is_still_a_torn_tail(tmp_path):
    """Readers (matcher, publisher) run beside the journaler: its next write is no damage."""
    from journaler.reader import _assess, scan_journal
    d = str(tmp_path)
    segs = four_segments(d)
    path = segs[3][1]
    with open(path, "rb") as f:
        whole = f.read()
    with open(path, "r+b") as f:                # the journaler is half way through a block
        f.truncate(len(whole) - 1000)
    scans, tail_index = scan_journal(d, SHARD, RS, records.SCHEMA_HASH)
    with open(path, "r+b") as f:                # ... and finishes it, then writes another
        f.seek(0)
        f.write(whole)
        raw = make_records(4001, 50).tobytes()
        f.write(pack_block_header(4001, 50, block_crc(4001, 50, [raw])) + raw)
    assessment = _assess(scans, tail_index, RS)
    assert assessment.cuttable and assessment.error is None
    assert assessment.prefix_end == 3950


@pytest.mark.pypy
def test_torn_header_of_new_last_segment_is_moved_to_private_quarantine(tmp_path):
    d = str(tmp_path)
    segs = four_segments(d)
    path = segs[3][1]
    with open(path, "r+b") as f:               # created, header torn, no records yet
        f.truncate(60)
    assert recovery.durable_sequence(d, SHARD) == 3000
    report = recover_journal(d, SHARD, RS, records.SCHEMA_HASH)
    assert report.last_seq == 3000 and not os.path.exists(path)
    assert stat.S_IMODE(os.stat(report.cuts[0].quarantine).st_mode) == 0o600


# -- defect 2: a missing middle segment ----------------------------------------------------


@pytest.mark.pypy
def test_missing_segment_2_of_4_is_fatal_and_verify_names_the_gap(tmp_path, capsys):
    d = str(tmp_path)
    segs = four_segments(d)
    os.unlink(segs[1][1])
    for _attempt in range(2):                  # the second start must not run silently
        e = start_must_stop(d, {"path": segs[2][1], "offset": 0, "reason": "sequence_gap",
                                "valid_through": 1000, "first_lost_seq": 1001,
                                "last_lost_seq": 4000, "records_after": 2000})
        assert "records 1001..2000 are in no segment" in str(e)
    report = verify_journal(d, SHARD, RS, records.SCHEMA_HASH)
    assert report.last_seq == 1000 and not report.ok
    args = _args(d, "verify")
    assert journal_cli.run(args) == 1
    out = capsys.readouterr().out
    assert "last_valid_seq=1000" in out
    assert "sequence_gap (records 1001..2000 are in no segment" in out
    assert "start-up: STOPS" in out


# -- ringmatch journal truncate -----------------------------------------------------------


class ToyMatcher(object):
    """Deterministic state machine over command records (as in test_snapshot)."""

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


def straight(d, last):
    m = ToyMatcher(None, None)
    recovery.replay(m, d, SHARD, after=0, last=last)
    return m


def _args(d, action, **extra):
    import argparse
    parser = argparse.ArgumentParser()
    journal_cli.add_arguments(parser)
    argv = ["--data-dir", d, "--shard", SHARD, action]
    for k, v in extra.items():
        if v is True:
            argv.append("--" + k.replace("_", "-"))
        else:
            argv += ["--" + k.replace("_", "-"), str(v)]
    return parser.parse_args(argv)


@pytest.mark.pypy
def test_truncate_dry_run_says_what_it_discards_and_changes_nothing(tmp_path, capsys):
    d = str(tmp_path)
    segs = four_segments(d)
    for seq in (900, 1400, 3000):
        snapshots.write_snapshot(d, SHARD, seq, straight(d, seq))
    flip_byte(segs[1][1], block_offset(10) + BLOCK_HEADER_SIZE + 9)     # damage at 1501
    before = tree_digest(d)
    assert journal_cli.run(_args(d, "truncate", at=1480)) == 1
    out = capsys.readouterr().out
    assert "keep: records 1..1480" in out
    assert "%s: bytes %d..%d" % (os.path.basename(segs[1][1]), block_offset(10),
                                 os.path.getsize(segs[1][1])) in out
    assert "split, keeping 30 record(s)" in out           # block 1451..1500 keeps 1451..1480
    for _first, path in segs[2:]:
        assert "%s: whole file, bytes 0..%d" % (os.path.basename(path),
                                                 os.path.getsize(path)) in out
    # intact records after 1480: 1481..1500 plus 1551..4000 (the damaged block is not intact)
    assert "seqs 1481..4000, %d intact record(s)" % (20 + 2450) in out
    assert "discard snapshot %s" % os.path.basename(
        snapshots.list_snapshots(d, SHARD)[-1][1]) in out
    assert "01400.snap" not in out and "00900.snap" not in out
    assert "DRY RUN" in out
    assert tree_digest(d) == before
    # outside the intact journal: refused, nothing changed
    assert journal_cli.run(_args(d, "truncate", at=1600, i_understand=True)) == 2
    assert "intact records are 1..1500" in capsys.readouterr().err
    assert tree_digest(d) == before


@pytest.mark.pypy
def test_truncate_keeps_prefix_quarantines_the_rest_and_start_up_continues(tmp_path, capsys):
    d = str(tmp_path)
    segs = four_segments(d)
    for seq in (900, 1400, 3000):
        snapshots.write_snapshot(d, SHARD, seq, straight(d, seq))
    flip_byte(segs[1][1], block_offset(10) + BLOCK_HEADER_SIZE + 9)
    seg2_tail = open(segs[1][1], "rb").read()[block_offset(9):]
    later = [open(p, "rb").read() for _f, p in segs[2:]]
    assert journal_cli.run(_args(d, "truncate", at=1480, i_understand=True)) == 0
    out = capsys.readouterr().out
    assert "DONE: the journal now ends at seq 1480" in out
    report = verify_journal(d, SHARD, RS, records.SCHEMA_HASH)
    assert report.ok and report.last_seq == 1480
    assert [s for s, _ in snapshots.list_snapshots(d, SHARD)] == [900, 1400]
    qdir = os.path.join(d, "journal", "quarantine")
    assert stat.S_IMODE(os.stat(qdir).st_mode) == 0o700
    saved = {}
    for name in os.listdir(qdir):
        path = os.path.join(qdir, name)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        saved[name] = open(path, "rb").read()
    # every discarded byte is in the quarantine
    assert sorted(saved.values()) == sorted([seg2_tail] + later)
    squar = os.path.join(d, "snapshots", "quarantine")
    assert [n.split(".")[0] for n in os.listdir(squar)] == ["s0-00000000000000003000"]
    # start-up continues at 1481 and recovery equals a fresh replay
    with JournalWriter(d, SHARD) as w:
        assert w.next_sequence == 1481
        w.append(1481, make_records(1481, 100).tobytes())
    seqs, arr = JournalReader(d, SHARD).array()
    check_content(seqs, arr)
    matcher, last = recovery.recover(None, d, SHARD, matcher_class=ToyMatcher)
    assert last == 1580 and matcher.state_hash() == straight(d, 1580).state_hash()


@pytest.mark.pypy
def test_truncate_refuses_while_the_engine_holds_the_shard_lock(tmp_path, capsys):
    d = str(tmp_path)
    four_segments(d)
    run_dir = os.path.join(d, "run")
    os.makedirs(run_dir)
    fd = os.open(os.path.join(run_dir, "%s.lock" % SHARD), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242")
        before = tree_digest(os.path.join(d, "journal"))
        assert journal_cli.run(_args(d, "truncate", at=10, i_understand=True)) == 2
        err = capsys.readouterr().err
        assert "REFUSED" in err and "pid 4242" in err
        assert tree_digest(os.path.join(d, "journal")) == before
    finally:
        os.close(fd)


# -- defect 3: stale snapshots -------------------------------------------------------------


def other_records(first, count):
    """Records of another history at the same sequences (different content)."""
    arr = make_records(first, count)
    arr["qty"] = arr["qty"] * 3 + 11
    arr["client_order_id"] += 1
    return arr


def cut_journal_at(d, seq):
    """An OS crash under fsync interval/off: the journal tail after ``seq`` is gone."""
    for first, path in list_segments(d, SHARD):
        if first > seq:
            os.unlink(path)
    first, path = list_segments(d, SHARD)[-1]
    keep = (seq - first + 1) // 50
    with open(path, "r+b") as f:
        f.truncate(block_offset(keep))


@pytest.mark.pypy
def test_snapshot_beyond_a_cut_journal_is_never_restored(tmp_path):
    d = str(tmp_path)
    four_segments(d)
    for seq in (1000, 2400, 3300):
        snapshots.write_snapshot(d, SHARD, seq, straight(d, seq))
    cut_journal_at(d, 2000)        # snapshots 2400, 3300 were fsynced, the journal tail not
    log = Lines()
    matcher, seq = recovery.restore_latest(None, d, SHARD, log=log, matcher_class=ToyMatcher)
    assert seq == 1000
    stale = log.named("snapshot_stale")
    assert [(f["seq"], f["reason"]) for f in stale] == [(3300, "beyond_journal_end"),
                                                       (2400, "beyond_journal_end")]
    # different commands after the cut, past both stale snapshots
    with JournalWriter(d, SHARD, fsync="off") as w:
        for first in range(2001, 4001, 50):
            w.append(first, other_records(first, 50).tobytes())
    fresh = ToyMatcher(None, None)
    recovery.replay(fresh, d, SHARD)
    log = Lines()
    matcher, last = recovery.recover(None, d, SHARD, log=log, matcher_class=ToyMatcher)
    assert last == 4000
    assert matcher.state_hash() == fresh.state_hash(), "state must equal a fresh replay"
    stale = log.named("snapshot_stale")
    assert [(f["seq"], f["reason"]) for f in stale] == [(3300, "binding_mismatch"),
                                                       (2400, "binding_mismatch")]
    for f in stale:
        assert f["snapshot_digest"] != f["journal_digest"] and f["journal_digest"] != "-"
        assert f["snapshot_digest"].startswith("64:")
    assert [f["snapshot_seq"] for f in log.named("recovered")] == [1000]


@pytest.mark.pypy
def test_stale_snapshot_with_real_matcher_state_equals_fresh_replay(tmp_path):
    pytest.importorskip("engine.matcher")
    from engine.config import DEFAULT_CONFIG
    from engine.events import BytesSink
    from engine.matcher import Matcher
    from perf import matcher_bench, workload as wl
    d = str(tmp_path)

    def commands(seed, n):
        deps, cmds = matcher_bench.build(wl.generate(n, seed=seed), DEFAULT_CONFIG)
        return deps + cmds
    first = commands(5, 3000)
    live = Matcher(DEFAULT_CONFIG, BytesSink())
    with JournalWriter(d, SHARD, segment_bytes=32 << 10, fsync="off") as w:
        for seq, cmd in first:
            w.append(seq, cmd.pack())
            live.process(seq, cmd)
            if seq == 2500:
                snapshots.write_snapshot(d, SHARD, seq, live)
    cut_at = 1800
    for f, path in list_segments(d, SHARD):          # the journal tail after 1800 is lost
        if f > cut_at:
            os.unlink(path)
    recover_journal(d, SHARD, RS, records.SCHEMA_HASH)
    end = recovery.durable_sequence(d, SHARD)
    assert end < 2500
    second = [(s, c) for s, c in commands(6, 3000) if s > end][:1500]
    with JournalWriter(d, SHARD, segment_bytes=32 << 10, fsync="off") as w:
        for seq, cmd in second:
            w.append(seq, cmd.pack())
    fresh = Matcher(DEFAULT_CONFIG, BytesSink())
    recovery.replay(fresh, d, SHARD)
    log = Lines()
    matcher, last = recovery.recover(DEFAULT_CONFIG, d, SHARD, log=log)
    assert last == second[-1][0] > 2500
    assert [f["reason"] for f in log.named("snapshot_stale")] == ["binding_mismatch"]
    assert matcher.state_hash() == fresh.state_hash()


@pytest.mark.pypy
def test_version_1_snapshot_is_refused_with_a_clear_line(tmp_path):
    d = str(tmp_path)
    four_segments(d)
    m = straight(d, 1200)
    path = snapshots.write_snapshot(d, SHARD, 1200, m)
    with open(path, "r+b") as f:            # rewrite as format version 1 (no binding)
        data = bytearray(f.read())
        struct.pack_into("<I", data, 8, 1)
        struct.pack_into("<I", data, 52, 0)
        struct.pack_into("<I", data, 96, 0)
        from journaler.crc import crc32c
        struct.pack_into("<I", data, 100, crc32c(bytes(data[:100])))
        f.seek(0)
        f.write(data)
    log = Lines()
    matcher, seq = recovery.restore_latest(None, d, SHARD, log=log, matcher_class=ToyMatcher)
    assert seq == 0
    assert [f["reason"] for f in log.named("snapshot_stale")] == ["unbound_v1"]


@pytest.mark.pypy
def test_binding_from_ring_chunks_equals_journal_binding(tmp_path):
    d = str(tmp_path)
    four_segments(d)
    raw = make_records(1201, 100).tobytes()
    chunks = [(1201, memoryview(raw)[:30 * RS]), (1231, memoryview(raw)[30 * RS:])]
    assert snapshots.binding_from_chunks(chunks, 1290) == \
        snapshots.journal_binding(d, SHARD, 1290) == \
        snapshots.journal_binding(d, SHARD, 1290, count=64)
    assert snapshots.binding_from_chunks(chunks, 1210)[0] == 10


@pytest.mark.pypy
def test_prune_keeps_binding_records_and_quarantines_stale_snapshots(tmp_path):
    d = str(tmp_path)
    four_segments(d)
    # a stale snapshot from a discarded history at 3500 (journal later cut and refilled)
    snapshots.write_snapshot(d, SHARD, 3500, straight(d, 3500))
    cut_journal_at(d, 2000)
    with JournalWriter(d, SHARD, fsync="off") as w:
        for first in range(2001, 3001, 50):
            w.append(first, other_records(first, 50).tobytes())
    # snapshot 2010: its binding needs 1947..2010, i.e. segment 2 (1001..2000)
    fresh = ToyMatcher(None, None)
    recovery.replay(fresh, d, SHARD, last=2010)
    log = Lines()
    snapshots.write_snapshot(d, SHARD, 2010, fresh, keep=1, log=log)
    assert [s for s, _ in snapshots.list_snapshots(d, SHARD)] == [2010]
    q = log.named("snapshot_quarantined")
    assert len(q) == 1 and q[0]["reason"] == "beyond_current_seq"
    assert os.path.exists(q[0]["quarantine"])
    assert stat.S_IMODE(os.stat(q[0]["quarantine"]).st_mode) == 0o600
    assert [f for f, _ in list_segments(d, SHARD)][0] == 1001, "segment holding 1947.. kept"
    matcher, last = recovery.recover(None, d, SHARD, matcher_class=ToyMatcher)
    recovery.replay(fresh, d, SHARD, after=2010)
    assert last == 3000 and matcher.state_hash() == fresh.state_hash()
    snap, _m, rejected = snapshots.load_latest(d, SHARD)
    assert snap.seq == 2010 and not rejected


@pytest.mark.pypy
def test_truncate_interrupted_after_the_block_split_recovers_to_seq(tmp_path):
    """Rule 4c of repair: a crash between the new block header and the final cut."""
    d = str(tmp_path)
    segs = four_segments(d)
    path = segs[1][1]
    whole = open(path, "rb").read()
    assert journal_cli.run(_args(d, "truncate", at=1480, i_understand=True)) == 0
    with open(path, "ab") as f:                 # the old block's records 1481..1500 still there
        f.write(whole[block_offset(9) + BLOCK_HEADER_SIZE + 30 * RS:block_offset(10)])
    assert recovery.durable_sequence(d, SHARD) == 1480
    with JournalWriter(d, SHARD) as w:
        assert w.next_sequence == 1481
    assert verify_journal(d, SHARD, RS, records.SCHEMA_HASH).ok
