"""SoaMatcher (engine/soa_matcher.py) against the reference Matcher: identical event
bytes after every command, identical state_hash() and snapshot() bytes, snapshots
restore across implementations, invariants (``_check``) hold after every step."""
import os
import random
import sys

import pytest
from hypothesis import given, settings, strategies as st

sys.path.insert(0, os.path.dirname(__file__))
import _engine_streams as streams  # noqa: E402
from test_matcher_fuzz import mutated_records  # noqa: E402

import engine.soa_matcher as soa_module  # noqa: E402
from engine.commands import Command  # noqa: E402
from engine.config import DEFAULT_CONFIG  # noqa: E402
from engine.events import BytesSink, Event, ListSink  # noqa: E402
from engine.matcher import Matcher  # noqa: E402
from engine.soa_matcher import SoaMatcher  # noqa: E402
from ringbuf.records import CommandKind  # noqa: E402

pytestmark = pytest.mark.pypy

PRIVILEGED = 0x7F00
_MAX_TS = (1 << 63) - 1


def supervised_stream(seed, n, n_accounts=6, symbols=streams.SYMBOLS):
    """random_stream with producer ids, CLOCK ticks from the privileged producer 0x7F00,
    CLOCKs and admin commands from unprivileged producers, and timestamps far ahead
    (rule M9 clamps them once the stream is supervised)."""
    rnd = random.Random(seed ^ 0x5EED)
    rr = rnd.randrange
    out = []
    tick = 0
    for c in streams.random_stream(seed, n, n_accounts=n_accounts, symbols=symbols):
        r = rr(100)
        if r < 3:
            tick = max(tick, c.timestamp_ns) + rr(0, 2000)
            out.append(Command(kind=CommandKind.CLOCK, producer_id=PRIVILEGED,
                               timestamp_ns=tick))
        elif r < 4:
            out.append(Command(kind=CommandKind.CLOCK, producer_id=rr(1, 5),
                               timestamp_ns=c.timestamp_ns + 10 ** 9))
        elif r < 5:
            kind = (CommandKind.HALT, CommandKind.RESUME, CommandKind.STATE_HASH)[rr(3)]
            out.append(Command(kind=kind, symbol_id=symbols[rr(len(symbols))],
                               producer_id=PRIVILEGED if rr(2) else rr(1, 5),
                               timestamp_ns=c.timestamp_ns))
        if c.kind != CommandKind.NOP:
            c.producer_id = PRIVILEGED if rr(40) == 0 else rr(1, 6)
            if rr(200) == 0:
                c.timestamp_ns = _MAX_TS if rr(2) else c.timestamp_ns + 10 ** 10
        out.append(c)
    return out


def assert_same_run(commands, check_every=0, sink_type=BytesSink):
    """Run both implementations command by command; compare events per command."""
    sink_a, sink_b = sink_type(), sink_type()
    ref = Matcher(DEFAULT_CONFIG, sink_a)
    soa = SoaMatcher(DEFAULT_CONFIG, sink_b)
    for seq, cmd in enumerate(commands, 1):
        ref.process(seq, cmd)
        soa.process(seq, cmd)
        a, b = sink_a.take(), sink_b.take()
        if a != b:
            if sink_type is BytesSink:
                a, b = Event.unpack_all(a), Event.unpack_all(b)
            assert b == a, "seq %d: %r" % (seq, cmd)
        if check_every and seq % check_every == 0:
            soa._check()
    soa._check()
    assert soa.state_hash() == ref.state_hash()
    assert soa.snapshot() == ref.snapshot()
    return ref, soa


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_seeded_streams_same_events_hash_snapshot(seed):
    # 4 x ~5k commands: every order type, STP mode, GTT, stops, amends, mass cancel,
    # deposits/withdrawals, halts, state hashes, NOPs
    assert_same_run(streams.random_stream(seed, 5000, n_accounts=2 + seed),
                    check_every=100)


@pytest.mark.parametrize("seed", [5, 6])
def test_supervised_streams_same_events(seed):
    # CLOCK ticks from 0x7F00, admin commands and CLOCKs from unprivileged producers
    ref, soa = assert_same_run(supervised_stream(seed, 4000), check_every=100)
    assert soa.clock == ref.clock > 0


