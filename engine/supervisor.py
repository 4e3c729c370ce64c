"""The supervisor behind ``ringmatch run``: starts, watches and stops one engine.

Theory of operation (numbered rules; the code refers to them):

1. One instance per shard name on the host, and one per shard in a data dir.
   The ring names ``rm-<S>-in``/``rm-<S>-out`` are host-wide, so they are owned
   host-wide: an exclusive ``flock`` on ``/dev/shm/rm-<S>.owner`` (beside the
   segments it guards; it holds the owner's pid and data dir) is held for the
   engine's life.  Then an exclusive ``flock`` on ``<data>/run/<S>.lock``.
   A second ``ringmatch run`` of the same shard name -- same data dir or not --
   is refused with one line naming the owner.  The owner file is unlinked only
   by its holder; a taker checks after locking that the path still names the
   file it locked (else it retries), so the unlink cannot split the lock.
2. A ring segment that exists while we hold the owner lock is stale: every
   engine that could own it takes the lock first, and the kernel drops a
   ``flock`` only when its holder is gone -- the owner is provably dead.  It is
   unlinked and made anew.  The journal, not the ring, is the record: a
   command only counts as accepted once its outcome event is out, which
   happens only after it is journaled.
3. The input ring is created with its sequence continuing the journal
   (``initial_sequence`` = last durable journal sequence), so sequence = order
   id stays true across restarts.
4. Start order: journaler, replicator (if a standby is configured), matcher,
   publisher.  Each child gets the resolved config file and its shard.  Before
   any ring or child exists: the data dir is created (0700, ``run/`` 0700) and
   every directory the children write is probed (a read-only or unwritable
   data dir is one clear error), and the publisher's port is bound once as a
   probe (a port in use is one clear error).
5. A child that dies is restarted (with a back-off, at most ``MAX_RESTARTS``
   per minute): the journaler resumes from its durable position, the matcher
   goes through recovery (snapshot + journal), the publisher rebuilds.
6. SIGINT/SIGTERM: the publisher (a producer) is stopped first; then the matcher
   is allowed to drain the input ring; a SNAPSHOT command is published and
   awaited (only when the matcher is ready: one still recovering has nothing
   new to snapshot); then matcher, replicator and journaler are stopped, the
   rings unlinked and the locks released.  The handlers are installed before
   the first step of start-up (``StopSignals``); start-up checks them between
   steps and in every wait, so a signal at any point stops cleanly.
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
9. Readiness: a child is ready when *its own process* (the pid the supervisor
   started) logs ``event=ready`` (the publisher: ``event=serving``, after it
   bound its port); the supervisor reads each child's stderr and passes every
   line on.  The shard is ``ready`` (logged once, ``event=ready``) only when
   every child is ready and none is stalled or restarting; before that it is
   ``starting``, afterwards such a child makes it ``degraded``.
10. Stall detection: a ready child whose ring position (its consumer
   sequence) has not moved for ``supervisor.stall_after_s`` seconds while its
   upstream is ahead (journaler, replicator: the input cursor; matcher: its
   dependencies' sequences; publisher: the output cursor) is stalled:
   ``child_stalled name=.. seconds=..`` is logged once, ``child_resumed`` when
   it moves again.  The supervisor's CLOCK tick (once a second) makes work
   pending on an idle engine too, so a hung child is seen within
   ``stall_after_s`` + 1 s.
11. Health: ``<data>/run/<S>.health.json`` (0600, written to a temporary file
   and renamed) at least once a second: ``{"shard", "state":
   starting|ready|degraded|stopping, "updated_ns", "pid", "children": {name:
   {"pid", "state": starting|ready|stalled|restarting|dead, "restarts"}},
   "journal": {"durable_seq"}}``.  The publisher's ``GET /health`` and
   ``ringmatch status`` read it; it is removed when the supervisor stops.
12. Periodic snapshots count commands, not records the supervisor wrote itself
   (CLOCK ticks, NOPs for dead producers' claims): an idle engine is never
   snapshotted again just because time passed.
"""
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from engine.log import Logger
from journaler.segment import private_dir     # the one 0700-directory rule (docs/journal.md, Files)

