"""Child process: publish make_records() batches into a ring until a stop file appears."""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import make_records  # noqa: E402
from ringbuf import Ring  # noqa: E402


def main(ring_name, stop_file, seed):
    rng = random.Random(int(seed))
    ring = Ring.attach(ring_name)
    producer = ring.producer(producer_id=1)
    try:
        while not os.path.exists(stop_file):
            n = rng.randint(1, 32)
            got = producer.claim_batch(n, timeout=0.05)
            if got is None:
                continue            # ring full: the journaler is down or slow
            first, views = got
            raw = make_records(first, n).tobytes()
            pos = 0
            for view in views:
                view[:] = raw[pos:pos + len(view)]
                pos += len(view)
            producer.publish_batch(first, n)
            time.sleep(0.0005)
    finally:
        producer.close()
        ring.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
