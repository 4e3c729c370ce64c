"""Producer ids (ring rules P1-P3): privileged ids, automatic incarnations, stamping."""
import pytest

from engine.client import pack_command
from ringbuf.errors import RingError
from ringbuf.records import AUTO_PRODUCER_ID_BASE, CommandKind, command_struct

_PRODUCER_ID = 8          # index of producer_id in command_struct's fields


def _producer_ids(consumer):
    batch = consumer.poll(timeout=0)
    consumer.commit(batch.last_seq)
    data = batch.tobytes()
    return [command_struct.unpack_from(data, i)[_PRODUCER_ID]
            for i in range(0, len(data), 64)]


@pytest.mark.pypy
@pytest.mark.parametrize("producer_id", [0x7F00, 0x7F01, 0x7FFD, 0x7FFF])
def test_privileged_ids_need_privileged(make_ring, producer_id):
    r = make_ring(capacity=8)
    with pytest.raises(RingError, match="privileged"):
        r.producer(producer_id=producer_id)
    assert r.producer(producer_id=producer_id, privileged=True).producer_id == producer_id


@pytest.mark.parametrize("producer_id", [0x8000, 0xFFFF, -1, 1 << 16])
def test_fixed_ids_outside_the_ordinary_range_are_refused(make_ring, producer_id):
    with pytest.raises(RingError, match="0..0x7fff"):
        make_ring(capacity=8).producer(producer_id=producer_id)


@pytest.mark.pypy
def test_automatic_ids_are_not_reused_after_close(make_ring):
    """The issue: A (slot 1) exits, B takes slot 1 and used to get A's id."""
    r = make_ring(capacity=8)
    seen = []
    for _ in range(200):
        p = r.producer(producer_id=None)
        seen.append(p.producer_id)
        p.close()
    assert len(set(seen)) == 200 and all(i >= AUTO_PRODUCER_ID_BASE for i in seen)


def test_automatic_ids_wrap_after_32768_and_skip_live_ones(make_ring):
    from ringbuf import header as H
    from ringbuf._native import int64_at, lib
    r = make_ring(capacity=8)
    live = r.producer(producer_id=None)
    assert live.producer_id == AUTO_PRODUCER_ID_BASE
    # 32767 later attaches happened: the counter wraps onto the live producer's id
    lib.rm_store_release(int64_at(r._base, H.AUTO_ID_OFFSET), 1 << 15)
    nxt = r.producer(producer_id=None)
    assert nxt.producer_id == AUTO_PRODUCER_ID_BASE + 1      # the live id was skipped


@pytest.mark.pypy
def test_ordinary_producers_cannot_write_another_id(make_ring):
    r = make_ring(capacity=16)
    c = r.consumer("a")
    p = r.producer(producer_id=5)
    forged = pack_command(int(CommandKind.SNAPSHOT), producer_id=0x7F00)
    p.write(forged)
    p.write_batch(forged * 3)
    seq = p.claim()
    p.record(seq).kind = int(CommandKind.HALT)
    p.record(seq).producer_id = 0x7F00
    p.publish(seq)
    first, views = p.claim_batch(2)
    for view in views:
        view[:] = forged * (len(view) // 64)
    p.publish_batch(first, 2)
    assert _producer_ids(c) == [5] * 7
    # a privileged producer publishes records as given (the standby relays the primary's)
    relay = r.producer(producer_id=0x7FFE, privileged=True)
    relay.write_batch(pack_command(1, producer_id=33) * 2)
    assert _producer_ids(c) == [33, 33]
