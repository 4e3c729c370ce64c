"""The supervisor behind ``ringmatch run``: starts, watches and stops one engine.

Theory of operation (numbered rules; the code refers to them):

1. One instance per shard: an exclusive ``flock`` on ``<data>/run/<shard>.lock``.
   A second ``ringmatch run`` on the same data dir and shard is refused.
2. A ring segment that exists while we hold the lock is stale (its creator
   crashed): it is unlinked and made anew.  The journal, not the ring, is the
   record: a command only counts as accepted once its outcome event is out,
   which happens only after it is journaled.
3. The input ring is created with its sequence continuing the journal
   (``initial_sequence`` = last durable journal sequence), so sequence = order
   id stays true across restarts.
4. Start order: journaler, replicator (if a standby is configured), matcher,
   publisher.  Each child gets the resolved config file and its shard.
5. A child that dies is restarted (with a back-off, at most ``MAX_RESTARTS``
   per minute): the journaler resumes from its durable position, the matcher
   goes through recovery (snapshot + journal), the publisher rebuilds.
6. SIGINT/SIGTERM: the publisher (a producer) is stopped first; then the matcher
   is allowed to drain the input ring; a SNAPSHOT command is published and
   awaited; then matcher, replicator and journaler are stopped, the rings
   unlinked and the lock released.
7. Fencing (docs/replication.md): ``start`` refuses to run a shard whose epoch
   store (``<data>/replication/<S>.epoch``) says ``fenced`` or ``standby``
   (``replicator.epoch.FencedError``, before any ring or child exists).  A
   replicator that exits with code 5 learned of a higher epoch (a standby was
   promoted): the shard is stopped at once, not restarted.
8. Synchronous standby: the ring starts with every gate at the journal's end J,
   but records up to J may be missing on the standby.  So the matcher (which
   replays the journal up to its gates) is started only once the replicator
   reports the standby's acknowledged durable sequence >= J
   (``replication.mode: sync``): ``on_unreachable: stall`` waits for it,
   ``degrade`` waits ``degrade_after_s`` and then starts with an ERROR line.
"""
import fcntl
import os
import signal
import subprocess
import sys
import time

from engine.log import Logger

__all__ = ["Supervisor", "AlreadyRunningError", "find_matcher_interpreter", "run_supervisors"]

MAX_RESTARTS = 5            # per child per RESTART_WINDOW_S
RESTART_WINDOW_S = 60.0
STOP_TIMEOUT_S = 10.0
EXIT_FENCED = 5             # replicator.process: this node was fenced (rule 7)


class AlreadyRunningError(RuntimeError):
    """Another engine holds this shard's lock (rule 1)."""


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _can_import(python, module="engine.matcher"):
    try:
        out = subprocess.run([python, "-c", "import %s, ringbuf._ringbuf_cffi" % module],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             timeout=60, cwd=_repo_root())
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def find_matcher_interpreter(setting="auto"):
    """Return (path, name) of the interpreter the matcher runs on.

    ``setting``: "auto" (PyPy when one with ringmatch installed is found, else
    this CPython), "pypy", "cpython", or a path to an interpreter.
    Raises RuntimeError when "pypy" is asked for and none works.
    """
    if setting == "cpython":
        return sys.executable, "cpython"
    candidates = []
    if setting not in ("auto", "pypy"):
        candidates.append(setting)
    else:
        env = os.environ.get("RINGMATCH_PYPY")
        if env:
            candidates.append(env)
        candidates.append(os.path.join(_repo_root(), ".venv-pypy", "bin", "python"))
    for path in candidates:
        if os.path.exists(path) and _can_import(path):
            return path, ("pypy" if "pypy" in path else os.path.basename(path))
    if setting == "pypy":
        raise RuntimeError("matcher.interpreter=pypy but no PyPy with ringmatch installed "
                           "was found (tried %s); run `make venv-pypy`" % ", ".join(candidates))
    if setting not in ("auto", "pypy"):
        raise RuntimeError("matcher.interpreter=%s cannot import ringmatch" % setting)
    return sys.executable, "cpython"


