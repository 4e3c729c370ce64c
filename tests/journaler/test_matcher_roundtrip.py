"""Commands -> journal -> replay through the real Matcher: same state hash, same events.

Also the matcher-side crash simulation: a matcher killed at a random point is
rebuilt with recovery() from the durable journal (and snapshots) and must equal
an uninterrupted run over the same prefix.
"""
import random

import pytest

pytest.importorskip("engine.matcher")
from engine.config import DEFAULT_CONFIG  # noqa: E402
from engine.events import BytesSink  # noqa: E402
from engine.matcher import Matcher  # noqa: E402
from journaler import recovery  # noqa: E402
from journaler import snapshot as snapshots  # noqa: E402
from journaler.writer import JournalWriter  # noqa: E402

pytestmark = [pytest.mark.timeout(120), pytest.mark.pypy]


def workload(n, seed):
    from perf import matcher_bench, workload as wl
    deps, cmds = matcher_bench.build(wl.generate(n, seed=seed), DEFAULT_CONFIG)
    return deps + cmds


def write(d, commands, snapshot_at=(), seed=3):
    """Journal the commands in random batches; run a matcher alongside taking snapshots."""
    rng = random.Random(seed)
    live = Matcher(DEFAULT_CONFIG, BytesSink())
    hashes = {}
    with JournalWriter(d, "s0", segment_bytes=32 << 10, fsync="off") as w:
        i = 0
        while i < len(commands):
            n = min(rng.randint(1, 200), len(commands) - i)
            batch = commands[i:i + n]
            w.append(batch[0][0], b"".join(cmd.pack() for _, cmd in batch))
            for seq, cmd in batch:
                live.process(seq, cmd)
                hashes[seq] = None
                if seq in snapshot_at:
                    snapshots.write_snapshot(d, "s0", seq, live)
            i += n
    return live


def test_round_trip_same_hash_and_events(tmp_path):
    d = str(tmp_path)
    commands = workload(4000, seed=11)
    direct_sink = BytesSink()
    direct = Matcher(DEFAULT_CONFIG, direct_sink)
    for seq, cmd in commands:
        direct.process(seq, cmd)
    write(d, commands)
    sink = BytesSink()
    replayed = Matcher(DEFAULT_CONFIG, sink)
    last, count = recovery.replay(replayed, d, "s0")
    assert (last, count) == (commands[-1][0], len(commands))
    assert replayed.state_hash() == direct.state_hash()
    assert sink.getvalue() == direct_sink.getvalue()
    assert len(sink.getvalue()) > 0
    replayed._check()


def test_snapshot_restore_replay_unchanged_hash(tmp_path):
    d = str(tmp_path)
    commands = workload(4000, seed=12)
    mid = commands[len(commands) // 2][0]
    live = write(d, commands, snapshot_at={mid})
    restored, seq = recovery.restore_latest(DEFAULT_CONFIG, d, "s0")
    assert seq == mid
    assert restored.state_hash() == snapshots.read_snapshot(
        snapshots.list_snapshots(d, "s0")[0][1]).state_hash
    recovery.replay(restored, d, "s0", after=seq)
    assert restored.state_hash() == live.state_hash()


def test_matcher_crash_at_random_points_recovers_same_state(tmp_path):
    """20 seeded 'kill -9 of the matcher' points: recover() == uninterrupted run at that prefix."""
    commands = workload(3000, seed=13)
    rng = random.Random(20240611)
    points = sorted(rng.sample(range(1, len(commands) + 1), 20))
    expected = {}
    m = Matcher(DEFAULT_CONFIG, BytesSink())
    for seq, cmd in commands:
        m.process(seq, cmd)
        if seq in points:
            expected[seq] = m.state_hash()
    snaps = {commands[i][0] for i in range(499, len(commands), 500)}
    for trial, point in enumerate(points):
        d = str(tmp_path / ("t%d" % trial))
        write(d, commands[:point], snapshot_at=snaps, seed=trial)
        recovered, last = recovery.recover(DEFAULT_CONFIG, d, "s0")
        assert last == point
        assert recovered.state_hash() == expected[point], "trial %d at seq %d" % (trial, point)
