"""publisher.process.RingFeed lingers after a small batch (process rule 2).

A writer publishes a few events every 2 ms.  Without linger the feed hands
over about one batch per write; with a 30 ms linger it hands over far fewer,
larger batches, every event exactly once and in order.
"""
import os
import threading
import time

import pytest

pytestmark = pytest.mark.timeout(60)


def _run(linger_s, urgent=None):
    from engine.config import DEFAULT_CONFIG
    from engine.events import BytesSink
    from engine.matcher import Matcher
    from engine.matcher_process import RingEventWriter
    from pub_session import session
    from publisher.process import RingFeed
    from ringbuf import Ring
    from ringbuf.records import EVENT_SIZE

    name = "rm-%d-linger%d" % (os.getpid(), int(linger_s * 1000))
    ring = Ring.create(name, capacity=1 << 14, record_size=128, consumers={"publisher": []},
                       single_producer=True)
    feed = None
    try:
        sink = BytesSink()
        matcher = Matcher(DEFAULT_CONFIG, sink)
        chunks = []
        for seq, cmd in enumerate(session(300, seed=9), 1):
            matcher.process(seq, cmd)
            chunks.append(sink.take())
        writer = RingEventWriter(ring.producer(producer_id=0), EVENT_SIZE, 1024)
        batches = []
        done = threading.Event()
        total = sum(len(c) for c in chunks) // EVENT_SIZE

        import asyncio
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        def on_events(events):
            batches.append([(e.seq, e.event_index) for e in events])
            if sum(len(b) for b in batches) >= total:
                done.set()
        feed = RingFeed(ring.consumer("publisher"), loop, on_events, max_batch=4096,
                        linger_s=linger_s, urgent=urgent)
        feed.start()
        for chunk in chunks[:100]:
            writer.flush(chunk)
            time.sleep(0.002)
        for chunk in chunks[100:]:
            writer.flush(chunk)
        assert done.wait(20), (sum(len(b) for b in batches), total)
        flat = [k for b in batches for k in b]
        assert len(flat) == total and flat == sorted(flat) and len(set(flat)) == total
        return batches
    finally:
        if feed is not None:
            feed.stop()
            feed.loop.call_soon_threadsafe(feed.loop.stop)
        ring.close()
        ring.unlink()


def test_linger_gives_fewer_larger_batches_and_loses_nothing():
    plain = _run(0.0)
    lingered = _run(0.03)
    assert len(plain) >= 50, len(plain)           # ~one batch per write of the first 100
    assert len(lingered) * 3 <= len(plain), (len(lingered), len(plain))


def test_no_linger_while_someone_waits():
    """A REST request waiting for an outcome (the service's waiters) turns the pause off."""
    plain = _run(0.0)
    urgent = _run(0.03, urgent=lambda: True)
    assert len(urgent) * 2 >= len(plain), (len(urgent), len(plain))
