"""Test helper: a running engine shard with its publisher, and a signing HTTP client.

Two ways to start the engine (``RM_PUB_ENGINE`` selects; default ``run``):

* ``run``: ``ringmatch run --config FILE`` (the console script) as a user starts
  it: supervisor, journaler, matcher and publisher as separate processes;
* ``loop``: the test creates both rings itself, starts pub_matcher_loop.py and
  ``python -m publisher.process`` (no journal, no supervisor).  Only the tests
  of the publisher process on its own need it (a bare ``publisher.process``:
  its exit code on SIGTERM, and the documented "no journal: the model starts
  empty at the ring's position" rule, which cannot happen under
  ``ringmatch run`` because the supervisor always runs a journaler).

Everything is cleaned up in ``stop()`` even when a test fails: the
supervisor gets SIGINT alone (docs/operations.md: it drains and snapshots),
then anything left in its process group and every child pid it logged is
killed and reaped, and the shard's /dev/shm segments are unlinked.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx

from ringbuf.reaper import process_alive

from publisher.auth import signed_headers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RINGMATCH = os.path.join(os.path.dirname(sys.executable), "ringmatch")

KEYS = [{"key": "k-alice", "secret": "alice-secret", "account_id": 101},
        {"key": "k-bob", "secret": "bob-secret", "account_id": 102},
        {"key": "k-carol", "secret": "carol-secret", "account_id": 103},
        {"key": "k-slow", "secret": "slow-secret", "account_id": 104,
         "per_second": 2, "burst": 3}]

_CHILD_RE = re.compile(r"event=child_(?:started|restarted) child=(\w+) child_pid=(\d+)")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pid_alive(pid):
    """True when ``pid`` runs and is not a zombie (the ring's own liveness rule)."""
    return process_alive(pid)


class Engine(object):
    """One shard on loopback; ``url``, ``ws_url``, ``client(key)``."""

    def __init__(self, tmp_path, mode=None, publisher_extra=None, symbols=None, snapshot=None):
        self.mode = mode or os.environ.get("RM_PUB_ENGINE", "run")
        if self.mode not in ("run", "loop"):
            raise ValueError("RM_PUB_ENGINE must be run or loop, not %r" % self.mode)
        self.shard = "pt%d%s" % (os.getpid(), os.urandom(2).hex())
        self.tmp = str(tmp_path)
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.ws_url = "ws://127.0.0.1:%d/ws" % self.port
        pub = {"host": "127.0.0.1", "port": self.port, "api_keys": KEYS,
               "rate_limit": {"per_second": 1000, "burst": 2000}, "ws_queue": 200}
        pub.update(publisher_extra or {})
        self.raw = {"data_dir": os.path.join(self.tmp, "var"),
                    "shards": [{"name": self.shard,
                                "symbols": symbols or ["BTC-USD", "ETH-USD", "ETH-BTC"],
                                "input_capacity": 1 << 14, "output_capacity": 1 << 16}],
                    "publisher": pub, "journal": {"fsync": "off"},
                    "matcher": {"interpreter": "cpython"},
                    "snapshot": snapshot or {"every_commands": 0, "every_seconds": 0, "keep": 2}}
        self.config_path = os.path.join(self.tmp, "runtime.json")
        with open(self.config_path, "w") as f:
            json.dump(self.raw, f)
        self.procs = []
        self.rings = []
        self.logs = []
        self.supervisor = None
        self.publisher = None
        self.runs = 0

    # ------------------------------------------------------------ lifecycle
    def _spawn(self, argv, name):
        log = open(os.path.join(self.tmp, "%s.log" % name), "a")
        self.logs.append(log)
        env = dict(os.environ, PYTHONPATH=ROOT)
        p = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def start(self, timeout=60.0):
        try:
            if self.mode == "run":
                self.runs += 1
                self.supervisor = self._spawn([RINGMATCH, "run", "--config", self.config_path,
                                               "--shard", self.shard], "engine%d" % self.runs)
            else:
                self.start_loop()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_loop(self):
        from ringbuf import Ring
        ring_in = Ring.create("rm-%s-in" % self.shard, capacity=1 << 14, record_size=64,
                              consumers={"matcher": []})
        self.rings.append(ring_in)
        ring_out = Ring.create("rm-%s-out" % self.shard, capacity=1 << 16, record_size=128,
                               consumers={"publisher": []}, single_producer=True)
        self.rings.append(ring_out)
        self._spawn([sys.executable, os.path.join(HERE, "pub_matcher_loop.py"),
                     "rm-%s-in" % self.shard, "rm-%s-out" % self.shard], "matcher")
        self.start_publisher()

    def start_publisher(self):
        self.publisher = self._spawn([sys.executable, "-m", "publisher.process", "--config",
                                      self.config_path, "--shard", self.shard], "publisher")
        return self.publisher

    def wait_ready(self, timeout=60.0):
        """Until ``GET /time`` answers (run mode: and the supervisor logged ``event=ready``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError("engine process exited (%s): %s" % (p.returncode, self.log_text()))
            try:
                if httpx.get(self.url + "/time", timeout=1.0).status_code == 200 and (
                        self.mode != "run" or self.count("event=ready") >= self.runs):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("publisher not ready in %.0fs: %s" % (timeout, self.log_text()))

    def shutdown(self, timeout=60.0):
        """Run mode: stop the engine as a user does (SIGINT to the supervisor); its exit code."""
        sup = self.supervisor
        if sup is None or sup.poll() is not None:
            return None if sup is None else sup.returncode
        sup.send_signal(signal.SIGINT)
        try:
            return sup.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def restart(self, timeout=60.0):
        """Run mode: stop the whole engine cleanly and start it again on the same data."""
        code = self.shutdown()
        assert code == 0, "supervisor exit %s: %s" % (code, self.log_text())
        self._wait_children_gone()
        self.procs = [p for p in self.procs if p.poll() is None]
        return self.start(timeout)

    def _wait_children_gone(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(pid_alive(p) for p in self.all_child_pids()):
            time.sleep(0.05)

    # ------------------------------------------------------------ logs
    def log_text(self):
        out = []
        for log in self.logs:
            try:
                if not log.closed:
                    log.flush()
                with open(log.name) as f:
                    out.append("== %s\n%s" % (log.name, f.read()[-6000:]))
            except OSError:
                pass
        return "\n".join(out)

    def log_lines(self):
        lines = []
        seen = set()
        for log in self.logs:
            if log.name in seen:
                continue
            seen.add(log.name)
            try:
                with open(log.name) as f:
                    lines.extend(f.read().splitlines())
            except OSError:
                pass
        return lines

    def count(self, needle):
        return sum(1 for line in self.log_lines() if needle in line)

    def child_pids(self):
        """Current pid of each supervised child (run mode), from the supervisor's log."""
        pids = {}
        for line in self.log_lines():
            m = _CHILD_RE.search(line)
            if m:
                pids[m.group(1)] = int(m.group(2))
        return pids

    def all_child_pids(self):
        return {int(m.group(2)) for m in map(_CHILD_RE.search, self.log_lines()) if m}

    def segments(self):
        # the rings, and the host-wide owner lock file a killed supervisor leaves
        return sorted(n for n in os.listdir("/dev/shm")
                      if n.startswith("rm-%s-" % self.shard) or n == "rm-%s.owner" % self.shard)

    # ------------------------------------------------------------ clean-up
    def stop(self):
        """Stop everything this engine started; never raises for what is already gone."""
        if self.mode == "run":
            self.shutdown(30)
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    p.kill()
                p.wait(5)
        for pid in self.all_child_pids():     # children of a supervisor killed with -9
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self._wait_children_gone(5)
        for ring in self.rings:
            try:
                ring.close()
            finally:
                try:
                    ring.unlink()
                except Exception:
                    pass
        self.rings = []
        import posix_ipc
        for name in self.segments():          # whatever a crashed supervisor left behind
            try:
                posix_ipc.unlink_shared_memory("/" + name)
            except posix_ipc.ExistentialError:
                pass
        for log in self.logs:
            log.close()

    def client(self, key=None):
        return ApiClient(self.url, key)


class ApiClient(object):
    """httpx client that signs private requests with a key of KEYS."""

    def __init__(self, url, key=None):
        self.http = httpx.Client(base_url=url, timeout=15.0)
        self.key = key
        self.secret = None
        if key is not None:
            self.secret = next(k["secret"] for k in KEYS if k["key"] == key)

    def request(self, method, path, body=None, signed=True, headers=None, raw_body=None):
        content = raw_body if raw_body is not None else (
            b"" if body is None else json.dumps(body).encode())
        h = {"Content-Type": "application/json"} if content else {}
        if signed and self.key is not None:
            h.update(signed_headers(self.key, self.secret, method, path, content))
        h.update(headers or {})
        return self.http.request(method, path, content=content or None, headers=h)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def patch(self, path, body=None, **kw):
        return self.request("PATCH", path, body, **kw)

    def order(self, product, side, size, price=None, **extra):
        body = {"product_id": product, "side": side, "size": size}
        if price is not None:
            body["price"] = price
        body.update(extra)
        return self.post("/orders", body)

    def deposit(self, currency, amount):
        r = self.post("/accounts/deposit", {"currency": currency, "amount": amount})
        assert r.status_code == 200, r.text
        return r.json()

    def close(self):
        self.http.close()
