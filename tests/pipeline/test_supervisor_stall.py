"""Hung children and idle engines (issue 11 defect 6; periodic snapshots of an idle engine).

- A child SIGSTOPped under pending work is reported: ``child_stalled name=...
  seconds=...`` once, ``state=degraded`` in ``ringmatch status --json`` (exit 4)
  and in the health file, ``child_resumed`` and ``ready`` again after SIGCONT.
- ``snapshot.every_seconds`` does not snapshot an idle engine because the
  supervisor's own CLOCK ticks moved the input sequence.
"""
import json
import os
import re
import signal
import subprocess
import time

import pytest

from tests.pipeline.conftest import ROOT, RINGMATCH


def _status(config):
    proc = subprocess.run([RINGMATCH, "status", "--json", "--config", config], cwd=ROOT,
                          capture_output=True, timeout=30)
    return proc.returncode, json.loads(proc.stdout.decode())


def _health(run):
    with open(os.path.join(run.data_dir, "run", "%s.health.json" % run.shard)) as f:
        return json.load(f)


@pytest.fixture
def engine(engine_factory):
    """conftest's engine_factory (kill_all continues a child left SIGSTOPped)."""
    return engine_factory


@pytest.mark.timeout(60)
@pytest.mark.parametrize("victim", ["matcher", "journaler", "publisher"])
def test_stopped_child_is_reported_stalled_then_resumed(engine, victim):
    from engine.client import EngineClient
    run = engine(extra={"supervisor": {"stall_after_s": 1.5}}).start()
    pid = run.child_pids()[victim]
    before = len(run.log())
    os.kill(pid, signal.SIGSTOP)
    try:
        with EngineClient.attach(run.shard, config=run.config, account=7) as client:
            client.deposit("USD", "100")          # pending work for the stopped child
            line = run.wait_for(r"proc=supervisor .*event=child_stalled .*name=%s " % victim,
                                timeout=10, after=before)
            assert float(re.search(r"seconds=([\d.]+)", line).group(1)) >= 1.5, line
            code, snap = _status(run.config)
            assert snap["state"] == "degraded" and code == 4, snap
            assert snap["health"]["children"][victim]["state"] == "stalled", snap["health"]
            health = _health(run)
            assert health["state"] == "degraded"
            assert health["children"][victim] == dict(health["children"][victim], pid=pid,
                                                      state="stalled", restarts=0)
            assert abs(time.time_ns() - health["updated_ns"]) < 2 * 10 ** 9
            time.sleep(2.0)                       # still stalled: logged once, not again
        stalled = [l for l in run.log()[before:] if "event=child_stalled" in l]
        assert len(stalled) == 1, stalled
        assert not any("child_restarted" in l for l in run.log()[before:])
    finally:
        os.kill(pid, signal.SIGCONT)
    run.wait_for(r"proc=supervisor .*event=child_resumed .*name=%s " % victim, timeout=10,
                 after=before)
    run.wait_for(r"proc=supervisor .*event=state_changed state=ready was=degraded", timeout=10,
                 after=before)
    code, snap = _status(run.config)
    assert snap["state"] == "ready" and code == 0, snap
    assert run.stop() == 0


@pytest.mark.timeout(30)
def test_idle_engine_is_not_snapshotted_for_clock_ticks(tmp_path):
    """Unit level: the supervisor's rings and snapshot timer, no children."""
    from engine.client import pack_command
    from engine.runtime import RuntimeConfig
    from engine.supervisor import Supervisor
    from ringbuf.records import CommandKind
    shard = "sn%d" % os.getpid()
    runtime = RuntimeConfig.from_dict({
        "data_dir": str(tmp_path / "data"),
        "shards": [{"name": shard, "symbols": ["BTC-USD"], "input_capacity": 1 << 10,
                    "output_capacity": 1 << 10}],
        "snapshot": {"every_commands": 0, "every_seconds": 1, "keep": 3}})
    sup = Supervisor(runtime, shard)

    def tick(now):                                # the loop's CLOCK tick (old code: sup.clock)
        if hasattr(sup, "tick_clock"):
            return sup.tick_clock(now)
        return sup.clock.maybe_tick(now)

    sup.acquire_lock()
    try:
        sup.create_rings()
        ring = sup.rings[0]
        T = time.monotonic() + 2.0                             # after create_rings' first tick
        assert sup.maybe_snapshot(now=T) is None          # the timer starts
        for second in range(1, 6):                             # five idle seconds
            assert tick(T + second) is not None
            assert sup.maybe_snapshot(now=T + 0.5 + second) is None, \
                "idle engine snapshotted at second %d (cursor %d)" % (second, ring.cursor)
        producer = ring.producer(producer_id=3)                # one client command
        producer.write(pack_command(int(CommandKind.DEPOSIT), account_id=1, producer_id=3,
                                    symbol_id=1, qty=5))
        producer.close()
        seq = sup.maybe_snapshot(now=T + 7)
        assert seq is not None and seq == ring.cursor
        for second in range(8, 12):                            # idle again: no more
            tick(T + second)
            assert sup.maybe_snapshot(now=T + 0.5 + second) is None
    finally:
        sup.destroy_rings()
        sup.release_lock()
