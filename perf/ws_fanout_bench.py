"""WebSocket fan-out benchmark: N subscribers to one product under R commands/s, real engine.

Topology (one shard started as a user would: ``ringmatch run``, via perf.e2e_bench.Engine)::

    e2e load generators (open loop, R cmds/s, BTC-USD, stamped with the scheduled time)
        |
        v
    rm-S-in --> journaler --> matcher --> rm-S-out --+--> publisher --WS--> client processes
                                                     |                      (K of them, N
                                                     `--> "bench" consumer   connections in
                                                          (OutcomeTimer:     all, one
                                                          the matcher's       selectors loop
                                                          received rate)      each, RFC 6455)

Each step offers R commands/s for ``--seconds`` with N subscribers connected (all
subscribed to BTC-USD level2 + trades and holding their snapshot before the load
starts) or with none (N = 0, the baseline): the passes alternate the N values
at each rate, so "with" and "without" subscribers are measured side by side in
the same run.  Per step:

* the matcher's received rate (outcome events per second at the bench consumer,
  perf.e2e_bench.run_step), so a fan-out that slows the publisher and through
  the output ring's gating the matcher shows up here, and the e2e outcome latency;
* per update, delivery latency = client receipt time - the message's ``ts_ns``
  (the engine timestamp of the newest event in it, which is the load
  generator's scheduled send time of that command): p50/p99/max, for l2update
  and trades; and for l2update a bound on the age of its *oldest* change:
  receipt - the previous l2update's ``ts_ns`` (a conflated message holds the
  changes of events after that one);
* per client: messages, bytes, gaps, resyncs; whether every client's final
  level2 book (snapshot + every l2update, gap rule) equals ``GET
  /products/BTC-USD/book?level=2`` (price/size strings and ``sequence``), once
  the publisher has caught up and every connection answered a ping;
* CPU seconds of every engine process, of the generators and of the client
  processes (/proc/<pid>/stat), per command and per second.

The clients are cheap on purpose (a selectors loop, frame parsing by hand, one
``json.loads`` per distinct payload: every subscriber gets the same bytes, so
payloads are parsed once per process and each client checks its bytes against
the first copy; books are rebuilt once per distinct (snapshot, last sequence)
at the end).  They run on PyPy when ``.venv-pypy`` exists (``--client-python``).
On a 2-core machine they compete for the same cores as the engine: the results
say so and report the clients' own CPU.

    python -m perf.ws_fanout_bench [--clients 1,100,1000] [--rates 10000,100000]
        [--seconds 5] [--passes 2] [--client-procs 2] [--stem ws_fanout_<date>]
    python -m perf.ws_fanout_bench --encode [GIT_REV]    # the hub's cost per batch only
"""
import argparse
import array
import base64
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "perf", "results")
PRODUCT = "BTC-USD"
HEADER = 256                  # bytes of a message a client reads when it does not verify it
VERIFY_EVERY = 10             # every 10th connection compares whole payloads
_TYPE_RE = re.compile(rb'"type":"([a-z0-9_]+)"')
_SEQ_RE = re.compile(rb'"sequence":(\d+)')
_TS_RE = re.compile(rb'"ts_ns":(\d+)')