def test_mutated_records_same_events():
    cmds = streams.funding(8) + [Command.unpack(rec) for rec in mutated_records(99, 8000)]
    assert_same_run(cmds, check_every=500)


def test_list_sink_path_same_events():
    # the emit_event/mark_last path (any sink that is not a BytesSink)
    assert_same_run(streams.random_stream(8, 2000), sink_type=ListSink)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 32), st.integers(1, 3), st.integers(2, 8), st.booleans())
def test_hypothesis_streams_check_after_every_step(seed, n_symbols, n_accounts, supervised):
    make = supervised_stream if supervised else streams.random_stream
    cmds = make(seed, 300, n_accounts=n_accounts, symbols=streams.SYMBOLS[:n_symbols])
    assert_same_run(cmds, check_every=1)


@pytest.mark.parametrize("seed", [1, 9])
def test_snapshot_restore_replay_across_implementations(seed):
    cmds = supervised_stream(seed, 3000)
    cut = len(cmds) // 2
    full = BytesSink()
    ref = Matcher(DEFAULT_CONFIG, full)
    streams.run(ref, cmds)
    head_sink = BytesSink()
    head = SoaMatcher(DEFAULT_CONFIG, head_sink)
    streams.run(head, cmds[:cut])
    data = head.snapshot()
    # a SoaMatcher snapshot restores into both; a Matcher snapshot into SoaMatcher
    for restore in (SoaMatcher.restore, Matcher.restore):
        tail_sink = BytesSink()
        m = restore(DEFAULT_CONFIG, data, tail_sink)
        assert m.state_hash() == head.state_hash()
        assert m.snapshot() == data
        m._check()
        streams.run(m, cmds[cut:], first_seq=cut + 1)
        m._check()
        assert m.state_hash() == ref.state_hash()
        assert head_sink.getvalue() + tail_sink.take() == full.getvalue()
    ref_head = Matcher(DEFAULT_CONFIG, BytesSink())
    streams.run(ref_head, cmds[:cut])
    m = SoaMatcher.restore(DEFAULT_CONFIG, ref_head.snapshot(), BytesSink())
    assert m.snapshot() == ref_head.snapshot()


def test_restore_refuses_bad_bytes():
    from engine.matcher import SnapshotError
    data = SoaMatcher(DEFAULT_CONFIG, ListSink()).snapshot()
    with pytest.raises(SnapshotError):
        SoaMatcher.restore(DEFAULT_CONFIG, b"junk" + data, ListSink())
    with pytest.raises(SnapshotError):
        SoaMatcher.restore(DEFAULT_CONFIG, data + b"x", ListSink())


def test_order_id_window_folds_and_jumps(monkeypatch):
    # a tiny window: old live orders move to the fallback dict, a jump in seqs starts a
    # fresh window; lookups, cancels and expiry still find every order
    monkeypatch.setattr(soa_module, "_WINDOW_FOLD", 64)
    monkeypatch.setattr(soa_module, "_WINDOW_CHUNK", 8)
    monkeypatch.setattr(soa_module, "_ZEROS", [0] * 8)
    cmds = streams.random_stream(12, 3000)
    sink_a, sink_b = BytesSink(), BytesSink()
    ref = Matcher(DEFAULT_CONFIG, sink_a)
    soa = SoaMatcher(DEFAULT_CONFIG, sink_b)
    seq = 0
    for i, cmd in enumerate(cmds):
        seq += 1 if i % 700 else 1000          # every 700 commands a gap in seqs
        ref.process(seq, cmd)
        soa.process(seq, cmd)
        assert sink_b.take() == sink_a.take(), seq
        if i % 50 == 0:
            soa._check()
    assert soa.old, "the fallback dict was never used"
    assert len(soa.win) <= 2 * 64 + 8
    assert soa.state_hash() == ref.state_hash()


def test_slots_are_reused():
    # a long stream with bounded live orders keeps the columns bounded (free list)
    cmds = streams.random_stream(13, 6000)
    soa = SoaMatcher(DEFAULT_CONFIG, BytesSink())
    streams.run(soa, cmds)
    soa._check()
    slots = len(soa.ob) // soa_module.RECORD
    assert slots == len(soa.o_coid) == len(soa.o_feenum)
    assert slots < 3 * max(soa.n_live, 50)
    assert soa.n_live + len(soa.o_free) == slots


