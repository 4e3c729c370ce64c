"""Matcher rule M9: trusted clock ticks, clamped producer time, admin only from privileged ids."""
import pytest

from engine.commands import Command
from engine.config import DEFAULT_CONFIG
from engine.events import ListSink
from engine.matcher import Matcher
from ringbuf.records import (CommandKind as CK, EventKind as K, MAX_CLOCK_SKEW_NS,
                             Reason as R, SUPERVISOR_PRODUCER_ID, TimeInForce as T)

pytestmark = pytest.mark.pypy

BUY, SYM, CLIENT = 1, 1, 0x8001
T0 = 1_700_000_000 * 10 ** 9          # a wall-clock time
FAR = (1 << 63) - 1


def supervised():
    sink = ListSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    m.process(1, Command.clock(T0))
    m.process(2, Command.deposit(7, 1, 10 ** 9, timestamp_ns=T0, producer_id=CLIENT))
    sink.clear()
    return m, sink


def outcome(sink, seq):
    [ev] = [e for e in sink.events if e.seq == seq and e.kind in (K.ACCEPTED, K.REJECTED)]
    return K(ev.kind), R(ev.reason)


def test_a_far_future_timestamp_is_clamped_and_gtt_orders_still_work():
    """The issue: ts 2^63-1 (even rejected) made every later GTT order INVALID_EXPIRY."""
    m, sink = supervised()
    m.process(3, Command.limit(7, SYM, BUY, 100, 0, timestamp_ns=FAR, producer_id=CLIENT))
    assert outcome(sink, 3) == (K.REJECTED, R.INVALID_QTY)
    assert m.now == T0 + MAX_CLOCK_SKEW_NS
    expire = T0 + 60 * 10 ** 9
    m.process(4, Command.limit(7, SYM, BUY, 100, 1, tif=T.GTT, expire_ns=expire,
                               timestamp_ns=FAR, producer_id=CLIENT))
    assert outcome(sink, 4) == (K.ACCEPTED, R.OK)
    assert m.order(4).expire_ns == expire
    # time moves with the trusted ticks; the order expires when the clock passes its expiry
    m.process(5, Command.clock(expire - MAX_CLOCK_SKEW_NS - 1))
    assert m.order(4) is not None
    m.process(6, Command.clock(expire))
    assert m.order(4) is None
    expired = [e for e in sink.events if e.seq == 6 and e.kind == K.EXPIRED]
    assert [(e.order_id, e.timestamp_ns) for e in expired] == [(4, expire)]


@pytest.mark.parametrize("cmd", [Command.snapshot(), Command.halt(SYM), Command.resume(SYM),
                                 Command.state_hash(), Command.clock(T0 + 10 ** 9, CLIENT)])
def test_admin_from_an_ordinary_producer_is_rejected_and_changes_nothing(cmd):
    m, sink = supervised()
    cmd.producer_id = CLIENT
    before = m._encode(clock=False)
    m.process(3, cmd)
    assert outcome(sink, 3) == (K.REJECTED, R.NOT_PRIVILEGED)
    assert [e.kind for e in sink.events] == [K.REJECTED]
    assert m._encode(clock=False) == before and m.clock == T0 and m.snapshot_seq == 0


def test_admin_from_a_privileged_producer_is_accepted():
    m, sink = supervised()
    m.process(3, Command.halt(SYM, producer_id=SUPERVISOR_PRODUCER_ID))
    m.process(4, Command.snapshot(producer_id=0x7F01))
    assert outcome(sink, 3) == (K.ACCEPTED, R.OK) and m.symbols[SYM].halted
    assert outcome(sink, 4) == (K.ACCEPTED, R.OK) and m.snapshot_seq == 4


def test_an_unprivileged_clock_is_rejected_even_unsupervised():
    m = Matcher(DEFAULT_CONFIG, ListSink())
    m.process(1, Command.clock(T0, producer_id=5))
    assert outcome(m.sink, 1) == (K.REJECTED, R.NOT_PRIVILEGED) and m.clock == 0


def test_without_ticks_the_old_rules_hold():
    """In-process matchers, LOBSTER and golden streams: no tick, no clamp, admin from 0."""
    m = Matcher(DEFAULT_CONFIG, ListSink())
    m.process(1, Command.halt(SYM, timestamp_ns=T0))
    m.process(2, Command.deposit(7, 1, 10, timestamp_ns=T0 + 10 ** 15))
    assert outcome(m.sink, 1) == (K.ACCEPTED, R.OK)
    assert m.now == T0 + 10 ** 15


def test_the_clock_survives_snapshot_restore_and_replays_identically():
    m, sink = supervised()
    restored = Matcher.restore(DEFAULT_CONFIG, m.snapshot(), ListSink())
    assert restored.clock == T0 and restored.state_hash() == m.state_hash()
    for target in (m, restored):
        target.process(3, Command.deposit(7, 1, 5, timestamp_ns=FAR, producer_id=CLIENT))
        target.process(4, Command.snapshot(producer_id=CLIENT))
    assert restored.now == m.now == T0 + MAX_CLOCK_SKEW_NS
    assert restored.sink.events == [e for e in sink.events if e.seq >= 3]
    assert restored.state_hash() == m.state_hash()
    # an unsupervised state's snapshot bytes are unchanged by the rule (no trailer)
    plain = Matcher(DEFAULT_CONFIG, ListSink())
    assert not plain.snapshot().endswith(b"CLK1" + b"\0" * 8)
    assert Matcher.restore(DEFAULT_CONFIG, plain.snapshot(), ListSink()).clock == 0
