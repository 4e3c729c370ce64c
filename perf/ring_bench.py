"""Ring benchmarks, named by topology and metric, each against the queues a user would pick.

one_to_one_throughput (per record: claim, write a field, publish; consumer reads a
field of every record, commits per batch) and one_to_one_batched_throughput
(claim_batch of B records, one raw copy in, one raw copy out)::

    producer process --> [ring] --> consumer (this process)

three_to_one_throughput (per record and batched, multi-producer ring)::

    P0 --\\
    P1 ----> [ring] --> consumer
    P2 --/

diamond_throughput (batched; the matcher gated on both)::

                       /--> journaler (process) --\\
    producer --> [ring]                            >--> matcher (this process)
                       \\--> replicator (process) -/

ping_pong_latency (paced: one message in flight; one-way = round trip / 2)::

    this process --[ping ring]--> echo process --[pong ring]--> this process

Each suite runs the ring with the busy-spin strategy (the targets) and the
default backoff strategy, and the same records through multiprocessing.Queue
and faster_fifo.Queue (when installed) in the same run.  Every pass checks
its result (counts, checksums of a field of every record or of every batch
boundary) and raises if it is wrong.  Results: perf/results/ring_<suite>_<interp>.{json,md}.

Usage: python -m perf.ring_bench SUITE [--passes 5] [--quick]  (or ``ringmatch bench run``).
"""
import argparse
import multiprocessing
import os
import platform
import struct
import sys
import time

from perf.harness import Sample, measure, write_results

CTX = multiprocessing.get_context("fork")
REC = 64
COID = 56                       # offset of client_order_id in the command record
_u64 = struct.Struct("<Q")
_counter = [0]


def _name(tag):
    _counter[0] += 1
    return "rm-bench-%s-%d-%d" % (tag, os.getpid(), _counter[0])


def _interp():
    return platform.python_implementation().lower()


def _block(b):
    """B command records with client_order_id = 0..B-1 (kind NEW_ORDER)."""
    out = bytearray(REC * b)
    for j in range(b):
        out[j * REC] = 1
        _u64.pack_into(out, j * REC + COID, j)
    return bytes(out)


def _record(i):
    r = bytearray(REC)
    r[0] = 1
    _u64.pack_into(r, COID, i)
    return bytes(r)


class _Children(object):
    def __init__(self):
        self.procs = []

    def start(self, target, *args):
        p = CTX.Process(target=target, args=args, daemon=True)
        p.start()
        self.procs.append(p)
        return p

    def finish(self, timeout=60):
        for p in self.procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(5)
                raise RuntimeError("benchmark child %d did not finish" % p.pid)
            if p.exitcode != 0:
                raise RuntimeError("benchmark child %d exited with %s" % (p.pid, p.exitcode))


def _ring(tag, capacity, consumers, strategy, single_producer):
    from ringbuf import Ring
    return Ring.create(_name(tag), capacity, consumers=consumers, wait_strategy=strategy,
                       single_producer=single_producer)


# ---------------------------------------------------------------- ring workers (children)
def _produce_per_record(name, n, go, pid=0):
    from ringbuf import Ring
    with Ring.attach(name) as ring:
        p = ring.producer(pid)
        claim, record, publish = p.claim, p.record, p.publish
        go.wait()
        for i in range(n):
            s = claim()
            record(s).client_order_id = i
            publish(s)
    os._exit(0)


