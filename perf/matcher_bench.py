"""Matcher throughput and latency on a one-symbol workload, CPython vs PyPy vs cython-orderbook.

Topology (no rings: the matcher's business logic alone)::

    workload CSV --> [(seq, Command)] --> Matcher.process --> BytesSink (128-byte records)
                     deposits first,                          take() every 4096 commands
                     not timed                                (as engine/matcher_process does)

* Workload: ``perf/workload.py`` (CSV ``side,type,price,qty,order_id,cancel_target_id``),
  1,000,000 commands by default, seed 1, BTC-USD of ``engine.config.DEFAULT_CONFIG``
  (maker -1 bps rebate, taker 5 bps: fees are charged on every fill), orders round-robin
  over 1,000 accounts each funded with USD and BTC by DEPOSIT commands before timing.
* Throughput: one warm-up pass, then ``--passes`` timed passes, each on a fresh matcher;
  median/min/max commands/s.
* Latency: one extra pass timing each ``process`` call with ``time.perf_counter_ns``
  (the clock's own cost is measured and reported), recorded in an HdrHistogram.
* Fingerprint: counts of TRADE events and of user cancels that succeeded (CANCELLED,
  reason CANCELLED_BY_USER), plus the SHA-256 of every event byte.  The run fails if
  CPython and PyPy disagree on any of them (the matcher must be deterministic).
* Baseline: the PyPI package ``cython-orderbook`` (what a user might pick instead), same
  rows, same run, CPython only (it needs Python >= 3.10; PyPy here is 3.9).  It has no
  accounts, fees, IOC/FOK or events: IOC = limit then cancel of the rest; FOK = a
  liquidity check over its price levels (summing the queues: its level totals are not
  reduced when a maker fills completely), then a limit-then-cancel.  It has no self-trade
  prevention, so its trade count may differ from ours by the self-trades our matcher
  prevented (reported).
* ``--account-per-order``: the same rows replayed with one account per order (each funded
  with ``PER_ORDER_FUNDING`` of both assets, untimed), so self-trade prevention cannot
  fire and the trade and successful-cancel counts of the timed run must equal
  cython-orderbook's exactly (the run fails otherwise): the counts are comparable with
  any engine without accounts.
* Spread: ``(max - min) / median`` of the timed passes' commands/s, per run.

The PyPy pass runs as a subprocess: ``.venv-pypy/bin/python -m perf.matcher_bench --worker``.
Throughput passes go through ``perf.harness.measure``; latencies are written raw by each
interpreter and put into ``perf.harness.Histogram`` (HdrHistogram) by the parent.

* Implementations (``--impls``, default both): ``reference`` = ``engine.matcher.Matcher``,
  ``soa`` = ``engine.soa_matcher.SoaMatcher`` (struct-of-arrays state), ``file:PATH``
  = the ``SoaMatcher`` of a module file (an older version: before/after in one run).  On each
  interpreter every implementation gets its warm-up/fingerprint pass, then the timed
  passes are interleaved (reference, soa, reference, soa, ...) so both see the same
  noise from other work on the host; every run (interpreter x implementation) must give
  the same fingerprint.  GC time per pass: PyPy ``gc.hooks`` (minor collections and
  major collection steps), CPython ``gc.callbacks``.  Load average recorded at the start
  and the end.

Usage::

    python -m perf.matcher_bench [--commands 1000000] [--passes 3] [--no-pypy] [--profile]
        [--impls reference,soa]
"""
import argparse
import array
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "perf", "results")
PYPY = os.path.join(ROOT, ".venv-pypy", "bin", "python")

SYMBOL_ID = 1            # BTC-USD in DEFAULT_CONFIG
ACCOUNTS = 1000
FUNDING = 10 ** 15       # minor units of each asset per account
#: per account with --account-per-order: 10**12 x ~750k accounts keeps supply < 2**62
PER_ORDER_FUNDING = 10 ** 12
BATCH = 4096

KIND_TRADE = 7
KIND_CANCELLED = 4
KIND_REJECTED = 2
#: rejects that would mean the benchmark is mis-set (funding, accounts, config)
BAD_REJECTS = (115, 117, 200, 101, 105, 106, 107, 108, 109, 110)
REASON_CANCELLED_BY_USER = 500
REASON_CANCELLED_STP = 503


