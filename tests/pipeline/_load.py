"""Steady load for the kill -9 tests (run as a script).

usage: _load.py CONFIG SHARD SECONDS OUT_JSON SEED
Two accounts trade BTC-USD against each other; every command whose outcome
(ACCEPTED / REJECTED) the producer saw is recorded as acknowledged, with its
client order id, so the test can check the journal and the replayed state.
"""
import json
import random
import sys
import time

from engine.client import EngineClient, ReportsLost
from ringbuf.records import EventKind


def main():
    config, shard, seconds, out_path, seed = sys.argv[1:6]
    rng = random.Random(int(seed))
    acked, unacked = {}, []
    with EngineClient.attach(shard=shard, config=config) as c:
        for account, asset, amount in ((11, "BTC", "1000"), (12, "USD", "100000000")):
            seq = c.deposit(asset, amount, account=account)
            c.wait_outcome(seq, timeout=60)
        end = time.monotonic() + float(seconds)
        i = 0
        while time.monotonic() < end:
            i += 1
            side, account = ("sell", 11) if i % 2 else ("buy", 12)
            price = "%d.00" % rng.randint(29990, 30010)
            seq = c.place_order("BTC-USD", side, qty="0.01", price=price, account=account,
                                client_order_id=i)
            try:
                ev = c.wait_outcome(seq, timeout=20)
            except (TimeoutError, ReportsLost):
                unacked.append(seq)
                continue
            acked[seq] = {"kind": int(ev.kind), "reason": int(ev.reason), "client_order_id": i}
            if rng.random() < 0.1:
                time.sleep(0.005)
    with open(out_path, "w") as f:
        json.dump({"acked": acked, "unacked": unacked}, f)


if __name__ == "__main__":
    main()
