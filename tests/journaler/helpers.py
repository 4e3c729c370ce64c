"""Shared helpers of the journaler tests: deterministic command records."""
import numpy as np

from ringbuf import records


#: the fixed id the tests' producers attach with: an ordinary producer's id is
#: stamped into its records (ring rule P3), so the expected content carries it
PRODUCER_ID = 1


def make_records(first_seq, count):
    """``count`` command records whose fields are functions of their sequence."""
    seqs = np.arange(first_seq, first_seq + count, dtype=np.int64)
    arr = np.zeros(count, records.COMMAND_DTYPE)
    arr["kind"] = 1
    arr["side"] = 1 + (seqs % 2)
    arr["order_type"] = 1
    arr["tif"] = 1
    arr["symbol_id"] = 1 + (seqs % 3)
    arr["account_id"] = 1 + (seqs % 7)
    arr["producer_id"] = PRODUCER_ID
    arr["price"] = 1000 + (seqs % 50)
    arr["qty"] = seqs
    arr["timestamp_ns"] = seqs * 1000
    arr["client_order_id"] = seqs * 7 + 3
    return arr


def check_content(seqs, arr):
    """Assert the records are exactly what make_records gives for their seqs."""
    assert len(seqs) == len(arr)
    if len(seqs):
        assert (np.diff(seqs) == 1).all(), "not gap-free"
        expected = make_records(int(seqs[0]), len(seqs))
        assert arr.tobytes() == expected.tobytes()
