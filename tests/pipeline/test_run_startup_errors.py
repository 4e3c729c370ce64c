"""``ringmatch run`` refuses a damaged journal with one clear line (issue 11 defects 1 and 7).

The journal is damaged in its middle (one flipped byte in segment 2 of 4):
start-up must stop before any child starts, print the journal error (file,
offset, sequences) as one line without a traceback, exit 4, change no file
and leave no shared-memory segment behind.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from journaler.segment import BLOCK_HEADER_SIZE, SEGMENT_HEADER_SIZE, list_segments
from journaler.writer import JournalWriter
from ringbuf import records

# not imported from conftest: several test folders have one, and which module
# the name "conftest" means depends on what the run collected first
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RINGMATCH = os.path.join(os.path.dirname(sys.executable), "ringmatch")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = [pytest.mark.timeout(120)]
RS = records.COMMAND_SIZE


def _digest(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _config(tmp_path, shard):
    data = tmp_path / "data"
    raw = {"data_dir": str(data),
           "shards": [{"name": shard, "symbols": ["BTC-USD"],
                       "input_capacity": 1 << 10, "output_capacity": 1 << 12}],
           "publisher": {"host": "127.0.0.1", "port": free_port()},
           "matcher": {"interpreter": "cpython"}}
    path = tmp_path / "engine.json"
    path.write_text(json.dumps(raw))
    return str(path), str(data)


def test_run_on_journal_damaged_in_the_middle_stops_with_one_line(tmp_path):
    shard = "dmg%d" % os.getpid()
    config, data = _config(tmp_path, shard)
    block, per_segment = 50, 1000
    segment_bytes = SEGMENT_HEADER_SIZE + (per_segment // block) * (BLOCK_HEADER_SIZE + block * RS)
    with JournalWriter(data, shard, segment_bytes=segment_bytes, fsync="off") as w:
        for seq in range(1, 4001, block):
            recs = bytearray(block * RS)
            recs[0::RS] = bytes([0]) * block    # NOP records: content does not matter here
            w.append(seq, bytes(recs))
    segments = list_segments(data, shard)
    assert len(segments) == 4
    path = segments[1][1]
    pos = SEGMENT_HEADER_SIZE + 5 * (BLOCK_HEADER_SIZE + block * RS) + BLOCK_HEADER_SIZE + 100
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x10]))
    journal = os.path.join(data, "journal")
    before = _digest(journal)
    try:
        proc = subprocess.run([RINGMATCH, "run", "--config", config], cwd=ROOT,
                              capture_output=True, text=True, timeout=90)
    finally:
        leftovers = [n for n in os.listdir("/dev/shm") if shard in n]
        for name in leftovers:
            os.unlink(os.path.join("/dev/shm", name))
    assert proc.returncode == 4, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    line = [l for l in proc.stderr.splitlines() if l.startswith("ringmatch run: journal:")]
    assert len(line) == 1, proc.stderr
    assert os.path.basename(path) in line[0] and "offset" in line[0]
    assert "1251" in line[0] or "1300" in line[0] or "1001" in line[0], line[0]
    assert _digest(journal) == before, "start-up changed journal files"
    assert leftovers == [], "shared-memory segments left behind: %r" % leftovers
