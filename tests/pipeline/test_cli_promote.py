"""``ringmatch promote`` pointed at a data dir that has no standby: one line, exit 2, and
nothing signalled -- above all not a primary's supervisor (SIGUSR1 would kill it)."""
import os
import subprocess
import sys
import time

import pytest

from tests.pipeline.conftest import ROOT, RINGMATCH

pytestmark = [pytest.mark.timeout(120)]

#: holds the data dir's lock as a supervisor does (exclusive flock, its pid inside), without
#: a SIGUSR1 handler, as the primary's supervisor runs
HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.pwrite(fd, str(os.getpid()).encode(), 0)
print("locked", flush=True)
time.sleep(60)
"""


def promote(data_dir):
    proc = subprocess.run([RINGMATCH, "promote", "--data-dir", str(data_dir), "--shard", "shard0",
                           "--timeout", "2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def test_promote_never_signals_a_primary(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir / "shard0.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, out, err = promote(tmp_path)
        assert code == 2 and out == "" and len(err.splitlines()) == 1, (code, out, err)
        assert "not as a standby" in err and "Traceback" not in err
        time.sleep(0.3)
        assert holder.poll() is None                  # the "primary" still runs
    finally:
        holder.kill()
        holder.wait(10)


def test_promote_with_a_stale_lock_file_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    (run_dir / "shard0.lock").write_text(str(dead.pid))   # a supervisor killed with -9
    code, out, err = promote(tmp_path)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, (code, out, err)
    assert "no standby supervisor" in err and "Traceback" not in err