@pytest.mark.slow
def test_million_commands_same_events_hash():
    import hashlib
    cmds = supervised_stream(2026, 1000000, n_accounts=12)
    sink_a, sink_b = BytesSink(), BytesSink()
    ref = Matcher(DEFAULT_CONFIG, sink_a)
    soa = SoaMatcher(DEFAULT_CONFIG, sink_b)
    ha, hb = hashlib.sha256(), hashlib.sha256()
    for seq, cmd in enumerate(cmds, 1):
        ref.process(seq, cmd)
        soa.process(seq, cmd)
        if seq % 4096 == 0:
            ha.update(sink_a.take())
            hb.update(sink_b.take())
            assert ha.digest() == hb.digest(), seq
        if seq % 100000 == 0:
            soa._check()
    ha.update(sink_a.take())
    hb.update(sink_b.take())
    assert ha.digest() == hb.digest()
    soa._check()
    assert soa.state_hash() == ref.state_hash()
    assert soa.snapshot() == ref.snapshot()


def benchmark_commands(n, per_order=False, seed=3):
    """The benchmark's workload (perf/workload.py: limit, cancel, IOC, FOK, market around
    a drifting mid), funded as perf/matcher_bench does it: 1000 accounts round-robin, or
    one account per order (self-trade prevention cannot fire)."""
    from perf.matcher_bench import build
    from perf.workload import generate
    deps, cmds = build(generate(n, seed=seed), DEFAULT_CONFIG, per_order)
    return [c for _, c in deps] + [c for _, c in cmds]


def assert_same_batched(commands, batch=4096, check_every=0):
    """Both implementations over ``commands``; event bytes compared every ``batch``
    commands (as the benchmark and the matcher process take them), then hash and
    snapshot."""
    sink_a, sink_b = BytesSink(), BytesSink()
    ref = Matcher(DEFAULT_CONFIG, sink_a)
    soa = SoaMatcher(DEFAULT_CONFIG, sink_b)
    for seq, cmd in enumerate(commands, 1):
        ref.process(seq, cmd)
        soa.process(seq, cmd)
        if seq % batch == 0:
            a, b = sink_a.take(), sink_b.take()
            if a != b:
                assert Event.unpack_all(b) == Event.unpack_all(a), "batch ending at %d" % seq
        if check_every and seq % check_every == 0:
            soa._check()
    assert sink_b.take() == sink_a.take()
    soa._check()
    assert soa.state_hash() == ref.state_hash()
    assert soa.snapshot() == ref.snapshot()
    return ref, soa


@pytest.mark.parametrize("per_order", [False, True])
def test_benchmark_workload_same_events(per_order):
    # the benchmark's command mix (fast paths: resting limit, user cancel, fills), 6k
    # commands; with one account per order as well
    ref, soa = assert_same_batched(benchmark_commands(6000, per_order), batch=512,
                                   check_every=1000)
    assert soa.symbols[1].trade_id == ref.symbols[1].trade_id > 100


def test_price_heap_rebuild_and_sorted_fok_walk(monkeypatch):
    # S2 with no slack: the level-price heap is rebuilt on almost every new level, and
    # every FOK takes the sorted walk instead of the tick walk
    monkeypatch.setattr(soa_module, "_HEAP_SLACK", 0)
    monkeypatch.setattr(soa_module, "_SCAN_TICKS", 0)
    assert_same_run(streams.random_stream(21, 3000), check_every=25)
    assert_same_batched(benchmark_commands(3000, seed=4), batch=64, check_every=250)


@pytest.mark.slow
def test_200k_fuzz_same_events_hash():
    # 200k commands: 100k of supervised random streams (every command kind, rule M9) and
    # 100k of the benchmark mix (each from seq 1: order ids are seqs), both
    # implementations, bytes per 4096-command batch
    for cmds in (supervised_stream(2027, 100000, n_accounts=9),
                 benchmark_commands(100000, seed=5)):
        ref, soa = assert_same_batched(cmds, check_every=20000)
        assert soa.n_live == len(ref.orders) > 0