def _child_preexec():
    """In the child before exec: Ctrl-C goes to the supervisor only (it drains
    in order, rule 6), and the child gets SIGTERM if the supervisor dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child(object):
    """One supervised process."""

    def __init__(self, name, argv, env=None):
        self.name = name
        self.argv = argv
        self.env = env
        self.proc = None
        self.restarts = []
        self.restart_at = None

    def start(self):
        # own session: a terminal's Ctrl-C (SIGINT to the foreground process group)
        # reaches the supervisor only, which then stops the children in order (rule 6)
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=_repo_root(),
                                     preexec_fn=_child_preexec, start_new_session=True)
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT_S):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Supervisor(object):
    """Run one shard's processes (rules 1-6 above)."""

    def __init__(self, runtime, shard_name=None, log=None):
        # this shard's view: its symbols only, its own publisher port (RuntimeConfig.shard_view)
        self.runtime = runtime.shard_view(shard_name or runtime.shards[0].name)
        self.shard = self.runtime.shards[0]
        self.log = log or Logger("supervisor", self.shard.name)
        self.children = {}
        self.lock_fd = None
        self.rings = []
        self.stopping = False
        self.fenced = False             # rule 7: the replicator exited fenced
        self.config_path = None
        self._last_snapshot = None
        self._last_reap = 0.0
        self.clock = None               # engine.client.ClockTicker: trusted time (M9)

    # -- rule 1 ---------------------------------------------------------------
    def acquire_lock(self):
        path = os.path.join(self.runtime.run_dir(), "%s.lock" % self.shard.name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise AlreadyRunningError(
                "shard %r in %s is already run by pid %s (lock %s)"
                % (self.shard.name, self.runtime.data_dir, holder or "?", path))
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.lock_fd = fd

    def release_lock(self):
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    # -- rules 2, 3 -----------------------------------------------------------
    def create_rings(self):
        from ringbuf import Ring
        from journaler.recovery import durable_sequence
        last = durable_sequence(self.runtime.data_dir, self.shard.name)
        for name in (self.shard.input_ring, self.shard.output_ring):
            self._unlink_stale(name)
        consumers = {"journaler": [], "matcher": ["journaler"]}
        if self.runtime.standby:
            consumers = {"journaler": [], "replicator": [],
                         "matcher": ["journaler", "replicator"]}
        ring_in = Ring.create(self.shard.input_ring, capacity=self.shard.input_capacity,
                              record_size=64, consumers=consumers, initial_sequence=last)
        self.rings.append(ring_in)
        from engine.client import ClockTicker
        self.clock = ClockTicker(ring_in)
        self.clock.tick()               # the first record of the new ring (docs/engine.md M9)
        ring_out = Ring.create(self.shard.output_ring, capacity=self.shard.output_capacity,
                               record_size=128,
                               consumers=dict([("publisher", [])] + [
                                   (n, []) for n in self.shard.output_consumers]),
                               single_producer=True)
        self.rings.append(ring_out)
        self.log.event("rings_created", input=self.shard.input_ring,
                       output=self.shard.output_ring, first_seq=last + 1)
        return last

    def _unlink_stale(self, name):
        import posix_ipc
        try:
            posix_ipc.unlink_shared_memory("/" + name)
        except posix_ipc.ExistentialError:
            return
        self.log.warning("stale_segment_unlinked", name=name)

    def destroy_rings(self):
        for ring in self.rings:
            try:
                ring.close()
            finally:
                try:
                    ring.unlink()
                except Exception as exc:  # already gone: nothing to clean
                    self.log.warning("unlink_failed", ring=getattr(ring, "name", "?"), error=exc)
        self.rings = []

    # -- rule 4 -----------------------------------------------------------------
    def _argv(self, python, module):
        return [python, "-m", module, "--config", self.config_path, "--shard", self.shard.name]

    def start(self):
        self.acquire_lock()
        try:
            from replicator.epoch import EpochStore, FencedError
            try:
                EpochStore(self.runtime.data_dir, self.shard.name).check_may_be_primary()  # rule 7
            except FencedError as exc:
                self.log.error("refused_fenced", detail=str(exc))
                raise
            os.makedirs(self.runtime.data_dir, exist_ok=True)
            self.config_path = os.path.join(self.runtime.run_dir(), "%s.json" % self.shard.name)
            self.runtime.dump(self.config_path)
            durable = self.create_rings()
            matcher_python, interp = find_matcher_interpreter(
                self.runtime.matcher.get("interpreter", "auto"))
            self.log.event("matcher_interpreter", name=interp, path=matcher_python)
            plan = [("journaler", sys.executable, "journaler.process")]
            if self.runtime.standby:
                plan.append(("replicator", sys.executable, "replicator.process"))
            plan.append(("matcher", matcher_python, "engine.matcher_process"))
            plan.append(("publisher", sys.executable, "publisher.process"))
            for name, python, module in plan:
                child = Child(name, self._argv(python, module))
                self.children[name] = child
                pid = child.start()
                self.log.event("child_started", child=name, child_pid=pid)
                if name == "replicator":
                    self._wait_for_standby(child, durable)                     # rule 8
        except BaseException:
            self.stop()
            raise

    def _wait_for_standby(self, child, durable):
        """Rule 8: return once the standby acknowledged ``durable`` (sync mode)."""
        import json
        from replicator.process import status_path
        conf = self.runtime.replication or {}
        if conf.get("mode", "sync") != "sync" or durable <= 0:
            return
        path = status_path(self.runtime.data_dir, self.shard.name)
        degrade_after = float(conf.get("degrade_after_s", 5.0)) \
            if conf.get("on_unreachable", "stall") == "degrade" else None
        started = last_log = time.monotonic()
        self.log.event("waiting_for_standby", journal_seq=durable)
        while True:
            try:
                with open(path) as f:
                    status = json.load(f)
            except (OSError, ValueError):
                status = {}
            if status.get("pid") == child.proc.pid and status.get("acked", 0) >= durable:
                self.log.event("standby_caught_up", acked=status["acked"], journal_seq=durable)
                return
            if not child.alive():
                if child.proc.returncode == EXIT_FENCED:                        # rule 7
                    from replicator.epoch import FencedError
                    self.fenced = True
                    self.log.error("fenced", child="replicator", exit_code=EXIT_FENCED,
                                   detail="a standby was promoted; this node stops")
                    raise FencedError("shard %r was fenced by a promoted standby"
                                      % self.shard.name)
                raise RuntimeError("the replicator exited (code %s) before the standby "
                                   "acknowledged the journal" % child.proc.returncode)
            now = time.monotonic()
            if degrade_after is not None and now - started >= degrade_after:
                self.log.error("replication_degraded", journal_seq=durable,
                               warning="STANDBY UNREACHABLE at start: the matcher acts on "
                                       "records the standby may not have")
                return
            if now - last_log >= 5.0:
                last_log = now
                self.log.warning("replication_stalled", journal_seq=durable,
                                 acked=status.get("acked"), waited_s=int(now - started))
            time.sleep(0.02)

    def wait_ready(self, timeout=60.0):
        """Wait until the publisher's port answers (it is the last to start).

        Returns True when ready, False on timeout or when a child died meanwhile
        (the caller's supervision loop then restarts it).
        """
        import socket
        if "publisher" not in self.children:
            return True
        pub = self.runtime.publisher
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((pub["host"], pub["port"]), timeout=0.5):
                    return True
            except OSError:
                pass
            if not all(c.alive() for c in self.children.values()):
                return False
            time.sleep(0.05)
        return False

    # -- rule 5 -------------------------------------------------------------
    def poll_children(self):
        """Restart any child that died; return False when one gave up restarting.

        The first restart in a window is immediate; each further one waits
        twice as long (0.2 s, 0.4 s, ... at most 5 s) so a crash loop does not
        spin the machine.
        """
        now = time.monotonic()
        for name, child in self.children.items():
            if child.alive() or self.stopping:
                continue
            if child.restart_at is None:
                code = child.proc.returncode if child.proc else None
                if name == "replicator" and code == EXIT_FENCED:       # rule 7
                    self.fenced = True
                    self.log.error("fenced", child=name, exit_code=code,
                                   detail="a standby was promoted; this node stops")
                    return False
                child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
                if len(child.restarts) >= MAX_RESTARTS:
                    self.log.error("child_gave_up", child=name, exit_code=code,
                                   restarts=len(child.restarts))
                    return False
                delay = 0.0 if not child.restarts else min(0.1 * 2 ** len(child.restarts), 5.0)
                child.restart_at = now + delay
                self.log.warning("child_died", child=name, exit_code=code,
                                 restart_in_s=round(delay, 2))
            if now >= child.restart_at:
                child.restart_at = None
                child.restarts.append(now)
                pid = child.start()
                self.log.event("child_restarted", child=name, child_pid=pid)
        return True

    # -- rule 6 -------------------------------------------------------------
    def stop(self, drain_timeout=STOP_TIMEOUT_S):
        self.stopping = True
        if "publisher" in self.children:
            code = self.children["publisher"].stop()
            self.log.event("child_stopped", child="publisher", exit_code=code)
        if self.rings and not self.fenced and self.children.get("matcher") and \
                self.children["matcher"].alive():       # fenced: the matcher's gate is frozen
            self._drain_and_snapshot(drain_timeout)
        for name in ("matcher", "replicator", "journaler"):
            if name in self.children:
                code = self.children[name].stop()
                self.log.event("child_stopped", child=name, exit_code=code)
        self.destroy_rings()
        self.release_lock()
        self.log.event("stopped")

    def _drain_and_snapshot(self, timeout):
        from engine.client import publish_admin
        from ringbuf.records import CommandKind
        ring_in = self.rings[0]
        try:
            seq = publish_admin(ring_in, CommandKind.SNAPSHOT)
        except Exception as exc:
            self.log.error("snapshot_publish_failed", error=exc)
            return
        deadline = time.monotonic() + timeout
        matcher_seq = 0
        while time.monotonic() < deadline:
            matcher_seq = ring_in.consumer_sequence("matcher")
            if matcher_seq >= seq:
                self.log.event("drained", seq=matcher_seq, snapshot_seq=seq)
                return
            if not self.children["matcher"].alive():
                break
            time.sleep(0.01)
        self.log.error("drain_timeout", matcher_seq=matcher_seq, snapshot_seq=seq)

    def reap_dead_producers(self, now=None, every_s=1.0):
        """Publish NOPs for slots a dead producer claimed but never published (ring rule 3).

        Consumers reap only when one of their waits outlasts the claim timeout;
        the matcher and journaler poll in short slices, so the supervisor checks
        once a second.  Live producers are never touched (pid liveness decides).
        """
        now = time.monotonic() if now is None else now
        if not self.rings or now - self._last_reap < every_s:
            return 0
        self._last_reap = now
        recovered = self.rings[0].recover_dead_producers()
        if recovered:
            self.log.warning("dead_producer_slots_recovered", ring=self.shard.input_ring,
                             slots=recovered)
        return recovered

    def maybe_snapshot(self, now=None):
        """Issue a periodic SNAPSHOT command (every N commands or T seconds; rule 6 takes the last)."""
        if not self.rings:
            return None
        conf = self.runtime.snapshot
        every_n = conf.get("every_commands") or 0
        every_s = conf.get("every_seconds") or 0
        if not every_n and not every_s:
            return None
        now = time.monotonic() if now is None else now
        ring_in = self.rings[0]
        cursor = ring_in.cursor
        if self._last_snapshot is None:
            self._last_snapshot = (cursor, now)
            return None
        last_seq, last_t = self._last_snapshot
        due = (every_n and cursor - last_seq >= every_n) or \
              (every_s and now - last_t >= every_s and cursor > last_seq)
        if not due:
            return None
        from engine.client import publish_admin
        from ringbuf.records import CommandKind
        seq = publish_admin(ring_in, CommandKind.SNAPSHOT)
        self._last_snapshot = (seq, now)
        self.log.event("snapshot_requested", seq=seq)
        return seq

    def run_forever(self, poll_interval=0.2):
        """Block until SIGINT/SIGTERM, supervising children; then stop."""
        return run_supervisors([self], poll_interval)


def run_supervisors(supervisors, poll_interval=0.2):
    """Supervise several started shards until SIGINT/SIGTERM or a child gives up; stop all.

    Returns 0 after a signal, 1 when a child gave up restarting.
    """
    stop_requested = []

    def _handler(signum, frame):
        stop_requested.append(signum)

    old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop_requested:
            if not all([sup.poll_children() for sup in supervisors]):
                break
            for sup in supervisors:
                sup.reap_dead_producers()
                sup.maybe_snapshot()
                if sup.clock is not None:
                    sup.clock.maybe_tick()
            time.sleep(poll_interval)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for sup in supervisors:
            sup.log.event("stopping", signal=stop_requested[0] if stop_requested else "child_failure")
            sup.stop()
    return 0 if stop_requested else 1
