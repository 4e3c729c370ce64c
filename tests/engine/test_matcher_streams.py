"""Random command streams: invariants after every command, one outcome per command,
snapshot -> restore -> replay, and identical bytes on CPython and PyPy."""
import json
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

sys.path.insert(0, os.path.dirname(__file__))
import _engine_streams as streams  # noqa: E402

from engine.config import DEFAULT_CONFIG  # noqa: E402
from engine.events import BytesSink, Event, ListSink  # noqa: E402
from engine.matcher import Matcher  # noqa: E402
from ringbuf.records import EventFlags, EventKind as K  # noqa: E402

pytestmark = pytest.mark.pypy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check_command_events(seq, cmd, events):
    if cmd.kind == 0:
        assert events == []
        return
    outcomes = [e for e in events if e.kind in (K.ACCEPTED, K.REJECTED)]
    assert len(outcomes) == 1, events
    assert all(e.seq == seq for e in events)
    assert [e.event_index for e in events] == list(range(len(events)))
    assert events[-1].flags & EventFlags.LAST
    assert not any(e.flags & EventFlags.LAST for e in events[:-1])
    # outcome comes before anything the command itself causes (expiries may precede it)
    first = events.index(outcomes[0])
    assert all(e.kind == K.EXPIRED or e.kind == K.BOOK_DELTA for e in events[:first])


def conservation(m):
    # per asset: sum(available + held) over accounts incl. fees == deposits - withdrawals
    totals = [0] * m.accounts.n_assets
    for acct in m.accounts.accounts.values():
        for j, v in enumerate(acct.bal):
            totals[j >> 1] += v
    assert totals == m.accounts.supply


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 32), st.integers(1, 3), st.integers(2, 8))
def test_random_stream_invariants_after_every_command(seed, n_symbols, n_accounts):
    sink = ListSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    cmds = streams.random_stream(seed, 250, n_accounts=n_accounts,
                                 symbols=streams.SYMBOLS[:n_symbols])
    for seq, cmd in enumerate(cmds, 1):
        sink.clear()
        m.process(seq, cmd)
        m._check()
        conservation(m)
        check_command_events(seq, cmd, sink.events)
        # best bid/ask derivable: book never crossed
        for sid in m.symbols:
            bid, ask = m.best_bid(sid), m.best_ask(sid)
            assert bid is None or ask is None or bid[0] < ask[0]


def test_l2_and_last_price_derivable_from_events():
    sink = ListSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    streams.run(m, streams.random_stream(7, 3000))
    levels = {}
    last = {}
    for e in sink.events:
        if e.kind == K.BOOK_DELTA:
            key = (e.symbol_id, e.side)
            if e.qty:
                levels.setdefault(key, {})[e.price] = e.qty
            else:
                levels.setdefault(key, {}).pop(e.price, None)
        elif e.kind == K.TRADE:
            last[e.symbol_id] = e.price
    for sid in m.symbols:
        bids = levels.get((sid, 1), {})
        asks = levels.get((sid, 2), {})
        assert m.book(sid).depth(1) == sorted(bids.items(), reverse=True)
        assert m.book(sid).depth(2) == sorted(asks.items())
        assert m.last_price(sid) == last.get(sid)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_snapshot_restore_replay_same_hash_and_events(seed):
    cmds = streams.random_stream(seed, 2500)
    cut = len(cmds) // 2
    sink_a = BytesSink()
    a = Matcher(DEFAULT_CONFIG, sink_a)
    streams.run(a, cmds)
    # interrupted run: snapshot at cut, restore, replay the tail
    sink_b = BytesSink()
    b = Matcher(DEFAULT_CONFIG, sink_b)
    streams.run(b, cmds[:cut])
    head = sink_b.take()
    data = b.snapshot()
    assert b.snapshot() == data                                 # deterministic bytes
    sink_c = BytesSink()
    c = Matcher.restore(DEFAULT_CONFIG, data, sink_c)
    assert c.state_hash() == b.state_hash()
    assert c.snapshot() == data
    c._check()
    streams.run(c, cmds[cut:], first_seq=cut + 1)
    c._check()
    assert c.state_hash() == a.state_hash()
    assert head + sink_c.take() == sink_a.take()


def test_restore_refuses_bad_bytes():
    from engine.matcher import SnapshotError
    m = Matcher(DEFAULT_CONFIG, ListSink())
    data = m.snapshot()
    with pytest.raises(SnapshotError):
        Matcher.restore(DEFAULT_CONFIG, b"junk" + data, ListSink())
    with pytest.raises(SnapshotError):
        Matcher.restore(DEFAULT_CONFIG, data + b"x", ListSink())


def run_seeded(seed, n):
    """Events bytes digest and state hash of a seeded stream (also run under PyPy)."""
    import hashlib
    sink = BytesSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    streams.run(m, streams.random_stream(seed, n))
    return {"events": hashlib.sha256(sink.take()).hexdigest(), "state_hash": m.state_hash(),
            "snapshot": hashlib.sha256(m.snapshot()).hexdigest()}


def test_same_bytes_on_cpython_and_pypy():
    here = run_seeded(11, 4000)
    if hasattr(sys, "pypy_version_info"):
        other = os.path.join(ROOT, ".venv", "bin", "python")
    else:
        other = os.path.join(ROOT, ".venv-pypy", "bin", "python")
    if not os.path.exists(other):
        pytest.skip("other interpreter %s not present" % other)
    code = ("import sys, json; sys.path.insert(0, %r); sys.path.insert(0, %r); "
            "import test_matcher_streams as t; print(json.dumps(t.run_seeded(11, 4000)))"
            % (ROOT, os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([other, "-c", code], cwd=ROOT, capture_output=True, timeout=240,
                         check=True)
    there = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert there == here
