"""A consumer that waits on another consumer sleeps on its own futex word.

    producer --publish--> [ring] --> "a" (journaler) --commit--> "b" (matcher, depends on a)

What a user sees: a matcher asleep on the journaler is not woken by every
client publish (it could not proceed on one: the journaler has not synced
the record yet); it wakes when the journaler commits, promptly, and reads
everything the journaler released.
"""
import threading
import time

import pytest


@pytest.mark.pypy
def test_dependent_sleeps_through_publishes_and_wakes_on_commit(make_ring):
    ring = make_ring(capacity=64, consumers={"a": [], "b": ["a"]})
    p = ring.producer(producer_id=1)
    a, b = ring.consumer("a"), ring.consumer("b")
    got = []

    def dependent():
        got.append(b.poll(timeout=5.0))
        got.append(time.monotonic())

    t = threading.Thread(target=dependent, daemon=True)
    t.start()
    try:
        time.sleep(0.1)                         # b is past its spin phase, asleep on the futex
        dep_word, cursor_word = ring._dep_futex[0], ring._futex[0]
        for _ in range(20):
            p.publish(p.claim())
        time.sleep(0.1)
        assert not got                          # nothing committed by "a": b still waits
        assert ring._dep_futex[0] == dep_word   # the publishes did not wake b
        assert ring._futex[0] == cursor_word    # (and nobody waits on the cursor word)
        batch = a.poll(timeout=0)
        committed_at = time.monotonic()
        a.commit(batch.last_seq)
        t.join(2.0)
        assert got and got[0] is not None
        assert (got[0].first_seq, got[0].count) == (1, 20)
        assert got[1] - committed_at < 0.1     # woken by the commit, not by the 250 ms slice
    finally:
        t.join(6.0)


@pytest.mark.pypy
def test_cursor_waiter_still_woken_by_publish(make_ring):
    ring = make_ring(capacity=64, consumers={"a": [], "b": ["a"]})
    p = ring.producer(producer_id=1)
    a = ring.consumer("a")
    got = []
    t = threading.Thread(target=lambda: got.append((a.poll(timeout=5.0), time.monotonic())),
                         daemon=True)
    t.start()
    try:
        time.sleep(0.1)
        published_at = time.monotonic()
        p.publish(p.claim())
        t.join(2.0)
        assert got and got[0][0] is not None and got[0][0].count == 1
        assert got[0][1] - published_at < 0.1
    finally:
        t.join(6.0)
