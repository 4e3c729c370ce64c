"""kill -9 each child of ``ringmatch run`` in turn under load: nothing acknowledged is lost."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.pipeline.conftest import ROOT

LOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_load.py")


def _replay_from_scratch(runtime, shard):
    """An uninterrupted run over the durable journal: (matcher, events by seq)."""
    from engine.events import ListSink
    from engine.matcher import Matcher
    from journaler.recovery import journal_records
    sink = ListSink()
    matcher = Matcher(runtime.exchange(), sink)
    for seq, record in journal_records(runtime.data_dir, shard):
        matcher.process(seq, record)
    by_seq = {}
    for ev in sink.events:
        by_seq.setdefault(ev.seq, []).append(ev)
    return matcher, by_seq


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1] + [pytest.param(s, marks=pytest.mark.slow) for s in range(2, 6)])
def test_kill_each_child_under_load(engine_factory, tmp_path, seed):
    from engine.runtime import RuntimeConfig
    from journaler.snapshot import load_latest
    from journaler.recovery import recover
    from ringbuf.records import EventKind

    run = engine_factory().start()
    out = str(tmp_path / "load.json")
    load = subprocess.Popen([sys.executable, LOAD, run.config, run.shard, "14", out, str(seed)],
                            cwd=ROOT, stderr=subprocess.PIPE)
    try:
        for i, child in enumerate(("journaler", "matcher", "publisher")):
            time.sleep(3)
            before = len(run.log())
            pid = run.child_pids()[child]
            os.kill(pid, signal.SIGKILL)
            run.wait_for(r"event=child_restarted child=%s " % child, timeout=30, after=before)
        assert load.wait(timeout=120) == 0, load.stderr.read().decode()
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert run.stop() == 0, "\n".join(run.log()[-40:])
    with open(out) as f:
        result = json.load(f)
    acked = {int(k): v for k, v in result["acked"].items()}
    assert len(acked) > 100, "too little load got through: %d acked" % len(acked)

    runtime = RuntimeConfig.load(run.config)
    matcher, by_seq = _replay_from_scratch(runtime, run.shard)
    for seq, ack in acked.items():
        events = by_seq.get(seq)
        assert events, "acknowledged command %d is not in the journal" % seq
        outcome = [e for e in events if e.kind in (EventKind.ACCEPTED, EventKind.REJECTED)]
        assert [(int(e.kind), int(e.reason)) for e in outcome] == [(ack["kind"], ack["reason"])]
        assert outcome[0].client_order_id == ack["client_order_id"]
    matcher._check()
    # recovery (snapshot + tail) reaches the same state as the uninterrupted replay
    recovered, last = recover(runtime.exchange(), runtime.data_dir, run.shard)
    assert recovered.state_hash() == matcher.state_hash()
    # the shutdown snapshot holds the state the live matcher had at that sequence
    snap, _, rejected = load_latest(runtime.data_dir, run.shard)
    assert not rejected and snap.seq == last
    assert snap.state_hash == matcher.state_hash() & 0xFFFFFFFFFFFFFFFF
    # the operator's tools agree: verify passes, replay (scratch and from snapshot) gives the hash
    exe = os.path.join(os.path.dirname(sys.executable), "ringmatch")
    shard_config = os.path.join(run.data_dir, "run", "%s.json" % run.shard)
    base = [exe, "journal", "--config", shard_config, "--shard", run.shard]
    verify = subprocess.run(base + ["verify"], capture_output=True, timeout=120)
    assert verify.returncode == 0 and b"OK" in verify.stdout, verify.stdout + verify.stderr
    for extra in ([], ["--from-snapshot"]):
        replay = subprocess.run(base + ["replay", "--no-progress"] + extra, capture_output=True,
                                timeout=120)
        assert replay.returncode == 0, replay.stderr
        assert b"state_hash=%016x" % (matcher.state_hash() & 0xFFFFFFFFFFFFFFFF) in replay.stdout
    # every kill was followed by a restart, and the journaler/matcher came back ready
    log = "\n".join(run.log())
    for child in ("journaler", "matcher", "publisher"):
        assert "event=child_died level=WARN child=%s" % child in log
