"""Rings re-created after a restart continue the journal's sequences; non-gating reads."""
import pytest

from ringbuf import Ring
from ringbuf.errors import RingConfigError, RingError


@pytest.mark.pypy
@pytest.mark.parametrize("single_producer", [False, True])
def test_initial_sequence_continues_numbering(make_ring, single_producer):
    ring = make_ring(capacity=8, consumers={"j": [], "m": ["j"]},
                     single_producer=single_producer, initial_sequence=1000, record_kind="raw")
    assert ring.cursor == 1000
    assert ring.consumer_sequence("j") == ring.consumer_sequence("m") == 1000
    p = ring.producer(3)
    seqs = [p.write(bytes([i]) * 64) for i in range(8)]
    assert seqs == list(range(1001, 1009))
    assert p.try_claim() is None            # full: gated by the slowest leaf at 1000
    j = ring.consumer("j")
    batch = j.poll(100, timeout=0)
    assert (batch.first_seq, batch.count) == (1001, 8)
    assert b"".join(bytes(v) for _, v in batch.chunks) == b"".join(bytes([i]) * 64 for i in range(8))
    j.commit(1008)
    assert p.try_claim() is None            # m (depends on j) has not moved
    m = ring.consumer("m")
    assert m.poll(100, timeout=0).count == 8
    m.commit(1008)
    assert p.try_claim() == 1009


@pytest.mark.pypy
def test_read_copies_slot_without_gating(make_ring):
    ring = make_ring(capacity=4, consumers={"a": []}, record_kind="raw")
    p = ring.producer(1)
    seq = p.write(b"\x07" * 64)
    data = ring.read(seq)
    assert data == b"\x07" * 64 and isinstance(data, bytes)
    assert ring.consumer_sequence("a") == 0          # reading did not consume


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_initial_sequence_must_be_non_negative_int(make_ring, bad):
    with pytest.raises(RingConfigError, match="initial_sequence"):
        make_ring(initial_sequence=bad)


@pytest.mark.pypy
def test_seek_skips_records_consumed_elsewhere(make_ring):
    ring = make_ring(capacity=8, consumers={"j": [], "m": ["j"]})
    p = ring.producer(1)
    for i in range(5):
        p.write(bytes([i]) * 64)
    j, m = ring.consumer("j"), ring.consumer("m")
    with pytest.raises(RingError, match="past what is available"):
        m.seek(3)                       # j has not released anything yet
    j.poll(10, timeout=0)
    j.commit(5)
    m.seek(3)                           # e.g. replayed 1..3 from the journal
    m.commit(3)
    batch = m.poll(10, timeout=0)
    assert (batch.first_seq, batch.count) == (4, 2)
    with pytest.raises(RingError, match="behind the committed"):
        m.seek(2)


@pytest.mark.pypy
def test_automatic_producer_ids_are_unique_among_live_producers(make_ring):
    from ringbuf.ring import AUTO_PRODUCER_ID_BASE
    ring = make_ring(capacity=8, consumers={"a": []})
    producers = [ring.producer(producer_id=None) for _ in range(5)]
    ids = [p.producer_id for p in producers]
    assert len(set(ids)) == 5 and all(i >= AUTO_PRODUCER_ID_BASE for i in ids)
    assert {p["producer_id"] for p in ring.producers()} >= set(ids)
    assert ring.producer(producer_id=7).producer_id == 7


@pytest.mark.pypy
def test_write_batch_chunks_wraps_and_checks_expected_sequence(make_ring):
    ring = make_ring(capacity=8, consumers={"a": []}, record_kind="raw")
    p = ring.producer(1)
    c = ring.consumer("a")
    p.write(b"\x00" * 64)
    c.poll(8, timeout=0)
    c.commit(1)                                   # the next batch wraps the ring's end
    data = b"".join(bytes([i]) * 64 for i in range(1, 7))
    assert p.write_batch(data, max_chunk=4) == 2
    got = bytearray()
    while len(got) < len(data):
        batch = c.poll(8, timeout=1)
        for _, view in batch.chunks:
            got += bytes(view)
        c.commit(batch.last_seq)
    assert bytes(got) == data
    with pytest.raises(ValueError, match="whole number"):
        p.write_batch(b"\x00" * 65)
    with pytest.raises(RingError, match="where 100 was expected"):
        p.write_batch(b"\x00" * 64, expect_first=100)
