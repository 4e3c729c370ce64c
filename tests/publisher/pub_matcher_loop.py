"""Test helper: a minimal matcher process (input ring -> engine.matcher.Matcher -> output ring).

Used by the publisher tests when they run without ``ringmatch run`` (no
journal): ``python pub_matcher_loop.py IN_RING OUT_RING``.  SIGTERM stops it.
"""
import signal
import sys


def main(ring_in_name, ring_out_name):
    from engine.config import DEFAULT_CONFIG
    from engine.events import BytesSink
    from engine.matcher import Matcher
    from engine.matcher_process import RingEventWriter
    from ringbuf import Ring
    from ringbuf.records import EVENT_SIZE

    stop = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    ring_in = Ring.attach(ring_in_name)
    ring_out = Ring.attach(ring_out_name)
    consumer = ring_in.consumer("matcher")
    writer = RingEventWriter(ring_out.producer(producer_id=0), EVENT_SIZE, ring_out.capacity // 4)
    sink = BytesSink()
    matcher = Matcher(DEFAULT_CONFIG, sink)
    print("ready", flush=True)
    while not stop:
        batch = consumer.poll(1024, timeout=0.1)
        if batch is None:
            continue
        for seq, record in batch.records():
            matcher.process(seq, record)
        writer.flush(sink.take())
        consumer.commit(batch.last_seq)
    ring_in.close()
    ring_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
