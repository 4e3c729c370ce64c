"""The journaler process against a real ring: restart rules, gap/overlap, kill -9 trials."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from journaler import process as journaler_process
from journaler.reader import JournalReader, verify_journal
from journaler.writer import JournalWriter
from ringbuf import Ring, records

from helpers import PRODUCER_ID, check_content, make_records

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
_counter = [0]


class Quiet(object):
    def __init__(self):
        self.lines = []

    def event(self, event, **fields):
        self.lines.append((event, fields))

    def error(self, event, **fields):
        self.lines.append((event, fields))

    warning = error


@pytest.fixture
def shard_ring():
    """(shard name, ring) for a fresh input ring with a single consumer 'journaler'."""
    _counter[0] += 1
    shard = "jt%dx%d" % (os.getpid(), _counter[0])
    ring = Ring.create("rm-%s-in" % shard, capacity=1024, consumers={"journaler": []})
    try:
        yield shard, ring
    finally:
        ring.close()
        try:
            ring.unlink()
        except Exception:
            pass


def publish(ring, first, n, content_first=None):
    p = ring.producer(producer_id=PRODUCER_ID)
    try:
        got, views = p.claim_batch(n, timeout=1.0)
        assert got == first
        raw = make_records(content_first or first, n).tobytes()
        pos = 0
        for v in views:
            v[:] = raw[pos:pos + len(v)]
            pos += len(v)
        p.publish_batch(first, n)
    finally:
        p.close()


@pytest.mark.timeout(30)
def test_restart_with_durable_but_uncommitted_records_catches_up(tmp_path, shard_ring):
    shard, ring = shard_ring
    d = str(tmp_path)
    publish(ring, 1, 100)
    with JournalWriter(d, shard) as w:         # journaled 1..100, died before commit
        w.append(1, make_records(1, 100).tobytes())
    log = Quiet()
    assert journaler_process.run(ring, d, shard, log=log, stop=[1]) == 0
    assert ring.consumer_sequence("journaler") == 100
    assert any(e == "caught_up" and f["to_seq"] == 100 for e, f in log.lines)


@pytest.mark.timeout(30)
def test_restart_overlap_with_different_records_is_fatal(tmp_path, shard_ring):
    shard, ring = shard_ring
    d = str(tmp_path)
    publish(ring, 1, 100, content_first=5000)   # the ring holds other records at 1..100
    with JournalWriter(d, shard) as w:
        w.append(1, make_records(1, 100).tobytes())
    log = Quiet()
    assert journaler_process.run(ring, d, shard, log=log, stop=[1]) == journaler_process.EXIT_FATAL
    fatal = [f for e, f in log.lines if e == "fatal"]
    assert fatal and "overlap" in fatal[0]["error"] and "seq 1" in fatal[0]["error"]
    assert ring.consumer_sequence("journaler") == 0


@pytest.mark.timeout(30)
def test_ring_gating_ahead_of_journal_is_fatal_gap(tmp_path, shard_ring):
    shard, ring = shard_ring
    d = str(tmp_path)
    publish(ring, 1, 150)
    c = ring.consumer("journaler")              # a previous journaler acknowledged 1..150
    assert c.poll(150).count == 150
    c.commit(150)
    with JournalWriter(d, shard) as w:          # ... but the journal only has 1..100
        w.append(1, make_records(1, 100).tobytes())
    log = Quiet()
    assert journaler_process.run(ring, d, shard, log=log, stop=[1]) == journaler_process.EXIT_FATAL
    fatal = [f for e, f in log.lines if e == "fatal"][0]
    assert "gap" in fatal["error"] and "101..150" in fatal["error"]


def _config(tmp_path, shard, fsync):
    path = str(tmp_path / "config.json")
    with open(path, "w") as f:
        json.dump({"data_dir": str(tmp_path / "data"),
                   "shards": [{"name": shard, "input_capacity": 1024, "output_capacity": 1024}],
                   "journal": {"fsync": fsync, "fsync_interval_ms": 2,
                               "segment_bytes": 64 << 10}}, f)
    return path


def _spawn(module_args, stderr):
    return subprocess.Popen([sys.executable] + module_args, cwd=ROOT, stderr=stderr,
                            stdout=subprocess.DEVNULL)


def _kill(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _check_journal(data_dir, shard, acknowledged):
    """Every acknowledged record is in the journal, which is a gap-free prefix 1..L."""
    seqs, arr = JournalReader(data_dir, shard).array()
    if acknowledged:
        assert len(seqs) and seqs[0] == 1
    check_content(seqs, arr)
    last = int(seqs[-1]) if len(seqs) else 0
    assert last >= acknowledged, "acknowledged %d but the journal ends at %d" % (acknowledged, last)
    return last


def kill_trials(tmp_path, shard, ring, trials, seed, fsync):
    rng = random.Random(seed)
    config = _config(tmp_path, shard, fsync)
    data_dir = str(tmp_path / "data")
    stop_file = str(tmp_path / "stop")
    errlog = open(str(tmp_path / "journaler.log"), "ab")
    producer = _spawn([os.path.join(HERE, "_producer.py"), ring.name, stop_file, str(seed)],
                      subprocess.DEVNULL)
    journaler = None
    progress = []
    try:
        for trial in range(trials):
            before = ring.consumer_sequence("journaler")
            journaler = _spawn(["-m", "journaler.process", "--config", config, "--shard", shard],
                               errlog)
            if trial % 2:       # kill while it journals (a loaded machine starts it slowly)
                deadline = time.monotonic() + 20
                while ring.consumer_sequence("journaler") <= before and \
                        time.monotonic() < deadline and journaler.poll() is None:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.3))
            else:               # kill at a random point, start-up and recovery included
                time.sleep(rng.uniform(0.05, 0.5))
            journaler.kill()                                  # kill -9 at a random point
            journaler.wait(timeout=10)
            acknowledged = ring.consumer_sequence("journaler")
            last = _check_journal(data_dir, shard, acknowledged)
            progress.append((acknowledged, last))
        open(stop_file, "w").close()
        producer.wait(timeout=10)
        journaler = _spawn(["-m", "journaler.process", "--config", config, "--shard", shard],
                           errlog)
        deadline = time.monotonic() + 20
        while ring.consumer_sequence("journaler") < ring.cursor and time.monotonic() < deadline:
            time.sleep(0.02)
        journaler.send_signal(signal.SIGTERM)
        assert journaler.wait(timeout=10) == 0
        cursor = ring.cursor
        assert ring.consumer_sequence("journaler") == cursor
        assert _check_journal(data_dir, shard, cursor) == cursor
        report = verify_journal(data_dir, shard, records.COMMAND_SIZE, records.SCHEMA_HASH)
        assert report.ok and report.last_seq == cursor
        # the load was steady: the journal grew over the trials
        assert progress[-1][0] > progress[0][0] >= 0
        return progress
    finally:
        open(stop_file, "w").close()
        _kill(producer)
        if journaler is not None:
            _kill(journaler)
        errlog.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fsync", ["batch", "interval"])
def test_kill9_journaler_under_load(tmp_path, shard_ring, fsync):
    shard, ring = shard_ring
    kill_trials(tmp_path, shard, ring, trials=20 if fsync == "batch" else 8, seed=20240611,
                fsync=fsync)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill9_journaler_under_load_long(tmp_path, shard_ring, seed):
    shard, ring = shard_ring
    kill_trials(tmp_path, shard, ring, trials=100, seed=seed, fsync="batch")


class _CommitSpy(object):
    """The ring as journaler_process.run sees it; its consumer notes each commit with the
    number of fsyncs done until then."""

    def __init__(self, ring, fsyncs):
        self.ring, self.fsyncs, self.commits = ring, fsyncs, []

    def __getattr__(self, name):
        return getattr(self.ring, name)

    def consumer(self, name):
        real = self.ring.consumer(name)
        spy = self

        class Consumer(object):
            def __getattr__(self, attr):
                return getattr(real, attr)

            def commit(self, seq):
                spy.commits.append((seq, len(spy.fsyncs)))
                real.commit(seq)
        return Consumer()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("group_commit_us", [0, 20000])
def test_group_commit_fewer_fsyncs_same_records_never_ahead_of_sync(
        tmp_path, shard_ring, monkeypatch, group_commit_us):
    """Records trickling in (one every 2 ms): with a 20 ms group commit the journal syncs
    several records per fsync; every record is journaled once, in order, every commit
    follows an fsync done after the previous commit, and no record waits much longer
    than the group commit time for its commit (the acknowledgement)."""
    import threading
    from journaler import writer as writer_mod
    shard, ring = shard_ring
    d = str(tmp_path)
    fsyncs = []
    real_fsync = writer_mod._fsync

    def counting_fsync(fd):
        real_fsync(fd)
        fsyncs.append(time.monotonic())
    monkeypatch.setattr(writer_mod, "_fsync", counting_fsync)
    spy = _CommitSpy(ring, fsyncs)
    stop, codes = [], []
    t = threading.Thread(target=lambda: codes.append(journaler_process.run(
        spy, d, shard, log=Quiet(), stop=stop, group_commit_us=group_commit_us)), daemon=True)
    t.start()
    n = 100
    delays = []
    try:
        time.sleep(0.2)
        for seq in range(1, n + 1):
            publish(ring, seq, 1)
            t0 = time.monotonic()
            if seq % 10 == 0:                   # how long until this record is acknowledged
                while ring.consumer_sequence("journaler") < seq and time.monotonic() - t0 < 5:
                    time.sleep(0.0005)
                delays.append(time.monotonic() - t0)
            time.sleep(0.002)
        deadline = time.monotonic() + 5
        while ring.consumer_sequence("journaler") < n and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.append(1)
        t.join(10)
    assert codes == [0]
    assert ring.consumer_sequence("journaler") == n
    seqs, arr = [], []
    for first, count, view in JournalReader(d, shard).blocks():
        seqs.extend(range(first, first + count))
        arr.append(bytes(view))
    assert seqs == list(range(1, n + 1))
    check_content(seqs, np_records(b"".join(arr)))
    last_fsyncs = 0
    for seq, done in spy.commits:                # each commit after an fsync of its own
        assert done > last_fsyncs
        last_fsyncs = done
    data_syncs = len(spy.commits)
    if group_commit_us:
        assert data_syncs <= n // 3              # ~10 ms of records (5) per fsync
        assert max(delays) < 0.02 + 0.1          # the group commit time + scheduling slack
    else:
        assert data_syncs >= n // 2


def np_records(raw):
    import numpy as np
    return np.frombuffer(raw, dtype=records.COMMAND_DTYPE)
