"""``ringmatch run`` start-up and stop as an operator meets them (issue 11 defects 6-8, issue 12 items 1, 11).

- SIGTERM at any point of start-up stops cleanly: exit 0, children reaped, no
  ``rm-<shard>-*`` left in /dev/shm.
- ``ringmatch status --json`` tells ``starting`` (exit 3) from ``ready`` (exit 0).
- ``ready`` is logged only once every child is ready (never while one crash-loops).
- A second engine with the same shard name on another data dir is refused with one
  line naming the owner, and the running engine's rings survive.
- A publisher port in use, a read-only data dir, a read-only journal dir: one line,
  no traceback, nothing started, nothing left.
- ``run/<shard>.json`` and the health file are 0600, ``data`` and ``run`` 0700.
"""
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import posix_ipc
import pytest

from tests.pipeline.conftest import EngineRun, ROOT, RINGMATCH, free_port, pid_alive

pytestmark = [pytest.mark.timeout(60)]


def _launch(run, argv=None):
    """Start ``ringmatch run`` for ``run`` without waiting for readiness."""
    run.proc = subprocess.Popen(argv or [RINGMATCH, "run", "--config", run.config], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    threading.Thread(target=run._read, daemon=True).start()
    return run


def _status(config):
    proc = subprocess.run([RINGMATCH, "status", "--json", "--config", config], cwd=ROOT,
                          capture_output=True, timeout=30)
    return proc.returncode, json.loads(proc.stdout.decode())


def _own_segments(shard):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("rm-%s-" % shard)
                  or n == "rm-%s.owner" % shard)


@pytest.fixture
def runs(tmp_path):
    made = []

    def make(name="a", **kw):
        shard = "sv%d%s" % (os.getpid(), name)
        (tmp_path / name).mkdir()
        run = EngineRun(tmp_path / name, shard, **kw)
        made.append(run)
        return run

    yield make
    for run in made:
        run.kill_all()


@pytest.mark.parametrize("point", [r"event=rings_created",
                                   r"event=child_started child=journaler",
                                   r"event=child_started child=matcher",
                                   r"event=child_started child=publisher"])
def test_sigterm_at_any_point_of_start_up_stops_cleanly(runs, point):
    run = _launch(runs())
    run.wait_for(r"proc=supervisor .*" + point, timeout=30)
    run.proc.send_signal(signal.SIGTERM)
    code = run.proc.wait(30)
    log = "\n".join(run.log())
    assert code == 0, log
    assert "Traceback" not in log, log
    assert re.search(r"proc=supervisor .*event=stopped", log), log
    assert not re.search(r"proc=supervisor .*event=ready", log), "stopped before ready:\n" + log
    assert [p for p in run.all_pids() if pid_alive(p)] == [], log
    assert _own_segments(run.shard) == [], log
    assert not os.path.exists(os.path.join(run.data_dir, "run", "%s.health.json" % run.shard))


def test_sigterm_while_the_matcher_interpreter_is_probed_stops_at_once(runs):
    """``matcher.interpreter: auto`` tries PyPy (an import check in a subprocess) after the
    rings exist: a SIGTERM then stops without waiting for the probe."""
    from engine.supervisor import _repo_root
    if not os.path.exists(os.path.join(_repo_root(), ".venv-pypy", "bin", "python")):
        pytest.skip("no .venv-pypy: nothing to probe")
    run = _launch(runs(matcher_interpreter="auto"))
    run.wait_for(r"proc=supervisor .*event=rings_created", timeout=30)
    run.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = run.proc.wait(30)
    log = "\n".join(run.log())
    assert code == 0 and "Traceback" not in log, log
    assert _own_segments(run.shard) == [], log
    if not any("event=matcher_interpreter" in l for l in run.log()):
        assert time.monotonic() - t0 < 1.0, "the probe was waited for"


def test_status_tells_starting_from_ready_and_files_are_private(runs):
    run = _launch(runs())
    line = run.wait_for(r"proc=supervisor .*event=child_started child=publisher", timeout=30)
    publisher = int(re.search(r"child_pid=(\d+)", line).group(1))
    os.kill(publisher, signal.SIGSTOP)            # it cannot get ready: the shard is starting
    try:
        time.sleep(1.5)                           # every other child is ready by now
        code, snap = _status(run.config)
        assert snap["state"] == "starting" and code == 3, snap
        assert snap["health"]["children"]["publisher"]["state"] == "starting", snap["health"]
        assert not any(re.search(r"proc=supervisor .*event=ready", l) for l in run.log())
    finally:
        os.kill(publisher, signal.SIGCONT)
    run.wait_for(r"proc=supervisor .*event=ready .*publisher_pid=%d" % publisher, timeout=30)
    code, snap = _status(run.config)
    assert snap["state"] == "ready" and code == 0, snap
    health = snap["health"]
    assert health["shard"] == run.shard and isinstance(health["updated_ns"], int)
    assert set(health["children"]) == {"journaler", "matcher", "publisher"}
    assert all(c["state"] == "ready" and pid_alive(c["pid"]) and c["restarts"] == 0
               for c in health["children"].values()), health
    assert isinstance(health["journal"]["durable_seq"], int)
    # issue 12 item 11: secrets and health 0600 in 0700 directories, created that way
    run_dir = os.path.join(run.data_dir, "run")
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in (
        run.data_dir, run_dir, os.path.join(run_dir, "%s.json" % run.shard),
        os.path.join(run_dir, "%s.health.json" % run.shard),
        os.path.join(run_dir, "%s.lock" % run.shard))}
    assert modes == {run.data_dir: 0o700, run_dir: 0o700,
                     os.path.join(run_dir, "%s.json" % run.shard): 0o600,
                     os.path.join(run_dir, "%s.health.json" % run.shard): 0o600,
                     os.path.join(run_dir, "%s.lock" % run.shard): 0o600}, modes
    # the health file is rewritten (at least once a second)
    first = health["updated_ns"]
    time.sleep(1.2)
    assert _status(run.config)[1]["health"]["updated_ns"] > first
    assert run.stop() == 0
    code, snap = _status(run.config)
    assert snap["state"] == "not_running" and code == 6, snap


