"""Issue 16 (operators), against a running engine, driven through the console script:

- ``ringmatch run --log-format json``: every line of every process is one JSON object
  (the supervisor's, each child's; its ready line still counts);
- ``ringmatch halt|resume --symbol BTC-USD``: the matcher halts the symbol (orders are
  rejected SYMBOL_HALTED), a second halt is refused in one line, resume restarts it;
- ``ringmatch status``: the journal section, and one line (exit 2) for a data dir
  without an engine.
"""
import json
import os
import signal
import subprocess
import threading
import time

import posix_ipc
import pytest

from tests.pipeline.conftest import EngineRun, ROOT, RINGMATCH, pid_alive

pytestmark = [pytest.mark.timeout(240)]


def ringmatch(*argv, timeout=60):
    proc = subprocess.run([RINGMATCH] + list(argv), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


class JsonRun(EngineRun):
    """``ringmatch run --log-format json``; stderr collected apart from stdout."""

    def start(self, timeout=90):
        self.proc = subprocess.Popen(
            [RINGMATCH, "run", "--config", self.config, "--log-format", "json"], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any('"proc": "supervisor"' in l and '"event": "ready"' in l for l in self.log()):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("not ready:\n" + "\n".join(self.log()[-40:]))

    def _read(self):
        for raw in self.proc.stderr:
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def all_pids(self):
        pids = set()
        for line in self.log():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("event") in ("child_started", "child_restarted"):
                pids.add(obj["child_pid"])
        return pids


@pytest.fixture
def json_engine(tmp_path):
    run = JsonRun(tmp_path, "cj%d" % os.getpid())
    try:
        yield run.start()
    finally:
        run.kill_all()


def test_json_logs_halt_resume_and_status(json_engine):
    run = json_engine
    data = run.data_dir
    # -- halt / resume ------------------------------------------------------------------
    code, out, err = ringmatch("halt", "--symbol", "BTC-USD", "--data-dir", data)
    assert code == 0 and err == "", err
    assert out.startswith("halted BTC-USD (symbol 1, shard %s, seq " % run.shard), out
    code, out, err = ringmatch("--data-dir", data, "halt", "--symbol", "BTC-USD")
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("ringmatch halt: halt of BTC-USD refused: ALREADY_HALTED"), err

    from engine.client import EngineClient
    from ringbuf.records import EventKind, Reason
    with EngineClient.attach(shard=run.shard, data_dir=data, account=7) as client:
        assert client.wait_outcome(client.deposit("USD", "100000")).kind == EventKind.ACCEPTED
        halted = client.wait_outcome(client.place_order("BTC-USD", "buy", qty="0.01",
                                                        price="30000"))
        assert halted.kind == EventKind.REJECTED and halted.reason == Reason.SYMBOL_HALTED
        other = client.wait_outcome(client.place_order("ETH-USD", "buy", qty="0.1",
                                                       price="2000"))
        assert other.kind == EventKind.ACCEPTED            # only BTC-USD is halted
        code, out, err = ringmatch("resume", "--data-dir", data, "--symbol", "btc-usd")
        assert code == 0 and out.startswith("resumed BTC-USD"), err
        resumed = client.wait_outcome(client.place_order("BTC-USD", "buy", qty="0.01",
                                                         price="30000"))
        assert resumed.kind == EventKind.ACCEPTED
    code, _, err = ringmatch("resume", "--symbol", "BTC-USD", "--data-dir", data)
    assert code == 1 and "NOT_HALTED" in err and len(err.splitlines()) == 1
    code, _, err = ringmatch("halt", "--symbol", "DOGE-USD", "--data-dir", data)
    assert code == 2 and len(err.splitlines()) == 1
    assert "unknown symbol 'DOGE-USD'" in err and "BTC-USD=1" in err

    # -- status: the journal section ----------------------------------------------------
    code, out, err = ringmatch("status", "--json", "--data-dir", data, "--shard", run.shard)
    assert code == 0, err
    journal = json.loads(out)["journal"]
    assert journal["durable_seq"] >= 6 and journal["segments"] >= 1 and journal["bytes"] > 0
    assert journal["fsync"] == "batch" and journal["lag"] >= 0
    code, out, err = ringmatch("status", "--data-dir", data, "--shard", run.shard,
                               "--interval", "0.2", "--count", "1")
    assert code == 0, err
    line = next(l for l in out.splitlines() if l.startswith("journal "))
    assert "durable_seq=" in line and "segments=" in line and "fsync=batch" in line

    # -- stop; every line of every process was one JSON object ---------------------------
    assert run.stop() == 0
    objects = [json.loads(line) for line in run.log()]          # raises on a non-JSON line
    procs = {o["proc"] for o in objects}
    assert {"supervisor", "journaler", "matcher", "publisher"} <= procs, procs
    for o in objects:
        assert set(o) >= {"ts", "proc", "shard", "pid", "event"}, o
    ready = {o["proc"] for o in objects if o["event"] in ("ready", "serving")}
    assert {"journaler", "matcher", "publisher", "supervisor"} <= ready
    assert any(o["event"] == "running" and o["api"].startswith("http://") for o in objects)
    assert [p for p in run.all_pids() if pid_alive(p)] == []


def test_status_fails_in_one_line_without_an_engine(tmp_path):
    for data in (tmp_path / "missing", tmp_path):
        for argv in (["status"], ["status", "--json"]):
            code, out, err = ringmatch(*(argv + ["--data-dir", str(data)]))
            assert code == 2 and out == "" and len(err.splitlines()) == 1, (argv, out, err)
            assert err.startswith("ringmatch status: no engine in %s" % data), err


def test_halt_without_an_engine_is_one_line(tmp_path):
    code, out, err = ringmatch("halt", "--symbol", "BTC-USD", "--data-dir", str(tmp_path))
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("ringmatch halt: no engine runs shard shard0"), err
