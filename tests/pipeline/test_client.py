"""The producer client: thread safety, asyncio reports, lapping detection, bad input."""
import asyncio
import threading

import pytest

from engine.client import EngineClient, ReportsLost
from ringbuf.records import EventKind


@pytest.mark.timeout(240)
def test_client_threads_asyncio_and_bad_input(engine_factory):
    run = engine_factory().start()
    with EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=21) as client:
        client.wait_outcome(client.deposit("USD", "10000000"), timeout=30)

        # many threads share one client: every order gets a distinct id and one outcome
        ids, errors = [], []

        def place(k):
            try:
                for i in range(25):
                    ids.append(client.place_order("BTC-USD", "buy", qty="0.01",
                                                  price="%d" % (1000 + k * 100 + i)))
            except Exception as exc:  # surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=place, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert len(ids) == 100 and len(set(ids)) == 100
        outcomes = [client.wait_outcome(oid, timeout=30) for oid in ids]
        assert all(ev.kind == EventKind.ACCEPTED for ev in outcomes)
        assert all(ev.producer_id == client.producer_id for ev in outcomes)

        # asyncio: the next report for a cancel arrives through areport()
        seq = client.cancel(order_id=ids[0])

        async def wait_cancel():
            seen = []
            while True:
                ev = await client.areport(timeout=10)
                assert ev is not None, "no report within 10 s"
                seen.append(ev)
                if ev.seq == seq and ev.kind == EventKind.CANCELLED:
                    return seen

        seen = asyncio.run(wait_cancel())
        assert any(ev.seq == seq and ev.kind == EventKind.ACCEPTED for ev in seen)

        with pytest.raises(ValueError, match="exactly one"):
            client.cancel()
        with pytest.raises(ValueError, match="unknown side"):
            client.place_order("BTC-USD", "up", qty="1", price="1")
    assert run.stop() == 0


@pytest.mark.timeout(240)
def test_slow_client_is_told_it_lost_reports(engine_factory):
    run = engine_factory()
    import json
    with open(run.config) as f:
        raw = json.load(f)
    raw["shards"][0]["output_capacity"] = 1 << 8
    with open(run.config, "w") as f:
        json.dump(raw, f)
    run.start()
    with EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=22) as slow, \
            EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=23) as busy:
        busy.wait_outcome(busy.deposit("USD", "10000000"), timeout=30)
        for i in range(200):                     # > 256 events: the ring laps the slow reader
            oid = busy.place_order("BTC-USD", "buy", qty="0.01", price="%d" % (500 + i))
            busy.wait_outcome(oid, timeout=60)   # busy keeps up, so only the slow one is lapped
        with pytest.raises(ReportsLost, match="overwritten"):
            slow.next_report(timeout=1)
        # after the loss it resumes at the oldest event still in the ring
        assert slow.next_report(timeout=0.5) is None     # none of those were its own
    assert run.stop() == 0


def test_publish_admin_does_not_leak_producer_slots(tmp_path):
    import os
    from engine.client import publish_admin
    from ringbuf import Ring
    from ringbuf.records import CommandKind
    name = "rm-admin-%d" % os.getpid()
    ring = Ring.create(name, 4, consumers={"c": []})
    try:
        c = ring.consumer("c")
        for i in range(200):          # more than the 64-entry producer table
            seq = publish_admin(ring, CommandKind.SNAPSHOT)
            c.poll(4, timeout=0)
            c.commit(seq)
        assert seq == 200 and ring.producers() == []
    finally:
        ring.unlink()
        ring.close()
