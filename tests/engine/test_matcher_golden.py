"""Golden digests: the matcher's output is frozen byte for byte.

The digests below were computed with the matcher *before* its speed work (git
115ca92, plain ``emit_event`` path) and must never change unless the event stream is
changed on purpose (then docs/records.md and ``records.LAYOUT_VERSION`` change too).
The event digests were regenerated once, for layout version 2 (FILL, AMENDED and the
rest's BOOK_DELTA carry the order's hold, a stop's ACCEPTED its stop price), equal on
CPython 3.11 and PyPy 3.9; commands, event counts, state hashes and snapshots did not
change.  Two seeded streams, 200k commands in all:

* ``adversarial``: ``_engine_streams.random_stream`` (every command kind, stops, GTT,
  amends, STP with few accounts, halts, rejects), 100k commands;
* ``bench``: a frozen copy of the perf workload shape (64% limit, 25% cancel, 4% IOC,
  2% FOK, 5% market around a drifting mid, 1000 funded accounts), 100k commands.

For each: sha256 of the packed input commands (so a changed *generator* is told apart
from a changed *matcher*), sha256 of the BytesSink event bytes, the event count,
``state_hash()`` and sha256 of ``snapshot()``.  The same stream through sinks that only
offer ``emit_event``/``mark_last`` (the generic path) must give the same bytes.
"""
import hashlib
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _engine_streams as streams  # noqa: E402

from engine.commands import Command  # noqa: E402
from engine.config import DEFAULT_CONFIG  # noqa: E402
from engine.events import BytesSink, Event, ListSink  # noqa: E402
from engine.matcher import Matcher  # noqa: E402
from ringbuf.records import LAYOUT_VERSION, event_struct  # noqa: E402

pytestmark = [pytest.mark.pypy, pytest.mark.timeout(300)]

#: the records layout version the event digests below were made with
GOLDEN_LAYOUT_VERSION = 2

GOLDEN = {
    "adversarial": {
        "commands": 'f33e32ce2463e30c99762f3188a482b332d1dfa9260c625723176e60de40b944',
        "events": 'd7988e6e0e440c670117d85620c301d1c88b3433b2bc20697ba7495aa0b5b172',
        "n_events": 170622,
        "state_hash": 8773943184330590831,
        "snapshot": '13ceece6e69ab33d02accf718d5448e83bfac7a5dc81d6f33574787645e5fb96',
    },
    "bench": {
        "commands": '276d0a042235914dd5c5f49de94e44d180cf05389da90981bf305f8a2b0595b4',
        "events": '13f8549fe5536c8a6829c2645872b704375a2955783e3bb83122bc821c66c04a',
        "n_events": 326120,
        "state_hash": 16077593999307950880,
        "snapshot": '8ea6139328976dd6a84e0092a6e5b6bde546be95cfaf25fbe21e6e4bacb0d653',
    },
}


def bench_stream(n, seed=5, accounts=1000, mid=100000, spread=50, max_qty=100):
    """Deposits for ``accounts`` accounts, then ``n`` perf-workload-like commands (frozen)."""
    rnd = random.Random(seed)
    rand = rnd.random
    randint = rnd.randint
    cmds = []
    for a in range(1, accounts + 1):
        cmds.append(Command.deposit(a, 1, 10 ** 15))     # BTC
        cmds.append(Command.deposit(a, 2, 10 ** 15))     # USD
    live = []          # [seq, account]
    seq = len(cmds)
    n_orders = 0
    for _ in range(n):
        seq += 1
        step = rand()
        if step < 0.1:
            mid -= 1
        elif step > 0.9:
            mid += 1
        mid = max(mid, 2 * spread)
        r = rand()
        side = 1 if rand() < 0.5 else 2
        if r < 0.25 and live:
            i = randint(max(0, len(live) - 200), len(live) - 1) if rand() < 0.8 else \
                randint(0, len(live) - 1)
            target = live[i]
            live[i] = live[-1]
            live.pop()
            cmds.append(Command.cancel(target[1], order_id=target[0]))
            continue
        account = 1 + n_orders % accounts
        n_orders += 1
        qty = randint(1, max_qty)
        if r < 0.30:
            cmds.append(Command.market(account, 1, side, qty=qty))
            continue
        if r < 0.36:
            tif = 3 if r < 0.34 else 4
            offset = randint(-5, 1)
        else:
            tif = 1
            offset = randint(-3, spread) if rand() < 0.9 else randint(-5, 0)
        price = mid - offset if side == 1 else mid + offset
        cmds.append(Command.limit(account, 1, side, price, qty, tif=tif))
        if tif == 1:
            live.append([seq, account])
    return cmds


def stream(name):
    if name == "adversarial":
        return streams.random_stream(20240611, 100000)
    return bench_stream(100000)


def commands_digest(cmds):
    h = hashlib.sha256()
    for c in cmds:
        h.update(c.pack())
    return h.hexdigest()


def run_bytes(cmds):
    sink = BytesSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    h = hashlib.sha256()
    n = 0
    for seq, c in enumerate(cmds, 1):
        m.process(seq, c)
        if seq % 4096 == 0:
            data = sink.take()
            n += len(data) // 128
            h.update(data)
    data = sink.take()
    n += len(data) // 128
    h.update(data)
    return m, {"events": h.hexdigest(), "n_events": n, "state_hash": m.state_hash(),
               "snapshot": hashlib.sha256(m.snapshot()).hexdigest()}


