"""Publisher ingestion: output-ring event bytes -> decode -> read model -> hub (no clients).

What it measures: the CPU the publisher spends per event on the path its ring
consumer thread and asyncio loop take for every event, for both read models in the
same run, on the same event stream and batches:

* ``object``: ``publisher.event_decoder.decode_batch`` (one tuple per event) then
  ``PublisherService.on_events`` (``publisher.read_model.ReadModel.apply``, the
  reference object model, and ``Hub.publish``);
* ``columnar``: ``EventBatch.copy_of`` (what the ring feed does: one memcpy out of
  the ring, a numpy structured view) then ``ColumnarService.on_events``
  (``publisher.columnar.ColumnarReadModel.apply`` and ``Hub.publish``).

The stream: the events an in-process ``engine.matcher.Matcher`` with a ``BytesSink``
emits for ``perf.workload.generate`` (1000 funded accounts, BTC-USD), cut into batches
of ``--batch`` events as the ring feed polls them.  No rings, no threads, no sockets,
no WebSocket subscribers.  Each pass starts from a fresh service; passes alternate
between the models; the figures are events / CPU second (``time.process_time``) and
events / wall second.

``--batch`` takes a comma-separated list: every batch size is measured in the same
run (one stream, cut per size), each with its own alternating passes, one table row
per size and model.

Usage::

    python -m perf.publisher_ingest_bench [--commands 100000] [--passes 5]
        [--batch 4,64,1024,4096,16384] [--models object,columnar] [--cprofile MODEL]
        [--out perf/results/publisher_ingest_columnar.md] [--json FILE]
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


def make_service(model="columnar"):
    """A PublisherService for DEFAULT_CONFIG (read model + hub, no sender, no clients)."""
    from engine.config import DEFAULT_CONFIG
    from publisher.process import build_service

    class _Shard(object):
        symbols = None
    return build_service({}, _Shard(), DEFAULT_CONFIG, read_model=model)


def _decoder(model):
    if model == "object":
        from publisher.event_decoder import decode_batch
        return decode_batch
    from publisher.columnar import EventBatch
    return EventBatch.copy_of


def one_pass(chunks, model="columnar"):
    """(wall s, cpu s, service) of decoding and applying every chunk on a fresh service."""
    decode = _decoder(model)
    service = make_service(model)
    batches = [_Batch(c) for c in chunks]
    on_events = service.on_events
    cpu = time.process_time
    w0, c0 = time.perf_counter(), cpu()
    for b in batches:
        on_events(decode(b))
    return time.perf_counter() - w0, cpu() - c0, service


def _stats(values):
    v = sorted(values)
    return v[len(v) // 2], v[0], v[-1]


def _same_views(a, b):
    """The two models agree at the end of the stream (a cheap check: books, balances)."""
    ma, mb = a.model, b.model
    assert ma.applied_seq == mb.applied_seq
    for sid in ma.symbols:
        assert dict(ma.symbol(sid).bids) == dict(mb.symbol(sid).bids)
        assert dict(ma.symbol(sid).asks) == dict(mb.symbol(sid).asks)
        assert ma.symbol(sid).stats() == mb.symbol(sid).stats()
    for acct in range(1, 1001, 37):
        assert ma.account_balances(acct) == mb.account_balances(acct)
        assert [o.order_id for o in ma.open_orders(acct)] == [o.order_id for o in mb.open_orders(acct)]


def _measure(chunks, n_events, models, passes):
    """{model: (cpu stats, wall stats)} of ``passes`` alternating passes (after a warm-up)."""
    services = {m: one_pass(chunks, m)[2] for m in models}           # warm-up
    if len(services) == 2:
        _same_views(services["object"], services["columnar"])
    del services             # (kept, its objects would be traversed by every gc pass)
    runs = {m: [] for m in models}
    for _ in range(passes):
        for m in models:
            runs[m].append(one_pass(chunks, m)[:2])
    return {m: (_stats([n_events / c for _, c in runs[m]]),
                _stats([n_events / w for w, _ in runs[m]])) for m in models}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commands", type=int, default=100000)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--batch", default="4096", help="batch size(s), comma-separated")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--models", default="object,columnar")
    p.add_argument("--cprofile", default=None, metavar="MODEL")
    p.add_argument("--out", default=None, help="also append the results (markdown) to this file")
    p.add_argument("--json", default=None, help="also write the results (JSON) to this file")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    sizes = [int(b) for b in args.batch.split(",") if b]
    load0 = os.getloadavg()
    chunks, n_events, n_cmds = build_stream(args.commands, args.seed, sizes[0])
    if args.cprofile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        one_pass(chunks, args.cprofile)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    from ringbuf.records import EVENT_SIZE
    data = b"".join(chunks)
    result = {"interpreter": "%s %s" % (sys.implementation.name, platform.python_version()),
              "machine": "%s, %d cpus" % (platform.machine(), os.cpu_count() or 0),
              "commands": n_cmds, "events": n_events, "passes": args.passes,
              "command": "python -m perf.publisher_ingest_bench " + " ".join(
                  argv if argv is not None else sys.argv[1:]),
              "batches": {}}
    lines = []
    for size in sizes:
        step = size * EVENT_SIZE
        chunks = [data[i:i + step] for i in range(0, len(data), step)]
        l0 = os.getloadavg()
        stats = _measure(chunks, n_events, models, args.passes)
        l1 = os.getloadavg()
        row = {"loadavg_before": l0, "loadavg_after": l1, "models": {}}
        for m in models:
            cpu, wall = stats[m]
            row["models"][m] = {"cpu_events_per_s": {"median": cpu[0], "min": cpu[1], "max": cpu[2]},
                                "wall_events_per_s": {"median": wall[0], "min": wall[1], "max": wall[2]},
                                "us_per_event_cpu_median": 1e6 / cpu[0]}
            lines.append("| %d | %s | %.2fM | %.2fM | %.2fM | %.2fM | %.3f | %s | %.1f-%.1f |" % (
                size, m, cpu[0] / 1e6, cpu[1] / 1e6, cpu[2] / 1e6, wall[0] / 1e6, 1e6 / cpu[0],
                "%.1fx" % (cpu[0] / stats["object"][0][0]) if m == "columnar" and "object" in stats
                else "", min(l0[0], l1[0]), max(l0[0], l1[0])))
        result["batches"][str(size)] = row
        print(lines[-1] if len(models) == 1 else "\n".join(lines[-len(models):]), flush=True)
    load1 = os.getloadavg()
    result["loadavg_before"], result["loadavg_after"] = load0, load1
    head = ("%s, %s; %d commands -> %d events (%.2f/command), %d passes per model and "
            "batch size (alternating); loadavg %.2f/%.2f/%.2f before, %.2f/%.2f/%.2f after" % (
                result["interpreter"], result["machine"], n_cmds, n_events,
                n_events / float(n_cmds), args.passes, load0[0], load0[1], load0[2],
                load1[0], load1[1], load1[2]))
    table = ["| batch | model | CPU events/s median | min | max | wall median | us/event (CPU) "
             "| columnar / object | loadavg (1 min) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"] + lines
    text = head + "\n\n" + "\n".join(table) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n`%s`\n\n%s" % (result["command"], text))
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


SUITES = {"publisher_ingest": main}

if __name__ == "__main__":
    sys.exit(main())
