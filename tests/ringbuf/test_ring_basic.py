"""Ring lifecycle, attach checks, wrap-around, full ring, gating, batches."""
import os
import stat

import posix_ipc
import pytest

from ringbuf import (Ring, RingClosedError, RingConfigError, RingError, RingExistsError,
                     RingMismatchError, RingNotFoundError)
from ringbuf import records

pytestmark = [pytest.mark.pypy, pytest.mark.timeout(60)]


@pytest.mark.parametrize("capacity", [0, 1, 3, 12, 1000, -8, 2.0])
def test_capacity_must_be_power_of_two(ring_name, capacity):
    with pytest.raises(RingConfigError, match="power of two"):
        Ring.create(ring_name, capacity, consumers={"a": []})
    with pytest.raises(posix_ipc.ExistentialError):
        posix_ipc.SharedMemory("/" + ring_name)  # nothing left behind


def test_record_size_must_match_record_kind(ring_name):
    with pytest.raises(RingConfigError, match="does not match rm_command_t"):
        Ring.create(ring_name, 8, record_size=128, record_kind="command", consumers={"a": []})


@pytest.mark.parametrize("consumers, message", [
    ({}, "at least one consumer"),
    ({"a": ["b"]}, "unknown consumer 'b'"),
    ({"a": ["a"]}, "depends on itself"),
    ({"a": ["b"], "b": ["a"]}, "cycle"),
])
def test_bad_consumer_graphs_refused(ring_name, consumers, message):
    with pytest.raises(RingConfigError, match=message):
        Ring.create(ring_name, 8, consumers=consumers)


def test_segment_mode_default_0600_and_override(make_ring):
    r = make_ring()
    assert stat.S_IMODE(os.stat("/dev/shm/" + r.name).st_mode) == 0o600
    r2 = make_ring(mode=0o640)
    assert stat.S_IMODE(os.stat("/dev/shm/" + r2.name).st_mode) & 0o040


def test_create_existing_refused_and_attach_missing(make_ring, ring_name):
    r = make_ring()
    with pytest.raises(RingExistsError):
        Ring.create(r.name, 16, consumers={"a": []})
    with pytest.raises(RingNotFoundError):
        Ring.attach(ring_name + "-missing")


def test_attach_sees_header_and_data(make_ring):
    r = make_ring(capacity=32, consumers={"j": [], "m": ["j"]}, wait_strategy="yield")
    p = r.producer(7)
    s = p.claim()
    p.record(s).price = 12345
    p.publish(s)
    with Ring.attach(r.name, capacity=32, record_size=64,
                     consumers={"j": [], "m": ["j"]}) as other:
        assert other.header.creator_pid == os.getpid()
        assert other.header.schema_hash == records.SCHEMA_HASH
        assert other.wait_strategy == "yield"
        assert other.cursor == 1
        c = other.consumer("j")
        b = c.poll(timeout=0)
        assert (b.first_seq, b.count) == (1, 1)
        assert c.record(1).price == 12345


@pytest.mark.parametrize("kwargs, field", [
    ({"capacity": 64}, "capacity"),
    ({"record_size": 128}, "record size"),
    ({"schema_hash": 0x1234567890}, "schema hash"),
    ({"consumers": {"j": []}}, "consumers"),
])
def test_attach_mismatch_names_the_field(make_ring, kwargs, field):
    r = make_ring(capacity=32, consumers={"j": [], "m": ["j"]})
    with pytest.raises(RingMismatchError) as info:
        Ring.attach(r.name, **kwargs)
    assert info.value.field == field
    assert field in str(info.value) and r.name in str(info.value)


def test_attach_refuses_segment_made_by_other_schema(make_ring):
    r = make_ring(schema_hash=records.SCHEMA_HASH ^ 1)
    with pytest.raises(RingMismatchError, match="schema hash differs"):
        Ring.attach(r.name)


def test_attach_refuses_foreign_segment(ring_name):
    shm = posix_ipc.SharedMemory("/" + ring_name, posix_ipc.O_CREX, size=8192)
    os.write(shm.fd, b"NOTARING" + b"\1" * 100)
    shm.close_fd()
    with pytest.raises(RingMismatchError, match="magic"):
        Ring.attach(ring_name, wait=0.01)


def test_close_idempotent_unlink_separate(make_ring):
    r = make_ring()
    p = r.producer()
    c = r.consumer("a")
    r.close()
    r.close()
    assert r.closed
    with pytest.raises(RingClosedError):
        r.cursor
    with pytest.raises(RingClosedError):
        r.producer()
    with pytest.raises(TypeError):
        p.claim()          # detached, not a segfault
    with pytest.raises((TypeError, AttributeError)):
        c.poll(timeout=0)
    again = Ring.attach(r.name)   # closing did not unlink
    again.close()
    r.unlink()
    r.unlink()
    with pytest.raises(RingNotFoundError):
        Ring.attach(r.name)


def test_close_with_user_held_view_keeps_mapping(make_ring):
    r = make_ring()
    p = r.producer()
    first, views = p.claim_batch(2)
    r.close()          # must not raise although `views` is exported
    if len(views[0]):  # CPython: the mapping lives while views do
        views[0][0:1] = b"x"
        assert views[0][0:1] == b"x"
    else:              # PyPy: closing the mmap empties the views (never a dangling write)
        with pytest.raises(ValueError):
            views[0][0:1] = b"x"