def _interpreter():
    impl = sys.implementation.name
    return "%s %s" % (impl, platform.python_version())


def deposits(config, accounts=ACCOUNTS, amount=FUNDING):
    """Deposit commands funding accounts 1..accounts in both assets of the symbol."""
    from engine.commands import Command
    spec = config.symbols[SYMBOL_ID]
    out = []
    for account in range(1, accounts + 1):
        for asset in (spec.base_asset, spec.quote_asset):
            out.append(Command.deposit(account, asset, amount))
    return out


def build(rows, config, per_order=False):
    """Return (deposit [(seq, cmd)], order [(seq, cmd)]).

    ``per_order``: one account per order (no self-trade prevention possible), each
    funded with ``PER_ORDER_FUNDING``; else ``ACCOUNTS`` accounts round-robin.
    """
    from perf.workload import to_commands
    if per_order:
        accounts = max(1, sum(1 for r in rows if r[1] != "C"))
        deps = list(enumerate(deposits(config, accounts, PER_ORDER_FUNDING), 1))
    else:
        accounts = ACCOUNTS
        deps = list(enumerate(deposits(config), 1))
    cmds = to_commands(rows, SYMBOL_ID, accounts, len(deps) + 1)
    return deps, cmds


IMPLS = ("reference", "soa")


_FILE_CLASSES = {}


