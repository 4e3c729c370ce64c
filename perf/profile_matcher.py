"""Quick matcher timing / profiling for engine work (not the benchmark suite).

The benchmark of record is ``perf/matcher_bench.py``; this script is the engineer's
loop: same workload shape (``perf.workload.generate``, 1000 funded accounts, BTC-USD of
DEFAULT_CONFIG), same driving loop (``process`` per command, ``take()`` every 4096),
a choice of sink, median/min/max over passes after a warm-up, optional cProfile.

Usage::

    python -m perf.profile_matcher [--commands 200000] [--passes 3] [--seed 1]
        [--sink bytes|bytesview|list|counting|null|noop] [--impl reference|soa]
        [--cprofile | --vmprof PATH]

``--impl soa`` times ``engine.soa_matcher.SoaMatcher`` (struct-of-arrays state; the
``noop`` sink then does not apply: use ``null``).
"""
import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BATCH = 4096


def build(n, seed):
    from engine.commands import Command
    from engine.config import DEFAULT_CONFIG
    from perf.workload import generate, to_commands
    spec = DEFAULT_CONFIG.symbols[1]
    deps = []
    for a in range(1, 1001):
        deps.append(Command.deposit(a, spec.base_asset, 10 ** 15))
        deps.append(Command.deposit(a, spec.quote_asset, 10 ** 15))
    deps = list(enumerate(deps, 1))
    cmds = to_commands(generate(n, seed=seed), 1, 1000, len(deps) + 1)
    return deps, cmds


class NoopWriterSink(object):
    """A sink whose EventWriter does nothing at all: times the matcher logic alone."""

    seq = ts = ck = ei = 0

    def event_writer(self):
        return self

    def begin(self, seq, ts, ck):
        pass

    def order(self, kind, o, flags, reason, price, qty, fee, amount, trade_id, c_oid, c_acct,
              aux):
        pass

    def delta(self, symbol_id, side, price, total):
        pass

    def fill(self, m, o, price, q, mfee, tfee, n, trade_id):
        pass

    def event(self, *fields):
        pass

    def mark_last(self):
        pass

    def emit_event(self, *fields):
        pass


def make_sink(name):
    from engine import events
    if name == "noop":
        return NoopWriterSink()
    if name == "bytesview":
        sink = events.BytesSink()
        sink.take = sink.take_view
        return sink
    return {"bytes": events.BytesSink, "list": events.ListSink,
            "counting": events.CountingSink, "null": events.NullSink}[name]()


def matcher_class(impl):
    if impl == "soa":
        from engine.soa_matcher import SoaMatcher
        return SoaMatcher
    from engine.matcher import Matcher
    return Matcher


def one_pass(deps, cmds, sink_name, impl="reference"):
    from engine.config import DEFAULT_CONFIG
    Matcher = matcher_class(impl)
    sink = make_sink(sink_name)
    m = Matcher(DEFAULT_CONFIG, sink)
    for seq, c in deps:
        m.process(seq, c)
    take = getattr(sink, "take", None) or (lambda: None)
    take()
    process = m.process
    clock = time.perf_counter
    cpu = time.process_time
    total = 0.0
    c0 = cpu()
    for start in range(0, len(cmds), BATCH):
        chunk = cmds[start:start + BATCH]
        t0 = clock()
        for seq, c in chunk:
            process(seq, c)
        take()
        total += clock() - t0
    return total, cpu() - c0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commands", type=int, default=200000)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sink", default="bytes", choices=("bytes", "bytesview", "list", "counting", "null", "noop"))
    p.add_argument("--impl", default="reference", choices=("reference", "soa"))
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--vmprof", metavar="PATH", help="PyPy: write a vmprof profile of one pass "
                   "after a warm-up (needs the vmprof package; a dev tool, not a dependency)")
    args = p.parse_args(argv)
    deps, cmds = build(args.commands, args.seed)
    if args.cprofile:
        import cProfile  # noqa
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        one_pass(deps, cmds, args.sink, args.impl)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(22)
        return 0
    one_pass(deps, cmds, args.sink, args.impl)        # warm-up (JIT)
    if args.vmprof:
        import vmprof
        with open(args.vmprof, "w+b") as f:
            vmprof.enable(f.fileno(), period=0.0005)
            one_pass(deps, cmds, args.sink, args.impl)
            vmprof.disable()
        return 0
    runs = [one_pass(deps, cmds, args.sink, args.impl) for _ in range(args.passes)]
    rates = sorted(len(cmds) / wall for wall, _ in runs)
    # CPU time of the whole pass (incl. slicing the batches): less disturbed by other
    # processes on a shared machine than wall time
    cpu_rates = sorted(len(cmds) / c for _, c in runs)
    print("%s %s impl=%s sink=%s commands=%d passes=%d: median %.0f cmd/s (min %.0f, max %.0f); "
          "by CPU time median %.0f (min %.0f, max %.0f); loadavg %.2f" % (
              sys.implementation.name, platform.python_version(), args.impl, args.sink,
              len(cmds),
              args.passes, rates[len(rates) // 2], rates[0], rates[-1],
              cpu_rates[len(cpu_rates) // 2], cpu_rates[0], cpu_rates[-1], os.getloadavg()[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