__all__ = ["Supervisor", "AlreadyRunningError", "PortInUseError", "DataDirError",
           "StopRequested", "StopSignals", "OwnerLock", "find_matcher_interpreter",
           "run_supervisors", "write_private_json", "health_path", "owner_path"]

MAX_RESTARTS = 5            # per child per RESTART_WINDOW_S
RESTART_WINDOW_S = 60.0
STOP_TIMEOUT_S = 10.0
EXIT_FENCED = 5             # replicator.process: this node was fenced (rule 7)
OWNER_DIR = "/dev/shm"      # rule 1: beside the segments whose names it owns
HEALTH_EVERY_S = 1.0        # rule 11 (the contract says: at least once a second)
CLOCK_EVERY_S = 1.0         # docs/engine.md M9
READY_EVENTS = {"publisher": "serving"}     # rule 9; every other child: "ready"
_ORDERED = ("publisher", "matcher", "replicator", "journaler")   # rule 6; others (producers) first


class AlreadyRunningError(RuntimeError):
    """Another engine holds this shard's name or data-dir lock (rule 1)."""


class PortInUseError(RuntimeError):
    """The publisher's port is taken by another process (rule 4)."""


class DataDirError(RuntimeError):
    """The data dir (or a directory in it) cannot be written (rule 4)."""


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived during start-up (rule 6); ``signum`` says which."""

    def __init__(self, signum):
        Exception.__init__(self, "stop requested by signal %s" % signum)
        self.signum = signum


class StopSignals(object):
    """SIGINT/SIGTERM handlers that only note the signal (rule 6).

    Install them before the first step of start-up; ``check()`` raises
    StopRequested once one arrived.  A second signal while stopping is noted
    and ignored (the stop in progress finishes).  O(1).

    >>> signals = StopSignals().install()   # doctest: +SKIP
    >>> signals.check()                     # raises StopRequested after a SIGTERM
    """

    def __init__(self):
        self.received = []
        self._old = {}

    def _handler(self, signum, frame):
        self.received.append(signum)

    def install(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handler)
        return self

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def __bool__(self):
        return bool(self.received)

    def check(self):
        if self.received:
            raise StopRequested(self.received[0])


def owner_path(shard_name):
    """The host-wide owner lock file of a shard name (rule 1)."""
    return os.path.join(OWNER_DIR, "rm-%s.owner" % shard_name)


def health_path(data_dir, shard_name):
    """``<data>/run/<shard>.health.json`` (rule 11)."""
    return os.path.join(data_dir, "run", "%s.health.json" % shard_name)


def write_private_json(path, obj):
    """Write ``obj`` as JSON to ``path`` atomically (temporary file, rename), mode 0600."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)            # an old temporary file keeps its mode otherwise
        with os.fdopen(fd, "w") as f:
            fd = None
            json.dump(obj, f, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class OwnerLock(object):
    """The host-wide lock on a shard's ring names (rule 1).

    ``acquire()`` raises AlreadyRunningError naming the holder (pid, data dir).
    """

    def __init__(self, shard_name, data_dir):
        self.shard_name = shard_name
        self.data_dir = data_dir
        self.path = owner_path(shard_name)
        self.fd = None

    @staticmethod
    def holder(path):
        """The holder's record ({pid, data_dir, ...}) or {} when unreadable."""
        try:
            with open(path) as f:
                data = json.loads(f.read() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                held = self.holder(self.path)
                raise AlreadyRunningError(
                    "shard %r is already run by pid %s on this host (data dir %s); its rings "
                    "rm-%s-in/out are in use (owner lock %s)"
                    % (self.shard_name, held.get("pid", "?"), held.get("data_dir", "?"),
                       self.shard_name, self.path))
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:                # the previous holder unlinked it meanwhile: retry
                os.close(fd)
                continue
            record = json.dumps({"pid": os.getpid(), "data_dir": self.data_dir,
                                 "shard": self.shard_name, "started_ns": time.time_ns()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
            self.fd = fd
            return self

    def release(self):
        if self.fd is not None:
            try:
                os.unlink(self.path)    # while holding it (rule 1)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _can_import(python, module="engine.matcher", should_stop=None):
    try:
        proc = subprocess.Popen([python, "-c", "import %s, ringbuf._ringbuf_cffi" % module],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=_repo_root())
    except OSError:
        return False
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                return proc.wait(0.05) == 0
            except subprocess.TimeoutExpired:
                pass
            if should_stop is not None:
                should_stop()           # rule 6: may raise StopRequested
            if time.monotonic() > deadline:
                return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def find_matcher_interpreter(setting="auto", should_stop=None):
    """Return (path, name) of the interpreter the matcher runs on.

    ``setting``: "auto" (PyPy when one with ringmatch installed is found, else
    this CPython), "pypy", "cpython", or a path to an interpreter.
    Raises RuntimeError when "pypy" is asked for and none works.
    ``should_stop`` is called while an interpreter is tried (it may raise).
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
        if os.path.exists(path) and _can_import(path, should_stop=should_stop):
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


def _write_stderr(data):
    """Pass a child's line on to our stderr (one write: lines do not interleave)."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    while data:
        try:
            n = os.write(2, data)
        except InterruptedError:
            continue
        except OSError:
            return
        data = data[n:]


class Child(object):
    """One supervised process; ``ready`` once its own pid logged its ready event (rule 9)."""

    def __init__(self, name, argv, env=None, ready_event=None, shard="-"):
        self.name = name
        self.shard = shard
        self.argv = argv
        self.env = env
        self.ready_event = ready_event or READY_EVENTS.get(name, "ready")
        self.proc = None
        self.restarts = []
        self.restart_at = None
        self.ready = False
        self.gave_up = False
        self._reader = None

    def start(self):
        # own session: a terminal's Ctrl-C (SIGINT to the foreground process group)
        # reaches the supervisor only, which then stops the children in order (rule 6)
        self.ready = False
        proc = subprocess.Popen(self.argv, env=self.env, cwd=_repo_root(), stderr=subprocess.PIPE,
                                preexec_fn=_child_preexec, start_new_session=True)
        self.proc = proc
        self._reader = threading.Thread(target=self._forward, args=(proc,), daemon=True,
                                        name="stderr-%s-%d" % (self.name, proc.pid))
        self._reader.start()
        return proc.pid

    def _forward(self, proc):
        """Rule 9: read the child's stderr, pass it on, note its ready line."""
        from engine.log import current_format, parse_json_line, wrap_line
        own = b" pid=%d " % proc.pid
        marker = b" event=" + self.ready_event.encode()
        stream = proc.stderr
        as_json = current_format() == "json"      # every line passed on is JSON (engine/log.py)
        try:
            for line in iter(stream.readline, b""):
                if not self.ready and proc is self.proc:
                    obj = parse_json_line(line) if as_json else None
                    if obj is not None:
                        if obj.get("pid") == proc.pid and obj.get("event") == self.ready_event:
                            self.ready = True
                    elif own in line:
                        at = line.find(marker)
                        end = at + len(marker)
                        if at >= 0 and line[end:end + 1] in (b" ", b"\n", b""):
                            self.ready = True
                if as_json:
                    line = wrap_line(line, self.name, self.shard, proc.pid)
                _write_stderr(line)
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT_S):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped (SIGSTOP) child must see it
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(1.0)          # its last lines before our "child_stopped"
        return self.proc.returncode


class _Progress(object):
    """Rule 10: one child's ring position over time."""

    __slots__ = ("position", "since", "stalled")

    def __init__(self, position, now):
        self.position = position
        self.since = now            # last time it moved or had nothing to do
        self.stalled = False


class Supervisor(object):
    """Run one shard's processes (rules 1-12 above)."""

    def __init__(self, runtime, shard_name=None, log=None):
        # this shard's view: its symbols only, its own publisher port (RuntimeConfig.shard_view)
        self.runtime = runtime.shard_view(shard_name or runtime.shards[0].name)
        self.shard = self.runtime.shards[0]
        self.log = log or Logger("supervisor", self.shard.name)
        self.children = {}
        self.lock_fd = None
        self.owner = None               # OwnerLock (rule 1)
        self.rings = []
        self.stopping = False
        self.fenced = False             # rule 7: the replicator exited fenced
        self.config_path = None
        self.stop_signals = None        # StopSignals (rule 6), set by ringmatch run
        self.on_ready = None            # called once with self when the shard is ready
        self.state = "starting"         # rule 9
        self.ever_ready = False
        self.started_at = time.monotonic()
        self.durable_at_start = 0
        conf = getattr(self.runtime, "supervisor", None) or {}
        self.stall_after_s = float(conf.get("stall_after_s", 3.0))
        self.ready_timeout_s = float(conf.get("ready_timeout_s", 60.0))
        self._not_ready_logged = False
        self._progress = {}
        self._last_snapshot = None
        self._own_records = 0           # rule 12: records we wrote since the last snapshot
        self._last_reap = 0.0
        self._last_health = None
        self._health_failed = False
        self._clock_last = None
        self.clock = None               # kept for callers that look: the input ring's ticker

    # -- rule 6 ---------------------------------------------------------------
    def _checkpoint(self):
        if self.stop_signals is not None:
            self.stop_signals.check()

    # -- rule 1 ---------------------------------------------------------------
    def acquire_lock(self):
        if self.owner is None:
            self.owner = OwnerLock(self.shard.name, self.runtime.data_dir).acquire()
        try:
            os.makedirs(self.runtime.data_dir, mode=0o700, exist_ok=True)   # never chmod'ed: it may be shared
            path = os.path.join(private_dir(self.runtime.run_dir()), "%s.lock" % self.shard.name)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except BaseException:
            self.release_lock()
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
                self.release_lock()
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
        if self.owner is not None:
            self.owner.release()
            self.owner = None

    # -- rule 4 ---------------------------------------------------------------
    def check_data_dir(self):
        """Create and probe every directory the engine writes; DataDirError names the first bad one."""
        data = self.runtime.data_dir
        for sub in ("", "run", "journal", "snapshots"):
            path = os.path.join(data, sub) if sub else data
            probe = os.path.join(path, ".write-probe-%d" % os.getpid())
            try:
                if sub == "run":
                    private_dir(path)
                else:
                    os.makedirs(path, mode=0o700, exist_ok=True)
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise DataDirError("data dir %s is not writable (%s: %s)"
                                   % (data, exc.filename or path, exc.strerror or exc))

    def check_port(self):
        """Rule 4: bind the publisher's address once (as the publisher will); PortInUseError if taken."""
        if self.runtime.publisher is None:
            return
        host = self.runtime.publisher.get("host", "127.0.0.1")
        port = int(self.runtime.publisher.get("port", 8080))
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as publisher._listen
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError("publisher port %s:%d is already in use (another engine or "
                                     "program listens there); set --port or publisher.port"
                                     % (host, port))
            raise PortInUseError("publisher address %s:%d cannot be bound: %s"
                                 % (host, port, exc.strerror or exc))
        finally:
            sock.close()

    # -- rules 2, 3 -----------------------------------------------------------
    def create_rings(self):
        from ringbuf import Ring
        from journaler.recovery import durable_sequence
        last = durable_sequence(self.runtime.data_dir, self.shard.name)
        self.durable_at_start = last
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
        self.clock = ClockTicker(ring_in, CLOCK_EVERY_S)
        self.tick_clock()               # the first record of the new ring (docs/engine.md M9)
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
        assert self.owner is not None, "rule 2: only the owner of the name unlinks"
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

    def _publish_own(self, kind, timeout=0.05):
        """Publish an admin record as the supervisor; None when the ring stays full.

        Never blocks the supervision loop for long: a hung consumer fills the
        ring, and the supervisor must still see it (rule 10).
        """
        from engine.client import pack_command
        from ringbuf.records import SUPERVISOR_PRODUCER_ID
        ring = self.rings[0]
        producer = ring.producer(producer_id=SUPERVISOR_PRODUCER_ID, privileged=True)
        try:
            return producer.write(pack_command(int(kind), producer_id=SUPERVISOR_PRODUCER_ID,
                                               timestamp_ns=time.time_ns()), timeout)
        finally:
            producer.close()

    def may_write_input(self):
        """Whether the supervisor may write its own records (CLOCK) into the input ring.

        True for a primary; a hot standby's input ring is a copy of the
        primary's stream and should override this (False until promoted).
        """
        return True

    def tick_clock(self, now=None):
        """Publish a CLOCK tick when CLOCK_EVERY_S passed (docs/engine.md M9); its seq or None."""
        from ringbuf.records import CommandKind
        if not self.rings or not self.may_write_input():
            return None
        now = time.monotonic() if now is None else now
        if self._clock_last is not None and now - self._clock_last < CLOCK_EVERY_S:
            return None
        seq = self._publish_own(CommandKind.CLOCK)
        if seq is not None:
            self._clock_last = now
            if self.clock is not None:
                self.clock.last = now
            self._own_records += 1      # rule 12
        return seq

    # -- rule 4 -----------------------------------------------------------------
    def _argv(self, python, module):
        return [python, "-m", module, "--config", self.config_path, "--shard", self.shard.name]

    def start(self):
        self._checkpoint()
        self.acquire_lock()
        try:
            self.check_data_dir()
            from replicator.epoch import EpochStore, FencedError
            try:
                EpochStore(self.runtime.data_dir, self.shard.name).check_may_be_primary()  # rule 7
            except FencedError as exc:
                self.log.error("refused_fenced", detail=str(exc))
                raise
            self.check_port()
            self.config_path = os.path.join(self.runtime.run_dir(), "%s.json" % self.shard.name)
            self.runtime.dump(self.config_path)
            self.write_health(force=True)
            self._checkpoint()
            durable = self.create_rings()
            self.write_health(force=True)
            self._checkpoint()
            matcher_python, interp = find_matcher_interpreter(
                self.runtime.matcher.get("interpreter", "auto"), should_stop=self._checkpoint)
            self.log.event("matcher_interpreter", name=interp, path=matcher_python)
            plan = [("journaler", sys.executable, "journaler.process")]
            if self.runtime.standby:
                plan.append(("replicator", sys.executable, "replicator.process"))
            plan.append(("matcher", matcher_python, "engine.matcher_process"))
            plan.append(("publisher", sys.executable, "publisher.process"))
            for name, python, module in plan:
                self._checkpoint()
                child = Child(name, self._argv(python, module), shard=self.shard.name)
                self.children[name] = child
                pid = child.start()
                self.log.event("child_started", child=name, child_pid=pid)
                if name == "replicator":
                    self._wait_for_standby(child, durable)                     # rule 8
            self.write_health(force=True)
        except BaseException as exc:
            if isinstance(exc, StopRequested):
                self.log.event("stopping", signal=exc.signum, during="start-up")
            self.stop()
            raise

    def _wait_for_standby(self, child, durable):
        """Rule 8: return once the standby acknowledged ``durable`` (sync mode)."""
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
            self._checkpoint()                                              # rule 6
            self.write_health()
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
            child.ready = False
            if child.restart_at is None:
                code = child.proc.returncode if child.proc else None
                if name == "replicator" and code == EXIT_FENCED:       # rule 7
                    self.fenced = True
                    child.gave_up = True
                    self.log.error("fenced", child=name, exit_code=code,
                                   detail="a standby was promoted; this node stops")
                    return False
                child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
                if len(child.restarts) >= MAX_RESTARTS:
                    child.gave_up = True
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
                self._progress.pop(name, None)
                pid = child.start()
                self.log.event("child_restarted", child=name, child_pid=pid)
        return True

    # -- rules 9, 10 ----------------------------------------------------------
    def _positions(self):
        """{child: (its ring position, the upstream position it works towards)} (rule 10)."""
        out = {}
        if len(self.rings) < 2:
            return out
        ring_in, ring_out = self.rings[0], self.rings[1]
        cursor = ring_in.cursor
        names = ring_in.consumer_names
        for name in names:
            if name not in self.children:
                continue
            deps = ring_in.consumer_dependencies(name)
            upstream = min(ring_in.consumer_sequence(d) for d in deps) if deps else cursor
            out[name] = (ring_in.consumer_sequence(name), upstream)
        if "publisher" in self.children and "publisher" in ring_out.consumer_names:
            out["publisher"] = (ring_out.consumer_sequence("publisher"), ring_out.cursor)
        return out

    def watch(self, now=None):
        """Rules 9, 10: update stall and readiness states, log their changes; the shard state."""
        now = time.monotonic() if now is None else now
        for name, (position, upstream) in self._positions().items():
            child = self.children[name]
            p = self._progress.get(name)
            if not child.ready or not child.alive():
                self._progress.pop(name, None)
                continue
            if p is None:
                self._progress[name] = _Progress(position, now)
                continue
            moved = position != p.position
            if moved or position >= upstream:
                if p.stalled:
                    p.stalled = False
                    self.log.event("child_resumed", name=name, child_pid=child.proc.pid,
                                   seconds=round(now - p.since, 1), seq=position)
                p.position = position
                p.since = now
            elif not p.stalled and now - p.since >= self.stall_after_s:
                p.stalled = True
                self.log.error("child_stalled", name=name, child_pid=child.proc.pid,
                               seconds=round(now - p.since, 1), seq=position, upstream=upstream)
        self._update_state(now)
        return self.state

    def child_state(self, name):
        """starting | ready | stalled | restarting | dead (rule 11)."""
        child = self.children[name]
        if child.gave_up:
            return "dead"
        if not child.alive():
            return "dead" if self.stopping else "restarting"
        p = self._progress.get(name)
        if p is not None and p.stalled:
            return "stalled"
        return "ready" if child.ready else "starting"

    def _update_state(self, now):
        if self.stopping:
            new = "stopping"
        else:
            states = [self.child_state(n) for n in self.children]
            healthy = bool(states) and all(s == "ready" for s in states)
            if healthy:
                new = "ready"
            elif self.ever_ready:
                new = "degraded"
            else:
                new = "starting"
        old, self.state = self.state, new
        if new == old:
            if new == "starting" and not self._not_ready_logged and \
                    now - self.started_at > self.ready_timeout_s:
                self._not_ready_logged = True
                self.log.warning("not_ready", waited_s=int(now - self.started_at),
                                 children=",".join("%s:%s" % (n, self.child_state(n))
                                                   for n in self.children))
            return
        self.write_health(force=True)           # the file says it before the log line does
        if new == "ready" and not self.ever_ready:
            self.ever_ready = True
            self._log_ready()
            if self.on_ready is not None:
                self.on_ready(self)
        else:
            self.log.event("state_changed", state=new, was=old,
                           children=",".join("%s:%s" % (n, self.child_state(n))
                                             for n in self.children))

    def _log_ready(self):
        fields = {"symbols": ",".join(self.shard.symbols),
                  "ready_ms": int((time.monotonic() - self.started_at) * 1000)}
        if "publisher" in self.children:
            pub = self.runtime.publisher
            url = "http://%s:%s" % (pub["host"], pub["port"])
            fields.update(api=url, docs=url + "/docs", page=url + "/",
                          publisher_pid=self.children["publisher"].proc.pid)
        if self.config_path:
            fields["status"] = "ringmatch status --config %s" % self.config_path
        self.log.event("ready", **fields)

    # -- rule 11 --------------------------------------------------------------
    def health(self):
        """The health file's content (rule 11) as a dict."""
        durable = self.durable_at_start
        if self.rings:
            try:
                durable = self.rings[0].consumer_sequence("journaler")
            except Exception:
                pass
        children = {}
        for name, child in self.children.items():
            children[name] = {"pid": child.proc.pid if child.proc else None,
                              "state": self.child_state(name),
                              "restarts": len(child.restarts)}
            p = self._progress.get(name)
            if p is not None and p.stalled:
                children[name]["stalled_s"] = round(time.monotonic() - p.since, 1)
        return {"shard": self.shard.name, "state": self.state, "updated_ns": time.time_ns(),
                "pid": os.getpid(), "data_dir": self.runtime.data_dir,
                "children": children, "journal": {"durable_seq": durable}}

    def write_health(self, force=False, now=None):
        now = time.monotonic() if now is None else now
        if not force and self._last_health is not None and now - self._last_health < HEALTH_EVERY_S:
            return
        if self.lock_fd is None:
            return                      # not ours to write (another engine may own the dir)
        self._last_health = now
        try:
            write_private_json(health_path(self.runtime.data_dir, self.shard.name), self.health())
            self._health_failed = False
        except OSError as exc:
            if not self._health_failed:
                self._health_failed = True
                self.log.error("health_write_failed", error=exc)

    def _remove_health(self):
        if self.lock_fd is None:
            return
        try:
            os.unlink(health_path(self.runtime.data_dir, self.shard.name))
        except OSError:
            pass

    # -- rule 6 -------------------------------------------------------------
    def stop(self, drain_timeout=STOP_TIMEOUT_S):
        if self.stopping and self.lock_fd is None and self.owner is None:
            return                      # stopped already
        self.stopping = True
        self.state = "stopping"
        quiet = not self.rings and not self.children    # a refusal before rings: its one line only
        if self.lock_fd is None and self.owner is None and quiet:
            return                      # nothing was started

        self.write_health(force=True)
        if "publisher" in self.children:
            code = self.children["publisher"].stop()
            self.log.event("child_stopped", child="publisher", exit_code=code)
        for name in [n for n in self.children if n not in _ORDERED]:   # e.g. a standby's receiver
            code = self.children[name].stop()
            self.log.event("child_stopped", child=name, exit_code=code)
        matcher = self.children.get("matcher")
        if self.rings and not self.fenced and matcher and matcher.alive():
            upstream = [n for n in self.rings[0].consumer_dependencies("matcher")
                        if n in self.children and not self.children[n].alive()]
            if upstream:                        # its gate cannot move: nothing to drain
                self.log.event("drain_skipped", reason="%s not running" % ",".join(upstream))
            elif matcher.ready:                 # fenced: the matcher's gate is frozen
                self._drain_and_snapshot(drain_timeout)
            else:
                self.log.event("drain_skipped", reason="matcher not ready (still recovering)")
        for name in ("matcher", "replicator", "journaler"):
            if name in self.children:
                code = self.children[name].stop()
                self.log.event("child_stopped", child=name, exit_code=code)
        self.destroy_rings()
        self._remove_health()
        self.release_lock()
        if not quiet:
            self.log.event("stopped")

    def _drain_and_snapshot(self, timeout):
        from ringbuf.records import CommandKind
        ring_in = self.rings[0]
        try:
            seq = self._publish_own(CommandKind.SNAPSHOT, timeout=timeout)
        except Exception as exc:
            self.log.error("snapshot_publish_failed", error=exc)
            return
        if seq is None:
            self.log.error("snapshot_publish_failed", error="input ring full for %ss" % timeout)
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
            self._own_records += recovered      # rule 12: NOPs are not commands
            self.log.warning("dead_producer_slots_recovered", ring=self.shard.input_ring,
                             slots=recovered)
        return recovered

    def maybe_snapshot(self, now=None):
        """Issue a periodic SNAPSHOT command (every N commands or T seconds; rule 6 takes the last).

        Rule 12: only records other than the supervisor's own (CLOCK ticks,
        NOPs) count, so an idle engine is not snapshotted again and again.
        """
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
            self._own_records = 0
            return None
        last_seq, last_t = self._last_snapshot
        commands = cursor - last_seq - self._own_records
        due = commands > 0 and ((every_n and commands >= every_n) or
                                (every_s and now - last_t >= every_s))
        if not due:
            return None
        from ringbuf.records import CommandKind
        seq = self._publish_own(CommandKind.SNAPSHOT)
        if seq is None:
            return None
        self._last_snapshot = (seq, now)
        self._own_records = 0
        self.log.event("snapshot_requested", seq=seq, commands=commands)
        return seq

    def run_forever(self, poll_interval=0.2):
        """Block until SIGINT/SIGTERM, supervising children; then stop."""
        return run_supervisors([self], poll_interval, self.stop_signals)


def run_supervisors(supervisors, poll_interval=0.2, signals=None):
    """Supervise several started shards until SIGINT/SIGTERM or a child gives up; stop all.

    ``signals``: the StopSignals installed before start-up (None: installed
    here and restored on return).  Returns 0 after a signal, 1 when a child
    gave up restarting.
    """
    own = signals is None
    if own:
        signals = StopSignals().install()
    try:
        failed = False
        while not signals:
            for sup in supervisors:
                if not sup.poll_children():
                    failed = True
            if failed:
                break
            now = time.monotonic()
            for sup in supervisors:
                sup.reap_dead_producers(now)
                sup.maybe_snapshot(now)
                sup.tick_clock(now)
                sup.watch(now)
                sup.write_health(now=now)
            time.sleep(poll_interval)
    finally:
        for sup in supervisors:
            sup.log.event("stopping", signal=signals.received[0] if signals else "child_failure")
            sup.stop()
        if own:
            signals.restore()
    return 0 if signals else 1
