"""Pipelined load: up to WINDOW orders in flight, the oldest outcome awaited first.

usage: _burst_load.py CONFIG SHARD SECONDS OUT_JSON SEED [WINDOW]
Orders flow continuously with many in flight, so one matcher batch holds many
of them (and the supervisor's SNAPSHOT among them).  Writes {"acked": {seq:
{...}}, "unacked": [seq...]} like _load.py.
"""
import collections
import json
import random
import sys
import time

from engine.client import EngineClient, ReportsLost


def main():
    config, shard, seconds, out_path, seed = sys.argv[1:6]
    window = int(sys.argv[6]) if len(sys.argv) > 6 else 500
    rng = random.Random(int(seed))
    acked, unacked = {}, []
    with EngineClient.attach(shard=shard, config=config) as c:
        for account, asset, amount in ((11, "BTC", "100000"), (12, "USD", "10000000000")):
            c.wait_outcome(c.deposit(asset, amount, account=account), timeout=60)
        end = time.monotonic() + float(seconds)
        inflight = collections.deque()
        i = 0
        while inflight or time.monotonic() < end:
            if time.monotonic() < end and len(inflight) < window:
                i += 1
                side, account = ("sell", 11) if i % 2 else ("buy", 12)
                price = "%d.00" % rng.randint(29990, 30010)
                seq = c.place_order("BTC-USD", side, qty="0.01", price=price,
                                    account=account, client_order_id=i)
                inflight.append((seq, i, time.monotonic()))
                continue
            seq, coid, sent_at = inflight.popleft()
            try:      # each outcome within 20 s of its send: lost ones cost 20 s in all
                ev = c.wait_outcome(seq, timeout=max(0.01, sent_at + 20 - time.monotonic()))
            except (TimeoutError, ReportsLost):
                unacked.append(seq)
                continue
            acked[seq] = {"kind": int(ev.kind), "reason": int(ev.reason),
                          "client_order_id": coid}
    with open(out_path, "w") as f:
        json.dump({"acked": acked, "unacked": unacked}, f)


if __name__ == "__main__":
    main()
