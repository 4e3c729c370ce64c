"""Fixtures: a real engine started as a user would (the console script), always cleaned up."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import posix_ipc
import pytest

from ringbuf.reaper import process_alive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RINGMATCH = os.path.join(os.path.dirname(sys.executable), "ringmatch")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid):
    """True when ``pid`` runs and is not a zombie (the ring's own liveness rule)."""
    return process_alive(pid)


class EngineRun(object):
    """One ``ringmatch run`` child with its log lines collected from stderr."""

    def __init__(self, tmp_path, shard, matcher_interpreter="cpython", extra=None):
        self.shard = shard
        self.data_dir = str(tmp_path / "data")
        self.port = free_port()
        raw = {
            "data_dir": self.data_dir,
            "shards": [{"name": shard, "symbols": ["BTC-USD", "ETH-USD", "ETH-BTC"],
                        "input_capacity": 1 << 12, "output_capacity": 1 << 14}],
            "publisher": {"host": "127.0.0.1", "port": self.port},
            "matcher": {"interpreter": matcher_interpreter},
            "snapshot": {"every_commands": 2000, "every_seconds": 0, "keep": 3},
        }
        raw.update(extra or {})
        self.config = str(tmp_path / "engine.json")
        with open(self.config, "w") as f:
            json.dump(raw, f)
        self.lines = []
        self.proc = None
        self._lock = threading.Lock()

    def start(self, timeout=90):
        before = len(self.log())          # a restart must not match the previous run's lines
        self.proc = subprocess.Popen(
            [RINGMATCH, "run", "--config", self.config], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(r"proc=supervisor .*event=ready", timeout, after=before)
        return self

    def _read(self):
        for raw in self.proc.stdout:
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip())

    def log(self):
        with self._lock:
            return list(self.lines)

    def wait_for(self, pattern, timeout=30, after=0):
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log()[after:]:
                if regex.search(line):
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("no log line matching %r within %ss; log:\n%s"
                             % (pattern, timeout, "\n".join(self.log()[-60:])))

    def child_pids(self):
        """Current pid of each child, from the supervisor's lifecycle lines."""
        pids = {}
        for line in self.log():
            m = re.search(r"event=child_(?:started|restarted) child=(\w+) child_pid=(\d+)", line)
            if m:
                pids[m.group(1)] = int(m.group(2))
        return pids

    def all_pids(self):
        pids = set()
        for line in self.log():
            m = re.search(r"event=child_(?:started|restarted) child=(\w+) child_pid=(\d+)", line)
            if m:
                pids.add(int(m.group(2)))
        return pids

    def segments(self):
        # shard names derived from this run's (tests add suffixes for extra shards)
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith("rm-%s" % self.shard))

    def stop(self, timeout=60):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.proc.returncode if self.proc else None

    def kill_all(self):
        """Last-resort clean-up: kill the process group, every child, every segment."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for pid in self.all_pids():
            for sig in (signal.SIGCONT, signal.SIGKILL):     # a SIGSTOPped test child too
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        for name in self.segments():
            try:
                posix_ipc.unlink_shared_memory("/" + name)
            except posix_ipc.ExistentialError:
                pass


@pytest.fixture
def engine_factory(tmp_path):
    runs = []

    def make(**kw):
        shard = "p%dx%d" % (os.getpid(), len(runs))
        (tmp_path / shard).mkdir()
        run = EngineRun(tmp_path / shard, shard, **kw)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.kill_all()
