"""Journal benchmarks: append per fsync policy, replay read throughput, restart-to-ready.

Topologies::

    append_throughput:   numpy batches --JournalWriter.append--> segment files (+fdatasync)
                         vs. the alternative: raw os.write of the same bytes + fdatasync
    replay_throughput:   segment files --mmap--> JournalReader.records() --> matcher.process
                         (engine.matcher.Matcher when it exists; else only the reader side)
    restart_to_ready:    10M-command journal (64 MiB segments, written with numpy) +
                         a snapshot every 1M:  journaler open (tail recovery, all CRCs)
                         and matcher recovery (newest snapshot + tail replay)

Each measurement: a warm-up pass, then N passes; median/min/max reported with
the interpreter and settings.  Results checked (record counts, state hash
equality) so a fast but wrong run fails.

    python perf/journal_bench.py [--quick] [--out perf/results/journal_<interp>.txt]
"""
import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from journaler.crc import IMPLEMENTATION  # noqa: E402
from journaler.reader import JournalReader, recover_journal  # noqa: E402
from journaler.writer import JournalWriter  # noqa: E402
from ringbuf import records  # noqa: E402

INTERP = "%s %s" % (platform.python_implementation(), platform.python_version())


def gen_records(first_seq, count):
    seqs = np.arange(first_seq, first_seq + count, dtype=np.int64)
    arr = np.zeros(count, records.COMMAND_DTYPE)
    arr["kind"] = 1
    arr["side"] = 1 + (seqs % 2)
    arr["order_type"] = 1
    arr["tif"] = 1
    arr["symbol_id"] = 1
    arr["account_id"] = 1 + (seqs % 100)
    arr["price"] = 10000 + (seqs * 7919) % 200 - 100
    arr["qty"] = 1 + seqs % 10
    arr["timestamp_ns"] = seqs * 1000
    arr["client_order_id"] = seqs
    return arr


def summary(values):
    return "median %s  min %s  max %s" % tuple(
        _fmt(v) for v in (statistics.median(values), min(values), max(values)))


def _fmt(v):
    return "{:,.0f}".format(v) if v >= 100 else "%.3f" % v


def histogram():
    try:
        from hdrh.histogram import HdrHistogram
        return HdrHistogram(1, 10 * 1000 * 1000, 3)
    except ImportError:
        return None