class PackingSink(object):
    """A third-party sink: only the documented role (``emit_event`` + ``mark_last``)."""

    def __init__(self):
        self.records = []

    def emit_event(self, *fields):
        assert len(fields) == 25
        self.records.append(bytearray(event_struct.pack(*fields)))

    def mark_last(self):
        self.records[-1][4] |= 4

    def take(self):
        out = b"".join(bytes(r) for r in self.records)
        self.records = []
        return out


def test_golden_digests_belong_to_this_layout_version():
    # a changed event stream needs a new LAYOUT_VERSION (readers of old journals and rings
    # refuse it through SCHEMA_HASH) and new digests, together
    assert LAYOUT_VERSION == GOLDEN_LAYOUT_VERSION


@pytest.mark.parametrize("name", ["adversarial", "bench"])
def test_golden_stream(name):
    cmds = stream(name)
    got = {"commands": commands_digest(cmds)}
    m, out = run_bytes(cmds)
    got.update(out)
    m._check()
    if os.environ.get("RM_PRINT_GOLDEN"):
        print("GOLDEN %s %r" % (name, got))
    want = GOLDEN[name]
    assert got["commands"] == want["commands"], "the input generator changed, not the matcher"
    assert got == want


@pytest.mark.parametrize("name", ["adversarial", "bench"])
@pytest.mark.parametrize("fast_sink", [BytesSink])
def test_generic_sinks_give_the_same_bytes(name, fast_sink):
    """The record writer's fast path equals the generic emit_event path."""
    cmds = stream(name)[:12000]
    fast = fast_sink(initial_events=16)           # small: exercises buffer growth
    a = Matcher(DEFAULT_CONFIG, fast)
    lst = ListSink()
    b = Matcher(DEFAULT_CONFIG, lst)
    pk = PackingSink()
    c = Matcher(DEFAULT_CONFIG, pk)
    chunks = []
    for seq, cmd in enumerate(cmds, 1):
        a.process(seq, cmd)
        b.process(seq, cmd)
        c.process(seq, cmd)
        if seq % 1000 == 0:
            chunks.append(fast.take())
    chunks.append(fast.take())
    data = b"".join(chunks)
    assert fast.count == len(lst.events)
    assert data == b"".join(e.pack() for e in lst.events)
    assert data == pk.take()
    assert Event.unpack_all(data) == lst.events
    assert a.state_hash() == b.state_hash() == c.state_hash()


@pytest.mark.parametrize("sink_cls", [BytesSink])
def test_record_writers_extreme_values(sink_cls):
    """Every slot at its limits round-trips through each sink's generic and fast paths."""
    from engine.order_book import Order
    lo = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, -(1 << 63), -(1 << 63), -(1 << 63), -(1 << 63),
          -(1 << 63), -(1 << 63), -(1 << 63), -(1 << 63), -(1 << 63), -(1 << 63), 0, 0,
          -(1 << 63), 0, -(1 << 63)]
    hi = [255, 255, 255, 255, 255, 255, 65535, 65535, 65535, (1 << 32) - 1] + \
        [(1 << 63) - 1] * 10 + [(1 << 32) - 1, (1 << 32) - 1, (1 << 63) - 1, (1 << 64) - 1,
                                (1 << 63) - 1]
    mid = [3, 2, 1, 4, 16, 1, 32767, 301, 32768, 1 << 31, 7, 8, 9, 10, 11, 12, -13, 14, 15,
           16, (1 << 31) + 5, 6, 17, 1 << 63, -1]
    sink = sink_cls()
    for fields in (lo, hi, mid):
        sink.emit_event(*fields)
        sink.mark_last()
    o = Order(8, (1 << 32) - 1, 65535, 2, 4, 3, 0, 1, 100, 50, (1 << 64) - 1, 65535, 0, 0, 0)
    m = Order(9, 1 << 31, 65535, 1, 1, 1, 0, 0, 100, 50, 1 << 63, 7, 0, 0, 0)
    w = sink.event_writer()
    w.begin(12, (1 << 63) - 1, 255)
    w.order(1, o, 8, 65535, -5, 6, -7, 8, 9, 10, (1 << 32) - 1, -(1 << 63))
    w.delta(65535, 2, (1 << 63) - 1, 0)
    w.fill(m, o, 100, 5, -3, 4, 5000, 77)
    w.event(2, 255, 255, 255, 0, 40000, 65535, 65535, (1 << 32) - 1, -1, -2, -3, 0, 0, 0, 0,
            0, 0, 0, (1 << 64) - 1, 0)
    w.mark_last()
    got = Event.unpack_all(sink.take())
    ref = ListSink()
    for fields in (lo, hi, mid):
        ref.emit_event(*fields)
        ref.mark_last()
    from engine.events import SinkWriter
    rw = SinkWriter(ref)
    rw.begin(12, (1 << 63) - 1, 255)
    rw.order(1, o, 8, 65535, -5, 6, -7, 8, 9, 10, (1 << 32) - 1, -(1 << 63))
    rw.delta(65535, 2, (1 << 63) - 1, 0)
    rw.fill(m, o, 100, 5, -3, 4, 5000, 77)
    rw.event(2, 255, 255, 255, 0, 40000, 65535, 65535, (1 << 32) - 1, -1, -2, -3, 0, 0, 0,
             0, 0, 0, 0, (1 << 64) - 1, 0)
    rw.mark_last()
    assert got == ref.events
    assert [tuple(e) for e in got[:3]] == [tuple(f[:4]) + (f[4] | 4,) + tuple(f[5:])
                                          for f in (lo, hi, mid)]
