"""Multi-process stress with blocking producers and blocking consumers on a small ring.

    P0 --\\                 /--> a (blocking) --> c (blocking, depends on a)
    P1 ----> [ring, 4-16] --<
    P2 --/                  \\--> b (blocking)

Producers claim single slots and batches (up to the capacity) and wait for
space on the futex (``blocking`` space wait, no spin); consumers poll with the
``blocking`` strategy and pause now and then so the ring is full often.  Every
consumer must see every record exactly once, each producer's records in order,
none torn; the producers must actually have waited (the count of waits they
report is > 0), and everything is cleaned up (segment, children) pass or fail.
"""
import multiprocessing
import os
import random
import struct
import time

import posix_ipc
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ringbuf import Ring
from ringbuf.wait_strategy import BackoffSpaceWait

CONSUMERS = {"a": [], "b": [], "c": ["a"]}
REC = struct.Struct("<qqq")          # producer index, counter, check
OFF = 16                             # clear of the producer_id a command ring stamps (rule P3)
MASK63 = (1 << 63) - 1


def _check(index, counter):
    return ((index + 1) * 0x9E3779B97F4A7C15 ^ counter * 0x100000001B3) & MASK63


class CountingBlockingWait(BackoffSpaceWait):
    """The blocking producer wait, counting how often it had to wait."""

    def __init__(self):
        BackoffSpaceWait.__init__(self, 0, 0)
        self.waits = 0

    def wait_for_space(self, *args):
        self.waits += 1
        return BackoffSpaceWait.wait_for_space(self, *args)


def _produce(name, index, n, capacity, seed, queue):
    rng = random.Random(seed * 7919 + index)
    wait = CountingBlockingWait()
    with Ring.attach(name) as ring:
        p = ring.producer(producer_id=index + 1, wait_strategy=wait)
        i = 0
        while i < n:
            k = min(n - i, rng.choice((1, 1, 2, capacity // 2, capacity)))
            if k == 1:
                buf = bytearray(64)
                REC.pack_into(buf, OFF, index, i, _check(index, i))
                p.write(buf)
            else:
                first, views = p.claim_batch(k)
                j = i
                for view in views:
                    for off in range(0, len(view), 64):
                        REC.pack_into(view, off + OFF, index, j, _check(index, j))
                        j += 1
                p.publish_batch(first, k)
            i += k
        p.close()
    queue.put(("producer", index, wait.waits))
    queue.close()
    queue.join_thread()
    os._exit(0)


def _consume(name, consumer_name, producers, n, seed, queue):
    rng = random.Random(seed * 104729 + ord(consumer_name))
    errors = []
    expected = [0] * producers
    seen = 0
    with Ring.attach(name) as ring:
        c = ring.consumer(consumer_name, wait_strategy="blocking")
        last = 0
        while seen < producers * n and len(errors) < 5:
            b = c.poll(max_batch=rng.choice((1, 3, 64)), timeout=20)
            if b is None:
                errors.append("stalled after %d records" % seen)
                break
            if b.first_seq != last + 1:
                errors.append("gap: %d after %d" % (b.first_seq, last))
            data = b.tobytes()
            for off in range(0, len(data), 64):
                index, counter, check = REC.unpack_from(data, off + OFF)
                if not 0 <= index < producers or check != _check(index, counter):
                    errors.append("torn record at seq %d" % (b.first_seq + off // 64))
                elif counter != expected[index]:
                    errors.append("producer %d: got #%d, expected #%d"
                                  % (index, counter, expected[index]))
                else:
                    expected[index] += 1
            seen += b.count
            last = b.last_seq
            if rng.random() < 0.02:
                time.sleep(0.002)      # let the ring fill: producers must block
            c.commit(b.last_seq)
        if c.poll(timeout=0.05) is not None:
            errors.append("records beyond the expected total")
    queue.put(("consumer", consumer_name, (seen, expected, errors)))
    queue.close()
    queue.join_thread()
    os._exit(0)


def run_blocking_stress(name, capacity, producers, n, seed, timeout=90, require_waits=False):
    ctx = multiprocessing.get_context("fork")
    ring = Ring.create(name, capacity, consumers=CONSUMERS, wait_strategy="blocking")
    children = []
    try:
        queue = ctx.Queue()
        for cname in CONSUMERS:
            children.append(ctx.Process(target=_consume, args=(name, cname, producers, n,
                                                              seed, queue), daemon=True))
        for i in range(producers):
            children.append(ctx.Process(target=_produce, args=(name, i, n, capacity, seed,
                                                              queue), daemon=True))
        for p in children:
            p.start()
        results, waits = {}, {}
        deadline = time.monotonic() + timeout
        while len(results) + len(waits) < len(children) and time.monotonic() < deadline:
            try:
                role, key, value = queue.get(timeout=1)
            except Exception:
                if not any(p.is_alive() for p in children):
                    break
                continue
            (results if role == "consumer" else waits)[key] = value
        assert sorted(results) == sorted(CONSUMERS), "consumers that finished: %s" % sorted(results)
        for cname, (seen, expected, errors) in sorted(results.items()):
            assert errors == [], (cname, errors)
            assert seen == producers * n and expected == [n] * producers, (cname, seen, expected)
        assert len(waits) == producers
        if require_waits:
            assert sum(waits.values()) > 0, "no producer ever found the ring full"
        assert ring.cursor == producers * n
        assert [c["sequence"] for c in ring.consumers()] == [producers * n] * len(CONSUMERS)
        ring._check()
    finally:
        for p in children:
            if p.is_alive():
                p.kill()
            p.join(5)
        ring.unlink()
        ring.close()
        try:
            posix_ipc.unlink_shared_memory("/" + name)
        except posix_ipc.ExistentialError:
            pass


_names = iter(range(10 ** 6))


def _name():
    return "rm-test-blockstress-%d-%d" % (os.getpid(), next(_names))


@pytest.mark.pypy
@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed,capacity", [(1, 4), (2, 8), (3, 16)])
def test_blocking_producers_and_consumers_seeded(seed, capacity):
    run_blocking_stress(_name(), capacity, producers=3, n=3000, seed=seed, require_waits=True)


@pytest.mark.timeout(300)
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 31), capacity=st.sampled_from([4, 8, 16, 32]),
       producers=st.integers(1, 3), n=st.integers(1, 2500))
def test_blocking_producers_and_consumers_hypothesis(seed, capacity, producers, n):
    run_blocking_stress(_name(), capacity, producers, n, seed)