def test_ready_is_not_logged_while_a_child_crash_loops(runs):
    # a segment size that cannot hold one record: the journaler dies at every start
    run = _launch(runs(extra={"journal": {"fsync": "batch", "segment_bytes": 16}}))
    code = run.proc.wait(45)
    log = "\n".join(run.log())
    assert code == 1, log
    assert re.search(r"proc=supervisor .*event=child_gave_up .*child=journaler", log), log
    assert not re.search(r"proc=supervisor .*event=ready", log), log
    assert _own_segments(run.shard) == [], log


def test_second_engine_with_same_shard_name_leaves_the_first_alone(runs, tmp_path):
    first = runs("a").start()
    rings = {n: os.stat("/dev/shm/" + n).st_ino for n in ("rm-%s-in" % first.shard,
                                                        "rm-%s-out" % first.shard)}
    other = tmp_path / "other.json"
    raw = json.load(open(first.config))
    raw["data_dir"] = str(tmp_path / "var2")
    raw["publisher"] = dict(raw["publisher"], port=free_port())
    other.write_text(json.dumps(raw))
    second = subprocess.run([RINGMATCH, "run", "--config", str(other)], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 3, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ringmatch run: "), second.stderr
    assert first.shard in lines[0] and str(first.proc.pid) in lines[0] \
        and first.data_dir in lines[0], lines[0]
    assert "stale_segment_unlinked" not in second.stderr
    assert {n: os.stat("/dev/shm/" + n).st_ino for n in rings} == rings
    code, snap = _status(first.config)
    assert code == 0 and snap["state"] == "ready", snap
    assert first.stop() == 0
    assert _own_segments(first.shard) == []


def test_publisher_port_in_use_is_one_line_before_anything_starts(runs):
    run = runs()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", run.port))
        busy.listen(1)
        try:
            proc = subprocess.run([RINGMATCH, "run", "--config", run.config], cwd=ROOT,
                                  capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError("ringmatch run kept running on a port in use:\n%s"
                                 % (exc.stderr or b"").decode(errors="replace")[-3000:])
    assert proc.returncode == 7, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "port" in lines[0] and str(run.port) in lines[0], proc.stderr
    assert _own_segments(run.shard) == []


def _mount_ro_tmpfs(path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs (permissions alone do not stop root)")
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", path],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here: %s" % proc.stderr.strip())


@pytest.mark.parametrize("where", ["data_dir", "journal"])
def test_read_only_data_dir_is_one_line(runs, where):
    run = runs()
    target = run.data_dir if where == "data_dir" else os.path.join(run.data_dir, "journal")
    _mount_ro_tmpfs(target)
    try:
        try:
            proc = subprocess.run([RINGMATCH, "run", "--config", run.config], cwd=ROOT,
                                  capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError("ringmatch run did not refuse a read-only %s:\n%s"
                                 % (where, (exc.stderr or b"").decode(errors="replace")[-3000:]))
    finally:
        subprocess.run(["umount", "-l", target])
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0] and target in lines[0] \
        and "Read-only file system" in lines[0], proc.stderr
    assert _own_segments(run.shard) == []


def test_owner_lock_is_host_wide_and_released(tmp_path):
    """Unit level: the owner lock refuses a second holder and disappears with its holder."""
    from engine.supervisor import AlreadyRunningError, OwnerLock
    name = "sv%dlock" % os.getpid()
    first = OwnerLock(name, str(tmp_path / "a")).acquire()
    try:
        with pytest.raises(AlreadyRunningError) as err:
            OwnerLock(name, str(tmp_path / "b")).acquire()
        assert str(os.getpid()) in str(err.value) and str(tmp_path / "a") in str(err.value)
        assert stat.S_IMODE(os.stat(first.path).st_mode) == 0o600
    finally:
        first.release()
    assert not os.path.exists(first.path)
    again = OwnerLock(name, str(tmp_path / "b")).acquire()
    again.release()
    # a holder that died (its flock is gone) leaves a file: the next one takes it over
    child = subprocess.Popen([sys.executable, "-c",
                              "from engine.supervisor import OwnerLock; import sys, os;"
                              "OwnerLock(%r, 'x').acquire(); print('held', flush=True);"
                              "os.kill(os.getpid(), 9)" % name], cwd=ROOT,
                             stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"held"
    child.wait(10)
    assert os.path.exists(first.path)
    try:
        OwnerLock(name, str(tmp_path / "c")).acquire().release()
    finally:
        try:
            posix_ipc.unlink_shared_memory("/rm-%s.owner" % name)
        except posix_ipc.ExistentialError:
            pass
