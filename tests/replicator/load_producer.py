"""A load producer for the fail-over tests: place orders, record what was acknowledged.

    python load_producer.py SHARD ACKFILE PRODUCER_ID SEED

Places limit buy/sell orders around one price (so they fill) for accounts 1-4
(deposits first), and appends each command's seq to ACKFILE (flushed) as soon
as its outcome event (ACCEPTED/REJECTED) is on the output ring: that is the
acknowledgement a producer sees.  Runs until killed.
"""
import os
import random
import sys
import time

import numpy as np

from engine.client import pack_command
from ringbuf import Ring, records
from ringbuf.records import CommandKind, EventKind


def main():
    shard, ack_path, pid, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    ring_in = Ring.attach("rm-%s-in" % shard)
    ring_out = Ring.attach("rm-%s-out" % shard)
    producer = ring_in.producer(producer_id=pid)
    dtype = records.EVENT_DTYPE
    cap = ring_out.capacity
    data = ring_out._data_ro
    nxt = ring_out.cursor + 1
    outcome = (int(EventKind.ACCEPTED), int(EventKind.REJECTED))
    ack = open(ack_path, "a")
    pending = 0
    for account in (1, 2, 3, 4):
        for asset in (1, 2, 3):
            producer.write(pack_command(int(CommandKind.DEPOSIT), symbol_id=asset,
                                        account_id=account, producer_id=pid,
                                        qty=10 ** 15, timestamp_ns=time.time_ns()))
    while True:
        for _ in range(20):
            side = rng.choice((1, 2))
            price = 3000000 + rng.randint(-5, 5)
            producer.write(pack_command(int(CommandKind.NEW_ORDER), side=side, order_type=1,
                                        tif=1, symbol_id=1, account_id=rng.randint(1, 4),
                                        producer_id=pid, price=price, qty=rng.randint(1, 5),
                                        timestamp_ns=time.time_ns()))
            pending += 1
        time.sleep(0.002)
        cursor = ring_out.cursor
        while nxt <= cursor:
            n = min(cursor - nxt + 1, cap - (nxt & (cap - 1)))
            start = nxt & (cap - 1)
            arr = np.frombuffer(data[start * 128:(start + n) * 128], dtype=dtype).copy()
            sel = arr[np.isin(arr["kind"], outcome) & (arr["producer_id"] == pid)]
            if len(sel):
                ack.write("".join("%d\n" % s for s in sel["seq"].tolist()))
                ack.flush()
            nxt += n


if __name__ == "__main__":
    main()
