"""Colocated clients under ``ringmatch run``: exactly their own reports, once; trusted input.

Issue 11 defect 5 (duplicates after a matcher restart), issue 12 item 2 (another
account's fills after a producer id was reused) and item 3 (stream time and admin
commands taken from any producer).
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from engine.client import EngineClient, pack_command
from ringbuf.records import CommandKind, EventKind, Reason, TimeInForce

from tests.pipeline.conftest import ROOT

_OUTCOMES = (EventKind.ACCEPTED, EventKind.REJECTED)


def _drain(client, sent, quiet=3.0, timeout=120):
    """Every report until each command in ``sent`` has its outcome and ``quiet`` s pass."""
    reports, outcomes = [], set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = client.next_report(timeout=quiet)
        if ev is None:
            if sent <= outcomes:
                return reports
            continue
        reports.append(ev)
        if ev.kind in _OUTCOMES:
            outcomes.add(ev.seq)
    raise AssertionError("outcomes missing for %s" % sorted(sent - outcomes)[:20])


def _journal_events(run):
    """Events of a fresh Matcher fed the whole durable journal (the reference)."""
    from engine.events import ListSink
    from engine.matcher import Matcher
    from engine.runtime import RuntimeConfig
    from journaler.recovery import journal_records
    runtime = RuntimeConfig.load(run.config)
    sink = ListSink()
    matcher = Matcher(runtime.exchange(), sink)
    for seq, record in journal_records(runtime.data_dir, run.shard):
        matcher.process(seq, record)
    return sink.events


@pytest.mark.timeout(300)
def test_reports_after_matcher_restart_are_neither_repeated_nor_missing(engine_factory):
    """kill -9 the matcher with fills in flight: the replayed tail reaches the client once."""
    run = engine_factory().start()
    maker, taker = 101, 202
    with EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=maker) as client:
        sent = set()
        for account in (maker, taker):
            sent.add(client.deposit("USD", "100000000", account=account))
            sent.add(client.deposit("BTC", "1000", account=account))

        def pairs(n, base):
            for i in range(n):
                price = "%d" % (30000 + (base + i) % 50)
                sent.add(client.place_order("BTC-USD", "sell", qty="0.02", price=price,
                                            account=maker))
                sent.add(client.place_order("BTC-USD", "buy", qty="0.01", price=price,
                                            account=taker))

        pairs(600, 0)              # ~1,200 commands: far from the next snapshot (2,000)
        reports = _drain(client, set(sent), quiet=0.5)
        assert sum(1 for e in reports if e.kind == EventKind.FILL) >= 1000

        # more fills in flight while the matcher is killed; the supervisor restarts it
        before = len(run.log())
        loader = threading.Thread(target=pairs, args=(300, 7))
        loader.start()
        time.sleep(0.2)
        os.kill(run.child_pids()["matcher"], signal.SIGKILL)
        loader.join(120)
        run.wait_for(r"event=child_restarted child=matcher ", timeout=60, after=before)
        run.wait_for(r"proc=matcher .*event=ready .*replayed=[1-9]", timeout=60, after=before)
        seen = {e.seq for e in reports if e.kind in _OUTCOMES}
        reports += _drain(client, set(sent) - seen)
        producer_id = client.producer_id
        assert run.stop() == 0, "\n".join(run.log()[-40:])

    keys = [(e.seq, e.event_index) for e in reports]
    dupes = len(keys) - len(set(keys))
    assert dupes == 0, "%d duplicate reports" % dupes
    expected = [(e.seq, e.event_index) for e in _journal_events(run)
                if e.producer_id == producer_id and e.account_id in (maker, taker)]
    assert keys == expected
    assert sum(1 for e in reports if e.kind == EventKind.FILL) >= 1500


_PROCESS_A = r"""
import sys
from engine.client import EngineClient
with EngineClient.attach(shard=sys.argv[1], data_dir=sys.argv[2], account=11) as a:
    a.wait_outcome(a.deposit("BTC", "10"), timeout=30)
    oid = a.place_order("BTC-USD", "sell", qty="0.5", price="30000")
    assert a.wait_outcome(oid, timeout=30).kind == 1
    print(a.producer_id, oid)
