"""Fuzz: random and mutated command records never crash the matcher and each gets
exactly one outcome (ACCEPTED or REJECTED); invariants hold at checkpoints."""
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _engine_streams as streams  # noqa: E402

from engine.commands import Command  # noqa: E402
from engine.config import DEFAULT_CONFIG  # noqa: E402
from engine.events import BytesSink  # noqa: E402
from engine.matcher import Matcher  # noqa: E402
from ringbuf.records import COMMAND_SIZE, EVENT_SIZE, command_struct, event_struct  # noqa: E402

pytestmark = pytest.mark.pypy

# record slot -> (min, max) of its type
_RANGES = []
for fmt_char in command_struct.format[1:]:
    bits = {"B": 8, "H": 16, "I": 32, "Q": 64, "q": 64, "i": 32}[fmt_char]
    if fmt_char in "qi":
        _RANGES.append((-(1 << (bits - 1)), (1 << (bits - 1)) - 1))
    else:
        _RANGES.append((0, (1 << bits) - 1))

_INTERESTING = [0, 1, 2, 3, 4, 5, 7, 8, 15, 99, 100, 101, 255, 65535, -1, -100, 1 << 31,
                (1 << 62), (1 << 62) + 1, (1 << 63) - 1, -(1 << 63), 10 ** 9, 10 ** 12]


def mutated_records(seed, n):
    rnd = random.Random(seed)
    rr = rnd.randrange
    base = [c.pack() for c in streams.random_stream(seed, max(200, n // 20))]
    for i in range(n):
        r = rr(10)
        if r == 0:      # pure random bytes
            yield bytes(rr(256) for _ in range(COMMAND_SIZE))
            continue
        values = list(command_struct.unpack(base[rr(len(base))]))
        for _ in range(1 + rr(3)):
            slot = rr(len(values))
            lo, hi = _RANGES[slot]
            if rr(2):
                v = _INTERESTING[rr(len(_INTERESTING))]
            else:
                v = values[slot] + rr(-3, 4)
            values[slot] = min(hi, max(lo, v))
        yield command_struct.pack(*values)


def fuzz(seed, n):
    sink = BytesSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    seq = 0
    for c in streams.funding(8):
        seq += 1
        m.process(seq, c)
    sink.take()
    unpack_from = event_struct.unpack_from
    outcomes_total = 0
    for i, rec in enumerate(mutated_records(seed, n)):
        seq += 1
        cmd = Command.unpack(rec)
        m.process(seq, cmd)
        data = sink.take()
        n_events = len(data) // EVENT_SIZE
        if cmd.kind == 0:
            assert n_events == 0
            continue
        outcomes = 0
        for k in range(n_events):
            ev = unpack_from(data, k * EVENT_SIZE)
            assert ev[10] == seq                       # event.seq
            if ev[0] in (1, 2):
                outcomes += 1
        assert outcomes == 1, (seq, cmd)
        assert data[(n_events - 1) * EVENT_SIZE + 4] & 4      # LAST on the last event
        outcomes_total += 1
        if i % 5000 == 0:
            m._check()
    m._check()
    return outcomes_total


def test_fuzz_100k_records():
    assert fuzz(2024, 100000) > 50000


@pytest.mark.slow
def test_fuzz_million_records():
    assert fuzz(77, 1000000) > 500000
