"""Sender and receiver state machines over real TCP (loopback), with a fault proxy.

The primary side reads a MemorySource (an in-memory input ring); the standby
writes a FileSink (records appended and fsynced by a journaling thread, which
alone advances the durable sequence).  Both are the reference implementations
of the RecordSource / RecordSink contracts that the ring adapters implement.
"""
import os
import struct
import threading
import time

import pytest

from proxy import FaultProxy
from replicator import protocol
from replicator.epoch import EpochStore, FencedError
from replicator.memory import FileSink, MemorySource, read_records_file
from replicator.receiver import Receiver
from replicator.sender import Sender

pytestmark = [pytest.mark.pypy, pytest.mark.timeout(60)]

SHARD = "rtest"


def make_records(first, n):
    out = []
    for i in range(n):
        seq = first + i
        out.append(struct.pack("<qq", seq, seq * 7919 % 1000003) + bytes([seq % 256]) * 48)
    return out


def wait_until(predicate, timeout=10.0, step=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class CheckedSource(MemorySource):
    """Records every gate advance that passed the standby's durable sequence."""

    def __init__(self, sink_ref):
        MemorySource.__init__(self)
        self.sink_ref = sink_ref
        self.violations = []

    def commit(self, seq):
        sink = self.sink_ref.get("sink")
        if sink is not None and self.sink_ref.get("check") and seq > sink.durable_sequence():
            self.violations.append((seq, sink.durable_sequence()))
        MemorySource.commit(self, seq)


class Pair(object):
    """A primary (source + sender) and a standby (sink + receiver), optionally via a proxy."""

    def __init__(self, tmp_path, mode="sync", policy="stall", degrade_after_s=5.0,
                 use_proxy=False, start_standby=True, max_batch=256, sender_shard=SHARD):
        self.tmp = tmp_path
        self.ref = {"check": mode == "sync" and policy == "stall"}
        self.source = CheckedSource(self.ref)
        self.primary_store = EpochStore(str(tmp_path / "primary"), SHARD)
        self.standby_store = EpochStore(str(tmp_path / "standby"), SHARD)
        self.standby_store.become_standby(1)
        self.sink = None
        self.receiver = None
        self.proxy = None
        self.port = 0
        self.mode, self.policy, self.degrade_after_s = mode, policy, degrade_after_s
        self.max_batch = max_batch
        self.sender_shard = sender_shard
        if start_standby:
            self.start_standby()
        else:
            # reserve a port that nobody listens on (yet)
            import socket
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
            s.close()
        target = ("127.0.0.1", self.port)
        if use_proxy:
            self.proxy = FaultProxy(target)
            target = self.proxy.address
        self.sender = Sender(self.source, target, sender_shard, epoch_store=self.primary_store,
                             mode=mode, on_unreachable=policy, degrade_after_s=degrade_after_s,
                             max_batch=max_batch, retry_s=0.05, io_timeout_s=2.0,
                             heartbeat_s=0.2)

    def start_standby(self):
        self.sink = FileSink(str(self.tmp / "standby.journal"))
        self.ref["sink"] = self.sink
        self.receiver = Receiver(self.sink, ("127.0.0.1", self.port), SHARD, self.standby_store,
                                 io_timeout_s=2.0, heartbeat_s=0.2).start()
        self.port = self.receiver.address[1]

    def stop_standby(self):
        self.receiver.stop()
        self.sink.close()
        self.ref["sink"] = None

    def standby_records(self):
        first, recs = read_records_file(str(self.tmp / "standby.journal"))
        assert first == 1
        return recs

    def close(self):
        self.sender.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.sink is not None:
            self.sink.close()
        if self.proxy is not None:
            self.proxy.close()


@pytest.fixture
def pairs(tmp_path):
    made = []

    def make(**kw):
        p = Pair(tmp_path, **kw)
        made.append(p)
        return p
    try:
        yield make
    finally:
        for p in made:
            p.close()


def test_sync_gate_never_passes_the_standby_durable_sequence(pairs):
    pair = pairs()
    pair.sender.start()
    recs = make_records(1, 3000)
    for i in range(0, 3000, 100):       # a producer publishing in bursts
        pair.source.append(recs[i:i + 100])
        time.sleep(0.001)
    assert pair.source.wait_committed(3000, 10) == 3000
    assert pair.source.violations == []
    assert pair.sink.durable_sequence() == 3000
    pair.sink.close()
    pair.sink = None
    assert pair.standby_records() == recs


def test_async_gate_follows_what_was_sent_and_the_cursor_when_alone(pairs):
    pair = pairs(mode="async", start_standby=False)
    pair.sender.start()
    pair.source.append(make_records(1, 500))
    # nobody listening: async does not hold the matcher back
    assert pair.source.wait_committed(500, 5) == 500
    assert pair.sender.connected is False


def test_sync_stall_holds_the_gate_until_the_standby_appears(pairs, tmp_path):
    pair = pairs(start_standby=False)
    pair.sender.start()
    recs = make_records(1, 400)
    pair.source.append(recs)
    time.sleep(0.5)
    assert pair.source.committed() == 0          # stalled: nothing may be acted on
    pair.start_standby()                          # now listening on the reserved port
    assert pair.source.wait_committed(400, 10) == 400
    assert pair.source.violations == []
    pair.stop_standby()
    assert pair.standby_records() == recs


def test_sync_degrades_loudly_after_timeout_then_restores(pairs):
    lines = []

    class Log(object):
        def event(self, name, **kw):
            lines.append(("event", name))

        def warning(self, name, **kw):
            lines.append(("warning", name))

        def error(self, name, **kw):
            lines.append(("error", name, kw))

    pair = pairs(policy="degrade", degrade_after_s=0.3, start_standby=False)
    pair.sender.log = Log()
    pair.sender.start()
    pair.source.append(make_records(1, 200))
    time.sleep(0.1)
    assert pair.source.committed() == 0
    assert pair.source.wait_committed(200, 5) == 200     # degraded to async
    assert pair.sender.degraded and pair.sender.stats.degraded_events == 1
    degraded = [l for l in lines if l[0] == "error" and l[1] == "replication_degraded"]
    assert degraded and "STANDBY UNREACHABLE" in degraded[0][2]["warning"]
    pair.start_standby()
    assert wait_until(lambda: not pair.sender.degraded, 10)
    pair.source.append(make_records(201, 100))
    assert pair.source.wait_committed(300, 10) == 300
    assert wait_until(lambda: pair.sink.durable_sequence() == 300, 5)
    assert ("event", "replication_sync_restored") in lines


def test_drops_in_the_middle_of_frames_then_exact_catch_up(pairs):
    pair = pairs(use_proxy=True, max_batch=64)
    pair.sender.start()
    recs = make_records(1, 6000)
    cuts = 0
    for i in range(0, 6000, 500):
        pair.source.append(recs[i:i + 500])
        if i and i % 1500 == 0:
            # a frame of 64 records is 48 + 4096 bytes: 1000 bytes in is inside one
            pair.proxy.cut_after(1000 + 137 * cuts)
            cuts += 1
            time.sleep(0.05)
    assert pair.source.wait_committed(6000, 20) == 6000
    assert pair.proxy.cuts >= 3
    assert pair.sender.stats.connects >= 4
    assert pair.source.violations == []
    pair.stop_standby()
    assert pair.standby_records() == recs


def test_corrupted_payload_is_detected_and_re_requested(pairs):
    pair = pairs(use_proxy=True, max_batch=32)
    recs = make_records(1, 1000)
    pair.source.append(recs)
    # on the wire: HELLO, a HEARTBEAT, then DATA frames
    hello_len = len(protocol.hello(1, SHARD, 0, 64, 0, pair.sender.node)) + \
        len(protocol.heartbeat(1, 0))
    frame_len = protocol.HEADER_SIZE + 32 * 64
    # the third DATA frame's payload, 100 bytes in
    pair.proxy.flip_at(hello_len + 2 * frame_len + protocol.HEADER_SIZE + 100)
    pair.sender.start()
    assert pair.source.wait_committed(1000, 10) == 1000
    assert pair.proxy.flipped == 1
    assert pair.receiver.stats.crc_errors == 1
    assert pair.receiver.stats.nacks >= 1 and pair.sender.stats.nacks >= 1
    assert pair.proxy.connections == 1            # the stream stayed framed
    pair.stop_standby()
    assert pair.standby_records() == recs


def test_corrupted_header_drops_the_connection_and_resumes_exactly(pairs):
    pair = pairs(use_proxy=True, max_batch=32)
    recs = make_records(1, 1000)
    pair.source.append(recs)
    # on the wire: HELLO, a HEARTBEAT, then DATA frames
    hello_len = len(protocol.hello(1, SHARD, 0, 64, 0, pair.sender.node)) + \
        len(protocol.heartbeat(1, 0))
    frame_len = protocol.HEADER_SIZE + 32 * 64
    pair.proxy.flip_at(hello_len + 3 * frame_len + 20)     # first_seq of the 4th frame
    pair.sender.start()
    assert pair.source.wait_committed(1000, 10) == 1000
    assert pair.receiver.stats.header_errors == 1
    assert pair.proxy.connections >= 2
    pair.stop_standby()
    assert pair.standby_records() == recs


def test_standby_restart_resumes_from_its_journal(pairs):
    pair = pairs()
    pair.sender.start()
    recs = make_records(1, 2000)
    pair.source.append(recs[:1200])
    assert pair.source.wait_committed(1200, 10) == 1200
    pair.stop_standby()
    pair.source.append(recs[1200:])
    time.sleep(0.2)
    assert pair.source.committed() == 1200          # sync + stall while it is away
    pair.start_standby()                             # same port, same file
    assert pair.receiver.sink.next_sequence() == 1201
    assert pair.source.wait_committed(2000, 10) == 2000
    pair.stop_standby()
    assert pair.standby_records() == recs


def test_promotion_fences_the_old_primary(pairs, tmp_path):
    pair = pairs()
    pair.sender.start()
    pair.source.append(make_records(1, 300))
    assert pair.source.wait_committed(300, 10) == 300
    state = pair.receiver.promote()
    assert (state.epoch, state.role) == (2, "primary")
    assert wait_until(lambda: pair.sender.fenced, 10)
    # the old primary's gate never moves again: its matcher acts on nothing new
    pair.source.append(make_records(301, 50))
    time.sleep(0.3)
    assert pair.source.committed() == 300
    assert pair.sink.next_sequence() == 301
    old = EpochStore(str(tmp_path / "primary"), SHARD).load()
    assert (old.role, old.fenced_by) == ("fenced", 2)
    with pytest.raises(FencedError):
        Sender(pair.source, ("127.0.0.1", pair.port), SHARD, epoch_store=pair.primary_store)
    # an old primary that still believes epoch 1 (no store) is refused too
    stray = Sender(MemorySource(), ("127.0.0.1", pair.port), SHARD, epoch=1, retry_s=0.05)
    stray.source.append(make_records(1, 10))
    stray.start()
    try:
        assert wait_until(lambda: stray.fenced, 10)
        assert stray.fenced_by == 2 and stray.source.committed() == 0
    finally:
        stray.stop()
    assert pair.receiver.stats.fenced_peers >= 2


def test_wrong_shard_is_refused_and_nothing_is_gated(pairs):
    pair = pairs(sender_shard="other")
    pair.source.append(make_records(1, 10))
    pair.sender.start()
    assert wait_until(lambda: pair.receiver.stats.refused_peers >= 1, 5)
    assert pair.source.committed() == 0
    assert pair.sink.next_sequence() == 1


def test_state_hashes_are_compared_at_the_same_sequence(pairs):
    pair = pairs()
    alarms = []
    pair.receiver.monitor.on_divergence = lambda *a: alarms.append(a)
    pair.source.append(make_records(1, 100))
    pair.source.add_state_hash(50, 0xABC)
    pair.source.add_state_hash(90, 0x123)
    pair.sink.add_state_hash(50, 0xABC)
    pair.sink.add_state_hash(90, 0x124)
    pair.sender.start()
    assert pair.source.wait_committed(100, 10) == 100
    assert wait_until(lambda: pair.receiver.monitor.matched == 1 and alarms, 5)
    assert alarms == [(90, 0x123, 0x124)]


class FailingOnceSource(CheckedSource):
    """A source whose ``read`` raises a non-I/O error once (a defect in a read path)."""

    def __init__(self, sink_ref):
        CheckedSource.__init__(self, sink_ref)
        self.failures = 0

    def read(self, first_seq, max_count):
        if first_seq > 1000 and not self.failures:
            self.failures += 1
            raise ValueError("bad read at %d" % first_seq)
        return CheckedSource.read(self, first_seq, max_count)


class EventRecorder(object):
    """A sender log that keeps (level, event, fields)."""

    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda event, **fields: self.lines.append((level, event, fields))


def test_an_unexpected_error_restarts_the_session_not_ends_replication(pairs):
    pair = pairs()
    pair.source = FailingOnceSource(pair.ref)
    pair.sender.source = pair.source
    log = pair.sender.log = EventRecorder()
    pair.sender.start()
    recs = make_records(1, 3000)
    pair.source.append(recs)
    assert pair.source.wait_committed(3000, 20) == 3000
    assert pair.source.failures == 1
    assert pair.sender.stats.connects >= 2
    failed = [(lvl, f["error"]) for lvl, e, f in log.lines if e == "session_failed"]
    assert len(failed) == 1 and failed[0][0] == "error", log.lines
    assert failed[0][1].startswith("ValueError('bad read at ")
    pair.stop_standby()
    assert pair.standby_records() == recs
