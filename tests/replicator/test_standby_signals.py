"""SIGTERM to ``ringmatch standby`` during its start-up stops it cleanly (issue 11 defect 8).

The signal arrives right after the standby's input ring appears (children
being started): the standby exits 0, reaps its children and leaves no ring and
no owner lock file in /dev/shm.
"""
import os
import signal
import subprocess
import time

import pytest

from test_failover import PY, ROOT, free_port, unlink_rings, wait_until, write_configs

pytestmark = [pytest.mark.timeout(90)]


def _children_of(pid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(name))
    return out


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_sigterm_during_standby_start_up_leaves_nothing(tmp_path, delay):
    tag = "%ds%d" % (os.getpid() % 100000, int(delay * 10))
    pshard, sshard = "rpa%s" % tag, "rsb%s" % tag
    port = free_port()
    write_configs(tmp_path, pshard, sshard, port)
    log = open(str(tmp_path / "standby.log"), "w")
    proc = subprocess.Popen(
        [PY, "-m", "engine.cli", "standby", "--config", str(tmp_path / "s.json"),
         "--listen", "127.0.0.1:%d" % port, "--primary-shard", pshard],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    children = set()
    try:
        ring = "/dev/shm/rm-%s-in" % sshard
        assert wait_until(lambda: os.path.exists(ring), 30)
        time.sleep(delay)
        children.update(_children_of(proc.pid))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        text = open(str(tmp_path / "standby.log")).read()
        assert code == 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        assert [n for n in os.listdir("/dev/shm") if n.startswith("rm-%s" % sshard)] == [], text
        for pid in children:             # every child the standby had started is gone
            assert not os.path.exists("/proc/%d" % pid) or \
                open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] == "Z", pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        unlink_rings(pshard, sshard)
