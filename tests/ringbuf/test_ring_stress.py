"""Seeded multi-process stress: 3 producer processes into a diamond of consumers.

    P0 --\\            /--> journaler --\\
    P1 ----> [ring] --<                 >--> matcher (gated on both)
    P2 --/            \\--> replicator -/

Every consumer must see every record exactly once, each producer's records in
the order it wrote them, and no torn record (``stop_price`` is a 63-bit mix
of the other fields, ``check`` its low 16 bits).
"""
import os
import random
import time

import pytest

from ringbuf import Ring
from ringbuf.records import CommandKind, command_struct

CONSUMERS = {"journaler": [], "replicator": [], "matcher": ["journaler", "replicator"]}
MASK63 = (1 << 63) - 1


def mix(producer, counter, price, qty, account):
    h = (producer * 0x9E3779B1 + counter) * 0x100000001B3
    return (h ^ (price * 31) ^ (qty * 17) ^ account) & MASK63


def _produce(name, index, n, seed):
    rng = random.Random(seed * 1000 + index)
    pid = index + 1
    with Ring.attach(name) as ring:
        p = ring.producer(producer_id=pid)
        i = 0
        pack_into = command_struct.pack_into
        while i < n:
            k = min(n - i, rng.choice((1, 1, 1, 7, 64)))
            if k == 1:
                price, qty, account = rng.randrange(1, 1 << 40), rng.randrange(1, 1 << 30), \
                    rng.randrange(1 << 32)
                s = p.claim()
                rec = p.record(s)
                rec.kind = CommandKind.NEW_ORDER
                rec.producer_id = pid
                rec.account_id = account
                rec.price = price
                rec.qty = qty
                rec.client_order_id = i
                h = mix(pid, i, price, qty, account)
                rec.stop_price = h
                rec.check = h & 0xFFFF
                p.publish(s)
                i += 1
                continue
            first, views = p.claim_batch(k)
            j = 0
            for view in views:
                for off in range(0, len(view), 64):
                    price, qty, account = rng.randrange(1, 1 << 40), rng.randrange(1, 1 << 30), \
                        rng.randrange(1 << 32)
                    h = mix(pid, i + j, price, qty, account)
                    pack_into(view, off, CommandKind.NEW_ORDER, 0, 0, 0, 0, 0, 0, account, pid,
                              h & 0xFFFF, price, qty, 0, h, 0, i + j)
                    j += 1
            p.publish_batch(first, k)
            i += k
    os._exit(0)


def _consume(name, consumer_name, total, queue):
    errors = []
    with Ring.attach(name) as ring:
        c = ring.consumer(consumer_name)
        expected = {1: 0, 2: 0, 3: 0}
        seen = 0
        last_seq = 0
        while seen < total:
            b = c.poll(max_batch=1024, timeout=20)
            if b is None:
                errors.append("stalled at %d records" % seen)
                break
            if b.first_seq != last_seq + 1:
                errors.append("gap: %d after %d" % (b.first_seq, last_seq))
            rec = c.record
            for s in range(b.first_seq, b.last_seq + 1):
                r = rec(s)
                pid = r.producer_id
                i = r.client_order_id
                h = mix(pid, i, r.price, r.qty, r.account_id)
                if r.kind != CommandKind.NEW_ORDER or r.stop_price != h or r.check != h & 0xFFFF:
                    errors.append("torn record at seq %d" % s)
                elif expected.get(pid) != i:
                    errors.append("producer %d: got #%d, expected #%s" % (pid, i, expected.get(pid)))
                else:
                    expected[pid] = i + 1
                if len(errors) > 5:
                    break
            if len(errors) > 5:
                break
            seen += b.count
            last_seq = b.last_seq
            c.commit(b.last_seq)
        extra = c.poll(timeout=0.05)
        if extra is not None:
            errors.append("%d records beyond the expected total" % extra.count)
    queue.put((consumer_name, seen, expected, errors))
    queue.close()
    queue.join_thread()     # flush before os._exit
    os._exit(0)


def run_diamond(ring_name, processes, n, seed, wait_strategy="backoff", capacity=4096,
                timeout=100):
    ring = Ring.create(ring_name, capacity, consumers=CONSUMERS, wait_strategy=wait_strategy)
    try:
        queue = processes.context.Queue()
        consumers = [processes.start(_consume, ring_name, name, 3 * n, queue)
                     for name in CONSUMERS]
        producers = [processes.start(_produce, ring_name, i, n, seed) for i in range(3)]
        results = {}
        deadline = time.monotonic() + timeout
        while len(results) < 3 and time.monotonic() < deadline:
            try:
                name, seen, expected, errors = queue.get(timeout=1)
            except Exception:
                if not any(p.is_alive() for p in consumers):
                    break
                continue
            results[name] = (seen, expected, errors)
        for p in producers:
            p.join(10)
            assert p.exitcode == 0
        assert sorted(results) == sorted(CONSUMERS), "consumers finished: %s" % sorted(results)
        for name, (seen, expected, errors) in results.items():
            assert errors == [], (name, errors)
            assert seen == 3 * n
            assert expected == {1: n, 2: n, 3: n}
        assert ring.cursor == 3 * n
        assert [c["sequence"] for c in ring.consumers()] == [3 * n] * 3
        ring._check()
    finally:
        ring.unlink()
        ring.close()


@pytest.mark.pypy
@pytest.mark.timeout(150)
def test_diamond_three_producers_small(ring_name, processes):
    run_diamond(ring_name, processes, n=int(os.environ.get("RM_STRESS_N", 50000)), seed=1)


@pytest.mark.pypy
@pytest.mark.timeout(150)
def test_diamond_tiny_ring_heavy_wrap(ring_name, processes):
    run_diamond(ring_name, processes, n=5000, seed=2, capacity=64)


@pytest.mark.slow
@pytest.mark.pypy
@pytest.mark.timeout(1800)
def test_diamond_three_producers_one_million(ring_name, processes):
    run_diamond(ring_name, processes, n=1000000, seed=3, timeout=1700)