def _produce_batched(name, n, b, go, pid=0):
    from ringbuf import Ring
    block = memoryview(_block(b))
    with Ring.attach(name) as ring:
        p = ring.producer(pid)
        claim_batch, publish_batch = p.claim_batch, p.publish_batch
        go.wait()
        for _ in range(n // b):
            first, views = claim_batch(b)
            if len(views) == 1:
                views[0][:] = block
            else:
                k = len(views[0])
                views[0][:] = block[:k]
                views[1][:] = block[k:]
            publish_batch(first, b)
    os._exit(0)


def _consume_copy(c, total, b, sink):
    """Copy every batch out (as a journaler would), check batch-boundary ids.  Returns count."""
    seen = 0
    poll, commit = c.poll, c.commit
    rec = c.record      # cffi reads: PyPy reads read-only memoryviews byte by byte
    while seen < total:
        batch = poll(max_batch=b * 4)
        batch.copy_into(sink)
        for first, v in batch.chunks:
            last = first + len(v) // REC - 1
            if rec(first).client_order_id != (first - 1) % b or \
                    rec(last).client_order_id != (last - 1) % b:
                raise AssertionError("wrong record at seq %d" % first)
        seen += batch.count
        commit(batch.last_seq)
    return seen


def _consume_child(name, consumer, total, b, go):
    from ringbuf import Ring
    with Ring.attach(name) as ring:
        c = ring.consumer(consumer)
        go.wait()
        _consume_copy(c, total, b, bytearray(b * 4 * REC))
    os._exit(0)


def _echo(ping_name, pong_name, n, ready):
    from ringbuf import Ring
    with Ring.attach(ping_name) as ping, Ring.attach(pong_name) as pong:
        c = ping.consumer("echo")
        p = pong.producer(1)
        ready.set()
        poll, commit, write = c.poll, c.commit, p.write
        seen = 0
        while seen < n:
            batch = poll(max_batch=1)
            write(batch.chunks[0][1])
            commit(batch.last_seq)
            seen += 1
    os._exit(0)


# ---------------------------------------------------------------- queue workers (children)
def _q_exit(*queues):
    for q in queues:
        if hasattr(q, "join_thread"):   # multiprocessing.Queue: flush its feeder thread
            q.close()
            q.join_thread()
    os._exit(0)


def _q_put_per_record(q, n, go):
    go.wait()
    for i in range(n):
        q.put(_record(i))
    _q_exit(q)


def _q_put_batched(q, n, b, go):
    block = _block(b)
    go.wait()
    for _ in range(n // b):
        q.put(block)
    _q_exit(q)


def _q_forward(qin, qout, count, go):
    go.wait()
    for _ in range(count):
        qout.put(qin.get())
    _q_exit(qout)


def _q_echo(qin, qout, n, ready):
    ready.set()
    for _ in range(n):
        qout.put(qin.get())
    _q_exit(qout)


def _queue_kinds():
    kinds = [("multiprocessing.Queue", lambda: CTX.Queue())]
    try:
        import faster_fifo

        kinds.append(("faster_fifo.Queue",
                      lambda: faster_fifo.Queue(max_size_bytes=64 * 1024 * 1024)))
    except ImportError:
        pass
    return kinds


def _qget(q):
    return q.get(timeout=30)


# ---------------------------------------------------------------- suites
def _one_to_one(opts, batched):
    rows = []
    n = opts.records
    b = opts.batch
    suite = "one_to_one_%sthroughput" % ("batched_" if batched else "")
    for strategy in opts.strategies:
        def ring_pass(strategy=strategy):
            ring = _ring("1to1", opts.capacity, {"c": []}, strategy, True)
            kids = _Children()
            try:
                go = CTX.Event()
                total = n * (20 if batched else 1)
                total -= total % b if batched else 0
                if batched:
                    kids.start(_produce_batched, ring.name, total, b, go)
                else:
                    kids.start(_produce_per_record, ring.name, total, go)
                c = ring.consumer("c")
                t0 = time.perf_counter()
                go.set()
                if batched:
                    seen = _consume_copy(c, total, b, bytearray(b * 4 * REC))
                    check = None
                else:
                    seen = check = 0
                    poll, commit, rec = c.poll, c.commit, c.record
                    while seen < total:
                        batch = poll(max_batch=4096)
                        for s in range(batch.first_seq, batch.last_seq + 1):
                            check += rec(s).client_order_id
                        seen += batch.count
                        commit(batch.last_seq)
                t1 = time.perf_counter()
                kids.finish()
                if seen != total or (check is not None and check != total * (total - 1) // 2):
                    raise AssertionError("ring pass wrong: %d records, checksum %s" % (seen, check))
                return Sample(total, t1 - t0)
            finally:
                ring.unlink()
                ring.close()
        rows.append(measure(suite, "ring (%s)" % strategy, ring_pass, opts.passes, opts.warmup,
                            {"records": n * 20 - n * 20 % b if batched else n,
                             "batch": b if batched else 1,
                             "capacity": opts.capacity, "single_producer": True}))
    for label, make in _queue_kinds():
        qn = opts.queue_records
        qn -= qn % b if batched else 0

        def queue_pass(make=make):
            q = make()
            kids = _Children()
            go = CTX.Event()
            if batched:
                kids.start(_q_put_batched, q, qn, b, go)
            else:
                kids.start(_q_put_per_record, q, qn, go)
            t0 = time.perf_counter()
            go.set()
            seen = check = 0
            sink = bytearray(b * REC)
            if batched:
                for _ in range(qn // b):
                    m = _qget(q)
                    sink[:len(m)] = m
                    check += _u64.unpack_from(m, len(m) - REC + COID)[0]
                    seen += len(m) // REC
                ok = check == (qn // b) * (b - 1)
            else:
                for _ in range(qn):
                    check += _u64.unpack_from(_qget(q), COID)[0]
                    seen += 1
                ok = check == qn * (qn - 1) // 2
            t1 = time.perf_counter()
            kids.finish()
            if seen != qn or not ok:
                raise AssertionError("%s pass wrong" % label)
            return Sample(qn, t1 - t0)
        rows.append(measure(suite, label, queue_pass, opts.passes, opts.warmup,
                            {"records": qn, "batch": b if batched else 1}))
    return rows


def _three_to_one(opts):
    rows = []
    n = opts.records // 3
    b = opts.batch
    for batched in (False, True):
        per = n * (10 if batched else 1)
        per -= per % b
        suite = "three_to_one_%sthroughput" % ("batched_" if batched else "")
        for strategy in opts.strategies:
            def ring_pass(strategy=strategy, batched=batched, per=per):
                ring = _ring("3to1", opts.capacity, {"c": []}, strategy, False)
                kids = _Children()
                try:
                    go = CTX.Event()
                    for i in range(3):
                        if batched:
                            kids.start(_produce_batched, ring.name, per, b, go, i + 1)
                        else:
                            kids.start(_produce_per_record, ring.name, per, go, i + 1)
                    c = ring.consumer("c")
                    t0 = time.perf_counter()
                    go.set()
                    seen = check = 0
                    total = 3 * per
                    poll, commit, rec = c.poll, c.commit, c.record
                    sink = bytearray(b * 4 * REC)
                    while seen < total:
                        batch = poll(max_batch=4096)
                        if batched:
                            batch.copy_into(sink)
                            check += rec(batch.last_seq).kind
                        else:
                            for s in range(batch.first_seq, batch.last_seq + 1):
                                check += rec(s).client_order_id
                        seen += batch.count
                        commit(batch.last_seq)
                    t1 = time.perf_counter()
                    kids.finish()
                    if seen != total or (not batched and check != 3 * per * (per - 1) // 2):
                        raise AssertionError("3to1 pass wrong: %d, %d" % (seen, check))
                    return Sample(total, t1 - t0)
                finally:
                    ring.unlink()
                    ring.close()
            rows.append(measure(suite, "ring (%s)" % strategy, ring_pass, opts.passes,
                                opts.warmup, {"records": 3 * per, "producers": 3,
                                              "batch": b if batched else 1,
                                              "capacity": opts.capacity}))
        for label, make in _queue_kinds():
            qn = opts.queue_records // 3
            qn -= qn % b

            def queue_pass(make=make, batched=batched, qn=qn):
                q = make()
                kids = _Children()
                go = CTX.Event()
                for _ in range(3):
                    if batched:
                        kids.start(_q_put_batched, q, qn, b, go)
                    else:
                        kids.start(_q_put_per_record, q, qn, go)
                t0 = time.perf_counter()
                go.set()
                seen = 0
                msgs = 3 * (qn // b) if batched else 3 * qn
                for _ in range(msgs):
                    seen += len(_qget(q)) // REC
                t1 = time.perf_counter()
                kids.finish()
                if seen != 3 * qn:
                    raise AssertionError("%s pass wrong" % label)
                return Sample(3 * qn, t1 - t0)
            rows.append(measure(suite, label, queue_pass, opts.passes, opts.warmup,
                                {"records": 3 * qn, "producers": 3,
                                 "batch": b if batched else 1}))
    return rows


def _diamond(opts):
    rows = []
    b = opts.batch
    total = opts.records * 10
    total -= total % b
    suite = "diamond_batched_throughput"
    consumers = {"journaler": [], "replicator": [], "matcher": ["journaler", "replicator"]}
    for strategy in opts.strategies:
        def ring_pass(strategy=strategy):
            ring = _ring("diamond", opts.capacity, consumers, strategy, True)
            kids = _Children()
            try:
                go = CTX.Event()
                kids.start(_consume_child, ring.name, "journaler", total, b, go)
                kids.start(_consume_child, ring.name, "replicator", total, b, go)
                kids.start(_produce_batched, ring.name, total, b, go)
                m = ring.consumer("matcher")
                t0 = time.perf_counter()
                go.set()
                seen = _consume_copy(m, total, b, bytearray(b * 4 * REC))
                t1 = time.perf_counter()
                kids.finish()
                if seen != total:
                    raise AssertionError("diamond pass wrong")
                return Sample(total, t1 - t0)
            finally:
                ring.unlink()
                ring.close()
        rows.append(measure(suite, "ring (%s)" % strategy, ring_pass, opts.passes, opts.warmup,
                            {"records": total, "batch": b, "capacity": opts.capacity}))
    for label, make in _queue_kinds():
        qn = opts.queue_records - opts.queue_records % b

        def queue_pass(make=make):
            qj, qr, qmj, qmr = make(), make(), make(), make()
            kids = _Children()
            go = CTX.Event()
            msgs = qn // b
            kids.start(_q_forward, qj, qmj, msgs, go)
            kids.start(_q_forward, qr, qmr, msgs, go)
            block = _block(b)
            t0 = time.perf_counter()
            go.set()
            seen = 0
            # the producer is this process's fan-out; the matcher takes one from each
            for _ in range(msgs):
                qj.put(block)
                qr.put(block)
            for _ in range(msgs):
                a, c = _qget(qmj), _qget(qmr)
                if a != c:
                    raise AssertionError("diamond queues out of step")
                seen += len(a) // REC
            t1 = time.perf_counter()
            kids.finish()
            if seen != qn:
                raise AssertionError("%s pass wrong" % label)
            return Sample(qn, t1 - t0)
        rows.append(measure(suite, label, queue_pass, opts.passes, opts.warmup,
                            {"records": qn, "batch": b,
                             "note": "producer fan-out in the measuring process"}))
    return rows


def _ping_pong(opts):
    rows = []
    n = opts.pings
    suite = "ping_pong_latency"
    for strategy in opts.strategies:
        def ring_pass(strategy=strategy):
            from ringbuf import Ring
            ping = _ring("ping", 1024, {"echo": []}, strategy, True)
            pong = _ring("pong", 1024, {"main": []}, strategy, True)
            kids = _Children()
            try:
                ready = CTX.Event()
                kids.start(_echo, ping.name, pong.name, n, ready)
                p, c = ping.producer(0), pong.consumer("main")
                ready.wait(10)
                lat = [0] * n
                now = time.perf_counter_ns
                claim, record, publish = p.claim, p.record, p.publish
                poll, commit = c.poll, c.commit
                pace = opts.pace_ns
                t0 = time.perf_counter()
                for i in range(n):
                    start = now()
                    s = claim()
                    record(s).client_order_id = i
                    publish(s)
                    batch = poll(max_batch=1)
                    got = _u64.unpack_from(batch.chunks[0][1], COID)[0]
                    commit(batch.last_seq)
                    end = now()
                    if got != i:
                        raise AssertionError("echo %d for ping %d" % (got, i))
                    lat[i] = (end - start) // 2
                    while now() - end < pace:
                        pass
                t1 = time.perf_counter()
                kids.finish()
                return Sample(n, t1 - t0, lat)
            finally:
                for r in (ping, pong):
                    r.unlink()
                    r.close()
        rows.append(measure(suite, "ring (%s)" % strategy, ring_pass, opts.passes, opts.warmup,
                            {"round_trips": n, "pace_ns": opts.pace_ns,
                             "latency": "one-way = round trip / 2"}, unit="round trips/s"))
    for label, make in _queue_kinds():
        qn = min(n, opts.queue_pings)

        def queue_pass(make=make):
            qa, qb = make(), make()
            kids = _Children()
            ready = CTX.Event()
            kids.start(_q_echo, qa, qb, qn, ready)
            ready.wait(10)
            lat = [0] * qn
            now = time.perf_counter_ns
            t0 = time.perf_counter()
            for i in range(qn):
                start = now()
                qa.put(_record(i))
                got = _u64.unpack_from(_qget(qb), COID)[0]
                end = now()
                if got != i:
                    raise AssertionError("echo mismatch")
                lat[i] = (end - start) // 2
                while now() - end < opts.pace_ns:
                    pass
            t1 = time.perf_counter()
            kids.finish()
            return Sample(qn, t1 - t0, lat)
        rows.append(measure(suite, label, queue_pass, opts.passes, opts.warmup,
                            {"round_trips": qn, "pace_ns": opts.pace_ns,
                             "latency": "one-way = round trip / 2"}, unit="round trips/s"))
    return rows


def _options(argv):
    ap = argparse.ArgumentParser(prog="ring_bench")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--records", type=int, default=1000000,
                    help="per-record ring records per pass (batched: x20)")
    ap.add_argument("--queue-records", type=int, default=200000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--capacity", type=int, default=1 << 16)
    ap.add_argument("--pings", type=int, default=20000)
    ap.add_argument("--queue-pings", type=int, default=5000)
    ap.add_argument("--pace-ns", type=int, default=10000)
    ap.add_argument("--strategies", default="busy-spin,backoff")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="do not write perf/results")
    opts = ap.parse_args(argv or [])
    if opts.quick:
        opts.passes, opts.warmup = 1, 0
        opts.records, opts.queue_records, opts.pings, opts.queue_pings = 20480, 4096, 200, 100
        opts.batch = 256
    opts.strategies = opts.strategies.split(",")
    return opts


def _suite(name, body, title):
    def run(argv=None):
        opts = _options(argv)
        sys.stderr.write("%s on %s\n" % (name, platform.python_implementation()))
        rows = body(opts)
        if not opts.no_write:
            settings = {k: v for k, v in vars(opts).items() if k not in ("no_write",)}
            notes = ["2-core machine shared with other engineers' work while measuring: "
                     "treat absolute figures as indicative"]
            paths = write_results("ring_%s_%s" % (name, _interp()), title, rows, settings, notes)
            sys.stderr.write("wrote %s\n" % ", ".join(paths))
        return 0
    run.__doc__ = title
    return run


SUITES = {
    "one_to_one_throughput": _suite("one_to_one_throughput", lambda o: _one_to_one(o, False),
                                    "1P -> 1C per-record throughput (ring vs queues)"),
    "one_to_one_batched_throughput": _suite(
        "one_to_one_batched_throughput", lambda o: _one_to_one(o, True),
        "1P -> 1C batched throughput (ring vs queues)"),
    "three_to_one_throughput": _suite("three_to_one_throughput", _three_to_one,
                                      "3P -> 1C throughput, per record and batched"),
    "diamond_throughput": _suite("diamond_throughput", _diamond,
                                 "1P -> (journaler, replicator) -> matcher, batched"),
    "ping_pong_latency": _suite("ping_pong_latency", _ping_pong,
                                "paced ping-pong: one-way latency = RTT/2"),
}


if __name__ == "__main__":
    import signal
    # a killed run (timeout, ^C) still unlinks its segments: finally blocks run on SIGTERM
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if len(sys.argv) < 2 or sys.argv[1] not in SUITES:
        print("usage: python -m perf.ring_bench {%s} [options]" % ",".join(SUITES))
        sys.exit(2)
    sys.exit(SUITES[sys.argv[1]](sys.argv[2:]))