def bench_append(out, passes, total, batch, root):
    out("## append_throughput: %d records of 64 B in batches of %d, %d passes (+1 warm-up)"
        % (total, batch, passes))
    data = gen_records(1, total).tobytes()
    mv = memoryview(data)
    nb = batch * 64
    for policy in ("batch", "interval", "off", "raw-write+fdatasync", "raw-write"):
        rates, hist = [], histogram()
        lat = []
        for p in range(passes + 1):
            d = tempfile.mkdtemp(dir=root)
            try:
                t0 = time.perf_counter()
                if policy.startswith("raw"):
                    fd = os.open(os.path.join(d, "raw"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                    for off in range(0, len(data), nb):
                        t1 = time.perf_counter()
                        os.write(fd, mv[off:off + nb])
                        if policy != "raw-write":
                            os.fdatasync(fd)
                        if p:
                            lat.append(time.perf_counter() - t1)
                    os.close(fd)
                else:
                    w = JournalWriter(d, "b", fsync=policy, fsync_interval_ms=5)
                    seq = 1
                    for off in range(0, len(data), nb):
                        t1 = time.perf_counter()
                        w.append(seq, mv[off:off + nb])
                        if p:
                            lat.append(time.perf_counter() - t1)
                        seq += batch
                    w.close()
                    assert w.durable_sequence == total
                elapsed = time.perf_counter() - t0
                if p:
                    rates.append(total / elapsed)
            finally:
                shutil.rmtree(d)
        lat_us = sorted(x * 1e6 for x in lat)
        if hist is not None:
            for x in lat_us:
                hist.record_value(max(1, int(x)))
            pct = [hist.get_value_at_percentile(q) for q in (50, 99, 99.9)]
            mx = hist.get_max_value()
        else:
            pct = [lat_us[int(len(lat_us) * q / 100.0) - 1] for q in (50, 99, 99.9)]
            mx = lat_us[-1]
        out("  %-22s records/s %s | MB/s median %.1f | per-batch latency us p50 %d p99 %d "
            "p99.9 %d max %d" % (policy, summary(rates), statistics.median(rates) * 64 / 1e6,
                                 pct[0], pct[1], pct[2], mx))


def _matcher():
    try:
        from engine.matcher import Matcher
        from engine.config import DEFAULT_CONFIG
        return Matcher, DEFAULT_CONFIG
    except ImportError:
        return None, None


def bench_replay(out, passes, total, root):
    out("## replay_throughput: %d commands, %d passes (+1 warm-up)" % (total, passes))
    d = tempfile.mkdtemp(dir=root)
    try:
        with JournalWriter(d, "b", fsync="off") as w:
            for first in range(1, total + 1, 100000):
                n = min(100000, total - first + 1)
                w.append(first, gen_records(first, n).tobytes())
        for check_crc in (True, False):
            rates = []
            for p in range(passes + 1):
                t0 = time.perf_counter()
                acc = 0
                n = 0
                for seq, rec in JournalReader(d, "b", check_crc=check_crc).records():
                    acc += rec.qty + rec.kind
                    n += 1
                elapsed = time.perf_counter() - t0
                assert n == total
                if p:
                    rates.append(total / elapsed)
            out("  reader.records() + 2 field reads, crc=%-5s commands/s %s"
                % (check_crc, summary(rates)))
        rates = []
        for p in range(passes + 1):
            t0 = time.perf_counter()
            _, arr = JournalReader(d, "b").array()
            elapsed = time.perf_counter() - t0
            assert len(arr) == total
            if p:
                rates.append(total / elapsed)
        out("  reader.array() (numpy bulk, crc)          commands/s %s" % summary(rates))
        Matcher, config = _matcher()
        if Matcher is None:
            out("  matcher replay: engine.matcher not available in this build -- not measured")
            return
        from journaler import recovery
        rates, hashes = [], set()
        for p in range(passes + 1):
            m = Matcher(config, recovery.NullSink())
            t0 = time.perf_counter()
            last, n = recovery.replay(m, d, "b")
            elapsed = time.perf_counter() - t0
            hashes.add(m.state_hash())
            if p:
                rates.append(n / elapsed)
        assert len(hashes) == 1
        out("  matcher replay (journal -> Matcher.process)  commands/s %s  state_hash %016x"
            % (summary(rates), hashes.pop() & 0xFFFFFFFFFFFFFFFF))
    finally:
        shutil.rmtree(d)


def bench_restart(out, total, every, root):
    out("## restart_to_ready: %d-command journal, 64 MiB segments, snapshot every %d"
        % (total, every))
    d = tempfile.mkdtemp(dir=root)
    try:
        t0 = time.perf_counter()
        with JournalWriter(d, "b", fsync="off") as w:
            for first in range(1, total + 1, 250000):
                n = min(250000, total - first + 1)
                w.append(first, gen_records(first, n).tobytes())
        out("  generated in %.1f s (numpy, fsync off)" % (time.perf_counter() - t0))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            rep = recover_journal(d, "b", 64, records.SCHEMA_HASH)
            times.append(time.perf_counter() - t0)
            assert rep.last_seq == total and not rep.cuts
        out("  journaler ready (tail recovery over every segment, all CRCs) s %s" % summary(times))
        Matcher, config = _matcher()
        if Matcher is None:
            t0 = time.perf_counter()
            n = sum(1 for _ in JournalReader(d, "b").records(after=total - every))
            out("  matcher recovery: engine.matcher not available -- measured only reading the "
                "%d-record tail after the last snapshot: %.2f s" % (n, time.perf_counter() - t0))
            return
        from journaler import recovery, snapshot as snapshots
        m = Matcher(config, recovery.NullSink())
        seq = 0
        for s in range(every, total + 1, every):
            recovery.replay(m, d, "b", after=seq, last=s - every // 2 if s == total else s)
            seq = s if s != total else s - every // 2
            snapshots.write_snapshot_bytes(d, "b", seq, m.state_hash(), m.snapshot())
        recovery.replay(m, d, "b", after=seq)
        expected = m.state_hash()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            r, last = recovery.recover(config, d, "b")
            times.append(time.perf_counter() - t0)
            assert last == total and r.state_hash() == expected
        out("  matcher ready (newest snapshot + %d-command tail replay) s %s"
            % (total - seq, summary(times)))
    finally:
        shutil.rmtree(d)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--restart-commands", type=int, default=10 * 1000 * 1000)
    ap.add_argument("--skip", default="", help="comma list: append,replay,restart")
    ap.add_argument("--dir", default=None, help="scratch directory (default: system temp)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    lines = []

    def out(line):
        print(line, flush=True)
        lines.append(line)
    out("# journal_bench  %s  crc32c=%s  %s  %s" % (
        INTERP, IMPLEMENTATION, time.strftime("%Y-%m-%d %H:%M"), platform.machine()))
    out("# host: %d cpus (shared with other work), scratch dir %s" % (
        os.cpu_count() or 0, args.dir or tempfile.gettempdir()))
    skip = set(filter(None, args.skip.split(",")))
    passes = 3 if args.quick else args.passes
    if "append" not in skip:
        bench_append(out, passes, 100000 if args.quick else 400000, 1024, args.dir)
    if "replay" not in skip:
        bench_replay(out, passes, 200000 if args.quick else 1000000, args.dir)
    if "restart" not in skip:
        bench_restart(out, args.restart_commands, args.restart_commands // 10, args.dir)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
