"""Wire protocol and epoch store: pure functions and one fsynced file."""
import socket
import struct
import zlib

import pytest

from replicator import protocol
from replicator.epoch import EpochRegressionError, EpochStore, FencedError
from replicator.protocol import FrameType

pytestmark = [pytest.mark.pypy, pytest.mark.timeout(30)]


def _records(first, n, size=64):
    return [struct.pack("<q", first + i) + bytes([i % 251]) * (size - 8) for i in range(n)]


def test_data_frame_round_trip_over_a_socket():
    a, b = socket.socketpair()
    try:
        recs = _records(100, 5)
        chunks = [b"".join(recs[:2]), b"".join(recs[2:])]  # a wrapped ring batch
        a.sendall(protocol.data_header(7, 100, 5, chunks) + b"".join(chunks))
        a.sendall(protocol.ack(7, 104))
        frame = protocol.read_frame(b)
        assert (frame.type, frame.epoch, frame.first_seq, frame.count, frame.last_seq) == \
            (FrameType.DATA, 7, 100, 5, 104)
        assert bytes(frame.payload) == b"".join(recs)
        ack = protocol.read_frame(b)
        assert (ack.type, ack.first_seq, ack.payload) == (FrameType.ACK, 104, b"")
    finally:
        a.close()
        b.close()


def test_crc_is_zlib_crc32_of_the_payload():
    payload = b"x" * 64
    frame = protocol.decode_header(protocol.encode_frame(FrameType.DATA, 1, 5, 1, payload))
    assert frame.payload_crc == zlib.crc32(payload)


@pytest.mark.parametrize("offset", list(range(0, 44)) + [48, 48 + 63])
def test_every_flipped_byte_is_detected(offset):
    data = bytearray(protocol.encode_frame(FrameType.DATA, 3, 10, 1, b"\x11" * 64))
    data[offset] ^= 0x01
    a, b = socket.socketpair()
    try:
        a.sendall(bytes(data))
        with pytest.raises(protocol.ProtocolError) as info:
            protocol.read_frame(b)
        # header damage must drop the stream; payload damage keeps it framed
        if offset < protocol.HEADER_SIZE:
            assert isinstance(info.value, protocol.HeaderCorrupt)
        else:
            assert isinstance(info.value, protocol.PayloadCorrupt)
            assert info.value.frame.first_seq == 10
    finally:
        a.close()
        b.close()


def test_close_inside_a_frame_is_reported_as_partial():
    a, b = socket.socketpair()
    try:
        frame = protocol.encode_frame(FrameType.DATA, 1, 1, 2, b"z" * 128)
        a.sendall(frame[:70])
        a.close()
        with pytest.raises(protocol.ConnectionClosed) as info:
            protocol.read_frame(b)
        assert info.value.partial
    finally:
        b.close()


def test_hello_carries_shard_schema_and_record_size():
    frame = protocol.decode_header(protocol.hello(4, "shard-x", 0xDEADBEEF, 64, 99, "n1"))
    raw = protocol.hello(4, "shard-x", 0xDEADBEEF, 64, 99, "n1")
    frame = protocol.check_payload(frame, raw[protocol.HEADER_SIZE:])
    info = protocol.hello_info(frame)
    assert (frame.epoch, frame.first_seq, info["shard"], info["schema_hash"],
            info["record_size"]) == (4, 99, "shard-x", 0xDEADBEEF, 64)


def test_oversized_payload_length_is_a_corrupt_header():
    head = protocol.encode_header(FrameType.DATA, 1, 1, 1, protocol.MAX_PAYLOAD + 1, 0)
    with pytest.raises(protocol.HeaderCorrupt):
        protocol.decode_header(head)


def test_epoch_store_defaults_promotes_fences_and_never_regresses(tmp_path):
    store = EpochStore(str(tmp_path), "s1")
    assert (store.load().epoch, store.load().role, store.exists()) == (1, "primary", False)
    store.become_standby(3)
    assert (store.load().epoch, store.load().role) == (3, "standby")
    with pytest.raises(FencedError):
        store.check_may_be_primary()
    state = store.promote()
    assert (state.epoch, state.role) == (4, "primary")
    assert EpochStore(str(tmp_path), "s1").check_may_be_primary().epoch == 4  # re-read from disk
    with pytest.raises(EpochRegressionError):
        store.save(2, "primary")
    store.fence(9)
    with pytest.raises(FencedError, match="fenced by epoch 9"):
        EpochStore(str(tmp_path), "s1").check_may_be_primary()
    assert not (tmp_path / "replication" / "s1.epoch.tmp").exists()


def test_corrupt_epoch_file_is_refused_not_guessed(tmp_path):
    store = EpochStore(str(tmp_path), "s1")
    store.save(2, "primary")
    with open(store.path, "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        store.load()