# ---------------------------------------------------------------- the client process
class _Conn(object):
    """One subscriber connection (a non-blocking socket): frames parsed by hand, payloads
    checked against the process's first copy (``Shared``), sequences followed (gap rule)."""

    def __init__(self, shared, port, sock, verify):
        self.shared = shared
        self.port = port
        self.sock = sock
        self.buf = bytearray(1 << 18)
        self.end = 0
        self.verify = verify          # compare every payload byte for byte with the first copy
        self.handshaken = False
        self.failed = None
        self.snapshot = None          # payload of the last snapshot
        self.seq = None               # level2 sequence the book is at (None: no book)
        self.chain_ok = True          # every l2update since the snapshot equal to the first copy
        self.prev_l2_ts = 0
        self.messages = 0
        self.bytes = 0
        self.l2 = 0
        self.trades = 0
        self.gaps = 0
        self.resyncs = 0
        self.mismatches = 0
        self.closed = False
        self.pong = True              # no ping outstanding

    def handshake(self):
        key = base64.b64encode(os.urandom(16)).decode()
        self.write(("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n" % (self.port, key)).encode())

    def write(self, data):
        """Small writes only (handshake, subscribe, ping, pong): retried until sent."""
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                time.sleep(0.001)

    def send(self, obj):
        data = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(data)
        head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else \
            struct.pack("!BBH", 0x81, 0x80 | 126, n)
        self.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def receive(self):
        """recv_into the connection's buffer, then handle every complete frame."""
        buf = self.buf
        if self.end == len(buf):
            buf.extend(bytes(len(buf)))             # a frame larger than the buffer
        n = self.sock.recv_into(memoryview(buf)[self.end:])
        if not n:
            return False
        self.end += n
        self.frames(time.time_ns())
        return True

    def frames(self, now):
        buf, n = self.buf, self.end
        pos = 0
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n", 0, n)
            if end < 0:
                return
            if b" 101 " not in bytes(buf[:end]).split(b"\r\n", 1)[0]:
                self.failed = bytes(buf[:200])
                self.closed = True
                return
            self.handshaken = True
            pos = end + 4
        while n - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            start, stop = pos + head, pos + head + length
            if stop > n:
                break
            opcode = buf[pos] & 0x0F
            pos = stop
            if opcode == 0x1:
                self.on_message(buf, start, stop, now)
            elif opcode == 0x9:                      # ping -> pong (masked)
                payload = bytes(buf[start:stop])
                mask = os.urandom(4)
                self.write(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + mask +
                           bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            elif opcode == 0x8:
                self.closed = True
        if pos:
            rest = n - pos
            if rest:
                buf[:rest] = buf[pos:n]
            self.end = rest

    def on_message(self, buf, start, stop, now):
        """One text message at ``buf[start:stop]``.  Only its first HEADER bytes are read
        (type, sequence, ts_ns come first) unless the connection verifies payloads."""
        shared = self.shared
        length = stop - start
        if length <= HEADER or self.verify:
            payload = bytes(buf[start:stop])
            info = shared.info(payload)
        else:
            payload = None
            info = shared.info_header(bytes(buf[start:start + HEADER]), length)
            if info[0] is None:                    # a snapshot: its type comes last
                payload = bytes(buf[start:stop])
                info = shared.info(payload)
        kind = info[0]
        self.messages += 1
        self.bytes += length
        if kind == "l2update":
            self.l2 += 1
            seq = info[1]
            first = shared.l2_payload.get(seq)
            if first is None:                        # the first copy in this process
                shared.l2_payload[seq] = payload if payload is not None \
                    else bytes(buf[start:stop])
            elif payload is not None and first is not payload and first != payload:
                self.mismatches += 1
                self.chain_ok = False
            elif len(first) != length:
                self.mismatches += 1
                self.chain_ok = False
            if self.seq is not None:
                if seq != self.seq + 1:
                    self.gaps += 1
                    self.seq = None
                else:
                    self.seq = seq
            ts = info[2]
            if shared.recording:
                shared.l2_latency.append(now - ts)
                if self.prev_l2_ts:
                    shared.l2_oldest.append(now - self.prev_l2_ts)
            self.prev_l2_ts = ts
        elif kind == "trades":
            self.trades += 1
            if shared.recording:
                shared.trades_latency.append(now - info[2])
        elif kind == "snapshot":
            if payload is None:
                payload = bytes(buf[start:stop])
            self.snapshot = shared.snapshots.setdefault(payload, payload)   # one object each
            self.seq = shared.info(payload)[1]
            self.chain_ok = True
        elif kind == "resync":
            self.resyncs += 1
            self.seq = None
        elif kind == "pong":
            self.pong = True

    def ping(self):
        self.pong = False
        self.send({"type": "ping"})


class Shared(object):
    """What a client process's connections share: parsed payloads, first copies, latencies."""

    def __init__(self):
        self.cache = {}               # payload -> (type, sequence, ts_ns)
        self.l2_payload = {}          # sequence -> first l2update payload received
        self.snapshots = {}           # payload -> the first equal payload (memo key)
        self.l2_latency = array.array("q")
        self.l2_oldest = array.array("q")
        self.trades_latency = array.array("q")
        self.recording = False

    def info_header(self, head, length):
        """(type, sequence, ts_ns) from a message's first bytes (ws.py writes type,
        channel, product_id, sequence, input_seq, ts_ns of l2update and trades before
        their lists); type None when it is not there (a snapshot)."""
        key = (head, length)
        got = self.cache.get(key)
        if got is None:
            kind = _TYPE_RE.match(head, 1)
            seq = _SEQ_RE.search(head)
            ts = _TS_RE.search(head)
            got = (kind.group(1).decode() if kind else None, int(seq.group(1)) if seq else None,
                   int(ts.group(1)) if ts else 0)
            self.cache[key] = got
        return got

    def info(self, payload):
        got = self.cache.get(payload)
        if got is None:
            m = json.loads(payload)
            got = (m.get("type"), m.get("sequence"), m.get("ts_ns") or 0)
            if got[0] in ("l2update", "trades", "snapshot"):   # pongs etc. are not shared
                self.cache[payload] = got
        return got

    def book(self, snapshot, last, memo):
        """(bids, asks) of snapshot + l2updates up to ``last``; None if one is missing."""
        key = (id(snapshot), last)
        if key in memo:
            return memo[key]
        m = json.loads(snapshot)
        bids, asks = dict(map(tuple, m["bids"])), dict(map(tuple, m["asks"]))
        result = (bids, asks)
        for seq in range(m["sequence"] + 1, last + 1):
            payload = self.l2_payload.get(seq)
            if payload is None:
                result = None
                break
            for side, price, size in json.loads(payload)["changes"]:
                book = bids if side == "buy" else asks
                if float(size) == 0:
                    book.pop(price, None)
                else:
                    book[price] = size
        memo[key] = result
        return result


def client_main(argv):
    """A client process: ``port connections latency_file``; commands on stdin (JSON lines):
    ``go`` (record latencies), ``check`` {rest book} -> per-connection results, ``quit``.

    One thread, one ``selectors`` loop over every socket (no asyncio: its per-read
    callbacks cost more than the parsing), ``recv`` of up to 256 KiB at a time.
    """
    import selectors
    import socket
    port, count, latency_file = int(argv[0]), int(argv[1]), argv[2]
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 256)), hard))
    except (ImportError, ValueError, OSError):
        pass
    shared = Shared()
    sel = selectors.DefaultSelector()
    stdin_fd = sys.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_READ, None)
    pending = [b""]                   # stdin bytes not yet a line
    commands = []

    def pump(until, timeout):
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise RuntimeError("client: timed out")
            for key, _ in sel.select(0.2):
                conn = key.data
                if conn is None:
                    chunk = os.read(stdin_fd, 65536)
                    if not chunk:
                        commands.append({"cmd": "quit"})
                        sel.unregister(stdin_fd)
                        continue
                    lines = (pending[0] + chunk).split(b"\n")
                    pending[0] = lines.pop()
                    commands.extend(json.loads(line) for line in lines if line.strip())
                    continue
                try:
                    alive = conn.receive()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    alive = False
                if not alive:
                    conn.closed = True
                    sel.unregister(conn.sock)

    def sync(timeout):
        live = [c for c in conns if not c.closed]
        for c in live:
            c.ping()
        pump(lambda: all(c.pong or c.closed for c in live), timeout)

    conns = []
    sub = {"type": "subscribe", "product_ids": [PRODUCT], "channels": ["level2", "trades"]}
    t0 = time.monotonic()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.setblocking(False)
        conn = _Conn(shared, port, sock, verify=len(conns) % VERIFY_EVERY == 0)
        conn.handshake()
        sel.register(sock, selectors.EVENT_READ, conn)
        conns.append(conn)
    pump(lambda: all(c.handshaken or c.closed for c in conns), 120)
    failed = [c.failed for c in conns if not c.handshaken]
    assert not failed, "handshakes refused: %r" % failed[:3]
    for c in conns:
        c.send(sub)
    sync(120)
    assert all(c.seq is not None for c in conns), "a connection has no snapshot"
    _say({"ready": len(conns), "connect_s": time.monotonic() - t0})
    while True:
        pump(lambda: commands, 1e9)
        cmd = commands.pop(0)
        if cmd["cmd"] == "go":
            shared.recording = True
            _say({"going": True})
        elif cmd["cmd"] == "check":
            shared.recording = False
            t1 = time.monotonic()
            sync(120)
            _say(_check(conns, shared, cmd["book"], latency_file, sync_s=time.monotonic() - t1))
        elif cmd["cmd"] == "quit":
            for c in conns:
                c.sock.close()
            return 0


