"""End-to-end benchmark: the matcher's ceiling and the whole engine, in one run.

Topology (one shard, started as a user would: ``ringmatch run``)::

    K load-generator processes (open loop, constant-rate schedule, numpy batches,
        |                       claim_batch/publish_batch of up to 4096 records)
        v
    rm-S-in --> journaler (fsync per batch) --> matcher (PyPy when available)
                                                    |
                                                    v
                 rm-S-out --> publisher (REST/WS read model)
                          `-> "bench" consumer (gated, like the publisher): receipt time

One invocation measures, on the same workload (perf.workload.generate_commands)
and the same matcher interpreter:

* the load generator alone (it must offer >= 2M commands/s, so that the bench
  measures the engine, not the generator);
* the matcher alone (``Matcher.process`` over the same 64-byte records through
  cffi, batches of 1024, no rings): the ceiling;
* for each ``--producer-wait`` setting (``RINGMATCH_PRODUCER_WAIT`` of the
  engine and the generators; ``sleep-poll`` is the wait before issue 13): the
  idle engine's CPU over ``--idle-seconds``, then every offered rate
  ``--passes`` times: received rate, latency percentiles, CPU microseconds per
  command of every process (/proc/<pid>/stat utime+stime before/after;
  generators read their own around the sending loop);
* the saturation rate (highest median received rate), the highest rate that
  passes (p99 <= 10 ms, >= 95% received, everything scheduled sent), and both
  as a share of the matcher-alone rate.

Latency = receipt of a command's outcome event (ACCEPTED/REJECTED) by the bench
consumer - the command's *scheduled* send time, which the generator writes as
its timestamp: a generator that falls behind (ring full, descheduled) does not
hide the delay (no coordinated omission).  Commands a generator could not send
by 250 ms after its schedule ended are reported as ``unsent`` (the step fails).

A generator with nothing due sleeps at least ``--send-quantum-us`` (default
250 us; 0 = until the next command is due, the behaviour before 2026-12-04),
so that each of its batches holds what came due meanwhile: on 2 cores a
generator waking every 200 us to send one command used ~25-45 us of CPU per
command, a core's share the engine it measures needs.  The quantum's delay is
in the latency (measured from the schedule).

CPU: /proc/<pid>/stat (10 ms ticks) per step; the idle engine from every
thread's /proc/<pid>/task/*/schedstat (ns), whose few ms a second the ticks
cannot resolve.

Results: perf/results/<stem>.md|json|png (default stem e2e_<date>), with the
exact command, interpreter, CPU count and load averages.
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
BLOCK = 1 << 20           # rows of workload a generator builds (then repeats)
MAX_CLAIM = 4096          # records per claim_batch / publish_batch
DEADLINE_GRACE_NS = 250 * 1000 * 1000   # "deadline" generators stop 250 ms after the schedule


# ---------------------------------------------------------------- producers
def _build_commands(n, seed, symbol_id):
    """The load generator's workload: perf.workload.generate_commands (vectorized, numpy)."""
    from perf.workload import generate_commands
    return generate_commands(n, seed=seed, symbol_id=symbol_id, accounts=ACCOUNTS)


