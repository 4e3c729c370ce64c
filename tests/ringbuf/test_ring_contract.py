"""One contract suite over every sequencer and every wait strategy."""
import os
import threading
import time

import pytest

from ringbuf import (BackoffWaitStrategy, BlockingWaitStrategy, BusySpinWaitStrategy,
                     TimeoutBlockingWaitStrategy, YieldingWaitStrategy)
from ringbuf.sequencer import MultiProducerSequencer, SingleProducerSequencer

pytestmark = [pytest.mark.pypy, pytest.mark.timeout(60)]

SEQUENCERS = [True, False]   # single_producer
SEQ_IDS = ["single", "multi"]

STRATEGIES = {
    "busy-spin": BusySpinWaitStrategy,
    "yield": YieldingWaitStrategy,
    "blocking": BlockingWaitStrategy,
    "timeout-blocking": lambda: TimeoutBlockingWaitStrategy(5.0),
    "backoff": BackoffWaitStrategy,
}


@pytest.mark.parametrize("single_producer", SEQUENCERS, ids=SEQ_IDS)
def test_sequencer_kind(make_ring, single_producer):
    r = make_ring(single_producer=single_producer)
    seq = r.producer()._sequencer
    assert isinstance(seq, SingleProducerSequencer if single_producer else MultiProducerSequencer)


@pytest.mark.parametrize("single_producer", SEQUENCERS, ids=SEQ_IDS)
def test_sequencer_claims_are_consecutive_and_capacity_bound(make_ring, single_producer):
    r = make_ring(capacity=16, single_producer=single_producer)
    s = r.producer()._sequencer
    assert s.remaining_capacity() == 16
    assert s.try_claim(3) == 1
    assert s.try_claim(13) == 4
    assert s.remaining_capacity() == 0
    assert s.try_claim(1) is None
    with pytest.raises(ValueError):
        s.try_claim(17)


@pytest.mark.parametrize("single_producer", SEQUENCERS, ids=SEQ_IDS)
def test_unpublished_claim_is_invisible(make_ring, single_producer):
    r = make_ring(capacity=16, single_producer=single_producer)
    p, c = r.producer(), r.consumer("a")
    a = p.claim()
    b = p.claim()
    assert c.poll(timeout=0) is None
    p.publish(b) if not single_producer else None
    if not single_producer:
        # seq 2 published but seq 1 not: the consumer still sees nothing
        assert c.poll(timeout=0) is None and r.cursor == 0
        p.publish(a)
    else:
        p.publish(b)       # single producer: publishing b publishes everything up to b
    assert c.poll(timeout=0).count == 2
    assert r.cursor == 2


@pytest.mark.parametrize("single_producer", SEQUENCERS, ids=SEQ_IDS)
def test_multi_producers_interleave_in_one_process(make_ring, single_producer):
    if single_producer:
        pytest.skip("one producer only")
    r = make_ring(capacity=64, single_producer=single_producer)
    producers = [r.producer(i) for i in range(3)]
    c = r.consumer("a")
    claims = [(p, p.claim()) for p in producers for _ in range(4)]
    for p, s in reversed(claims):
        p.record(s).producer_id = p.producer_id
        p.publish(s)
    b = c.poll(timeout=0)
    assert b.count == 12
    assert sorted(c.record(s).producer_id for s in range(1, 13)) == [0] * 4 + [1] * 4 + [2] * 4


def _ring_for(make_ring, name, single_producer):
    wait = "backoff" if STRATEGIES[name]().needs_signal else "busy-spin"
    return make_ring(capacity=64, single_producer=single_producer, wait_strategy=wait)


@pytest.mark.parametrize("single_producer", SEQUENCERS, ids=SEQ_IDS)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_times_out_with_none(make_ring, strategy, single_producer):
    r = _ring_for(make_ring, strategy, single_producer)
    c = r.consumer("a", wait_strategy=STRATEGIES[strategy]())
    t0 = time.monotonic()
    assert c.poll(timeout=0.05) is None
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 2.0


@pytest.mark.parametrize("single_producer", SEQUENCERS, ids=SEQ_IDS)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_wakes_on_publish_from_thread(make_ring, strategy, single_producer):
    r = _ring_for(make_ring, strategy, single_producer)
    p = r.producer()
    c = r.consumer("a", wait_strategy=STRATEGIES[strategy]())

    def later():
        for i in range(20):
            time.sleep(0.002)
            p.write(bytes([1]) + bytes(63))

    t = threading.Thread(target=later)
    t.start()
    try:
        got = 0
        deadline = time.monotonic() + 10
        while got < 20 and time.monotonic() < deadline:
            b = c.poll(timeout=5)
            assert b is not None
            got += b.count
            c.commit(b.last_seq)
        assert got == 20
    finally:
        t.join(10)


def _child_publishes(name, n, delay):
    from ringbuf import Ring
    with Ring.attach(name) as r:
        p = r.producer(5)
        for i in range(n):
            time.sleep(delay)
            s = p.claim()
            p.record(s).client_order_id = i
            p.publish(s)
    os._exit(0)


@pytest.mark.parametrize("strategy", ["blocking", "backoff"])
def test_blocking_consumer_woken_across_processes(make_ring, processes, strategy):
    r = make_ring(capacity=64, wait_strategy=strategy)
    c = r.consumer("a")
    processes.start(_child_publishes, r.name, 5, 0.02)
    values = []
    t0 = time.monotonic()
    while len(values) < 5:
        b = c.poll(timeout=5)
        assert b is not None, "no wake-up within 5 s"
        values.extend(c.record(s).client_order_id for s in range(b.first_seq, b.last_seq + 1))
        c.commit(b.last_seq)
    assert values == list(range(5))
    assert time.monotonic() - t0 < 3


def test_dependent_blocking_consumer_woken_by_commit(make_ring, monkeypatch):
    """The matcher sleeps on the futex; a journaler commit (not a publish) must wake it."""
    from ringbuf import wait_strategy
    monkeypatch.setattr(wait_strategy, "_FUTEX_SLICE_NS", 10 ** 10)  # no periodic re-check
    r = make_ring(capacity=64, consumers={"j": [], "m": ["j"]}, wait_strategy="blocking")
    p, j, m = r.producer(), r.consumer("j"), r.consumer("m")
    p.write(bytes(64))
    out = {}

    def matcher():
        t0 = time.monotonic()
        out["batch"] = m.poll(timeout=5)
        out["took"] = time.monotonic() - t0

    t = threading.Thread(target=matcher)
    t.start()
    time.sleep(0.1)
    j.commit(j.poll(timeout=0).last_seq)
    t.join(10)
    assert out["batch"].count == 1
    assert out["took"] < 2.0   # woken by the commit (the re-check slice is 10 s here)
