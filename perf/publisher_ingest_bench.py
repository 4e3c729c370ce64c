"""Publisher ingestion: output-ring event bytes -> decode -> read model -> hub (no clients).

What it measures: the CPU the publisher spends per event on the path its ring
consumer thread and asyncio loop take for every event (``publisher.event_decoder``
``decode_batch`` then ``PublisherService.on_events``: ``ReadModel.apply`` and
``Hub.publish`` with no WebSocket subscribers), on a realistic event stream: the
events an in-process ``engine.matcher.Matcher`` with a ``BytesSink`` emits for
``perf.workload.generate`` (1000 funded accounts, BTC-USD), cut into batches of
``--batch`` events as the ring feed polls them.  No rings, no threads, no sockets.

Usage::

    python -m perf.publisher_ingest_bench [--commands 100000] [--passes 5] [--batch 4096]
        [--cprofile] [--out perf/results/publisher_ingest.md]
"""
import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

__all__ = ["SUITES", "main", "build_stream", "one_pass"]


class _Batch(object):
    """The part of a ``ringbuf`` poll batch the decoder reads."""
    __slots__ = ("chunks", "last_seq")

    def __init__(self, chunk):
        self.chunks = [(0, memoryview(chunk))]
        self.last_seq = 0


def build_stream(n, seed=1, batch=4096):
    """(list of event-record byte chunks of ``batch`` events each, event count, command count)."""
    from engine import events
    from engine.commands import Command
    from engine.config import DEFAULT_CONFIG
    from engine.matcher import Matcher
    from perf.workload import generate, to_commands
    from ringbuf.records import EVENT_SIZE
    spec = DEFAULT_CONFIG.symbols[1]
    deps = []
    for a in range(1, 1001):
        deps.append(Command.deposit(a, spec.base_asset, 10 ** 15))
        deps.append(Command.deposit(a, spec.quote_asset, 10 ** 15))
    deps = list(enumerate(deps, 1))
    cmds = to_commands(generate(n, seed=seed), 1, 1000, len(deps) + 1)
    sink = events.BytesSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    for seq, c in deps + cmds:
        m.process(seq, c)
    data = bytes(sink.take())
    step = batch * EVENT_SIZE
    chunks = [data[i:i + step] for i in range(0, len(data), step)]
    return chunks, len(data) // EVENT_SIZE, len(deps) + len(cmds)


def make_service():
    """A PublisherService for DEFAULT_CONFIG (read model + hub, no sender, no clients)."""
    from engine.config import DEFAULT_CONFIG
    from publisher.process import build_service

    class _Shard(object):
        symbols = None
    return build_service({}, _Shard(), DEFAULT_CONFIG)


def one_pass(chunks):
    """(wall s, cpu s, service) of decoding and applying every chunk on a fresh service."""
    from publisher.event_decoder import decode_batch
    service = make_service()
    batches = [_Batch(c) for c in chunks]
    on_events = service.on_events
    cpu = time.process_time
    w0, c0 = time.perf_counter(), cpu()
    for b in batches:
        on_events(decode_batch(b))
    return time.perf_counter() - w0, cpu() - c0, service


def _stats(values):
    v = sorted(values)
    return v[len(v) // 2], v[0], v[-1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commands", type=int, default=100000)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--out", default=None, help="also write the result line to this file")
    args = p.parse_args(argv)
    chunks, n_events, n_cmds = build_stream(args.commands, args.seed, args.batch)
    if args.cprofile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        one_pass(chunks)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    one_pass(chunks)                                   # warm-up
    runs = [one_pass(chunks)[:2] for _ in range(args.passes)]
    wall = _stats([n_events / w for w, _ in runs])
    cpu = _stats([n_events / c for _, c in runs])
    line = ("%s %s commands=%d events=%d (%.2f/command) batch=%d passes=%d: "
            "median %.0f events/s (min %.0f, max %.0f) wall; by CPU time median %.0f "
            "(min %.0f, max %.0f) = %.2f us/event; loadavg %.2f" % (
                sys.implementation.name, platform.python_version(), n_cmds, n_events,
                n_events / float(n_cmds), args.batch, args.passes, wall[0], wall[1], wall[2],
                cpu[0], cpu[1], cpu[2], 1e6 / cpu[0], os.getloadavg()[0]))
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


SUITES = {"publisher_ingest": main}

if __name__ == "__main__":
    sys.exit(main())
