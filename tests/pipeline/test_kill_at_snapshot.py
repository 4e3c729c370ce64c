"""kill -9 the matcher the moment its snapshot file appears (issue 11 defect 4).

The matcher process runs under ``_kill_at_snapshot.py``, which lets the first
snapshot write return and then kills the process with SIGKILL: the .snap file
is on disk, nothing after it ran.  Recovery restores that snapshot and replays
only after its sequence, so every outcome up to it must already be on the
output ring.  Before the fix (snapshot written inside the batch, events flushed
after the batch) the batch's commands were applied and in the snapshot but their
outcomes were never published: the load generator's ``wait_outcome`` timed out
on them and the REST API answered 404 for their orders.
"""
import json
import os
import stat
import subprocess
import sys

import pytest

from tests.pipeline.conftest import ROOT

HERE = os.path.dirname(os.path.abspath(__file__))
LOAD = os.path.join(HERE, "_burst_load.py")


def _wrapper(tmp_path):
    marker = str(tmp_path / "killed-at-snapshot")
    script = tmp_path / "python-kill-at-snapshot"
    script.write_text("#!/bin/sh\nRM_KILL_AT_SNAPSHOT_MARKER=%s exec %s %s \"$@\"\n"
                      % (marker, sys.executable, os.path.join(HERE, "_kill_at_snapshot.py")))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), marker


@pytest.mark.timeout(240)
def test_kill9_matcher_right_after_snapshot_write_loses_no_outcome(engine_factory, tmp_path):
    from engine.runtime import RuntimeConfig
    from journaler.recovery import journal_records
    from ringbuf.records import CommandKind

    python, marker = _wrapper(tmp_path)
    run = engine_factory(matcher_interpreter=python,
                         extra={"snapshot": {"every_commands": 400, "every_seconds": 0,
                                             "keep": 3}}).start()
    out = str(tmp_path / "load.json")
    load = subprocess.run([sys.executable, LOAD, run.config, run.shard, "8", out, "7"],
                          cwd=ROOT, capture_output=True, timeout=200)
    assert load.returncode == 0, load.stderr.decode()
    assert os.path.exists(marker), "the matcher never wrote a snapshot:\n" + \
        "\n".join(run.log()[-30:])
    run.wait_for(r"event=child_restarted child=matcher ", timeout=30)
    with open(out) as f:
        result = json.load(f)
    with open(marker) as f:          # <shard>-<seq, 20 digits>.snap
        snap_seq = int(os.path.basename(f.read().strip())[-25:-5])
    acked = {int(k): v for k, v in result["acked"].items()}
    # every command sent got its outcome, including those at or before the snapshot
    assert result["unacked"] == [], "no outcome for %d commands, first %s" % (
        len(result["unacked"]), result["unacked"][:5])
    assert len(acked) > 1000, "too little load got through: %d acked" % len(acked)
    # every order the journal holds up to the snapshot was acknowledged to its sender
    runtime = RuntimeConfig.load(run.config)
    orders = [seq for seq, rec in journal_records(runtime.data_dir, run.shard, last=snap_seq)
              if rec.kind == int(CommandKind.NEW_ORDER)]
    assert orders, "no order before the snapshot at %d" % snap_seq
    for order_id in orders[-50:]:
        assert order_id in acked, order_id
    assert run.stop() == 0, "\n".join(run.log()[-40:])
    log = "\n".join(run.log())
    assert "event=child_died level=WARN child=matcher" in log
