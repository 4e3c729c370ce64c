"""kill -9 a producer between claim and publish: consumers go on within the claim timeout."""
import os
import signal
import time

import pytest

from ringbuf import Ring
from ringbuf.records import CommandKind

pytestmark = [pytest.mark.pypy, pytest.mark.timeout(60)]

CLAIM_TIMEOUT = 0.3


def _claim_and_hang(name, n, conn):
    with Ring.attach(name) as r:
        p = r.producer(producer_id=42)
        first, views = p.claim_batch(n)
        views[0][0:8] = b"\x01" * 8          # half-written, never published
        conn.send(first)
        time.sleep(60)


def _live_producer(name, count, conn):
    with Ring.attach(name) as r:
        p = r.producer(producer_id=7)
        conn.recv()                           # start after the dead claim
        for i in range(count):
            s = p.claim()
            rec = p.record(s)
            rec.kind = CommandKind.NEW_ORDER
            rec.producer_id = 7
            rec.client_order_id = i
            p.publish(s)
    os._exit(0)


@pytest.mark.parametrize("strategy", ["backoff", "busy-spin"])
@pytest.mark.parametrize("reap_child_first", [False, True], ids=["zombie", "reaped"])
def test_killed_claimant_slots_become_nops(make_ring, processes, strategy, reap_child_first):
    r = make_ring(capacity=64, consumers={"j": [], "m": ["j"]}, wait_strategy=strategy,
                  claim_timeout=CLAIM_TIMEOUT)
    ctx = processes.context
    parent_end, child_end = ctx.Pipe()
    dead = processes.start(_claim_and_hang, r.name, 3, child_end)
    assert parent_end.poll(10)
    dead_first = parent_end.recv()
    live_parent, live_child = ctx.Pipe()
    processes.start(_live_producer, r.name, 10, live_child)
    live_parent.send("go")
    os.kill(dead.pid, signal.SIGKILL)
    if reap_child_first:
        dead.join(5)
    # else: the child stays a zombie until the fixture reaps it; a zombie counts as dead
    j, m = r.consumer("j"), r.consumer("m")
    t0 = time.monotonic()
    seen = []
    while len(seen) < 13:
        b = j.poll(timeout=5 * CLAIM_TIMEOUT + 2)
        assert b is not None, "consumer stalled behind the dead claim"
        for s in range(b.first_seq, b.last_seq + 1):
            rec = j.record(s)
            seen.append((s, rec.kind, rec.producer_id, rec.order_id, rec.client_order_id))
        j.commit(b.last_seq)
    took = time.monotonic() - t0
    assert took < CLAIM_TIMEOUT + 2.0
    nops = [x for x in seen if x[1] == CommandKind.NOP]
    assert [x[0] for x in nops] == [dead_first, dead_first + 1, dead_first + 2]
    assert all(x[2] == 42 and x[3] == dead.pid for x in nops)
    live = [x[4] for x in seen if x[1] == CommandKind.NEW_ORDER]
    assert live == list(range(10))
    assert r.recovered_slots == 3
    assert m.poll(timeout=1).count == 13          # the dependent consumer goes on too
    assert all(x["pid"] != dead.pid for x in r.producers())   # its table entry was freed


def test_stopped_live_producer_is_not_reaped(make_ring, processes):
    """SIGSTOP is not death: the consumer waits (rule 4), then continues after SIGCONT."""
    r = make_ring(capacity=64, claim_timeout=0.1)
    ctx = processes.context
    parent_end, child_end = ctx.Pipe()
    child = processes.start(_claim_and_hang, r.name, 2, child_end)
    assert parent_end.poll(10)
    parent_end.recv()
    os.kill(child.pid, signal.SIGSTOP)
    try:
        c = r.consumer("a")
        assert c.poll(timeout=0.5) is None
        assert r.recovered_slots == 0
        assert r.recover_dead_producers() == 0
    finally:
        os.kill(child.pid, signal.SIGCONT)
    os.kill(child.pid, signal.SIGKILL)
    child.join(5)
    assert c.poll(timeout=3).count == 2
    assert r.recovered_slots == 2
