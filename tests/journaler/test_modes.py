"""Issue 12 item 11 (data at rest): journal and snapshot files are private.

Segments, snapshot files and quarantine files are created 0600; ``journal/``,
``snapshots/`` and their ``quarantine/`` directories 0700, and an existing
wider one is narrowed.  Checked on everything under the data dir after the
writes that create files there: appends across segment rolls, a torn tail cut
at start-up, snapshots with retention (pruned segments, a stale snapshot moved
to the quarantine), ``journal truncate``.  Under umask 0 as well, so that the
modes are the ones the code asks for, not the umask's doing.
"""
import argparse
import os
import stat

import pytest

from journaler import cli as journal_cli
from journaler import snapshot as snapshots
from journaler.segment import list_segments
from journaler.writer import JournalWriter

from _crashsim_trial import ChainMatcher
from helpers import make_records

pytestmark = [pytest.mark.timeout(60)]
SHARD = "s0"


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes_under(root):
    """{relative path: permission bits} of every file and directory under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


def matcher_at(d, seq):
    m = ChainMatcher()
    from journaler import recovery
    for s, raw in recovery.journal_records(d, SHARD, last=seq):
        m.process(s, raw)
    return m


def write_everything(d):
    """Every kind of file the journaler and the snapshot writer create, in one data dir."""
    with JournalWriter(d, SHARD, segment_bytes=8192, fsync="batch") as w:
        for seq in range(1, 1001, 50):
            w.append(seq, make_records(seq, 50).tobytes())
    assert len(list_segments(d, SHARD)) > 3
    snapshots.write_snapshot(d, SHARD, 900, matcher_at(d, 900))
    last = list_segments(d, SHARD)[-1][1]
    with open(last, "r+b") as f:                 # a torn tail: cut into the quarantine
        f.truncate(os.path.getsize(last) - 100)
    with JournalWriter(d, SHARD, segment_bytes=8192, fsync="batch") as w:
        assert w.recovery.cuts
        seq = w.next_sequence
        w.append(seq, make_records(seq, 100).tobytes())
        end = w.durable_sequence
    # retention: keep=1 prunes segments; the snapshot at 900 is beyond 850 (after the
    # truncate below it is from a discarded history and is quarantined)
    snapshots.write_snapshot(d, SHARD, 500, matcher_at(d, 500), keep=1)
    assert end > 900


def run_truncate(d, at):
    parser = argparse.ArgumentParser()
    journal_cli.add_arguments(parser)
    args = parser.parse_args(["--data-dir", d, "--shard", SHARD, "truncate", "--at", str(at),
                              "--i-understand"])
    assert journal_cli.run(args) == 0


def assert_private(d):
    modes = modes_under(d)
    for sub in ("journal", "journal/quarantine", "snapshots", "snapshots/quarantine"):
        assert sub in modes, sorted(modes)
    assert any(p.endswith(".seg") for p in modes) and any(p.endswith(".snap") for p in modes)
    assert any(p.startswith("journal/quarantine/") for p in modes)
    assert any(p.startswith("snapshots/quarantine/") for p in modes)
    wrong = {}
    for rel, mode in sorted(modes.items()):
        want = 0o700 if os.path.isdir(os.path.join(d, rel)) else 0o600
        if mode != want:
            wrong[rel] = "%o (want %o)" % (mode, want)
    assert not wrong, wrong


@pytest.mark.pypy
def test_everything_under_the_data_dir_is_private_after_writes(tmp_path, umask):
    d = str(tmp_path / "data")
    os.mkdir(d, 0o700)
    write_everything(d)
    run_truncate(d, 700)
    assert_private(d)


@pytest.mark.pypy
def test_existing_wider_directories_are_narrowed(tmp_path, umask):
    """A data dir from before (its directories 0755): narrowed by the writes."""
    d = str(tmp_path / "data")
    os.mkdir(d, 0o700)
    for sub in ("journal", "snapshots", "journal/quarantine", "snapshots/quarantine"):
        os.mkdir(os.path.join(d, sub))
        os.chmod(os.path.join(d, sub), 0o755)
    write_everything(d)
    run_truncate(d, 700)
    assert_private(d)


@pytest.mark.pypy
def test_a_wider_temp_file_left_by_a_dead_snapshot_writer_is_not_reused_wide(tmp_path, umask):
    d = str(tmp_path / "data")
    os.mkdir(d, 0o700)
    with JournalWriter(d, SHARD, fsync="batch") as w:
        w.append(1, make_records(1, 10).tobytes())
    sdir = os.path.join(d, "snapshots")
    os.mkdir(sdir, 0o700)
    tmp = os.path.join(sdir, ".%s.tmp-%d" % (snapshots.snapshot_name(SHARD, 10), os.getpid()))
    with open(tmp, "wb") as f:                   # same pid: the writer truncates and reuses it
        f.write(b"old")
    os.chmod(tmp, 0o644)
    path = snapshots.write_snapshot(d, SHARD, 10, matcher_at(d, 10))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
