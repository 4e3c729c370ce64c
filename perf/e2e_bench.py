"""End-to-end benchmark: open-loop producers -> the whole engine -> outcome receipt.

Topology (one shard, started as a user would: ``ringmatch run``)::

    K load-generator processes (open loop, scheduled send times)
        |  batched multi-producer claims
        v
    rm-S-in --> journaler (fsync per batch) --> matcher (PyPy when available)
                                                    |
                                                    v
                 rm-S-out --> publisher (REST/WS read model)
                          `-> "bench" consumer (gated, like the publisher): receipt time

Latency = receipt of a command's outcome event (ACCEPTED/REJECTED) by the bench
consumer - the command's *scheduled* send time, which the producer writes as
its timestamp: a producer that falls behind (ring full, descheduled) does not
hide the delay (no coordinated omission).  The bench consumer is a gated
output-ring consumer beside the publisher, so it sees each outcome when the
publisher could; it measures in the bench process, not inside the publisher.

Each step runs the target rate for ``--seconds``; a step passes when the rate
received is >= 95% of the target and p99 <= 10 ms.  The sweep reports the
highest passing rate, per-process CPU time (where the time goes), and writes
perf/results/e2e_*.md|json and a latency-percentile plot (PNG).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

__all__ = ["SUITES", "main"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "perf", "results")
ACCOUNTS = 1000
P99_LIMIT_NS = 10 * 1000 * 1000
CPU_TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- producers
def _build_commands(n, seed, symbol_id):
    """Rows of the matcher workload as a command array; cancels name their target row."""
    import numpy as np
    from perf.workload import generate
    from ringbuf.records import COMMAND_DTYPE, CommandKind, OrderType, Side, TimeInForce
    rows = generate(n, seed=seed)
    arr = np.zeros(len(rows), dtype=COMMAND_DTYPE)
    target_row = np.full(len(rows), -1, dtype=np.int64)
    row_of = {}
    account_of = {}
    tifs = {"L": TimeInForce.GTC, "I": TimeInForce.IOC, "F": TimeInForce.FOK, "M": TimeInForce.IOC}
    n_orders = 0
    for i, (side, type_, price, qty, order_id, target) in enumerate(rows):
        rec = arr[i]
        rec["symbol_id"] = symbol_id
        if type_ == "C":
            rec["kind"] = CommandKind.CANCEL
            rec["account_id"] = account_of[target]
            target_row[i] = row_of[target]
        else:
            account = 1 + n_orders % ACCOUNTS
            n_orders += 1
            row_of[order_id] = i
            account_of[order_id] = account
            rec["kind"] = CommandKind.NEW_ORDER
            rec["side"] = Side.BUY if side == "B" else Side.SELL
            rec["order_type"] = OrderType.MARKET if type_ == "M" else OrderType.LIMIT
            rec["tif"] = tifs[type_]
            rec["account_id"] = account
            rec["price"] = price
            rec["qty"] = qty
    return arr, target_row


def producer_main(argv):
    """One open-loop load generator (run as a child process)."""
    import numpy as np
    from ringbuf import Ring
    shard, rate, seconds, seed, producer_id = argv
    rate, seconds, seed = float(rate), float(seconds), int(seed)
    n = int(rate * seconds)
    arr, target_row = _build_commands(n, seed, 1)
    arr["producer_id"] = int(producer_id)
    cancel_rows = np.nonzero(target_row >= 0)[0]
    row_seq = np.zeros(n, dtype=np.int64)
    ring = Ring.attach("rm-%s-in" % shard)
    producer = ring.producer(producer_id=int(producer_id))
    max_batch = min(4096, ring.capacity // 4)
    period_ns = 1e9 / rate
    print("ready", flush=True)            # built and attached: wait for the common start time
    t0 = int(float(sys.stdin.readline()) * 1e9)
    while time.time_ns() < t0:
        time.sleep(0.0005)
    sched = (t0 + np.arange(n, dtype=np.float64) * period_ns).astype(np.int64)
    arr["timestamp_ns"] = sched
    raw = arr.view(np.uint8).reshape(n, 64)
    sent = 0
    size = 64
    late_batches = 0
    while sent < n:
        now = time.time_ns()
        due = min(n, int((now - t0) / period_ns) + 1)
        if due <= sent:
            time.sleep(min(0.0005, (t0 + sent * period_ns - now) / 1e9))
            continue
        m = min(due - sent, max_batch)
        first, views = producer.claim_batch(m)
        end = sent + m
        row_seq[sent:end] = np.arange(first, first + m, dtype=np.int64)
        lo, hi = np.searchsorted(cancel_rows, [sent, end])
        if hi > lo:
            rows = cancel_rows[lo:hi]
            arr["order_id"][rows] = row_seq[target_row[rows]]
        src = raw[sent:end].reshape(-1)
        offset = 0
        for view in views:
            length = len(view)
            view[:] = src[offset:offset + length].data
            offset += length
        producer.publish_batch(first, m)
        if due - sent > max_batch:
            late_batches += 1
        sent = end
    producer.close()
    ring.close()
    print(json.dumps({"sent": sent, "late_batches": late_batches}), flush=True)
    return 0


# ---------------------------------------------------------------- measuring
class OutcomeTimer(threading.Thread):
    """Gated output-ring consumer "bench": latency of every outcome event."""

    def __init__(self, shard):
        super(OutcomeTimer, self).__init__(daemon=True)
        from ringbuf import Ring
        self.ring = Ring.attach("rm-%s-out" % shard)
        self.consumer = self.ring.consumer("bench")
        self.stop_flag = False
        self.lock = threading.Lock()
        self.latencies = []
        self.outcomes = 0
        self.events = 0
        self.last_receipt_ns = 0

    def run(self):
        import numpy as np
        from ringbuf.records import EVENT_DTYPE, EventKind, CommandKind
        accepted, rejected = int(EventKind.ACCEPTED), int(EventKind.REJECTED)
        timed_kinds = (int(CommandKind.NEW_ORDER), int(CommandKind.CANCEL))
        poll, commit = self.consumer.poll, self.consumer.commit
        while not self.stop_flag:
            batch = poll(65536, timeout=0.05)
            if batch is None:
                continue
            now = time.time_ns()
            for _, view in batch.chunks:
                ev = np.frombuffer(view, dtype=EVENT_DTYPE)
                kinds = ev["kind"]
                mask = ((kinds == accepted) | (kinds == rejected)) & (
                    (ev["command_kind"] == timed_kinds[0]) | (ev["command_kind"] == timed_kinds[1]))
                mask &= ev["producer_id"] >= 100      # load generators only
                lat = now - ev["timestamp_ns"][mask]
                with self.lock:
                    if len(lat):
                        self.latencies.append(lat.copy())
                        self.last_receipt_ns = now
                    self.outcomes += int(mask.sum())
                    self.events += len(ev)
            commit(batch.last_seq)

    def take(self):
        import numpy as np
        with self.lock:
            lat = np.concatenate(self.latencies) if self.latencies else np.zeros(0, np.int64)
            out = (lat, self.outcomes, self.events, self.last_receipt_ns)
            self.latencies, self.outcomes, self.events = [], 0, 0
        return out

    def close(self):
        self.stop_flag = True
        self.join(5)
        self.ring.close()


def _hdr(latencies):
    """HdrHistogram percentiles of ``latencies`` (ns), recorded in bulk by value."""
    import numpy as np
    from hdrh.histogram import HdrHistogram
    h = HdrHistogram(1, 600 * 10 ** 9, 3)
    if len(latencies):
        values, counts = np.unique(np.maximum(latencies, 1), return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            h.record_value(v, c)
    out = {"p%g" % p: h.get_value_at_percentile(p) for p in (50, 90, 99, 99.9, 99.99)}
    out["max"] = h.get_max_value()
    out["count"] = h.get_total_count()
    curve = []
    for p in (0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999):
        curve.append((p, h.get_value_at_percentile(p)))
    return out, curve


def _cpu_seconds(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CPU_TICK
    except (OSError, IndexError, ValueError):
        return 0.0


# ---------------------------------------------------------------- engine
class Engine(object):
    def __init__(self, workdir, interpreter, fsync, port):
        self.shard = "e2e%d" % os.getpid()
        self.data_dir = os.path.join(workdir, "data")
        self.config = os.path.join(workdir, "engine.json")
        raw = {"data_dir": self.data_dir,
               "shards": [{"name": self.shard, "symbols": ["BTC-USD", "ETH-USD", "ETH-BTC"],
                           "input_capacity": 1 << 16, "output_capacity": 1 << 18,
                           "output_consumers": ["bench"]}],
               "publisher": {"host": "127.0.0.1", "port": port},
               "journal": {"fsync": fsync},
               "snapshot": {"every_commands": 0, "every_seconds": 0, "keep": 2},
               "matcher": {"interpreter": interpreter}}
        with open(self.config, "w") as f:
            json.dump(raw, f)
        self.proc = None
        self.lines = []

    def start(self, timeout=120):
        exe = os.path.join(os.path.dirname(sys.executable), "ringmatch")
        self.proc = subprocess.Popen([exe, "run", "--config", self.config], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        ready = threading.Event()

        def read():
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if "proc=supervisor" in line and "event=ready" in line:
                    ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError("engine did not start:\n" + "\n".join(self.lines[-30:]))
        return self

    def pids(self):
        import re
        out = {}
        for line in self.lines:
            m = re.search(r"event=child_(?:started|restarted) child=(\w+) child_pid=(\d+)", line)
            if m:
                out[m.group(1)] = int(m.group(2))
        return out

    def matcher_interpreter(self):
        for line in self.lines:
            if "event=matcher_interpreter" in line:
                return line.split("name=")[1].split()[0]
        return "?"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _fund(engine):
    from engine.client import EngineClient
    with EngineClient.attach(shard=engine.shard, config=engine.config, producer_id=50) as c:
        last = None
        for account in range(1, ACCOUNTS + 1):
            c.deposit("USD", 10 ** 13, account=account)
            last = c.deposit("BTC", 10 ** 14, account=account)
        c.wait_outcome(last, timeout=120)


def run_step(engine, timer, rate, seconds, producers):
    procs = []
    for k in range(producers):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "perf.e2e_bench", "--producer", engine.shard,
             str(rate / producers), str(seconds), str(1 + k + int(rate) % 1000), str(100 + k)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    for p in procs:
        line = p.stdout.readline().decode().strip()
        if line != "ready":
            raise RuntimeError("load generator failed to start: %r" % line)
    pids = engine.pids()
    cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    start_at = time.time() + 0.2
    for p in procs:
        p.stdin.write(("%r\n" % start_at).encode())
        p.stdin.flush()
    sent = 0
    producer_cpu = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds * 20 + 120)
        sent += json.loads(out.decode().strip().splitlines()[-1])["sent"]
    elapsed_send = time.time() - start_at
    # drain: every outcome received (or a timeout says the pipeline is stuck)
    from ringbuf import Ring
    deadline = time.monotonic() + 120
    with Ring.attach("rm-%s-out" % engine.shard) as out_ring, \
            Ring.attach("rm-%s-in" % engine.shard) as in_ring:
        while time.monotonic() < deadline:
            if in_ring.consumer_sequence("matcher") >= in_ring.cursor and \
                    out_ring.consumer_sequence("bench") >= out_ring.cursor:
                break
            time.sleep(0.02)
    lat, outcomes, events, last_receipt_ns = timer.take()
    span = max(1e-9, last_receipt_ns / 1e9 - start_at)
    cpu = {name: round(_cpu_seconds(pid) - cpu0.get(name, 0.0), 2) for name, pid in pids.items()}
    pct, curve = _hdr(lat)
    received_rate = outcomes / span if outcomes else 0.0
    return {"target_rate": rate, "seconds": seconds, "sent": sent, "outcomes": outcomes,
            "events": events, "received_rate": received_rate, "send_elapsed": elapsed_send,
            "latency_ns": pct, "curve": curve, "cpu_seconds": cpu,
            "passed": bool(outcomes >= sent and received_rate >= 0.95 * rate
                           and pct["p99"] <= P99_LIMIT_NS)}


def _plot(steps, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for s in steps:
        xs = [1.0 / (1.0 - p / 100.0) if p < 100 else 1e6 for p, _ in s["curve"]]
        ys = [v / 1e6 for _, v in s["curve"]]
        ax.plot(xs, ys, marker="o", label="%s/s" % format(int(s["target_rate"]), ","))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000, 100000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    ax.axhline(10, color="red", linestyle="--", linewidth=1, label="10 ms")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms), scheduled send -> outcome received")
    ax.set_title("ringmatch end-to-end latency by offered rate")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _markdown(steps, settings, best):
    lines = ["# End-to-end: producers -> journal (fsync) -> matcher -> output ring", ""]
    for k, v in sorted(settings.items()):
        lines.append("- %s: %s" % (k, v))
    lines.append("- highest rate with p99 <= 10 ms and >= 95%% of the target received: %s"
                 % (format(int(best), ",") + "/s" if best else "none of the steps"))
    lines.append("")
    lines.append("| target/s | received/s | outcomes | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
                 "| pass | CPU s (journaler / matcher / publisher) |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for s in steps:
        lat = s["latency_ns"]
        cpu = s["cpu_seconds"]
        lines.append("| %s | %s | %s | %.2f | %.2f | %.2f | %.2f | %.1f | %s | %s / %s / %s |" % (
            format(int(s["target_rate"]), ","), format(int(s["received_rate"]), ","),
            format(s["outcomes"], ","), lat["p50"] / 1e6, lat["p90"] / 1e6, lat["p99"] / 1e6,
            lat["p99.9"] / 1e6, lat["max"] / 1e6, "yes" if s["passed"] else "no",
            cpu.get("journaler", "-"), cpu.get("matcher", "-"), cpu.get("publisher", "-")))
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--producer":
        return producer_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m perf.e2e_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="10000,25000,50000,100000,200000,400000,1000000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--interpreter", default="auto", help="matcher interpreter")
    parser.add_argument("--fsync", default="batch")
    parser.add_argument("--port", type=int, default=18181)
    parser.add_argument("--stem", default="e2e_sweep")
    parser.add_argument("--warmup", type=int, default=400000,
                        help="commands sent (at 100k/s, not measured) before the sweep: "
                             "PyPy's JIT needs a few hundred thousand to warm up the matcher")
    parser.add_argument("--keep-going", action="store_true",
                        help="run every rate even after two failing steps")
    args = parser.parse_args(argv)
    from perf.harness import environment
    rates = [float(r) for r in args.rates.split(",")]
    steps = []
    with tempfile.TemporaryDirectory(prefix="rm-e2e-") as workdir:
        engine = Engine(workdir, args.interpreter, args.fsync, args.port).start()
        timer = None
        try:
            _fund(engine)
            timer = OutcomeTimer(engine.shard)
            timer.start()
            if args.warmup:
                warm = run_step(engine, timer, 100000.0, args.warmup / 100000.0, args.producers)
                print("warm-up: %d commands, received %.0f/s (not part of the results)"
                      % (warm["sent"], warm["received_rate"]), flush=True)
            timer.take()
            failures = 0
            for rate in rates:
                step = run_step(engine, timer, rate, args.seconds, args.producers)
                steps.append(step)
                lat = step["latency_ns"]
                print("rate %9s/s: received %9.0f/s  p50 %7.2f ms  p99 %8.2f ms  max %8.1f ms  %s  cpu %s"
                      % (format(int(rate), ","), step["received_rate"], lat["p50"] / 1e6,
                         lat["p99"] / 1e6, lat["max"] / 1e6, "PASS" if step["passed"] else "fail",
                         step["cpu_seconds"]), flush=True)
                failures = failures + (0 if step["passed"] else 1)
                if failures >= 2 and not args.keep_going:
                    break
            interp = engine.matcher_interpreter()
        finally:
            if timer is not None:
                timer.close()
            engine.stop()
    env = environment()
    best = max([s["target_rate"] for s in steps if s["passed"]] or [0])
    settings = {"bench interpreter": env["interpreter"], "matcher interpreter": interp,
                "fsync": args.fsync, "producers": args.producers, "seconds per step": args.seconds,
                "host": "%s, %s CPUs, load at end %s" % (env["host"], env["cpus"], env["loadavg_at_end"]),
                "workload": "perf/workload.py mix (64%% limit, 25%% cancel, 4%% IOC, 2%% FOK, "
                            "5%% market), BTC-USD, %d funded accounts" % ACCOUNTS,
                "warm-up commands (not measured)": args.warmup,
                "command": "python -m perf.e2e_bench " + " ".join(argv)}
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, args.stem)
    with open(base + ".json", "w") as f:
        json.dump({"settings": settings, "environment": env, "steps": steps, "best_rate": best},
                  f, indent=2, sort_keys=True)
    with open(base + ".md", "w") as f:
        f.write(_markdown(steps, settings, best))
    png = _plot(steps, base + ".png")
    print(_markdown(steps, settings, best))
    if png:
        print("plot: %s" % png)
    return 0


def _suite(argv):
    return main(argv)


SUITES = {"e2e_sweep": _suite}

if __name__ == "__main__":
    sys.exit(main())
