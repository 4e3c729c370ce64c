"""Publisher benchmarks: WebSocket fan-out and REST order round trip, against the real engine.

Topology (``ringmatch run``: supervisor, journaler, matcher, publisher, each its own
process; plus the load generator and the subscriber process)::

    load generator --(input ring)--> journaler (fsync policy) --gates--> matcher
        (open loop, R cmds/s,                                  |  (output ring)
         stamps timestamp_ns)                                  v
                                                            publisher --WS fan-out-->
                                                       subscriber process: N WebSockets
                                                       on BTC-USD level2 + trades

* ``fanout_N``: messages/s received over all N subscribers and the latency from
  the command's timestamp (stamped by the load generator just before it writes
  the ring) to the subscriber's receipt, for messages carrying ``ts_ns``
  (l2update, trades).  That latency includes the ring, the journal write, the
  matcher and the publisher, so it is an upper bound of "matcher event -> client".
* ``rest_round_trip``: a signed ``POST /orders`` answered after its outcome
  event (sequential, keep-alive), against the alternative a colocated user
  would pick: ``engine.client.EngineClient`` (ring producer + output-ring reader).

Each measurement: a warm-up, then ``--passes`` passes; median/min/max are
reported.  The result is checked (every subscriber saw messages, every order
was accepted) so a fast but wrong run fails.  The engine is stopped with SIGINT
(its clean shutdown) and anything left is killed, segments unlinked.

    python -m perf.publisher_bench [--subscribers 10,100,1000] [--rate 2000]
        [--fsync batch|interval|off] [--matcher-interpreter auto|pypy|cpython]
"""
import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = {"key": "bench", "secret": "bench-secret", "account_id": 11}


# ---------------------------------------------------------------- child roles
def load(ring_in_name, rate, seconds, seed):
    """Open-loop limit orders on BTC-USD around a drifting mid (books change, trades happen)."""
    from engine.commands import Command
    from ringbuf import Ring
    ring = Ring.attach(ring_in_name)
    p = ring.producer(producer_id=21)
    rng = random.Random(seed)
    mid = 30000
    t0 = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        due = t0 + i / rate
        while True:
            now = time.monotonic()
            if now >= due:
                break
            time.sleep(min(due - now, 0.0005))
        mid += rng.choice((-1, 0, 1))
        side = 1 if i & 1 else 2
        price = mid + rng.randint(-10, 10)
        acct = 12 + (i & 1)
        cmd = Command.limit(acct, 1, side, price, rng.randint(1, 5), timestamp_ns=time.time_ns())
        cmd.producer_id = 21
        p.write(cmd.pack())
        if i % 2000 == 1999:
            for a in (12, 13):
                c = Command.mass_cancel(a, 1, timestamp_ns=time.time_ns())
                c.producer_id = 21
                p.write(c.pack())
    p.close()
    ring.close()
    print(json.dumps({"sent": n, "seconds": time.monotonic() - t0}), flush=True)
    return 0


def subscribers(url, n, seconds, passes):
    """N WebSockets on BTC-USD level2+trades; per pass (after 'go' on stdin) print counts + latencies."""
    import websockets
    from hdrh.histogram import HdrHistogram

    async def main():
        conns = []
        for i in range(n):
            ws = await websockets.connect(url, max_size=None, ping_interval=None)
            await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"],
                                      "channels": ["level2", "trades"]}))
            conns.append(ws)
        state = {"count": 0, "hist": HdrHistogram(1, 60 * 10 ** 9, 3), "recording": False,
                 "per_client": [0] * n, "resyncs": 0}

        async def reader(i, ws):
            async for text in ws:
                if not state["recording"]:
                    continue
                now = time.time_ns()
                state["count"] += 1
                state["per_client"][i] += 1
                # cheap field scan instead of json.loads: keep the client from being the bottleneck
                k = text.find('"ts_ns":')
                if k >= 0:
                    end = k + 8
                    while text[end].isdigit():
                        end += 1
                    state["hist"].record_value(max(1, now - int(text[k + 8:end])))
                elif '"type":"resync"' in text:
                    state["resyncs"] += 1
        tasks = [asyncio.ensure_future(reader(i, ws)) for i, ws in enumerate(conns)]
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        for _ in range(passes):
            await loop.run_in_executor(None, sys.stdin.readline)
            state.update(count=0, hist=HdrHistogram(1, 60 * 10 ** 9, 3), recording=True,
                         per_client=[0] * n, resyncs=0)
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            state["recording"] = False
            h = state["hist"]
            print(json.dumps({"messages": state["count"], "seconds": time.monotonic() - t0,
                              "p50_us": h.get_value_at_percentile(50) / 1e3,
                              "p99_us": h.get_value_at_percentile(99) / 1e3,
                              "max_us": h.get_max_value() / 1e3,
                              "min_client": min(state["per_client"]),
                              "resyncs": state["resyncs"]}), flush=True)
        for t in tasks:
            t.cancel()
        for ws in conns:
            ws.transport.abort()
    asyncio.run(main())
    return 0