"""


@pytest.mark.timeout(240)
def test_a_reused_producer_slot_receives_no_report_of_the_previous_process(engine_factory):
    """A (account 11) rests an order and exits; B (account 12) trades against it."""
    run = engine_factory().start()
    out = subprocess.run([sys.executable, "-c", _PROCESS_A, run.shard, run.data_dir],
                         cwd=ROOT, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    a_producer, a_order = [int(v) for v in out.stdout.split()]
    with EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=12) as b:
        b_producer = b.producer_id
        sent = {b.deposit("USD", "1000000")}
        sent.add(b.place_order("BTC-USD", "buy", qty="0.5", price="30000"))
        reports = _drain(b, sent, quiet=1.0)
    assert run.stop() == 0
    foreign = ["%s order %d account %d" % (EventKind(e.kind).name, e.order_id, e.account_id)
               for e in reports if e.account_id != 12 or e.order_id == a_order]
    assert not foreign, foreign
    assert b_producer != a_producer          # an incarnation, not the freed table slot
    fills = [e for e in reports if e.kind == EventKind.FILL]
    assert [(e.account_id, e.counter_order_id) for e in fills] == [(12, a_order)]


@pytest.mark.timeout(240)
def test_a_client_sees_only_the_accounts_it_is_attached_for(engine_factory):
    """Two clients sharing one fixed producer id: each still gets only its accounts' reports."""
    run = engine_factory().start()
    kw = dict(shard=run.shard, data_dir=run.data_dir, producer_id=9)
    with EngineClient.attach(account=11, **kw) as a, EngineClient.attach(account=12, **kw) as b:
        a_sent = {a.deposit("BTC", "10"), a.place_order("BTC-USD", "sell", qty="0.5",
                                                       price="30000")}
        b_sent = {b.deposit("USD", "1000000"), b.place_order("BTC-USD", "buy", qty="0.5",
                                                            price="30000")}
        a_reports = _drain(a, a_sent, quiet=1.0)
        b_reports = _drain(b, b_sent, quiet=1.0)
    assert run.stop() == 0
    assert {e.account_id for e in a_reports} == {11}
    assert {e.account_id for e in b_reports} == {12}
    assert [e.kind for e in a_reports].count(EventKind.FILL) == 1
    assert [e.kind for e in b_reports].count(EventKind.FILL) == 1


@pytest.mark.timeout(240)
def test_a_far_future_timestamp_does_not_move_stream_time(engine_factory):
    """One record stamped 2^63-1 (rejected), then a GTT order: accepted, expires on time."""
    run = engine_factory().start()
    with EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=31) as c:
        c.wait_outcome(c.deposit("USD", "1000000"), timeout=30)
        bad = c._send(pack_command(int(CommandKind.NEW_ORDER), side=1, order_type=1, tif=1,
                                   symbol_id=1, account_id=31, price=100, qty=0,
                                   timestamp_ns=(1 << 63) - 1))
        outcome = c.wait_outcome(bad, timeout=30)
        assert outcome.kind == EventKind.REJECTED and outcome.reason == Reason.INVALID_QTY
        assert outcome.timestamp_ns < time.time_ns() + 60 * 10 ** 9
        expire_ns = time.time_ns() + 12 * 10 ** 9      # beyond the 5 s skew bound
        oid = c.place_order("BTC-USD", "buy", qty="0.01", price="100", tif=TimeInForce.GTT,
                            expire_ns=expire_ns)
        accepted = c.wait_outcome(oid, timeout=30)
        assert (accepted.kind, accepted.reason) == (EventKind.ACCEPTED, Reason.OK)
        expired = None
        deadline = time.monotonic() + 60
        while expired is None and time.monotonic() < deadline:
            ev = c.next_report(timeout=1)
            if ev is not None and ev.kind == EventKind.EXPIRED and ev.order_id == oid:
                expired = ev
        assert expired is not None, "the GTT order never expired"
        # it expired by the trusted clock: at or after its expiry, not minutes later
        assert expire_ns <= expired.timestamp_ns < expire_ns + 30 * 10 ** 9
    assert run.stop() == 0


@pytest.mark.timeout(240)
def test_a_client_cannot_snapshot_or_halt(engine_factory):
    """SNAPSHOT/HALT from a colocated client are rejected; the supervisor's snapshots work."""
    from ringbuf.errors import RingError
    run = engine_factory(extra={"snapshot": {"every_commands": 0, "every_seconds": 1,
                                             "keep": 3}}).start()
    with EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=41) as c:
        c.wait_outcome(c.deposit("USD", "1000000"), timeout=30)
        # even a record claiming the supervisor's producer id is stamped with the client's
        for producer_id in (c.producer_id, 0x7F00):
            snap = c._send(pack_command(int(CommandKind.SNAPSHOT), account_id=41,
                                        producer_id=producer_id))
            ev = c.wait_outcome(snap, timeout=30)
            assert (ev.kind, ev.reason) == (EventKind.REJECTED, Reason.NOT_PRIVILEGED)
            halt = c._send(pack_command(int(CommandKind.HALT), symbol_id=1, account_id=41,
                                        producer_id=producer_id))
            ev = c.wait_outcome(halt, timeout=30)
            assert (ev.kind, ev.reason) == (EventKind.REJECTED, Reason.NOT_PRIVILEGED)
        oid = c.place_order("BTC-USD", "buy", qty="0.01", price="100")
        assert c.wait_outcome(oid, timeout=30).kind == EventKind.ACCEPTED   # not halted
        with pytest.raises(RingError, match="privileged"):
            c.ring_in.producer(producer_id=0x7F00)
        # the supervisor's periodic snapshot still happens
        run.wait_for(r"event=snapshot_written seq=(\d+)", timeout=60)
        written = [int(m.group(1)) for m in (re.search(r"event=snapshot_written seq=(\d+)", l)
                                             for l in run.log()) if m]
        assert snap not in written and halt not in written
    assert run.stop() == 0
