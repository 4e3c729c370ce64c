"""The engine as a user runs it: ``ringmatch run``, two producer processes, fills, stop."""
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from tests.pipeline.conftest import pid_alive, ROOT

PRODUCER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_producer.py")
N = 20


def _start_producer(run, role, account):
    return subprocess.Popen([sys.executable, PRODUCER, run.config, run.shard, role,
                             str(account), str(N)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("interpreter", ["cpython", "pypy"])
def test_run_two_producers_fill_and_stop_cleanly(engine_factory, interpreter):
    from engine.supervisor import find_matcher_interpreter
    if interpreter == "pypy":
        try:
            find_matcher_interpreter("pypy")
        except RuntimeError as exc:
            pytest.skip(str(exc))
    run = engine_factory(matcher_interpreter=interpreter).start()
    maker = _start_producer(run, "maker", 101)
    taker = None
    try:
        line = maker.stdout.readline().decode()
        assert line.strip() == "ready", (line, maker.stderr.read().decode())
        taker = _start_producer(run, "taker", 202)
        t_out, t_err = taker.communicate(timeout=120)
        m_out, m_err = maker.communicate(timeout=120)
    finally:
        for p in (maker, taker):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert taker.returncode == 0, t_err.decode()
    assert maker.returncode == 0, m_err.decode()
    maker_res = json.loads(m_out.decode().strip().splitlines()[-1])
    taker_res = json.loads(t_out.decode().strip().splitlines()[-1])
    assert len(maker_res["accepted"]) == N and not maker_res["rejected"]
    assert len(taker_res["accepted"]) == N and not taker_res["rejected"]
    # every taker buy of 1 lot-unit filled against one maker sell; both sides saw their fills
    assert sorted(o for o, _ in taker_res["fills"]) == sorted(taker_res["accepted"])
    assert sorted(o for o, _ in maker_res["fills"]) == sorted(maker_res["accepted"])
    assert sum(q for _, q in taker_res["fills"]) == sum(q for _, q in maker_res["fills"])

    run.wait_for(r"proc=matcher .*event=ready interpreter=%s" % interpreter, timeout=1)
    status = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ringmatch"), "status",
                             "--json", "--config", run.config], cwd=ROOT, capture_output=True,
                            timeout=60)
    assert status.returncode == 0, status.stderr.decode()
    snap = json.loads(status.stdout.decode())
    ring_in = snap["rings"]["input"]
    commands = 2 + 2 * N                          # two deposits and the orders
    assert ring_in["cursor"] >= commands
    lags = {name: c["lag"] for name, c in ring_in["consumers"].items()}
    assert set(lags) == {"journaler", "matcher"} and all(lag >= 0 for lag in lags.values())
    ticker = snap["symbols"]["BTC-USD"]
    assert Decimal(ticker["price"]) == 30000 + N - 1  # the last buy took the highest sell
    assert ticker["best_ask"] is None                # every sell was taken
    children = run.all_pids()
    assert {"journaler", "matcher", "publisher"} <= set(run.child_pids())
    assert run.stop() == 0, "\n".join(run.log()[-40:])
    run.wait_for(r"proc=supervisor .*event=stopped", timeout=5)
    assert [p for p in children if pid_alive(p)] == []
    assert run.segments() == []
    # the drain took a snapshot at shutdown
    snap_dir = os.path.join(run.data_dir, "snapshots")
    assert os.path.isdir(snap_dir) and os.listdir(snap_dir), "\n".join(run.log())


@pytest.mark.timeout(120)
def test_second_instance_on_same_shard_is_refused(engine_factory):
    run = engine_factory().start()
    second = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ringmatch"), "run",
                             "--config", run.config], cwd=ROOT, capture_output=True, timeout=60)
    assert second.returncode == 3
    assert b"already run by pid" in second.stderr
    assert run.proc.poll() is None      # the first one is unharmed
    assert run.stop() == 0


@pytest.mark.timeout(240)
def test_restart_after_supervisor_kill9_clears_stale_segments_and_continues(engine_factory):
    from engine.client import EngineClient
    from ringbuf.records import EventKind
    run = engine_factory().start()
    with EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=41) as client:
        client.wait_outcome(client.deposit("USD", "100000"), timeout=30)
        first = client.place_order("BTC-USD", "buy", qty="1", price="100")
        assert client.wait_outcome(first, timeout=30).kind == EventKind.ACCEPTED
    children = run.all_pids()
    os.kill(run.proc.pid, signal.SIGKILL)              # the supervisor dies hard
    run.proc.wait(10)
    deadline = time.monotonic() + 30                   # children follow (parent-death signal)
    while [p for p in children if pid_alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in children if pid_alive(p)] == []
    assert run.segments()                              # left behind: stale
    before = len(run.log())
    run.start()
    run.wait_for(r"event=stale_segment_unlinked", timeout=5, after=before)
    with EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=41) as client:
        second = client.place_order("BTC-USD", "buy", qty="1", price="101")
        assert second > first                          # sequence = order id continues
        assert client.wait_outcome(second, timeout=30).kind == EventKind.ACCEPTED
        # the order placed before the crash is still open after recovery
        dup = client.cancel(order_id=first)
        assert client.wait_outcome(dup, timeout=30).kind == EventKind.ACCEPTED
    assert run.stop() == 0
    assert run.segments() == []


@pytest.mark.timeout(120)
def test_ctrl_c_to_the_terminal_group_drains_and_snapshots(engine_factory):
    run = engine_factory().start()
    from engine.client import EngineClient
    with EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=51) as client:
        client.wait_outcome(client.deposit("USD", "1000"), timeout=30)
    children = run.all_pids()
    os.killpg(run.proc.pid, signal.SIGINT)             # what a terminal's Ctrl-C does
    assert run.proc.wait(60) == 0
    run.wait_for(r"proc=supervisor .*event=drained", timeout=1)
    run.wait_for(r"proc=matcher .*event=snapshot_written", timeout=1)
    assert [p for p in children if pid_alive(p)] == []
    assert run.segments() == []
