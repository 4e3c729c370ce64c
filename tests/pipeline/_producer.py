"""A colocated producer process for the pipeline tests (run as a script).

usage: _producer.py CONFIG SHARD ROLE ACCOUNT N
  ROLE maker: deposit BTC, place N sells, print "ready", then collect fills
  ROLE taker: deposit USD, place N crossing buys, collect outcomes and fills
Prints one JSON line: {"accepted": [...], "rejected": [...], "fills": [[order_id, qty], ...]}.
"""
import json
import sys
import time

from engine.client import EngineClient
from ringbuf.records import EventKind


def main():
    config, shard, role, account, n = sys.argv[1:6]
    account, n = int(account), int(n)
    out = {"accepted": [], "rejected": [], "fills": []}
    with EngineClient.attach(shard=shard, config=config, account=account) as client:
        if role == "maker":
            seq = client.deposit("BTC", "%d" % n)
        else:
            seq = client.deposit("USD", "%d" % (n * 40000))
        dep = client.wait_outcome(seq, timeout=30)
        assert dep.kind == EventKind.ACCEPTED, dep
        ids = []
        for i in range(n):
            if role == "maker":
                oid = client.place_order("BTC-USD", "sell", qty="1", price="%d.00" % (30000 + i))
            else:
                oid = client.place_order("BTC-USD", "buy", qty="1", price="31000.00")
            ids.append(oid)
        for oid in ids:
            ev = client.wait_outcome(oid, timeout=30)
            (out["accepted"] if ev.kind == EventKind.ACCEPTED else out["rejected"]).append(oid)
        if role == "maker":
            print("ready", flush=True)
        deadline = time.monotonic() + 30
        while len(out["fills"]) < n and time.monotonic() < deadline:
            ev = client.next_report(timeout=0.5)
            if ev is not None and ev.kind == EventKind.FILL:
                out["fills"].append([ev.order_id, ev.qty])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