def _check(conns, shared, rest, latency_file, sync_s):
    bids = {p: q for p, q in rest["bids"]}
    asks = {p: q for p, q in rest["asks"]}
    memo = {}
    equal = seq_differs = differs = 0
    for c in conns:
        if c.seq != rest["sequence"]:
            seq_differs += 1
            continue
        book = shared.book(c.snapshot, c.seq, memo) if c.chain_ok else None
        if book == (bids, asks):
            equal += 1
        else:
            differs += 1
    with open(latency_file, "wb") as f:
        for arr in (shared.l2_latency, shared.l2_oldest, shared.trades_latency):
            f.write(struct.pack("<q", len(arr)))
            arr.tofile(f)
    return {"connections": len(conns), "closed": sum(c.closed for c in conns),
            "book_equal": equal, "book_seq_differs": seq_differs, "book_differs": differs,
            "final_seqs": sorted(set(c.seq for c in conns if c.seq is not None))[:5],
            "messages": [c.messages for c in conns], "bytes": [c.bytes for c in conns],
            "l2updates": [c.l2 for c in conns], "trades": [c.trades for c in conns],
            "gaps": sum(c.gaps for c in conns), "resyncs": sum(c.resyncs for c in conns),
            "mismatched_payloads": sum(c.mismatches for c in conns),
            "distinct_books": len(memo), "sync_s": sync_s}