# ---------------------------------------------------------------- controller
class Shard(object):
    """One engine started as a user does: ``ringmatch run --config FILE``."""

    def __init__(self, tmp, conflate_ms=5.0, fsync="batch", matcher_interpreter="auto"):
        import socket
        self.name = "pb%d%s" % (os.getpid(), os.urandom(2).hex())
        self.tmp = tmp
        self.procs = []
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        cfg = {"data_dir": os.path.join(tmp, "var"),
               "shards": [{"name": self.name, "symbols": ["BTC-USD", "ETH-USD", "ETH-BTC"],
                           "input_capacity": 1 << 16, "output_capacity": 1 << 18}],
               "publisher": {"host": "127.0.0.1", "port": self.port, "api_keys": [KEY],
                             "rate_limit": {"per_second": 1e9, "burst": 1e9},
                             "ws_queue": 10000, "ws_conflate_ms": conflate_ms},
               "journal": {"fsync": fsync},
               "matcher": {"interpreter": matcher_interpreter},
               "snapshot": {"every_commands": 0, "every_seconds": 0, "keep": 2}}
        self.config = os.path.join(tmp, "runtime.json")
        with open(self.config, "w") as f:
            json.dump(cfg, f)
        self.url = "http://127.0.0.1:%d" % self.port
        self.log_path = os.path.join(tmp, "engine.log")
        self.log = open(self.log_path, "w")
        ringmatch = os.path.join(os.path.dirname(sys.executable), "ringmatch")
        self.engine = self.spawn([ringmatch, "run", "--config", self.config],
                                 stdout=self.log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        import httpx
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(self.url + "/time", timeout=1).status_code == 200 and \
                        "event=ready" in open(self.log_path).read():
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.engine.poll() is not None:
                self.close()
                raise RuntimeError("engine did not start: %s" % open(self.log_path).read()[-3000:])
            time.sleep(0.1)
        m = re.search(r"event=matcher_interpreter name=(\S+)", open(self.log_path).read())
        self.matcher_interpreter = m.group(1) if m else "?"

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), **kw)
        self.procs.append(p)
        return p

    def close(self):
        if self.engine.poll() is None:
            self.engine.send_signal(signal.SIGINT)          # clean stop: drain, snapshot
            try:
                self.engine.wait(60)
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL) if p is self.engine else p.terminate()
                except OSError:
                    pass
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pid in re.findall(r"child_pid=(\d+)", open(self.log_path).read()):
            try:
                os.kill(int(pid), signal.SIGKILL)             # only if a child outlived it
            except OSError:
                pass
        import posix_ipc
        for suffix in ("in", "out"):
            try:
                posix_ipc.unlink_shared_memory("/rm-%s-%s" % (self.name, suffix))
            except posix_ipc.ExistentialError:
                pass
        self.log.close()


def _loadavg():
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "?"


