"""Replication throughput and added latency on loopback: sync vs async (vs none).

Topology (one process, real TCP on 127.0.0.1)::

    producer -> MemorySource --Sender--TCP--> Receiver -> FileSink (append + fsync per batch)
                     ^ gate (sync: standby durable; async: sent)

* ``one_to_one_throughput``: N records published at once; time until the gate
  passes them all (records/s, MB/s).
* ``ping_pong_latency``: one record at a time; time from publish until the gate
  passes it (what replication adds to every command before the matcher may act
  on it).  The alternative a user would pick, no standby, adds ~0.

Results: median/min/max over passes after a warm-up; each pass checks that the
standby's file holds exactly the published records (a fast wrong run fails).
Usage: python perf/replication_bench.py [--records 200000] [--passes 5] [--fsync/--no-fsync]
"""
import argparse
import os
import platform
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from replicator.epoch import EpochStore  # noqa: E402
from replicator.memory import FileSink, MemorySource, read_records_file  # noqa: E402
from replicator.receiver import Receiver  # noqa: E402
from replicator.sender import Sender  # noqa: E402


def _records(n, base=1):
    return [struct.pack("<q", base + i) + b"\x5a" * 56 for i in range(n)]


def _pair(tmp, mode, fsync):
    store_s = EpochStore(os.path.join(tmp, "s"), "b")
    store_s.become_standby(1)
    sink = FileSink(os.path.join(tmp, "s.journal"), fsync=fsync)
    receiver = Receiver(sink, ("127.0.0.1", 0), "b", store_s).start()
    source = MemorySource()
    sender = Sender(source, receiver.address, "b", epoch_store=EpochStore(os.path.join(tmp, "p"),
                                                                         "b"),
                    mode=mode, max_batch=4096, idle_wait_s=0.001).start()
    return source, sink, receiver, sender


def one_pass(mode, n, fsync, latency_samples):
    with tempfile.TemporaryDirectory() as tmp:
        source, sink, receiver, sender = _pair(tmp, mode, fsync)
        try:
            time.sleep(0.2)
            recs = _records(n)
            t0 = time.perf_counter()
            source.append(recs)
            assert source.wait_committed(n, 120) == n
            elapsed = time.perf_counter() - t0
            assert sink.wait_durable(n, 30) == n
            lat = []
            for i in range(latency_samples):
                t = time.perf_counter()
                seq = source.append(_records(1, n + 1 + i))
                source.wait_committed(seq, 10)
                lat.append(time.perf_counter() - t)
            total = n + latency_samples
            assert sink.wait_durable(total, 30) == total
        finally:
            sender.stop()
            receiver.stop()
            sink.close()
        first, got = read_records_file(os.path.join(tmp, "s.journal"))
        assert first == 1 and got[:n] == recs, "standby does not hold what was sent"
        return elapsed, sorted(lat)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "replication_loopback.txt"))
    args = parser.parse_args()
    fsync = not args.no_fsync
    lines = ["replication loopback benchmark", "interpreter: %s %s" % (
        platform.python_implementation(), platform.python_version()),
        "records/pass=%d passes=%d (+1 warm-up) latency samples/pass=%d standby fsync=%s "
        "record=64B max_batch=4096" % (args.records, args.passes, args.latency_samples, fsync),
        ""]
    for mode in ("async", "sync"):
        one_pass(mode, min(args.records, 20000), fsync, 20)       # warm-up
        rates, p50s, p99s = [], [], []
        for _ in range(args.passes):
            elapsed, lat = one_pass(mode, args.records, fsync, args.latency_samples)
            rates.append(args.records / elapsed)
            p50s.append(lat[len(lat) // 2] * 1e6)
            p99s.append(lat[int(len(lat) * 0.99)] * 1e6)
        lines.append("%-5s one_to_one_throughput records/s median=%.0f min=%.0f max=%.0f  "
                     "(MB/s median %.1f)" % (mode, statistics.median(rates), min(rates),
                                            max(rates), statistics.median(rates) * 64 / 1e6))
        lines.append("%-5s ping_pong_latency gate-after-publish us: p50 median=%.0f min=%.0f "
                     "max=%.0f; p99 median=%.0f min=%.0f max=%.0f" % (
                         mode, statistics.median(p50s), min(p50s), max(p50s),
                         statistics.median(p99s), min(p99s), max(p99s)))
    lines.append("none  (no standby: the gate is not held by replication; adds ~0)")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
