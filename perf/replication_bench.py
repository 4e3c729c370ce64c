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

``--e2e``: the whole engine as a user runs it (``ringmatch run``, and for the
replicated cases ``ringmatch standby`` with its own journal and hot matcher on
the same host), open-loop producers at fixed rates, outcome latency from the
scheduled send time (perf/e2e_bench.py's producers, gated "bench" consumer and
HdrHistogram percentiles, reused unchanged).  Compared in the same run: no
standby (what a user without fail-over runs) vs async vs sync replication.
After each configuration the standby's journal is checked to hold the
primary's records byte for byte.  Writes perf/results/replication_e2e.txt.
Usage: python perf/replication_bench.py --e2e [--rates 5000,20000] [--seconds 3] [--passes 3]
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


# ------------------------------------------------------------------ end to end
def _e2e_engine(workdir, mode, interpreter, port, wait_strategy=None):
    """perf.e2e_bench.Engine, plus (mode sync/async) a standby started first."""
    import json
    import signal
    import socket
    import subprocess
    from perf.e2e_bench import Engine

    def free_port():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    engine = Engine(workdir, interpreter, "batch", port)
    engine.standby = None
    if mode == "none":
        return engine
    with open(engine.config) as f:
        raw = json.load(f)
    listen = free_port()
    sshard = "e2s%d" % os.getpid()
    sraw = dict(raw, data_dir=os.path.join(workdir, "standby"),
                shards=[dict(raw["shards"][0], name=sshard, output_consumers=[])],
                publisher={"host": "127.0.0.1", "port": free_port()})
    raw["standby"] = {"host": "127.0.0.1", "port": listen}
    raw["replication"] = {"mode": mode, "on_unreachable": "stall", "state_hash_every_s": 1.0,
                          "wait_strategy": wait_strategy}
    with open(engine.config, "w") as f:
        json.dump(raw, f)
    sconfig = os.path.join(workdir, "standby.json")
    with open(sconfig, "w") as f:
        json.dump(sraw, f)
    exe = os.path.join(os.path.dirname(sys.executable), "ringmatch")
    log = open(os.path.join(workdir, "standby.log"), "w")
    engine.standby = subprocess.Popen(
        [exe, "standby", "--config", sconfig, "--listen", "127.0.0.1:%d" % listen,
         "--primary-shard", engine.shard], cwd=os.path.dirname(os.path.dirname(
             os.path.abspath(__file__))), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    engine.standby_shard = sshard
    engine.standby_dir = sraw["data_dir"]
    engine.standby_log = log

    def stop_standby():
        proc = engine.standby
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    engine.stop_standby = stop_standby
    status = os.path.join(engine.data_dir, "run", "%s.replication.json" % engine.shard)
    engine.replication_status = status
    return engine


def _wait_connected(engine, timeout=60):
    import json
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(engine.replication_status) as f:
                if json.load(f)["connected"]:
                    return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise RuntimeError("the primary's replicator did not connect to the standby")


def _check_journals(engine):
    """The standby's journal holds the primary's records (common prefix), byte for byte."""
    from journaler.reader import JournalReader
    p_seqs, p_recs = JournalReader(engine.data_dir, engine.shard).array()
    s_seqs, s_recs = JournalReader(engine.standby_dir, engine.standby_shard).array()
    n = min(len(p_seqs), len(s_seqs))
    assert n >= len(p_seqs) - 2, (len(p_seqs), len(s_seqs))
    assert p_recs[:n].tobytes() == s_recs[:n].tobytes(), "standby journal differs"
    return n


def e2e_main(args):
    import tempfile
    from perf.e2e_bench import OutcomeTimer, _fund, run_step
    from perf.harness import environment
    rates = [float(r) for r in args.rates.split(",")]
    results = {}
    interp = "?"
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix="rm-repl-e2e-") as workdir:
            engine = _e2e_engine(workdir, mode, args.interpreter, args.port, args.repl_wait)
            timer = None
            try:
                if engine.standby is not None:
                    time.sleep(1.0)
                engine.start()
                if engine.standby is not None:
                    _wait_connected(engine)
                _fund(engine)
                timer = OutcomeTimer(engine.shard)
                timer.start()
                run_step(engine, timer, rates[0], 1.0, args.producers)      # warm-up
                for rate in rates:
                    for _ in range(args.passes):
                        step = run_step(engine, timer, rate, args.seconds, args.producers)
                        results.setdefault((mode, rate), []).append(step)
                        lat = step["latency_ns"]
                        print("%-5s rate %7d/s: received %8.0f/s p50 %7.2f ms p99 %8.2f ms "
                              "cpu %s" % (mode, rate, step["received_rate"], lat["p50"] / 1e6,
                                          lat["p99"] / 1e6, step["cpu_seconds"]), flush=True)
                interp = engine.matcher_interpreter()
            finally:
                if timer is not None:
                    timer.close()
                engine.stop()
                if engine.standby is not None:
                    engine.stop_standby()
            if engine.standby is not None:
                checked = _check_journals(engine)
                print("%s: standby journal == primary journal over %d records" % (mode, checked))
    env = environment()
    lines = ["replication end to end: ringmatch run (+ ringmatch standby on the same host)",
             "bench: %s; matcher: %s (primary and standby); journal fsync=batch on both; "
             "%d producers, open loop, %.0f s per pass, %d passes (+1 s warm-up) per rate"
             % (env["interpreter"], interp, args.producers, args.seconds, args.passes),
             "host: %s, %s CPUs (shared with other work), load at end %s" % (
                 env["host"], env["cpus"], env["loadavg_at_end"]),
             "latency = outcome receipt - scheduled send time (no coordinated omission)",
             "command: python perf/replication_bench.py --e2e --rates %s --seconds %s "
             "--passes %d%s" % (args.rates, args.seconds, args.passes,
                                " --repl-wait " + args.repl_wait if args.repl_wait else ""), ""]
    med = statistics.median
    for rate in rates:
        for mode in args.modes.split(","):
            steps = results.get((mode, rate), [])
            if not steps:
                continue
            p50 = [st["latency_ns"]["p50"] / 1e6 for st in steps]
            p99 = [st["latency_ns"]["p99"] / 1e6 for st in steps]
            got = [st["received_rate"] for st in steps]
            lines.append("rate %6d/s %-5s received/s median=%.0f min=%.0f max=%.0f | "
                         "p50 ms median=%.2f min=%.2f max=%.2f | p99 ms median=%.2f min=%.2f "
                         "max=%.2f | passed %d/%d" % (
                             rate, mode, med(got), min(got), max(got), med(p50), min(p50),
                             max(p50), med(p99), min(p99), max(p99),
                             sum(1 for st in steps if st["passed"]), len(steps)))
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "replication_e2e.txt")
    with open(out, "w") as f:
        f.write(text)


def main():
    if "--e2e" in sys.argv[1:]:
        parser = argparse.ArgumentParser()
        parser.add_argument("--e2e", action="store_true")
        parser.add_argument("--rates", default="5000,20000")
        parser.add_argument("--seconds", type=float, default=3.0)
        parser.add_argument("--passes", type=int, default=3)
        parser.add_argument("--producers", type=int, default=2)
        parser.add_argument("--modes", default="none,async,sync")
        parser.add_argument("--interpreter", default="auto")
        parser.add_argument("--port", type=int, default=18191)
        parser.add_argument("--repl-wait", default=None,
                            help="replication.wait_strategy of the replicator's ring consumer "
                                 "(default: the ring's, backoff; blocking spends less CPU)")
        return e2e_main(parser.parse_args())
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