def _proc_cpu_seconds(pid="self"):
    """utime + stime of a process from /proc/<pid>/stat (0.0 if it is gone)."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CPU_TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _proc_cpu_ns_precise(pid):
    """On-CPU nanoseconds of every live thread of ``pid`` (/proc/<pid>/task/*/schedstat).

    Nanosecond resolution (the idle engine uses a few ms a second, which the 10 ms
    ticks of /proc/<pid>/stat over a 5 s window cannot tell apart); threads that
    exited are not counted, so it is used only for the idle engine, whose threads
    live.  None when schedstat is not available.
    """
    total = 0
    try:
        tasks = os.listdir("/proc/%s/task" % pid)
    except OSError:
        return None
    for tid in tasks:
        try:
            with open("/proc/%s/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total


def producer_main(argv):
    """One open-loop load generator (run as a child process).

    Arguments: ring, rate, seconds, seed, producer id, mode.  Commands are
    scheduled at a constant rate from the common start time; each is stamped
    with its *scheduled* send time.  Every loop sends what is due (up to
    ``MAX_CLAIM`` records per claim_batch/publish_batch); a generator that
    falls behind sends late, and the delay counts in the latency.  Mode
    ``deadline`` stops 250 ms after the end of the schedule (what was not sent by then
    is reported as ``unsent``: the engine did not take it), ``all`` sends
    every scheduled command however long it takes (warm-up).  The workload is
    a block of at most ``BLOCK`` rows, repeated.  Prints ``ready``, reads the
    start time (time.time() seconds) from stdin, prints a JSON summary with
    the CPU time of the sending loop (/proc/self/stat).
    """
    import numpy as np
    from ringbuf import Ring
    ring_name, rate, seconds, seed, producer_id, mode = argv[:6]
    quantum_s = float(argv[6]) / 1e6 if len(argv) > 6 else 0.0
    rate, seconds, seed = float(rate), float(seconds), int(seed)
    n = int(rate * seconds)
    block = max(1, min(n, BLOCK))
    arr, target_row = _build_commands(block, seed, 1)
    arr["producer_id"] = int(producer_id)
    cancel_rows = np.nonzero(target_row >= 0)[0]
    row_seq = np.zeros(block, dtype=np.int64)
    raw = arr.view(np.uint8).reshape(block, 64)
    ring = Ring.attach(ring_name)
    producer = ring.producer(producer_id=int(producer_id))
    max_batch = min(MAX_CLAIM, ring.capacity // 4)
    period_ns = 1e9 / rate
    print("ready", flush=True)            # built and attached: wait for the common start time
    t0 = int(float(sys.stdin.readline()) * 1e9)
    while time.time_ns() < t0:
        time.sleep(0.0005)
    cpu0 = _proc_cpu_seconds()
    wall0 = time.monotonic()
    end_ns = t0 + int(seconds * 1e9) + DEADLINE_GRACE_NS
    sent = 0
    late_batches = 0
    batches = 0
    while sent < n:
        now = time.time_ns()
        if mode == "deadline" and now >= end_ns:
            break
        due = min(n, int((now - t0) / period_ns) + 1)
        if due <= sent:
            # nothing due: sleep until the next command is due, but at least the send
            # quantum (a batch then holds what came due meanwhile; the delay counts in the
            # latency, which is measured from the schedule), at most 0.5 ms
            time.sleep(min(0.0005, max(quantum_s, (t0 + sent * period_ns - now) / 1e9)))
            continue
        row = sent % block
        m = min(due - sent, max_batch, block - row)   # a batch never crosses the block's end
        first, views = producer.claim_batch(m)
        end = row + m
        row_seq[row:end] = np.arange(first, first + m, dtype=np.int64)
        lo, hi = np.searchsorted(cancel_rows, [row, end])
        if hi > lo:
            rows = cancel_rows[lo:hi]
            arr["order_id"][rows] = row_seq[target_row[rows]]   # targets: earlier rows
        arr["timestamp_ns"][row:end] = (t0 + np.arange(sent, sent + m, dtype=np.float64)
                                        * period_ns).astype(np.int64)
        src = raw[row:end].reshape(-1)
        offset = 0
        for view in views:
            length = len(view)
            view[:] = src[offset:offset + length].data
            offset += length
        producer.publish_batch(first, m)
        batches += 1
        if due - sent > max_batch:
            late_batches += 1
        sent += m
    cpu = _proc_cpu_seconds() - cpu0
    wall = time.monotonic() - wall0
    producer.close()
    ring.close()
    print(json.dumps({"sent": sent, "scheduled": n, "late_batches": late_batches,
                      "batches": batches, "cpu_seconds": cpu, "wall_seconds": wall}), flush=True)
    return 0


SEND_QUANTUM_US = [0.0]     # --send-quantum-us


def _start_producers(ring_name, rate, seconds, producers, mode, env=None, seed_base=0):
    procs = []
    for k in range(producers):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "perf.e2e_bench", "--producer", ring_name,
             str(rate / producers), str(seconds), str(1 + k + seed_base), str(100 + k), mode,
             str(SEND_QUANTUM_US[0])],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env))
    for p in procs:
        line = p.stdout.readline().decode().strip()
        if line != "ready":
            raise RuntimeError("load generator failed to start: %r" % line)
    return procs


def _go(procs, delay=0.2):
    start_at = time.time() + delay
    for p in procs:
        p.stdin.write(("%r\n" % start_at).encode())
        p.stdin.flush()
    return start_at


def _finish_producers(procs, timeout):
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=timeout)
        out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    return out


def generator_ceiling(rate=4e6, seconds=2.0, producers=1):
    """How fast the load generator can offer: into a scratch ring whose only consumer commits.

    Topology: ``producers`` generator processes -> [ring 65536] -> a drain
    thread of this process (poll + commit, no decoding).  Returns the offered
    rate (commands sent / wall time of the sending loop, summed).
    """
    from ringbuf import Ring
    name = "rm-e2egen-%d" % os.getpid()
    ring = Ring.create(name, 1 << 16, consumers={"drain": []})
    stop = []
    try:
        consumer = ring.consumer("drain")

        def drain():
            while not stop:
                b = consumer.poll(1 << 16, timeout=0.05)
                if b is not None:
                    consumer.commit(b.last_seq)
        t = threading.Thread(target=drain, daemon=True)
        t.start()
        procs = _start_producers(name, rate, seconds, producers, "deadline")
        _go(procs)
        results = _finish_producers(procs, seconds * 10 + 60)
        stop.append(1)
        t.join(5)
        sent = sum(r["sent"] for r in results)
        wall = max(r["wall_seconds"] for r in results)
        return {"offered_rate": rate, "producers": producers, "sent": sent,
                "rate": sent / wall if wall else 0.0,
                "cpu_us_per_command": 1e6 * sum(r["cpu_seconds"] for r in results) / max(1, sent)}
    finally:
        stop.append(1)
        ring.unlink()
        ring.close()


# ---------------------------------------------------------------- the matcher alone
def matcher_alone_main(argv):
    """The ceiling: Matcher.process over the generator's records, no rings (child process).

    Same workload (generate_commands, seed 1), same funding as ``_fund``,
    same record access as engine/matcher_process (cffi ``rm_command_t *``
    into a buffer of 64-byte records) and the same batching (the event
    buffer is taken every ``max_batch`` commands).  Runs on the matcher's
    interpreter; prints JSON: commands/s of each pass (fresh matcher each
    pass, after one untimed warm-up pass).
    """
    import numpy as np
    from engine.commands import Command
    from engine.events import BytesSink
    from engine.matcher import Matcher
    from engine.runtime import RuntimeConfig
    from ringbuf._native import ffi
    from ringbuf.records import CommandKind
    config_path, commands, passes, max_batch = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    exchange = RuntimeConfig.load(config_path).exchange()
    spec = exchange.symbols[1]
    arr, target_row = _build_commands(commands, 1, 1)
    arr["producer_id"] = 100
    deposits = []
    for account in range(1, ACCOUNTS + 1):
        deposits.append(Command.deposit(account, spec.quote_asset, 10 ** 13))
        deposits.append(Command.deposit(account, spec.base_asset, 10 ** 14))
    first = len(deposits) + 1
    cancels = target_row >= 0
    arr["order_id"][cancels] = first + target_row[cancels]
    arr["timestamp_ns"] = 1700000000 * 10 ** 9 + np.arange(commands, dtype=np.int64) * 1000
    assert int(arr["kind"][0]) == int(CommandKind.NEW_ORDER)
    buf = bytearray(arr.tobytes())
    records = ffi.cast("rm_command_t *", ffi.from_buffer(buf))

    def one_pass(count=None):
        sink = BytesSink()
        matcher = Matcher(exchange, sink)
        for seq, cmd in enumerate(deposits, 1):
            matcher.process(seq, cmd)
        sink.take()
        process, take_view = matcher.process, sink.take_view
        events = 0
        t0 = time.perf_counter()
        for start in range(0, commands, max_batch):
            stop = min(commands, start + max_batch)
            for i in range(start, stop):
                process(first + i, records[i])
            view = take_view()
            events += len(view)
            if count is not None:
                count(view)
        return time.perf_counter() - t0, events // 128

    from ringbuf.records import EVENT_DTYPE, EventKind
    outcomes = {}

    def count(view):
        ev = np.frombuffer(view, dtype=EVENT_DTYPE)
        for kind in (EventKind.ACCEPTED, EventKind.REJECTED):
            reasons = ev["reason"][ev["kind"] == int(kind)]
            for r, k in zip(*np.unique(reasons, return_counts=True)):
                key = "%s/%d" % (kind.name, int(r))
                outcomes[key] = outcomes.get(key, 0) + int(k)
    one_pass(count)                         # warm-up (PyPy's JIT), counts outcomes by reason
    rates, events = [], 0
    for _ in range(passes):
        seconds, events = one_pass()
        rates.append(commands / seconds)
    impl = sys.implementation.name
    print(json.dumps({"interpreter": "%s %s" % (impl, ".".join(map(str, sys.version_info[:3]))),
                      "commands": commands, "rates": rates, "events_per_pass": events,
                      "outcomes_by_reason": outcomes}))
    return 0


def matcher_alone(python, config_path, commands, passes, max_batch=1024):
    out = subprocess.run([python, "-m", "perf.e2e_bench", "--matcher-alone", config_path,
                          str(commands), str(passes), str(max_batch)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1800)
    if out.returncode:
        raise RuntimeError("matcher-alone run failed:\n" + out.stderr.decode()[-3000:])
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


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
    return _proc_cpu_seconds(pid)


# ---------------------------------------------------------------- engine
class Engine(object):
    def __init__(self, workdir, interpreter, fsync, port, env=None, overrides=None):
        self.env = env
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
        for section, values in (overrides or {}).items():      # --variant settings
            raw.setdefault(section, {}).update(values)
        with open(self.config, "w") as f:
            json.dump(raw, f)
        self.proc = None
        self.lines = []

    def start(self, timeout=120):
        exe = os.path.join(os.path.dirname(sys.executable), "ringmatch")
        self.proc = subprocess.Popen([exe, "run", "--config", self.config], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=self.env)
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


def engine_pids(engine):
    """{process name: pid} of the engine: supervisor and every child it reports."""
    pids = dict(engine.pids())
    if engine.proc is not None:
        pids["supervisor"] = engine.proc.pid
    return pids


def idle_cpu(engine, seconds):
    """CPU seconds per second (share of one core) each engine process used while idle.

    From the threads' schedstat (ns) when available, else /proc/<pid>/stat ticks.
    """
    pids = engine_pids(engine)
    ns0 = {name: _proc_cpu_ns_precise(pid) for name, pid in pids.items()}
    cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    out = {}
    for name, pid in pids.items():
        ns1 = _proc_cpu_ns_precise(pid)
        if ns0[name] is not None and ns1 is not None:
            out[name] = (ns1 - ns0[name]) / 1e9 / wall
        else:
            out[name] = (_cpu_seconds(pid) - cpu0[name]) / wall
    return out


def _drain(engine, timeout=120):
    from ringbuf import Ring
    deadline = time.monotonic() + timeout
    with Ring.attach("rm-%s-out" % engine.shard) as out_ring, \
            Ring.attach("rm-%s-in" % engine.shard) as in_ring:
        while time.monotonic() < deadline:
            if in_ring.consumer_sequence("matcher") >= in_ring.cursor and \
                    out_ring.consumer_sequence("bench") >= out_ring.cursor:
                return True
            time.sleep(0.02)
    return False


def run_step(engine, timer, rate, seconds, producers, mode="deadline", env=None):
    """One step: ``producers`` generators offer ``rate`` commands/s for ``seconds``.

    Returns received rate, latency percentiles (from the scheduled send time),
    CPU seconds and CPU microseconds per command of every process (engine
    processes from /proc/<pid>/stat before/after, generators from their own
    /proc/self/stat around the sending loop, "bench" = this process, which
    runs the outcome timer), and whether the step passed (everything
    scheduled was sent and answered, >= 95% of the rate received, p99 <= 10 ms).
    """
    procs = _start_producers("rm-%s-in" % engine.shard, rate, seconds, producers, mode,
                             env=env, seed_base=int(rate) % 1000)
    pids = engine_pids(engine)
    pids["bench"] = os.getpid()
    cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    start_at = _go(procs)
    gen = _finish_producers(procs, seconds * 20 + 300)
    sent = sum(g["sent"] for g in gen)
    scheduled = sum(g["scheduled"] for g in gen)
    elapsed_send = time.time() - start_at
    drained = _drain(engine)        # every outcome received (or the pipeline is stuck)
    lat, outcomes, events, last_receipt_ns = timer.take()
    span = max(1e-9, last_receipt_ns / 1e9 - start_at)
    cpu = {name: _cpu_seconds(pid) - cpu0.get(name, 0.0) for name, pid in pids.items()}
    cpu["producers"] = sum(g["cpu_seconds"] for g in gen)
    per_cmd = {name: (1e6 * v / outcomes if outcomes else None) for name, v in cpu.items()}
    engine_names = [n for n in cpu if n not in ("producers", "bench")]
    per_cmd["engine total"] = (1e6 * sum(cpu[n] for n in engine_names) / outcomes
                               if outcomes else None)
    pct, curve = _hdr(lat)
    received_rate = outcomes / span if outcomes else 0.0
    return {"target_rate": rate, "seconds": seconds, "sent": sent, "scheduled": scheduled,
            "unsent": scheduled - sent, "outcomes": outcomes, "drained": drained,
            "events": events, "received_rate": received_rate, "send_elapsed": elapsed_send,
            "late_batches": sum(g["late_batches"] for g in gen),
            "batches": sum(g["batches"] for g in gen),
            "latency_ns": pct, "curve": curve,
            "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_us_per_command": {k: (round(v, 2) if v is not None else None)
                                   for k, v in per_cmd.items()},
            "passed": bool(drained and sent == scheduled and outcomes >= sent
                           and received_rate >= 0.95 * rate and pct["p99"] <= P99_LIMIT_NS)}


def _median(values):
    import statistics
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(passes):
    """Median / min / max over the passes of one offered rate."""
    rec = [p["received_rate"] for p in passes]
    out = {"target_rate": passes[0]["target_rate"], "passes": len(passes),
           "passed": sum(1 for p in passes if p["passed"]),
           "received_rate": {"median": _median(rec), "min": min(rec), "max": max(rec)},
           "unsent": [p["unsent"] for p in passes],
           "loadavg": [p.get("loadavg") for p in passes]}
    for key in ("p50", "p99", "p99.9", "max"):
        vals = [p["latency_ns"][key] for p in passes]
        out[key + "_ms"] = {"median": _median(vals) / 1e6, "min": min(vals) / 1e6,
                            "max": max(vals) / 1e6}
    names = sorted(set(k for p in passes for k in p["cpu_us_per_command"]))
    out["cpu_us_per_command"] = {n: _median([p["cpu_us_per_command"].get(n) for p in passes])
                                 for n in names}
    return out


def _fmt_rate(v):
    return "-" if v is None else format(int(round(v)), ",")


def _fmt_us(v):
    return "-" if v is None else ("%.1f" % v if v < 100 else "%.0f" % v)


CPU_COLUMNS = ("producers", "journaler", "replicator", "matcher", "publisher", "supervisor",
               "engine total", "bench")


def _markdown(report):
    L = ["# End to end: producers -> journal (fsync) -> matcher -> output ring -> publisher", ""]
    st = report["settings"]
    L.append("Command: `%s`" % st["command"])
    L.append("")
    for k in sorted(st):
        if k != "command":
            L.append("- %s: %s" % (k, st[k]))
    env = report["environment"]
    L.append("- bench interpreter: %s; host %s, %s CPUs; load average at start %s, at end %s"
             % (env["interpreter"], env["host"], env["cpus"], report["loadavg_start"],
                env["loadavg_at_end"]))
    L.append("- **noisy**: other engineers' test runs shared this 2-core machine during the "
             "run (see the load averages per step); treat differences under ~20% as noise.")
    g = report.get("generator")
    if g:
        L.append("- load generator alone (%d process, into a ring drained by commit only): "
                 "%s commands/s offered (asked %s/s), %.2f us CPU per command"
                 % (g["producers"], _fmt_rate(g["rate"]), _fmt_rate(g["offered_rate"]),
                    g["cpu_us_per_command"]))
    m = report["matcher_alone"]
    L.append("- matcher alone (the ceiling; %s, %s commands x %d passes after a warm-up, "
             "same workload, cffi records, batches of 1024): median %s/s (min %s, max %s)"
             % (m["interpreter"], format(m["commands"], ","), len(m["rates"]),
                _fmt_rate(m["median"]), _fmt_rate(min(m["rates"])), _fmt_rate(max(m["rates"]))))
    L.append("")
    L.append("## Summary")
    L.append("")
    L.append("| producer wait | matcher interpreter | saturation (max received/s) | saturation / "
             "matcher alone | highest rate passing (p99 <= 10 ms, >= 95% received) | "
             "sustained / matcher alone | idle engine CPU (% of a core) |")
    L.append("|---|---|---:|---:|---:|---:|---:|")
    for c in report["configs"]:
        L.append("| %s | %s | %s | %.1f%% | %s | %.1f%% | %.2f%% |" % (
            c["producer_wait"], c["matcher_interpreter"], _fmt_rate(c["saturation_rate"]),
            100.0 * c["saturation_ratio"], _fmt_rate(c["sustained_rate"]) if c["sustained_rate"]
            else "none", 100.0 * c["sustained_ratio"], 100.0 * sum(c["idle_cpu"].values())))
    L.append("")
    if len(report["configs"]) > 1:
        L.append("## Side by side (medians over passes)")
        L.append("")
        names = [c["producer_wait"] for c in report["configs"]]
        L.append("| offered/s | " + " | ".join(
            "received/s, p99 ms, engine us/cmd, generators us/cmd: %s" % n for n in names) + " |")
        L.append("|---:|" + "---|" * len(names))
        rates = sorted(set(r["target_rate"] for c in report["configs"] for r in c["rates"]))
        for rate in rates:
            cells = []
            for c in report["configs"]:
                r = [x for x in c["rates"] if x["target_rate"] == rate]
                if not r:
                    cells.append("-")
                    continue
                r = r[0]
                cpu = r["cpu_us_per_command"]
                cells.append("%s, %.1f, %s, %s" % (
                    _fmt_rate(r["received_rate"]["median"]), r["p99_ms"]["median"],
                    _fmt_us(cpu.get("engine total")), _fmt_us(cpu.get("producers"))))
            L.append("| %s | %s |" % (_fmt_rate(rate), " | ".join(cells)))
        L.append("")
    for c in report["configs"]:
        L.append("## Producer wait: %s" % c["producer_wait"])
        L.append("")
        if c.get("variant"):
            L.append("Engine settings: %s" % ", ".join(
                "%s.%s=%s" % (sec, k, v) for sec, vals in sorted(c["variant"].items())
                for k, v in sorted(vals.items())))
            L.append("")
        L.append("Idle engine (%.0f s, nothing offered), share of one core: %s (total %.2f%%)" % (
            report["settings"]["idle seconds"], ", ".join(
                "%s %.2f%%" % (k, 100 * v) for k, v in sorted(c["idle_cpu"].items())),
            100 * sum(c["idle_cpu"].values())))
        L.append("")
        L.append("Latency = outcome received by the gated bench consumer - the command's "
                 "scheduled send time (no coordinated omission); medians over passes "
                 "(min-max in brackets for the received rate).")
        L.append("")
        L.append("| offered/s | received/s (min-max) | pass | p50 ms | p99 ms | p99.9 ms | max ms "
                 "| unsent | load avg |")
        L.append("|---:|---:|---|---:|---:|---:|---:|---:|---|")
        for r in c["rates"]:
            rr = r["received_rate"]
            L.append("| %s | %s (%s-%s) | %d/%d | %.2f | %.2f | %.2f | %.1f | %s | %s |" % (
                _fmt_rate(r["target_rate"]), _fmt_rate(rr["median"]), _fmt_rate(rr["min"]),
                _fmt_rate(rr["max"]), r["passed"], r["passes"], r["p50_ms"]["median"],
                r["p99_ms"]["median"], r["p99.9_ms"]["median"], r["max_ms"]["median"],
                "/".join(str(u) for u in r["unsent"]),
                " ".join("%.1f" % la[0] for la in r["loadavg"] if la)))
        L.append("")
        L.append("CPU microseconds per command answered (median over passes; producers = the "
                 "load generators' sending loops, bench = this process's outcome timer):")
        L.append("")
        cols = [col for col in CPU_COLUMNS
                if any(r["cpu_us_per_command"].get(col) is not None for r in c["rates"])]
        L.append("| offered/s | " + " | ".join(cols) + " |")
        L.append("|---:|" + "---:|" * len(cols))
        for r in c["rates"]:
            L.append("| %s | %s |" % (_fmt_rate(r["target_rate"]), " | ".join(
                _fmt_us(r["cpu_us_per_command"].get(col)) for col in cols)))
        L.append("")
    return "\n".join(L)


def _plot(report, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    ceiling = report["matcher_alone"]["median"]
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for k, c in enumerate(report["configs"]):
        colour = colours[k % len(colours)]
        xs = [r["target_rate"] for r in c["rates"]]
        med = [r["received_rate"]["median"] for r in c["rates"]]
        lo = [m - r["received_rate"]["min"] for m, r in zip(med, c["rates"])]
        hi = [r["received_rate"]["max"] - m for m, r in zip(med, c["rates"])]
        axes[0].errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, color=colour,
                         label="producer wait %s" % c["producer_wait"])
        axes[1].plot(xs, [r["p99_ms"]["median"] for r in c["rates"]], marker="o", color=colour,
                     label="p99, %s" % c["producer_wait"])
        axes[1].plot(xs, [r["p50_ms"]["median"] for r in c["rates"]], marker=".", linestyle=":",
                     color=colour, label="p50, %s" % c["producer_wait"])
        axes[2].plot(xs, [r["cpu_us_per_command"].get("engine total") for r in c["rates"]],
                     marker="o", color=colour, label="engine, %s" % c["producer_wait"])
        axes[2].plot(xs, [r["cpu_us_per_command"].get("producers") for r in c["rates"]],
                     marker=".", linestyle=":", color=colour,
                     label="generators, %s" % c["producer_wait"])
    axes[0].axhline(ceiling, color="green", linestyle="--", label="matcher alone %s/s"
                    % _fmt_rate(ceiling))
    axes[0].plot([1e3, 1e7], [1e3, 1e7], color="grey", linewidth=0.5, label="received = offered")
    axes[0].set_ylabel("received commands/s (median, min-max)")
    axes[1].axhline(10, color="red", linestyle="--", linewidth=1, label="10 ms")
    axes[1].set_ylabel("latency ms (scheduled send -> outcome)")
    axes[2].set_ylabel("CPU us per command (engine: all its processes)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered commands/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    lo_x = min(r["target_rate"] for c in report["configs"] for r in c["rates"])
    hi_x = max(r["target_rate"] for c in report["configs"] for r in c["rates"])
    axes[0].set_xlim(lo_x / 1.5, hi_x * 1.5)
    axes[0].set_ylim(lo_x / 3, max(ceiling, hi_x) * 2)
    fig.suptitle("ringmatch end to end (%s CPUs, load avg at end %s): noisy shared machine"
                 % (report["environment"]["cpus"], " ".join(
                     "%.1f" % x for x in report["environment"]["loadavg_at_end"])))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_variant(spec):
    """``LABEL:SECTION.KEY=VALUE,...`` -> (label, {section: {key: value}}); values are JSON
    when they parse as JSON (numbers), else strings.  Section ``env`` sets environment
    variables of the engine and the generators (``env.RINGMATCH_CONSUMER_WAIT=backoff:2000:10000``).

    >>> parse_variant("gc300:journal.group_commit_us=300,publisher.feed_linger_ms=8")
    ('gc300', {'journal': {'group_commit_us': 300}, 'publisher': {'feed_linger_ms': 8}})
    """
    label, _, body = spec.partition(":")
    out = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not section or not name or not _:
            raise SystemExit("bad --variant item %r (SECTION.KEY=VALUE)" % (item,))
        try:
            value = json.loads(value)
        except ValueError:
            pass
        out.setdefault(section, {})[name] = value
    return label, out


def run_config(args, workdir, wait_name, rates, variant=None):
    """Start an engine with one producer-wait setting (and ``variant`` = (label, engine
    config overrides)), measure idle CPU and every rate."""
    label, overrides = variant or ("", {})
    overrides = dict(overrides)
    shown = dict(overrides)
    env = dict(os.environ)
    env.pop("RINGMATCH_PRODUCER_WAIT", None)
    if wait_name != "default":
        env["RINGMATCH_PRODUCER_WAIT"] = wait_name
    env.update({k: str(v) for k, v in overrides.pop("env", {}).items()})   # env.NAME=VALUE
    if args.replication == "none":
        engine = Engine(workdir, args.interpreter, args.fsync, args.port, env=env,
                        overrides=overrides).start()
    else:
        # a standby on this host, as perf/replication_bench starts it (it inherits os.environ)
        from perf.replication_bench import _e2e_engine, _wait_connected
        saved = os.environ.get("RINGMATCH_PRODUCER_WAIT")
        os.environ.pop("RINGMATCH_PRODUCER_WAIT", None)
        if wait_name != "default":
            os.environ["RINGMATCH_PRODUCER_WAIT"] = wait_name
        try:
            engine = _e2e_engine(workdir, args.replication, args.interpreter, args.port)
        finally:
            os.environ.pop("RINGMATCH_PRODUCER_WAIT", None)
            if saved is not None:
                os.environ["RINGMATCH_PRODUCER_WAIT"] = saved
        engine.env = env
        try:
            time.sleep(1.0)
            engine.start()
            _wait_connected(engine)
        except BaseException:
            engine.stop()
            engine.stop_standby()
            raise
    timer = None
    if label:
        wait_name = "%s / %s" % (wait_name, label)
    out = {"producer_wait": wait_name, "replication": args.replication, "steps": [],
           "variant": shown}
    try:
        _fund(engine)
        timer = OutcomeTimer(engine.shard)
        timer.start()
        if args.warmup:
            warm = run_step(engine, timer, 100000.0, args.warmup / 100000.0, args.producers,
                            mode="all", env=env)
            print("[%s] warm-up: %d commands, received %.0f/s (not part of the results)"
                  % (wait_name, warm["sent"], warm["received_rate"]), flush=True)
        timer.take()
        time.sleep(1.0)
        out["idle_cpu"] = idle_cpu(engine, args.idle_seconds)
        print("[%s] idle engine CPU (share of a core): %s" % (
            wait_name, {k: round(v, 4) for k, v in out["idle_cpu"].items()}), flush=True)
        for rate in rates:
            passes = []
            for _ in range(args.passes):
                step = run_step(engine, timer, rate, args.seconds, args.producers, env=env)
                step["loadavg"] = os.getloadavg()
                passes.append(step)
                lat = step["latency_ns"]
                print("[%s] rate %9s/s: received %9.0f/s  p50 %7.2f ms  p99 %8.2f ms  "
                      "max %8.1f ms  %s  unsent %d  us/cmd %s" % (
                          wait_name, _fmt_rate(rate), step["received_rate"], lat["p50"] / 1e6,
                          lat["p99"] / 1e6, lat["max"] / 1e6,
                          "PASS" if step["passed"] else "fail", step["unsent"],
                          step["cpu_us_per_command"]), flush=True)
            out["steps"].extend(passes)
        out["matcher_interpreter"] = engine.matcher_interpreter()
    finally:
        if timer is not None:
            timer.close()
        engine.stop()
        if getattr(engine, "standby", None) is not None:
            engine.stop_standby()
    by_rate = {}
    for st in out["steps"]:
        by_rate.setdefault(st["target_rate"], []).append(st)
    out["rates"] = [summarize(by_rate[r]) for r in sorted(by_rate)]
    out["saturation_rate"] = max(r["received_rate"]["median"] for r in out["rates"])
    passing = [r["target_rate"] for r in out["rates"] if 2 * r["passed"] > r["passes"]]
    out["sustained_rate"] = max(passing) if passing else 0
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--producer":
        if len(argv) == 6:                      # older callers: shard name, no mode
            argv = [argv[0], "rm-%s-in" % argv[1]] + argv[2:] + ["deadline"]
        return producer_main(argv[1:])
    if argv and argv[0] == "--matcher-alone":
        return matcher_alone_main(argv[1:])
    if argv and argv[0] == "--render":          # --render BASE: md/png again from BASE.json
        with open(argv[1] + ".json") as f:
            write_report(json.load(f), argv[1])
        return 0
    parser = argparse.ArgumentParser(prog="python -m perf.e2e_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="5000,10000,20000,50000,100000,2000000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--interpreter", default="auto", help="matcher interpreter")
    parser.add_argument("--fsync", default="batch")
    parser.add_argument("--port", type=int, default=18181)
    parser.add_argument("--stem", default="e2e_" + time.strftime("%Y-%m-%d", time.gmtime()),
                        help="report file name under perf/results (an absolute path is used as is)")
    parser.add_argument("--warmup", type=int, default=200000,
                        help="commands sent (offered at 100k/s, all of them, not measured) "
                             "before the sweep: PyPy's JIT needs a few hundred thousand")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--matcher-commands", type=int, default=300000)
    parser.add_argument("--matcher-passes", type=int, default=3)
    parser.add_argument("--generator-check", type=float, default=4e6,
                        help="offered rate of the load-generator-alone check (0: skip)")
    parser.add_argument("--producer-wait", default="default",
                        help="comma list of RINGMATCH_PRODUCER_WAIT settings to compare "
                             "(default = the ring's default; sleep-poll = the wait before "
                             "issue 13)")
    parser.add_argument("--send-quantum-us", type=float, default=250.0,
                        help="a load generator with nothing due sleeps at least this long "
                             "(its batches hold what came due meanwhile: fewer, larger "
                             "batches and less generator CPU; the wait counts in the latency)")
    parser.add_argument("--variant", action="append", default=[],
                        help="LABEL:SECTION.KEY=VALUE,... engine settings to compare "
                             "(repeatable; each runs the whole sweep on its own engine)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the list of variants this many times, alternating")
    parser.add_argument("--replication", default="none", choices=("none", "sync", "async"),
                        help="attach a standby on this host (the replicator's CPU is then "
                             "measured too); fsync is then per batch on both")
    args = parser.parse_args(argv)
    SEND_QUANTUM_US[0] = args.send_quantum_us
    from perf.harness import environment
    from engine.supervisor import find_matcher_interpreter
    rates = [float(r) for r in args.rates.split(",")]
    load_start = os.getloadavg()
    report = {"loadavg_start": load_start, "configs": []}
    if args.generator_check:
        report["generator"] = generator_ceiling(args.generator_check)
        print("load generator alone: %s commands/s (%.2f us CPU each)" % (
            _fmt_rate(report["generator"]["rate"]), report["generator"]["cpu_us_per_command"]),
            flush=True)
    with tempfile.TemporaryDirectory(prefix="rm-e2e-") as workdir:
        python, interp_name = find_matcher_interpreter(args.interpreter)
        cfg = Engine(workdir, args.interpreter, args.fsync, args.port).config
        m = matcher_alone(python, cfg, args.matcher_commands, args.matcher_passes)
        m["median"] = _median(m["rates"])
        m["python"] = python
        report["matcher_alone"] = m
        print("matcher alone (%s): median %s commands/s %s" % (
            m["interpreter"], _fmt_rate(m["median"]), [int(r) for r in m["rates"]]), flush=True)
    variants = [parse_variant(v) for v in args.variant] or [None]
    for _round in range(args.rounds):
        for wait_name in args.producer_wait.split(","):
            for variant in variants:
                with tempfile.TemporaryDirectory(prefix="rm-e2e-") as workdir:
                    c = run_config(args, workdir, wait_name, rates, variant)
                c["saturation_ratio"] = c["saturation_rate"] / m["median"]
                c["sustained_ratio"] = c["sustained_rate"] / m["median"]
                report["configs"].append(c)
    env = environment()
    report["environment"] = env
    report["settings"] = {
        "command": "python -m perf.e2e_bench " + " ".join(argv),
        "fsync": args.fsync, "producers (load generators)": args.producers,
        "generator send quantum (us)": args.send_quantum_us,
        "replication": args.replication,
        "code": _git_revision(),
        "seconds per step": args.seconds, "passes per rate": args.passes,
        "idle seconds": args.idle_seconds,
        "workload": "perf.workload.generate_commands (64%% limit, 25%% cancel, 4%% IOC, "
                    "2%% FOK, 5%% market), BTC-USD, %d funded accounts, %d-row blocks "
                    "repeated" % (ACCOUNTS, BLOCK),
        "warm-up commands (not measured)": args.warmup,
        "rings": "input 65536 x 64 B, output 262144 x 128 B; claims of up to %d records"
                 % MAX_CLAIM}
    write_report(report, os.path.join(RESULTS, args.stem))
    return 0


def _git_revision():
    """``<commit>`` of the checkout, ``+ local changes`` when files differ from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=10).stdout.decode().strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               timeout=10).stdout.strip()
        return rev + (" + local changes (other engineers' work in progress)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_report(report, base):
    """``base``.json, .md and .png (when matplotlib is installed); prints the markdown."""
    os.makedirs(os.path.dirname(base), exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1, sort_keys=True, default=str)
    text = _markdown(report)
    png = _plot(report, base + ".png")
    if png:
        text += "\n![plot](%s)\n" % os.path.basename(png)
    notes = report.get("notes")
    if notes:
        text += "\n## Notes\n\n" + "\n".join(notes) + "\n"
    with open(base + ".md", "w") as f:
        f.write(text)
    print(text)


def _suite(argv):
    return main(argv)


SUITES = {"e2e_sweep": _suite}

if __name__ == "__main__":
    sys.exit(main())
