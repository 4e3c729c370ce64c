"""RingSource -> TCP -> RingSink over real shared-memory rings (journalers simulated by threads)."""
import os
import struct
import threading
import time

import pytest

from replicator.epoch import EpochStore
from replicator.receiver import Receiver
from replicator.ring_io import RingSink, RingSource
from replicator.sender import Sender

pytestmark = [pytest.mark.timeout(60)]


def _drain(ring, name, stop, seen=None):
    c = ring.consumer(name)
    while not stop.is_set():
        b = c.poll(1024, timeout=0.01)
        if b is not None:
            if seen is not None:
                seen.append(b.tobytes())
            c.commit(b.last_seq)


def test_ring_to_ring_sync_replication(tmp_path):
    from ringbuf import Ring
    tag = os.getpid()
    p_in = Ring.create("rm-rpt%d-in" % tag, 1024, consumers={
        "journaler": [], "replicator": [], "matcher": ["journaler", "replicator"]})
    s_in = Ring.create("rm-rst%d-in" % tag, 1024, consumers={"journaler": [],
                                                             "matcher": ["journaler"]})
    stop = threading.Event()
    threads = []
    received = []
    sender = receiver = None
    try:
        for ring, name, seen in ((p_in, "journaler", None), (p_in, "matcher", None),
                                 (s_in, "journaler", received), (s_in, "matcher", None)):
            t = threading.Thread(target=_drain, args=(ring, name, stop, seen), daemon=True)
            t.start()
            threads.append(t)
        store = EpochStore(str(tmp_path / "s"), "sh")
        store.become_standby(1)
        receiver = Receiver(RingSink(s_in), ("127.0.0.1", 0), "sh", store).start()
        source = RingSource(p_in, str(tmp_path / "p"), "sh")
        sender = Sender(source, receiver.address, "sh", epoch=1, mode="sync").start()
        producer = p_in.producer(producer_id=3)
        recs = [struct.pack("<q", i + 1) + bytes([i % 256]) * 56 for i in range(5000)]
        for r in recs:                      # 5x the ring: the gate must keep moving
            producer.write(r)
        deadline = time.monotonic() + 20
        while p_in.consumer_sequence("replicator") < 5000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p_in.consumer_sequence("replicator") == 5000
        assert s_in.consumer_sequence("journaler") == 5000
        # the ring stamps an ordinary producer's id into bytes 12-13 (ring rule P3)
        stamped = [r[:12] + struct.pack("<H", 3) + r[14:] for r in recs]
        assert b"".join(received) == b"".join(stamped)
    finally:
        stop.set()
        if sender is not None:
            sender.stop()
        if receiver is not None:
            receiver.stop()
        for t in threads:
            t.join(2)
        for ring in (p_in, s_in):
            ring.close()
            ring.unlink()


def test_wait_for_a_lapped_sequence_answers_at_once(tmp_path):
    """Catch-up below the replicator's own position (ring_io rule 1): a multi-producer
    slot's marker holds only its latest round, so the barrier alone would never report a
    lapped sequence as published and the sender would hang before reading the journal."""
    from ringbuf import Ring
    name = "rm-rlap%d-in" % os.getpid()
    ring = Ring.create(name, 64, consumers={
        "journaler": [], "replicator": [], "matcher": ["journaler", "replicator"]})
    try:
        source = RingSource(ring, str(tmp_path), "sh")
        producer = ring.producer(producer_id=5)
        consumers = [ring.consumer(n) for n in ("journaler", "matcher")]
        for i in range(1, 301):                     # ~5 laps, every consumer keeping up
            producer.write(struct.pack("<q", i) + bytes(56))
            source.commit(i)
            for c in consumers:
                c.poll(1, timeout=0)
                c.commit(i)
        t0 = time.monotonic()
        assert source.wait_for(1, 2.0) == 300
        assert source.wait_for(250, 2.0) == 300
        assert time.monotonic() - t0 < 1.0
        assert source.wait_for(301, 0.05) < 301     # the future still waits (and times out)
        producer.close()
    finally:
        ring.close()
        ring.unlink()


_DIE_MID_WRITE = r"""
import os, signal, struct, sys
from ringbuf import Ring
from replicator.ring_io import RingSink
ring = Ring.attach(sys.argv[1])
sink = RingSink(ring)
sink.write(1, b"".join(struct.pack("<q", i) + bytes([1]) + bytes(55) for i in (1, 2, 3)))
sink.producer.claim_batch(5)                # claimed, never published
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_receiver_killed_mid_write_leaves_a_reaped_tail_that_is_detected(tmp_path):
    """ring_io rule 5: the reaper's NOPs at the primary's sequences are found, in the ring
    and in the journal, so the restarted receiver refuses instead of acknowledging them."""
    import subprocess
    import sys
    from ringbuf import Ring
    from journaler.writer import JournalWriter
    name = "rm-rreap%d-in" % os.getpid()
    ring = Ring.create(name, 64, consumers={"journaler": [], "matcher": ["journaler"]})
    try:
        child = subprocess.run([sys.executable, "-c", _DIE_MID_WRITE, name], timeout=60,
                               cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                   os.path.abspath(__file__)))))
        assert child.returncode == -9
        journaler = ring.consumer("journaler")
        got = []
        deadline = time.monotonic() + 10
        while sum(len(g) for g in got) < 8 * 64 and time.monotonic() < deadline:  # reaper: ~1 s
            batch = journaler.poll(64, timeout=2.0)   # >= the claim timeout (1 s)
            if batch is not None:
                got.append(batch.tobytes())
                journaler.commit(batch.last_seq)
        data = b"".join(got)
        assert len(data) == 8 * 64
        sink = RingSink(ring)
        assert sink.reaped_tail() == [4, 5, 6, 7, 8]
        writer = JournalWriter(str(tmp_path), "sh")
        writer.append(1, data)
        writer.sync()
        writer.close()
        sink.producer.close()
        # a fresh ring (the whole standby restarted): the journal still tells
        ring2 = Ring.create(name + "2", 64, consumers={"journaler": [], "matcher": ["journaler"]},
                            initial_sequence=8)
        try:
            sink2 = RingSink(ring2)
            assert sink2.reaped_tail() == []
            assert sink2.reaped_tail(str(tmp_path), "sh") == [4, 5, 6, 7, 8]
            sink2.producer.close()
        finally:
            ring2.close()
            ring2.unlink()
    finally:
        ring.close()
        ring.unlink()


def test_a_clean_standby_ring_has_no_reaped_tail(tmp_path):
    from ringbuf import Ring
    name = "rm-rclean%d-in" % os.getpid()
    ring = Ring.create(name, 64, consumers={"journaler": [], "matcher": ["journaler"]})
    try:
        sink = RingSink(ring)
        assert sink.reaped_tail(str(tmp_path), "sh") == []
        c = ring.consumer("journaler")
        m = ring.consumer("matcher")
        for i in range(1, 201):       # laps, including the primary's own NOPs (other ids)
            rec = struct.pack("<q", 0) + bytes(56) if i % 7 else bytes(64)
            sink.write(i, rec)
            for x in (c, m):
                x.poll(1, timeout=0)
                x.commit(i)
        assert sink.reaped_tail() == []
        sink.producer.close()
    finally:
        ring.close()
        ring.unlink()