@pytest.mark.parametrize("single_producer", [False, True])
def test_full_ring_try_claim_and_wrap_around(make_ring, single_producer):
    r = make_ring(capacity=8, single_producer=single_producer)
    p, c = r.producer(), r.consumer("a")
    seen = []
    next_value = 0
    for _round in range(5):
        while True:
            s = p.try_claim()
            if s is None:
                break
            p.record(s).client_order_id = next_value
            next_value += 1
            p.publish(s)
        # full: exactly capacity unconsumed
        assert r.claimed - c.sequence == 8
        assert p.claim(timeout=0.01) is None
        b = c.poll(max_batch=5, timeout=0)
        seen.extend(c.record(q).client_order_id for q in range(b.first_seq, b.last_seq + 1))
        c.commit(b.last_seq)
        r._check()
    b = c.poll(timeout=0)
    seen.extend(c.record(q).client_order_id for q in range(b.first_seq, b.last_seq + 1))
    assert seen == list(range(next_value))
    assert r.claimed > 3 * 8   # wrapped several times


@pytest.mark.parametrize("single_producer", [False, True])
def test_batches_that_wrap_give_two_chunks(make_ring, single_producer):
    r = make_ring(capacity=8, single_producer=single_producer)
    # privileged: its records are published as given (ring rule P3), byte for byte
    p, c = r.producer(0x7F10, privileged=True), r.consumer("a")
    s = p.claim_batch(6)[0]
    p.publish_batch(s, 6)
    c.commit(c.poll(timeout=0).last_seq)
    first, views = p.claim_batch(5)          # seqs 7..11 -> slots 7, 0..3
    assert first == 7 and [len(v) for v in views] == [64, 256]
    payload = bytes(range(256)) + bytes(range(64))
    views[0][:] = payload[:64]
    views[1][:] = payload[64:]
    p.publish_batch(first, 5)
    b = c.poll(timeout=0)
    assert (b.first_seq, b.count) == (7, 5)
    assert [(s, len(v)) for s, v in b.chunks] == [(7, 64), (8, 256)]
    assert b.tobytes() == payload
    assert b.chunks[0][1].readonly
    arr = b.array()
    assert arr.dtype == records.COMMAND_DTYPE and len(arr) == 5


def test_poll_respects_max_batch_and_continues(make_ring):
    r = make_ring(capacity=16)
    p, c = r.producer(), r.consumer("a")
    first, _ = p.claim_batch(10)
    p.publish_batch(first, 10)
    assert [c.poll(max_batch=4, timeout=0).count for _ in range(3)] == [4, 4, 2]
    assert c.poll(timeout=0) is None
    assert c.sequence == 0
    with pytest.raises(RingError, match="past the last polled"):
        c.commit(11)
    c.rewind()
    assert c.poll(timeout=0).first_seq == 1


def test_diamond_gating(make_ring):
    r = make_ring(capacity=8, consumers={"j": [], "r": [], "m": ["j", "r"]})
    p = r.producer()
    j, rep, m = r.consumer("j"), r.consumer("r"), r.consumer("m")
    first, _ = p.claim_batch(8)
    p.publish_batch(first, 8)
    assert m.poll(timeout=0) is None                      # nothing journaled/replicated
    j.commit(j.poll(timeout=0).last_seq)
    rep.poll(max_batch=3, timeout=0)
    rep.commit(3)
    assert m.poll(timeout=0).last_seq == 3                # min(j, r)
    assert p.try_claim() is None                          # gated by the leaf m
    m.commit(3)
    assert p.try_claim() == 9
    assert [x["lag"] for x in r.consumers()] == [0, 5, 5]
    r._check()


def test_consumer_resumes_after_commit(make_ring):
    r = make_ring()
    p = r.producer()
    for i in range(5):
        p.write(records.command_struct.pack(*([1] + [0] * 15)))
    c = r.consumer("a")
    c.poll(max_batch=2, timeout=0)
    c.commit(2)
    with Ring.attach(r.name) as other:
        assert other.consumer("a").poll(timeout=0).first_seq == 3


def test_single_producer_ring_refuses_second_live_producer(make_ring):
    r = make_ring(single_producer=True)
    p = r.producer()
    with pytest.raises(RingError, match="single-producer"):
        r.producer()
    p.close()
    p.close()
    with pytest.raises((TypeError, RingClosedError)):
        p.claim()       # a closed producer cannot claim (its table entry is gone)
    with pytest.raises(RingClosedError):
        p.try_claim()
    r.producer()    # after close the slot is free


def test_unknown_consumer_and_strategy(make_ring):
    r = make_ring()
    with pytest.raises(RingConfigError, match="no consumer 'x'"):
        r.consumer("x")
    with pytest.raises(RingConfigError, match="unknown wait strategy"):
        r.consumer("a", wait_strategy="nap")
    spin_ring = make_ring(wait_strategy="busy-spin")
    with pytest.raises(RingConfigError, match="do not signal"):
        spin_ring.consumer("a", wait_strategy="blocking")


def test_event_ring_records(make_ring):
    r = make_ring(record_size=128)
    p, c = r.producer(), r.consumer("a")
    s = p.claim()
    p.record(s).trade_id = 99
    p.publish(s)
    assert c.poll(timeout=0).array()["trade_id"][0] == 99
    assert c.record(s).trade_id == 99


def test_batch_copy_into_handles_wrap_and_bounds(make_ring):
    r = make_ring(capacity=8, record_kind="raw")
    p, c = r.producer(), r.consumer("a")
    first, _ = p.claim_batch(6)
    p.publish_batch(first, 6)
    c.commit(c.poll(timeout=0).last_seq)
    first, views = p.claim_batch(5)
    payload = bytes(range(64)) * 5
    views[0][:] = payload[:len(views[0])]
    views[1][:] = payload[len(views[0]):]
    p.publish_batch(first, 5)
    b = c.poll(timeout=0)
    dest = bytearray(400)
    assert b.copy_into(dest, offset=10) == 320
    assert bytes(dest[10:330]) == payload and dest[:10] == bytearray(10)
    with pytest.raises(ValueError):
        b.copy_into(bytearray(100))