def _file_part(impl):
    """An implementation name usable in a file name (``file:/a/b.py`` -> ``file__a_b.py``)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in impl)


def matcher_class(impl):
    """The matcher class of an implementation name (see ``--impls``).

    ``file:PATH``: the ``SoaMatcher`` class of the module file PATH (e.g. an older
    version, ``git show REV:engine/soa_matcher.py > /tmp/soa_REV.py``), for before/after
    figures in one run.
    """
    if impl.startswith("file:"):
        cls = _FILE_CLASSES.get(impl)
        if cls is None:
            import importlib.util
            path = impl[len("file:"):]
            name = "_bench_" + os.path.splitext(os.path.basename(path))[0]
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            cls = _FILE_CLASSES[impl] = module.SoaMatcher
        return cls
    if impl == "soa":
        from engine.soa_matcher import SoaMatcher
        return SoaMatcher
    if impl == "reference":
        from engine.matcher import Matcher
        return Matcher
    raise ValueError("unknown implementation %r" % impl)


class GcTimer(object):
    """Seconds spent in the garbage collector while active (context manager).

    PyPy: ``gc.hooks`` minor-collection and major-step durations; CPython:
    ``gc.callbacks`` start/stop pairs.  ``seconds`` is None if neither is available.
    """

    def __init__(self):
        self.seconds = None
        self._t0 = 0.0

    def _hook(self, stats):
        self.seconds += stats.duration

    def _callback(self, phase, info):
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0

    def __enter__(self):
        import gc
        hooks = getattr(gc, "hooks", None)
        if hooks is not None:
            self.seconds = 0.0
            hooks.on_gc_minor = self._hook
            hooks.on_gc_collect_step = self._hook
        elif hasattr(gc, "callbacks"):
            self.seconds = 0.0
            gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        import gc
        hooks = getattr(gc, "hooks", None)
        if hooks is not None:
            hooks.on_gc_minor = None
            hooks.on_gc_collect_step = None
        elif hasattr(gc, "callbacks") and self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        return False


def _fresh_matcher(config, deps, impl="reference"):
    from engine.events import BytesSink
    Matcher = matcher_class(impl)
    sink = BytesSink(initial_events=BATCH * 8)
    matcher = Matcher(config, sink)
    for seq, cmd in deps:
        matcher.process(seq, cmd)
    sink.take()
    return matcher, sink


def _count(data, counts, digest):
    """Add the fingerprint counts of a chunk of event records (numpy, outside timing)."""
    import numpy as np
    from ringbuf.records import EVENT_DTYPE
    digest.update(data)
    ev = np.frombuffer(data, dtype=EVENT_DTYPE)
    kind = ev["kind"]
    counts["events"] += int(len(ev))
    counts["trades"] += int((kind == KIND_TRADE).sum())
    cancelled = kind == KIND_CANCELLED
    counts["cancels"] += int((cancelled & (ev["reason"] == REASON_CANCELLED_BY_USER)).sum())
    counts["stp_cancels"] += int((cancelled & (ev["reason"] == REASON_CANCELLED_STP)).sum())
    rejected = ev["reason"][kind == KIND_REJECTED]
    if len(rejected):
        values, times = np.unique(rejected, return_counts=True)
        rejects = counts.setdefault("rejects", {})
        for value, n in zip(values.tolist(), times.tolist()):
            rejects[str(value)] = rejects.get(str(value), 0) + n


def run_pass(config, deps, cmds, fingerprint=False, impl="reference", stats=None):
    """One pass on a fresh matcher; return (seconds, counts or None).

    ``stats``: a dict that receives ``cpu`` (process CPU seconds) and ``gc`` (GcTimer
    seconds) of the command loop, without the funding deposits before it.
    """
    matcher, sink = _fresh_matcher(config, deps, impl)
    if stats is not None:
        gc_timer = GcTimer().__enter__()
        c0 = time.process_time()
    process = matcher.process
    take = sink.take
    counts = {"events": 0, "trades": 0, "cancels": 0, "stp_cancels": 0}
    digest = hashlib.sha256()
    clock = time.perf_counter
    total = 0.0
    n = len(cmds)
    for start in range(0, n, BATCH):
        chunk = cmds[start:start + BATCH]
        t0 = clock()
        for seq, cmd in chunk:
            process(seq, cmd)
        data = take()
        total += clock() - t0
        if fingerprint:
            _count(data, counts, digest)
    if stats is not None:
        stats["cpu"] = time.process_time() - c0
        gc_timer.__exit__(None, None, None)
        stats["gc"] = gc_timer.seconds
    if fingerprint:
        counts["sha256"] = digest.hexdigest()
        bad = dict((r, n) for r, n in counts.get("rejects", {}).items()
                   if int(r) in BAD_REJECTS)
        if bad:
            raise RuntimeError("benchmark mis-set: rejects %r (reason: count)" % bad)
        matcher._check()
        return total, counts
    return total, None


def latency_pass(config, deps, cmds, impl="reference"):
    """One pass timing every command; return array('q') of nanoseconds."""
    matcher, sink = _fresh_matcher(config, deps, impl)
    process = matcher.process
    take = sink.take
    clock = time.perf_counter_ns
    lat = array.array("q")
    append = lat.append
    n = len(cmds)
    for start in range(0, n, BATCH):
        for seq, cmd in cmds[start:start + BATCH]:
            t0 = clock()
            process(seq, cmd)
            append(clock() - t0)
        take()
    return lat


def clock_overhead_ns(samples=200000):
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(samples):
        clock()
    return (clock() - t0) / float(samples)


def worker(csv_path, passes, latency_out=None, impls=("reference",), per_order=False):
    """Everything measured on one interpreter; returns a JSON-able dict.

    ``latency_out``: a path prefix; each implementation's raw latencies go to
    ``<prefix>.<impl>``.  The timed passes of the implementations are interleaved.
    """
    from engine.config import DEFAULT_CONFIG
    from perf.workload import read_csv
    rows = read_csv(csv_path)
    deps, cmds = build(rows, DEFAULT_CONFIG, per_order)
    out = {"interpreter": _interpreter(), "commands": len(cmds), "impls": {},
           "clock_overhead_ns": clock_overhead_ns(), "loadavg_start": os.getloadavg()}
    for impl in impls:
        # the warm-up pass doubles as the fingerprint pass (and checks the invariants)
        t_warm, counts = run_pass(DEFAULT_CONFIG, deps, cmds, fingerprint=True, impl=impl)
        out["impls"][impl] = {"warmup_seconds": t_warm, "fingerprint": counts,
                              "pass_seconds": [], "gc_seconds": [], "cpu_seconds": []}
    for _ in range(passes):
        for impl in impls:
            r = out["impls"][impl]
            stats = {}
            seconds = run_pass(DEFAULT_CONFIG, deps, cmds, impl=impl, stats=stats)[0]
            r["cpu_seconds"].append(stats["cpu"])
            r["pass_seconds"].append(seconds)
            r["gc_seconds"].append(stats["gc"])
    if latency_out:
        for impl in impls:
            lat = latency_pass(DEFAULT_CONFIG, deps, cmds, impl)
            path = "%s.%s" % (latency_out, _file_part(impl))
            with open(path, "wb") as f:
                lat.tofile(f)
            out["impls"][impl]["latency_file"] = path
    out["loadavg_end"] = os.getloadavg()
    return out


# ---------------------------------------------------------------------------
# Baseline: cython-orderbook
# ---------------------------------------------------------------------------
def baseline_pass(rows):
    """Replay rows on cython_orderbook.OrderBook; return (seconds, counts)."""
    from decimal import Decimal  # noqa: F401  (its prices may be any ordered number)
    from cython_orderbook import Order, OrderBook, OrderSide
    book = OrderBook()
    bid, ask = OrderSide.BID, OrderSide.ASK
    add_limit = book.add_limit_order
    add_market = book.add_market_order
    cancel = book.cancel_order
    ids = {}
    cancels = 0
    t0 = time.perf_counter()
    for side, type_, price, qty, order_id, target in rows:
        if type_ == "C":
            if cancel(ids.pop(target, "")):
                cancels += 1
            continue
        o = Order(bid if side == "B" else ask, qty, None if type_ == "M" else price)
        if type_ == "L":
            add_limit(o)
            ids[order_id] = o.order_id
        elif type_ == "M":
            add_market(o)
        else:
            if type_ == "F":
                # FOK: fillable only if enough volume at acceptable prices
                levels = book.asks if side == "B" else book.bids
                need = qty
                for p in levels:
                    if (side == "B" and p > price) or (side == "S" and p < price):
                        break
                    # PriceLevel.total_quantity is not reduced when a maker is
                    # filled completely (cython-orderbook 0.1.2): sum the queue
                    for resting in levels[p].queue.values():
                        need -= resting.remaining_quantity
                    if need <= 0:
                        break
                if need > 0:
                    continue
            add_limit(o)
            if o.remaining_quantity > 0:
                cancel(o.order_id)
    seconds = time.perf_counter() - t0
    return seconds, {"trades": len(book.trade_log), "cancels": cancels,
                     "resting": len(book.orders)}


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------
def _stats(commands, times):
    """Median/min/max commands/s of the passes and the spread (max - min) / median."""
    import statistics
    rates = [commands / t for t in times]
    median = statistics.median(rates)
    return {"median": median, "min": min(rates), "max": max(rates),
            "spread": (max(rates) - min(rates)) / median}


def _histogram(path):
    """Percentiles of a raw latency file (array('q') of ns) via perf.harness.Histogram."""
    from perf.harness import Histogram
    lat = array.array("q")
    with open(path, "rb") as f:
        lat.frombytes(f.read())
    h = Histogram()
    h.record(lat)
    pct = h.percentiles()
    pct["histogram"] = h.kind
    return pct


def profile(csv_path, commands=200000, top=18):
    """cProfile one pass over the first ``commands`` rows; return the stats text."""
    import cProfile
    import io
    import pstats
    from engine.config import DEFAULT_CONFIG
    from perf.workload import read_csv
    rows = read_csv(csv_path)[:commands]
    deps, cmds = build(rows, DEFAULT_CONFIG)
    prof = cProfile.Profile()
    prof.enable()
    run_pass(DEFAULT_CONFIG, deps, cmds)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def crosscheck(rows):
    """Untimed: our counts vs cython-orderbook's with one account per order (no STP).

    With every order on its own account self-trade prevention cannot fire, so a
    price-time-priority matcher and cython-orderbook must agree exactly on the
    number of trades and of successful cancels.  Returns a dict with both.
    """
    from engine.commands import Command
    from engine.config import DEFAULT_CONFIG
    from perf.workload import to_commands
    spec = DEFAULT_CONFIG.symbols[SYMBOL_ID]
    orders = sum(1 for r in rows if r[1] != "C")
    deps = []
    for account in range(1, orders + 1):
        for asset in (spec.base_asset, spec.quote_asset):
            deps.append(Command.deposit(account, asset, 10 ** 12))
    deps = list(enumerate(deps, 1))
    cmds = to_commands(rows, SYMBOL_ID, orders, len(deps) + 1)
    _, ours = run_pass(DEFAULT_CONFIG, deps, cmds, fingerprint=True)
    _, theirs = baseline_pass(rows)
    return {"rows": len(rows), "ours": {"trades": ours["trades"], "cancels": ours["cancels"],
                                        "stp_cancels": ours["stp_cancels"]},
            "cython-orderbook": {"trades": theirs["trades"], "cancels": theirs["cancels"]},
            "equal": (ours["trades"], ours["cancels"]) == (theirs["trades"], theirs["cancels"])}


def suite(argv=None):
    """1M-command one-symbol matcher: CPython vs PyPy vs cython-orderbook, fingerprint-checked.

    Writes perf/results/<name>.{md,json}; returns the exit code (1 if the
    fingerprints differ between interpreters or from cython-orderbook without STP).
    """
    parser = argparse.ArgumentParser(prog="matcher_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1000000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--csv", default=None, help="use this workload CSV instead of generating")
    parser.add_argument("--no-pypy", action="store_true")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--crosscheck", type=int, default=100000, metavar="N",
                        help="untimed: first N rows, one account per order, counts must equal "
                             "cython-orderbook's (0 = skip)")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of 200k commands")
    parser.add_argument("--account-per-order", action="store_true",
                        help="one account per order (no self-trade prevention possible): "
                             "trade/cancel counts must equal cython-orderbook's")
    parser.add_argument("--name", default="matcher_throughput", help="results file stem")
    parser.add_argument("--impls", default=",".join(IMPLS),
                        help="comma-separated implementations to run side by side "
                             "(reference = engine.matcher.Matcher, soa = "
                             "engine.soa_matcher.SoaMatcher, file:PATH = the SoaMatcher of "
                             "that module file)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--latency-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    impls = tuple(i for i in args.impls.split(",") if i)
    for impl in impls:
        matcher_class(impl)           # refuse an unknown name before any work
    if args.worker:
        result = worker(args.csv, args.passes, args.latency_out, impls,
                        args.account_per_order)
        with open(args.json_out, "w") as f:
            json.dump(result, f)
        return 0

    from perf.workload import generate, write_csv, read_csv
    tmp = tempfile.mkdtemp(prefix="rm-bench-")
    csv_path = args.csv
    if csv_path is None:
        csv_path = os.path.join(tmp, "workload.csv")
        write_csv(csv_path, generate(args.commands, seed=args.seed))
    rows = read_csv(csv_path)
    per_order = args.account_per_order
    report = {"workload": {"commands": len(rows), "seed": args.seed, "csv": args.csv,
                           "accounts": (sum(1 for r in rows if r[1] != "C") if per_order
                                        else ACCOUNTS),
                           "account_per_order": per_order,
                           "symbol": "BTC-USD (DEFAULT_CONFIG)"},
              "passes": args.passes, "runs": {}, "impls": list(impls),
              "command": "python -m perf.matcher_bench " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "loadavg_start": os.getloadavg()}
    print("workload: %d commands (%s)" % (len(rows), csv_path), file=sys.stderr)

    runs = [("cpython", None)]
    if not args.no_pypy:
        if os.path.exists(PYPY):
            runs.append(("pypy", PYPY))
        else:
            print("no PyPy at %s: skipping" % PYPY, file=sys.stderr)
    for label, exe in runs:
        lat_path = os.path.join(tmp, "lat-%s.bin" % label)
        if exe is None:
            result = worker(csv_path, args.passes, lat_path, impls, per_order)
        else:
            out = os.path.join(tmp, "%s.json" % label)
            subprocess.check_call([exe, "-m", "perf.matcher_bench", "--worker", "--csv", csv_path,
                                   "--passes", str(args.passes), "--json-out", out,
                                   "--latency-out", lat_path, "--impls", ",".join(impls)]
                                  + (["--account-per-order"] if per_order else []),
                                  cwd=ROOT, timeout=3600)
            with open(out) as f:
                result = json.load(f)
        for impl in impls:
            r = dict(result["impls"][impl])
            r["interpreter"] = result["interpreter"]
            r["impl"] = impl
            r["commands"] = result["commands"]
            r["clock_overhead_ns"] = result["clock_overhead_ns"]
            r["loadavg"] = [result["loadavg_start"], result["loadavg_end"]]
            r["throughput"] = _stats(result["commands"], r["pass_seconds"])
            r["cpu_throughput"] = _stats(result["commands"], r["cpu_seconds"])
            r["latency_ns"] = _histogram(r.pop("latency_file"))
            os.unlink("%s.%s" % (lat_path, _file_part(impl)))
            key = "%s/%s" % (label, impl)
            report["runs"][key] = r
            print("%s: median %.0f commands/s" % (key, r["throughput"]["median"]),
                  file=sys.stderr)

    if not args.no_baseline:
        times, counts = [], None
        baseline_pass(rows[:min(len(rows), 20000)])     # warm-up
        for _ in range(args.passes):
            seconds, counts = baseline_pass(rows)
            times.append(seconds)
        report["runs"]["cython-orderbook"] = {
            "interpreter": _interpreter(), "commands": len(rows), "pass_seconds": times,
            "throughput": _stats(len(rows), times), "fingerprint": counts}

    cross_ok = True
    base = report["runs"].get("cython-orderbook")
    if per_order and base:
        theirs = base["fingerprint"]
        report["counts_vs_baseline"] = dict(
            (key, {"ours": r["fingerprint"]["trades"], "cancels": r["fingerprint"]["cancels"],
                   "equal": (r["fingerprint"]["trades"], r["fingerprint"]["cancels"]) ==
                   (theirs["trades"], theirs["cancels"])})
            for key, r in report["runs"].items() if key != "cython-orderbook")
        cross_ok = all(v["equal"] for v in report["counts_vs_baseline"].values())
    if args.crosscheck and not args.no_baseline and not per_order:
        report["crosscheck"] = crosscheck(rows[:args.crosscheck])
        cross_ok = report["crosscheck"]["equal"]
    fingerprints = [r["fingerprint"] for k, r in report["runs"].items()
                    if k != "cython-orderbook"]
    ok = all(f == fingerprints[0] for f in fingerprints)
    report["fingerprint_equal_across_interpreters"] = ok
    from perf.harness import environment
    report["environment"] = environment()
    report["loadavg_end"] = os.getloadavg()
    try:
        report["git"] = subprocess.check_output(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT).decode().strip()
    except (OSError, subprocess.CalledProcessError):
        report["git"] = "unknown"
    if args.profile:
        report["profile"] = profile(csv_path)
    md = render(report)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, args.name + ".json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    with open(os.path.join(RESULTS_DIR, args.name + ".md"), "w") as f:
        f.write(md)
    print(md)
    for name in os.listdir(tmp):
        os.unlink(os.path.join(tmp, name))
    os.rmdir(tmp)
    if not ok:
        print("FAIL: fingerprints differ between interpreters or implementations",
              file=sys.stderr)
        return 1
    if not cross_ok:
        print("FAIL: counts differ from cython-orderbook with self-trades impossible",
              file=sys.stderr)
        return 1
    return 0


def _reason_name(code):
    from ringbuf.records import Reason
    try:
        return Reason(int(code)).name
    except ValueError:
        return str(code)


def _fmt_load(load):
    return "/".join("%.2f" % v for v in load) if load else "n/a"


def render(report):
    """Markdown text of a report."""
    lines = ["# Matcher benchmark: one symbol, %d commands" % report["workload"]["commands"], "",
             "Generated by `python -m perf.matcher_bench` on %s (%s, %d CPUs; shared machine)."
             % (time.strftime("%Y-%m-%d %H:%M"), platform.machine(), os.cpu_count() or 0),
             "Command: `%s`." % report.get("command", "python -m perf.matcher_bench"),
             "Code: git %s; load average (1/5/15 min) at start %s, at end %s." % (
                 report.get("git"), _fmt_load(report.get("loadavg_start")),
                 _fmt_load(report.get("loadavg_end"))),
             "Workload: seed %s, %d accounts %s, %s, fees on. One warm-up pass, "
             "%d timed passes, fresh matcher per pass; events packed into 128-byte records "
             "(BytesSink, taken every %d commands).  Spread = (max - min) / median of the "
             "timed passes; GC = seconds in the collector per pass (PyPy gc.hooks, CPython "
             "gc.callbacks)." % (
                 report["workload"]["seed"], report["workload"]["accounts"],
                 "(one per order: no self-trade prevention possible)"
                 if report["workload"].get("account_per_order") else "round-robin",
                 report["workload"]["symbol"], report["passes"], BATCH), "",
             "| run | interpreter | commands/s median | min | max | spread | "
             "by CPU time median | GC s/pass median | trades | user cancels ok | "
             "STP cancels | events |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in report["runs"].items():
        t, f = r["throughput"], r["fingerprint"]
        cpu = r.get("cpu_throughput")
        gcs = [g for g in r.get("gc_seconds") or [] if g is not None]
        lines.append("| %s | %s | %.0f | %.0f | %.0f | %.0f%% | %s | %s | %s | %s | %s | %s |" % (
            label, r["interpreter"], t["median"], t["min"], t["max"],
            100.0 * t.get("spread", (t["max"] - t["min"]) / t["median"]),
            "%.0f" % cpu["median"] if cpu else "n/a",
            "%.3f" % sorted(gcs)[len(gcs) // 2] if gcs else "n/a", f.get("trades"),
            f.get("cancels"), f.get("stp_cancels", "n/a"), f.get("events", "n/a")))
    lines += ["", "Targets (issue 14): PyPy >= 3,300,000 commands/s, CPython >= 400,000, "
              "spread <= 15% of the median.", ""]
    for label, r in report["runs"].items():
        if "latency_ns" in r:
            lat = r["latency_ns"]
            lines.append("- %s per-command latency (ns, clock cost ~%.0f ns included): "
                         "p50 %d, p90 %d, p99 %d, p99.9 %d, p99.99 %d, max %d" % (
                             label, r["clock_overhead_ns"], lat["p50"], lat["p90"], lat["p99"],
                             lat["p99.9"], lat["p99.99"], lat["max"]))
            lines.append("  latency histogram: %s, %d samples" % (lat["histogram"], lat["count"]))
            lines.append("  event sha256 %s" % r["fingerprint"].get("sha256"))
    lines.append("")
    for label, r in report["runs"].items():
        if label != "cython-orderbook":
            lines.append("- %s rejects by reason: %s" % (label, ", ".join(
                "%s %d" % (_reason_name(k), v)
                for k, v in sorted(r["fingerprint"].get("rejects", {}).items()))))
    lines.append("Fingerprint (trades, user cancels, STP cancels, event bytes) equal across "
                 "interpreters and implementations: %s"
                 % report["fingerprint_equal_across_interpreters"])
    base = report["runs"].get("cython-orderbook")
    if base:
        lines.append("cython-orderbook: no accounts, fees, STP or events; %d orders resting at "
                     "the end." % base["fingerprint"]["resting"])
    versus = report.get("counts_vs_baseline")
    if versus:
        lines.append("One account per order: trades / user cancels equal to cython-orderbook's "
                     "(%d / %d) in the timed run: %s." % (
                         base["fingerprint"]["trades"], base["fingerprint"]["cancels"],
                         ", ".join("%s %s" % (k, "yes" if v["equal"] else "NO")
                                   for k, v in versus.items())))
    cross = report.get("crosscheck")
    if cross:
        lines.append("Cross-check (untimed; first %d rows, one account per order so self-trade "
                     "prevention cannot fire): ours %d trades / %d cancels, cython-orderbook "
                     "%d / %d: %s." % (cross["rows"], cross["ours"]["trades"],
                                       cross["ours"]["cancels"],
                                       cross["cython-orderbook"]["trades"],
                                       cross["cython-orderbook"]["cancels"],
                                       "equal" if cross["equal"] else "DIFFERENT"))
        lines.append("In the timed run the counts differ from cython-orderbook's by the effect "
                     "of the STP cancels listed above (1,000 accounts round-robin).")
    if report.get("profile"):
        lines += ["", "## cProfile, CPython, first %d commands (tottime)"
                  % min(200000, report["workload"]["commands"]), "", "```",
                  report["profile"].strip(), "```"]
    return "\n".join(lines) + "\n"


#: discovered by perf/cli.py: name -> callable(argv) -> exit code
SUITES = {"matcher_throughput": suite}


if __name__ == "__main__":
    sys.exit(suite())