def _say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- the parent
class ClientGroup(object):
    """K client processes holding N connections in all."""

    def __init__(self, python, port, total, procs, workdir):
        self.procs = []
        self.files = []
        per = [total // procs + (1 if k < total % procs else 0) for k in range(procs)]
        for k, count in enumerate(c for c in per if c):
            path = os.path.join(workdir, "latency-%d.bin" % k)
            self.files.append(path)
            self.procs.append(subprocess.Popen(
                [python, "-m", "perf.ws_fanout_bench", "--client", str(port), str(count), path],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        self.ready = [self._read(p, 600) for p in self.procs]

    @staticmethod
    def _read(proc, timeout):
        import select
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError("client process %d did not answer in %ds" % (proc.pid, timeout))
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("client process %d exited (%s)" % (proc.pid, proc.poll()))
        return json.loads(line)

    def command(self, obj, timeout=600):
        for p in self.procs:
            p.stdin.write((json.dumps(obj) + "\n").encode())
            p.stdin.flush()
        return [self._read(p, timeout) for p in self.procs]

    def pids(self):
        return [p.pid for p in self.procs]

    def latencies(self):
        import numpy as np
        out = [[], [], []]
        for path in self.files:
            with open(path, "rb") as f:
                for i in range(3):
                    (n,) = struct.unpack("<q", f.read(8))
                    out[i].append(np.frombuffer(f.read(8 * n), dtype=np.int64))
        return [np.concatenate(x) if x else np.zeros(0, np.int64) for x in out]

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.write(b'{"cmd": "quit"}\n')
                    p.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _http_json(port, path, timeout=30, retry_s=60.0):
    """GET a JSON answer; connection errors are retried for ``retry_s`` (a restarting
    publisher), then raised."""
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + retry_s
    while True:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                        timeout=timeout) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _ws_metrics(port):
    """ringmatch_ws_* values of GET /metrics ({} when the endpoint is absent)."""
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            text = r.read().decode()
    except Exception:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("ringmatch_ws_"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def _publisher_caught_up(engine, timeout=120):
    """The publisher consumed the output ring up to its cursor and applied it (GET /time)."""
    from ringbuf import Ring
    deadline = time.monotonic() + timeout
    with Ring.attach("rm-%s-out" % engine.shard) as out_ring, \
            Ring.attach("rm-%s-in" % engine.shard) as in_ring:
        target_in = in_ring.cursor
        while time.monotonic() < deadline:
            if out_ring.consumer_sequence("publisher") >= out_ring.cursor:
                try:
                    if _http_json(engine.port, "/time")["input_seq"] >= target_in - 2:
                        return True
                except Exception:
                    pass
            time.sleep(0.05)
    return False


def _rss_mb(pid):
    """(current, peak) resident set of ``pid`` in MiB from /proc/<pid>/status."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return out.get("VmRSS"), out.get("VmHWM")


def _pct(values):
    import numpy as np
    if not len(values):
        return None
    v = np.sort(values)
    return {"p50_ms": float(v[int(0.50 * (len(v) - 1))]) / 1e6,
            "p99_ms": float(v[int(0.99 * (len(v) - 1))]) / 1e6,
            "max_ms": float(v[-1]) / 1e6, "count": int(len(v))}


def _spread(values):
    if not values:
        return None
    values = sorted(values)
    return {"min": values[0], "median": values[len(values) // 2], "max": values[-1]}


def run_fanout_step(args, engine, timer, rate, clients, workdir):
    """One step: ``clients`` subscribers (0 = none) while the generators offer ``rate``."""
    from perf.e2e_bench import _cpu_seconds, run_step
    group = None
    out = {"clients": clients, "rate": rate}
    try:
        if clients:
            group = ClientGroup(args.client_python, engine.port, clients,
                                min(args.client_procs, clients), workdir)
            out["connect_s"] = max(r["connect_s"] for r in group.ready)
            group.command({"cmd": "go"})
        from perf.e2e_bench import engine_pids
        pub_pid = engine_pids(engine).get("publisher")
        try:                                   # reset the publisher's peak RSS (VmHWM)
            with open("/proc/%d/clear_refs" % pub_pid, "w") as f:
                f.write("5")
        except (OSError, TypeError):
            pass
        metrics0 = _ws_metrics(engine.port)
        client_cpu0 = [_cpu_seconds(pid) for pid in (group.pids() if group else [])]
        t0 = time.monotonic()
        step = run_step(engine, timer, rate, args.seconds, args.producers)
        caught_up = _publisher_caught_up(engine)
        wall = time.monotonic() - t0
        client_cpu = sum(_cpu_seconds(pid) for pid in (group.pids() if group else [])) - \
            sum(client_cpu0)
        out.update({"received_rate": step["received_rate"], "outcomes": step["outcomes"],
                    "unsent": step["unsent"], "drained": step["drained"],
                    "publisher_caught_up": caught_up,
                    "outcome_latency_ms": {k: step["latency_ns"][k] / 1e6
                                           for k in ("p50", "p99", "max")},
                    "cpu_seconds": dict(step["cpu_seconds"]),
                    "cpu_us_per_command": dict(step["cpu_us_per_command"]),
                    "loadavg": os.getloadavg()})
        out["cpu_seconds"]["clients"] = round(client_cpu, 3)
        out["client_cpu_share"] = client_cpu / wall if wall else None
        pub_pid = engine_pids(engine).get("publisher")
        out["publisher_rss_mb"], out["publisher_peak_rss_mb"] = _rss_mb(pub_pid) if pub_pid \
            else (None, None)
        out["restarts_so_far"] = sum(1 for line in engine.lines if "child_restarted" in line)
        metrics1 = _ws_metrics(engine.port)
        out["ws_metrics_delta"] = {k: metrics1[k] - metrics0.get(k, 0.0) for k in metrics1}
        if group:
            results = None
            for attempt in range(3):                 # a CLOCK tick may move the book meanwhile
                rest = _http_json(engine.port, "/products/%s/book?level=2" % PRODUCT)
                results = group.command({"cmd": "check", "book": rest})
                if not sum(r["book_seq_differs"] for r in results):
                    break
                time.sleep(0.2)
            lat = group.latencies()
            flat = lambda key: [v for r in results for v in r[key]]   # noqa: E731
            out.update({
                "rest_sequence": rest["sequence"], "rest_levels": len(rest["bids"]) + len(rest["asks"]),
                "connections": sum(r["connections"] for r in results),
                "closed": sum(r["closed"] for r in results),
                "book_equal": sum(r["book_equal"] for r in results),
                "book_seq_differs": sum(r["book_seq_differs"] for r in results),
                "book_differs": sum(r["book_differs"] for r in results),
                "gaps": sum(r["gaps"] for r in results),
                "resyncs": sum(r["resyncs"] for r in results),
                "mismatched_payloads": sum(r["mismatched_payloads"] for r in results),
                "messages_per_client": _spread(flat("messages")),
                "bytes_per_client": _spread(flat("bytes")),
                "l2updates_per_client": _spread(flat("l2updates")),
                "trades_msgs_per_client": _spread(flat("trades")),
                "l2_latency": _pct(lat[0]), "l2_oldest_change_latency": _pct(lat[1]),
                "trades_latency": _pct(lat[2]),
                "sync_s": max(r["sync_s"] for r in results)})
    finally:
        if group is not None:
            group.close()
    return out


def _fmt(v, spec="%.1f"):
    return "-" if v is None else spec % v


def _markdown(report):
    env = report["environment"]
    lines = ["# WebSocket fan-out: N subscribers to %s level2 + trades under load" % PRODUCT, "",
             "Command: `%s`" % report["command"], "",
             "Git revision %s; %d CPUs; load average at start %s, at end %s; engine matcher on %s, "
             "publisher on %s; client processes on %s (%d of them at most); fsync=%s; "
             "%.0f s per step, %d passes, alternating N at each rate (N = 0: no subscriber, "
             "the baseline of the same run)." % (
                 report["git"], env["cpus"], " ".join("%.2f" % x for x in report["loadavg_start"]),
                 " ".join("%.2f" % x for x in report["loadavg_end"]), report["matcher_interpreter"],
                 env["interpreter"], report["client_interpreter"], report["client_procs"],
                 report["fsync"], report["seconds"], report["passes"]), "",
             "**The client processes run on the same %d cores as the engine** (and ~4 other "
             "jobs on this shared box): their CPU (column `clients`) is taken from the engine. "
             "Latency = client receipt - the message's `ts_ns` (the newest event's engine "
             "timestamp = the load generator's scheduled send time of that command), so it "
             "includes ring, journal, matcher, publisher batching, conflation and the network; "
             "`outcome p99` is the same step's latency of the matcher's outcome events at the "
             "bench's ring consumer (no publisher, no WebSocket): what the pipeline before the "
             "fan-out already costs; "
             "`oldest` bounds the age of the oldest change in a conflated l2update (receipt - "
             "the previous l2update's `ts_ns`)." % env["cpus"], "",
             "## Medians over the passes (min-max in brackets)", "",
             "| rate | N | matcher received/s | vs N=0 | outcome p99 ms | l2 p50 ms | l2 p99 ms | "
             "l2 max ms | oldest p99 ms | trades p99 ms | l2 msgs/client | bytes/client | "
             "books equal REST | gaps / resyncs | CPU s: publisher | clients | matcher | "
             "publisher peak RSS MiB |", "| " + " | ".join(["---"] * 18) + " |"]
    for row in report["summary"]:
        lines.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            "{:,.0f}".format(row["rate"]), row["clients"],
            "{:,.0f} [{:,.0f}-{:,.0f}]".format(*row["received_rate"]),
            _fmt(row["vs_baseline"], "%.3f"), _fmt(row["outcome_p99"]),
            _fmt(row["l2_p50"], "%.1f"), "%s [%s-%s]" % tuple(_fmt(x) for x in row["l2_p99"])
            if row["l2_p99"] else "-", _fmt(row["l2_max"]), _fmt(row["oldest_p99"]),
            _fmt(row["trades_p99"]), _fmt(row["l2_msgs"], "%.0f"), _fmt(row["bytes"], "%.0f"),
            row["books"], row["gaps_resyncs"], _fmt(row["cpu_publisher"], "%.2f"),
            _fmt(row["cpu_clients"], "%.2f"), _fmt(row["cpu_matcher"], "%.2f"),
            _fmt(row["peak_rss"], "%.0f")))
    lines += ["", "## Every step", "", "```"]
    for st in report["steps"]:
        lines.append(json.dumps({k: v for k, v in st.items()
                                 if k not in ("cpu_us_per_command",)}, sort_keys=True))
    lines += ["```", ""]
    return "\n".join(lines)


def summarize(steps):
    import statistics
    rows = []
    baseline = {}
    keys = sorted(set((s["rate"], s["clients"]) for s in steps))
    for rate, n in keys:
        group = [s for s in steps if s["rate"] == rate and s["clients"] == n]

        def med(f):
            vals = [f(s) for s in group]
            vals = [v for v in vals if v is not None]
            return statistics.median(vals) if vals else None

        def spread(f):
            vals = [f(s) for s in group]
            vals = [v for v in vals if v is not None]
            return (statistics.median(vals), min(vals), max(vals)) if vals else None
        rec = spread(lambda s: s["received_rate"])
        if n == 0:
            baseline[rate] = rec[0]
        lat = lambda key, p: (lambda s: s[key][p] if s.get(key) else None)   # noqa: E731
        rows.append({
            "rate": rate, "clients": n, "received_rate": rec,
            "vs_baseline": rec[0] / baseline[rate] if baseline.get(rate) else None,
            "l2_p50": med(lat("l2_latency", "p50_ms")), "l2_p99": spread(lat("l2_latency", "p99_ms")),
            "l2_max": med(lat("l2_latency", "max_ms")),
            "oldest_p99": med(lat("l2_oldest_change_latency", "p99_ms")),
            "trades_p99": med(lat("trades_latency", "p99_ms")),
            "l2_msgs": med(lambda s: s["l2updates_per_client"]["median"] if n else None),
            "bytes": med(lambda s: s["bytes_per_client"]["median"] if n else None),
            "books": ("-" if not n else " ".join("%d/%d" % (s["book_equal"], s["connections"])
                                                 for s in group)),
            "gaps_resyncs": ("-" if not n else " ".join("%d/%d" % (s["gaps"], s["resyncs"])
                                                        for s in group)),
            "cpu_publisher": med(lambda s: s["cpu_seconds"].get("publisher")),
            "cpu_clients": med(lambda s: s["cpu_seconds"].get("clients")),
            "cpu_matcher": med(lambda s: s["cpu_seconds"].get("matcher")),
            "outcome_p99": med(lambda s: s["outcome_latency_ms"]["p99"]),
            "peak_rss": max([s.get("publisher_peak_rss_mb") or 0 for s in group]) or None})
    # publisher_peak_rss_mb: VmHWM, reset (clear_refs 5) at the start of each step
    return rows


def encode_cost(commands=60000, per_batch=1000, passes=7, compare_rev=None):
    """The hub's own cost per batch, in process (no sockets): one subscriber to BTC-USD
    level2 + trades, batches of ``per_batch`` commands (10 ms at 100k/s) of the e2e
    workload through the reference Matcher and the columnar service; publisher/ws.py
    of this checkout against no subscriber and, with ``compare_rev``, that revision's
    publisher/ws.py (git show), alternating, ``passes`` times.  Returns
    {label: [us per batch, ...]}."""
    import importlib.util
    import numpy as np
    from engine.commands import Command
    from engine.config import DEFAULT_CONFIG
    from engine.events import BytesSink
    from engine.matcher import Matcher
    from perf.workload import generate_commands
    from publisher.columnar import ColumnarReadModel, EventBatch
    from publisher.columnar_service import ColumnarService
    from publisher.products import Catalog
    from ringbuf._native import ffi
    import publisher.ws as ws_now
    arr, target = generate_commands(commands, seed=1, symbol_id=1, accounts=1000)
    sink = BytesSink()
    matcher = Matcher(DEFAULT_CONFIG, sink)
    spec = DEFAULT_CONFIG.symbols[1]
    seq = 0
    for account in range(1, 1001):
        for asset, amount in ((spec.quote_asset, 10 ** 13), (spec.base_asset, 10 ** 14)):
            seq += 1
            matcher.process(seq, Command.deposit(account, asset, amount))
    first = seq + 1
    cancels = target >= 0
    arr["order_id"][cancels] = first + target[cancels]
    arr["timestamp_ns"] = 1764806400 * 10 ** 9 + np.arange(commands) * (10 ** 9 // 100000)
    arr["producer_id"] = 100
    raw = bytearray(arr.tobytes())
    records = ffi.cast("rm_command_t *", ffi.from_buffer(raw))
    funding = bytes(sink.take())
    batches = []
    for start in range(0, commands, per_batch):
        for i in range(start, min(commands, start + per_batch)):
            matcher.process(first + i, records[i])
        batches.append(bytes(sink.take()))
    mods = [("this checkout, no subscriber", ws_now, False),
            ("this checkout, 1 subscriber", ws_now, True)]
    if compare_rev:
        text = subprocess.run(["git", "show", "%s:publisher/ws.py" % compare_rev], cwd=ROOT,
                              stdout=subprocess.PIPE, check=True).stdout
        path = os.path.join(tempfile.mkdtemp(prefix="rm-wsold-"), "ws_old.py")
        with open(path, "wb") as f:
            f.write(text)
        spec_old = importlib.util.spec_from_file_location("ws_old", path)
        ws_old = importlib.util.module_from_spec(spec_old)
        spec_old.loader.exec_module(ws_old)
        mods.append(("%s, 1 subscriber" % compare_rev, ws_old, True))

    class _Socket(object):              # a client of the writer-task path (no network)
        async def send_text(self, text):
            pass

    def one(mod, subscribed):
        catalog = Catalog.from_exchange(DEFAULT_CONFIG)
        model = ColumnarReadModel([1, 2, 3], specs={s: DEFAULT_CONFIG.symbol_by_id(s)
                                                    for s in (1, 2, 3)})
        hub = mod.Hub(catalog, model, conflate_ms=0)
        service = ColumnarService(catalog, model, hub)
        service.on_events(EventBatch.from_bytes(funding))
        if subscribed:
            client = mod.WsClient(hub, _Socket(), 10 ** 9)
            hub.add(client)
            hub.subscribe(client, "level2", 1)
            hub.subscribe(client, "trades", 1)
        t0 = time.perf_counter()
        for data in batches:
            service.on_events(EventBatch.from_bytes(data))
            if subscribed:
                client.queue.clear()
        return (time.perf_counter() - t0) / len(batches) * 1e6
    out = {label: [] for label, _, _ in mods}
    events = sum(len(b) for b in batches) // 128
    for _ in range(passes):
        for label, mod, subscribed in mods:
            out[label].append(one(mod, subscribed))
    return out, {"batches": len(batches), "events_per_batch": events / len(batches),
                 "commands_per_batch": per_batch}


def _default_client_python():
    pypy = os.path.join(ROOT, ".venv-pypy", "bin", "python")
    return pypy if os.path.exists(pypy) else sys.executable


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--client":
        return client_main(argv[1:])
    if argv and argv[0] == "--encode":     # --encode [REV]: the hub's cost per batch, in process
        import platform
        import statistics
        res, info = encode_cost(compare_rev=argv[1] if len(argv) > 1 else None)
        print("python -m perf.ws_fanout_bench %s  (%s %s, loadavg %s; %s)" % (
            " ".join(argv), platform.python_implementation(), platform.python_version(),
            " ".join("%.2f" % x for x in os.getloadavg()), json.dumps(info)))
        for label, values in res.items():
            print("%-40s us per batch: median %.0f  min %.0f  max %.0f  (%d passes)" % (
                label, statistics.median(values), min(values), max(values), len(values)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m perf.ws_fanout_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,100,1000")
    parser.add_argument("--rates", default="10000,100000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--client-python", default=_default_client_python())
    parser.add_argument("--interpreter", default="auto", help="matcher interpreter")
    parser.add_argument("--fsync", default="batch")
    parser.add_argument("--port", type=int, default=18191)
    parser.add_argument("--warmup", type=int, default=200000)
    parser.add_argument("--stem", default="ws_fanout_" + time.strftime("%Y-%m-%d", time.gmtime()))
    args = parser.parse_args(argv)
    from perf.e2e_bench import Engine, OutcomeTimer, _fund, _git_revision, run_step
    from perf.harness import environment
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)   # the publisher inherits it
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rates = [float(r) for r in args.rates.split(",")]
    counts = [int(n) for n in args.clients.split(",")]
    report = {"command": "python -m perf.ws_fanout_bench " + " ".join(argv),
              "loadavg_start": os.getloadavg(), "seconds": args.seconds, "passes": args.passes,
              "fsync": args.fsync, "client_procs": args.client_procs, "steps": []}
    out = subprocess.run([args.client_python, "-c", "import sys; print(sys.implementation.name,"
                          " '.'.join(map(str, sys.version_info[:3])))"],
                         stdout=subprocess.PIPE, check=True)
    report["client_interpreter"] = out.stdout.decode().strip()
    workdir = tempfile.mkdtemp(prefix="rm-wsfan-")
    base = args.stem if os.path.isabs(args.stem) else os.path.join(RESULTS, args.stem)
    engine = Engine(workdir, args.interpreter, args.fsync, args.port)
    engine.port = args.port
    timer = None
    try:
        engine.start()
        _fund(engine)
        timer = OutcomeTimer(engine.shard)
        timer.start()
        if args.warmup:
            warm = run_step(engine, timer, 100000.0, args.warmup / 100000.0, args.producers,
                            mode="all")
            print("warm-up: %d commands, received %.0f/s" % (warm["sent"], warm["received_rate"]),
                  flush=True)
        timer.take()
        for p in range(args.passes):
            for rate in rates:
                order = [0] + counts
                if p % 2:
                    order.reverse()              # alternate: no drift favours one N
                for n in order:
                    st = run_fanout_step(args, engine, timer, rate, n, workdir)
                    st["pass"] = p
                    report["steps"].append(st)
                    _write(report, base + ".partial")        # what is done survives a crash
                    l2 = st.get("l2_latency") or {}
                    print("pass %d rate %7.0f N %4d: matcher %8.0f/s  l2 p50 %s p99 %s max %s ms"
                          "  books %s/%s  gaps %s resyncs %s  CPU publisher %.2f clients %.2f"
                          "  publisher peak RSS %s MiB  restarts %d"
                          % (p, rate, n, st["received_rate"], _fmt(l2.get("p50_ms")),
                             _fmt(l2.get("p99_ms")), _fmt(l2.get("max_ms")),
                             st.get("book_equal", "-"), st.get("connections", "-"),
                             st.get("gaps", "-"), st.get("resyncs", "-"),
                             st["cpu_seconds"].get("publisher", 0),
                             st["cpu_seconds"].get("clients", 0),
                             _fmt(st["publisher_peak_rss_mb"], "%.0f"), st["restarts_so_far"]),
                          flush=True)
        report["matcher_interpreter"] = engine.matcher_interpreter()
    finally:
        if timer is not None:
            timer.close()
        engine.stop()
        with open(os.path.join(workdir, "engine.log"), "w") as f:
            f.write("\n".join(engine.lines) + "\n")
        print("engine log: %s; restarts: %s" % (os.path.join(workdir, "engine.log"), [
            line for line in engine.lines if "child_restarted" in line or "exited" in line][:5]))
    report["restarts"] = [line for line in engine.lines if "child_restarted" in line]
    report["loadavg_end"] = os.getloadavg()
    report["environment"] = environment()
    report["git"] = _git_revision()
    report["summary"] = summarize(report["steps"])
    _write(report, base)
    if os.path.exists(base + ".partial.json"):
        os.unlink(base + ".partial.json")
    print("wrote %s.md" % base)
    return 0


def _write(report, base):
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    if "summary" in report:
        with open(base + ".md", "w") as f:
            f.write(_markdown(report))


if __name__ == "__main__":
    sys.exit(main())