def _stats(values):
    values = sorted(values)
    return values[len(values) // 2], values[0], values[-1]


def fund(shard):
    from engine.commands import Command
    from ringbuf import Ring
    ring = Ring.attach("rm-%s-in" % shard.name)
    p = ring.producer(producer_id=22)
    for acct in (11, 12, 13):
        for asset in (1, 2, 3):
            p.write(Command.deposit(acct, asset, 10 ** 16, timestamp_ns=time.time_ns()).pack())
    p.close()
    ring.close()
    time.sleep(0.5)


def bench_fanout(shard, n, rate, seconds, passes):
    sub = shard.spawn([sys.executable, "-m", "perf.publisher_bench", "subscribers",
                       "ws://127.0.0.1:%d/ws" % shard.port, str(n), str(seconds), str(passes + 1)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout.readline().strip() == "ready"
        results = []
        for i in range(passes + 1):            # pass 0: warm-up
            loader = subprocess.Popen(
                [sys.executable, "-m", "perf.publisher_bench", "load", "rm-%s-in" % shard.name,
                 str(rate), str(seconds + 1.0), str(i)], cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            sub.stdin.write("go\n")
            sub.stdin.flush()
            res = json.loads(sub.stdout.readline())
            loader.wait(60)
            time.sleep(0.5)
            if i:
                results.append(res)
        sub.stdin.close()
        try:
            sub.wait(10)
        except subprocess.TimeoutExpired:
            sub.terminate()
            sub.wait(10)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    for r in results:
        if r["messages"] == 0:
            raise AssertionError("no subscriber received anything: %r" % r)
    return results


def bench_rest(shard, orders, passes):
    import httpx
    from publisher.auth import signed_headers
    client = httpx.Client(base_url=shard.url, timeout=10)
    rng = random.Random(5)

    def one(i):
        body = json.dumps({"product_id": "ETH-USD", "side": "buy" if i & 1 else "sell",
                           "size": "0.1", "price": "%d.0" % (1000 + rng.randint(0, 50)
                                                             if i & 1 else 5000 + rng.randint(0, 50))})
        h = signed_headers(KEY["key"], KEY["secret"], "POST", "/orders", body)
        h["Content-Type"] = "application/json"
        t0 = time.perf_counter_ns()
        r = client.post("/orders", content=body, headers=h)
        dt = time.perf_counter_ns() - t0
        if r.status_code != 200 or r.json()["status"] != "open":
            raise AssertionError(r.text)
        return dt
    out = []
    for p in range(passes + 1):
        lat = sorted(one(i) for i in range(orders))
        h = signed_headers(KEY["key"], KEY["secret"], "DELETE", "/orders?product_id=ETH-USD")
        client.delete("/orders?product_id=ETH-USD", headers=h)
        if p:
            out.append((lat[len(lat) // 2] / 1e3, lat[int(len(lat) * 0.99)] / 1e3))
    client.close()
    return out


def bench_colocated(shard, orders, passes):
    from engine.client import EngineClient
    from engine.config import DEFAULT_CONFIG
    from ringbuf import Ring
    ring_in = Ring.attach("rm-%s-in" % shard.name)
    ring_out = Ring.attach("rm-%s-out" % shard.name)
    c = EngineClient(ring_in, ring_out, DEFAULT_CONFIG, producer_id=23, account=11)
    rng = random.Random(6)
    out = []
    try:
        for p in range(passes + 1):
            lat = []
            for i in range(orders):
                t0 = time.perf_counter_ns()
                seq = c.place_order("ETH-USD", "buy" if i & 1 else "sell", qty="0.1",
                                    price=("%d.0" % (1000 + rng.randint(0, 50)) if i & 1
                                           else "%d.0" % (5000 + rng.randint(0, 50))))
                ev = c.wait_outcome(seq, timeout=10)
                lat.append(time.perf_counter_ns() - t0)
                if ev.kind != 1:
                    raise AssertionError("order %d rejected: %r" % (seq, ev))
            c.mass_cancel(symbol="ETH-USD")
            lat.sort()
            if p:
                out.append((lat[len(lat) // 2] / 1e3, lat[int(len(lat) * 0.99)] / 1e3))
    finally:
        ring_in.close()
        ring_out.close()
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "load":
        return load(argv[1], float(argv[2]), float(argv[3]), int(argv[4]))
    if argv and argv[0] == "subscribers":
        return subscribers(argv[1], int(argv[2]), float(argv[3]), int(argv[4]))
    ap = argparse.ArgumentParser(prog="python -m perf.publisher_bench")
    ap.add_argument("--subscribers", default="10,100,1000")
    ap.add_argument("--rate", type=float, default=2000.0, help="load commands/s")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--rest-orders", type=int, default=300)
    ap.add_argument("--conflate-ms", default="0,5", help="ws_conflate_ms settings to compare")
    ap.add_argument("--fsync", default="batch", choices=("batch", "interval", "off"),
                    help="journal.fsync of the engine (default: the shipped default)")
    ap.add_argument("--matcher-interpreter", default="auto")
    ap.add_argument("--out", default=os.path.join(ROOT, "perf", "results", "publisher_bench.txt"))
    args = ap.parse_args(argv)
    lines = ["# perf/publisher_bench.py  %s" % time.strftime("%Y-%m-%d %H:%M:%S"),
             "# engine: ringmatch run (supervisor, journaler fsync=%s, matcher on %%s, publisher on "
             "%s %s); clients on the same interpreter; host: %s, %d CPUs; load average at start %s"
             % (args.fsync, platform.python_implementation(), platform.python_version(),
                platform.node(), os.cpu_count(), _loadavg()),
             "# settings: rate=%g cmds/s on BTC-USD, %gs per pass, %d passes after a warm-up; "
             "subscribers on level2+trades; ws_queue=10000; one subscriber process (asyncio)"
             % (args.rate, args.seconds, args.passes), ""]
    engine_kw = {"fsync": args.fsync, "matcher_interpreter": args.matcher_interpreter}
    interpreters = set()
    with tempfile.TemporaryDirectory() as tmp:
        shard = Shard(tmp, **engine_kw)
        interpreters.add(shard.matcher_interpreter)
        try:
            fund(shard)
            lines.append("rest_round_trip (sequential POST /orders, %d per pass; us)" % args.rest_orders)
            for label, fn in (("REST POST /orders (httpx, signed)", bench_rest),
                              ("colocated EngineClient (ring)", bench_colocated)):
                try:
                    res = fn(shard, args.rest_orders, args.passes)
                except (AttributeError, TypeError) as exc:     # API mismatch in a dependency
                    lines.append("  %-36s unavailable in this build: %r" % (label, exc))
                    print(lines[-1], flush=True)
                    continue
                p50 = _stats([r[0] for r in res])
                p99 = _stats([r[1] for r in res])
                lines.append("  %-36s p50 median %8.0f (min %.0f max %.0f)   p99 median %8.0f "
                             "(min %.0f max %.0f)" % ((label,) + p50 + p99))
                print(lines[-1], flush=True)
        finally:
            shard.close()
    lines.append("")
    lines.append("fanout_N (messages/s over all subscribers; latency command stamp -> "
                 "client receipt, us); ws_conflate_ms 0 = every batch published at once "
                 "(the plain alternative), 5 = default leading-edge throttle")
    for conflate in [float(x) for x in args.conflate_ms.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            shard = Shard(tmp, conflate_ms=conflate, **engine_kw)
            interpreters.add(shard.matcher_interpreter)
            try:
                fund(shard)
                for n in [int(x) for x in args.subscribers.split(",")]:
                    res = bench_fanout(shard, n, args.rate, args.seconds, args.passes)
                    rate = _stats([r["messages"] / r["seconds"] for r in res])
                    p50 = _stats([r["p50_us"] for r in res])
                    p99 = _stats([r["p99_us"] for r in res])
                    lines.append("  conflate=%-3g N=%-5d msgs/s median %8.0f (min %.0f max %.0f)  "
                                 "p50 median %8.0f (min %.0f max %.0f)  p99 median %8.0f "
                                 "(min %.0f max %.0f)  resyncs %d  min msgs of one client %d"
                                 % ((conflate, n) + rate + p50 + p99
                                    + (sum(r["resyncs"] for r in res),
                                       min(r["min_client"] for r in res))))
                    print(lines[-1], flush=True)
            finally:
                shard.close()
    lines[1] = lines[1] % "/".join(sorted(interpreters))
    lines.append("# load average at end %s" % _loadavg())
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
