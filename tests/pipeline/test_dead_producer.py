"""A producer killed between claim and publish does not stall the engine."""
import os
import signal
import subprocess
import sys

import pytest

from engine.client import EngineClient
from ringbuf.records import EventKind
from tests.pipeline.conftest import ROOT

CLAIM_AND_HANG = """
import sys, time
from ringbuf import Ring
ring = Ring.attach(sys.argv[1])
producer = ring.producer(producer_id=None)
seq = producer.claim()
print(seq, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(180)
def test_producer_killed_between_claim_and_publish(engine_factory):
    run = engine_factory().start()
    hang = subprocess.Popen([sys.executable, "-c", CLAIM_AND_HANG, "rm-%s-in" % run.shard],
                            cwd=ROOT, stdout=subprocess.PIPE)
    try:
        claimed = int(hang.stdout.readline().decode())
        os.kill(hang.pid, signal.SIGKILL)
        hang.wait(10)
        with EngineClient.attach(shard=run.shard, data_dir=run.data_dir, account=31) as client:
            seq = client.deposit("USD", "1000")
            assert seq > claimed               # queued behind the orphaned slot
            ev = client.wait_outcome(seq, timeout=30)
            assert ev.kind == EventKind.ACCEPTED
    finally:
        if hang.poll() is None:
            hang.kill()
            hang.wait()
    line = run.wait_for(r"event=dead_producer_slots_recovered .*slots=1", timeout=5)
    assert run.shard in line
    assert run.stop() == 0
