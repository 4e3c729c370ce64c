"""The standby supervisor behind ``ringmatch standby`` and ``ringmatch promote``.

Theory of operation (numbered; extends engine/supervisor.py's rules 1-6):

1. Same lock, rings and child supervision as ``ringmatch run``, but the plan is
   journaler, *receiver* (replicator.receiver_process), matcher: the receiver
   writes the primary's records into the input ring at the primary's
   sequences, the journaler journals them (its gating sequence is what the
   receiver acknowledges), and the matcher applies every command (hot).  No
   publisher runs: nobody can place orders on a standby.
2. The standby publishes no command of its own: no periodic snapshots, no
   CLOCK ticks and no SNAPSHOT on stop (the primary's SNAPSHOT and CLOCK
   commands arrive through the stream, so both sides snapshot at the same
   sequences and share the primary's trusted time).  A command of our own
   would take a sequence the primary uses for something else.
3. The epoch store is set to role ``standby`` at start.  A ``standby`` entry
   of the configuration is ignored (no chained replication before promotion).
4. Promotion (SIGUSR1, sent by ``ringmatch promote``): the receiver ends the
   session and persists epoch + 1 with role ``primary`` (it keeps listening
   only to answer FENCED to an old primary); the supervisor waits for the
   matcher to apply everything received, then starts the publisher -- the node
   now takes orders -- and writes ``<data>/run/<S>.role`` (JSON: role, epoch,
   seq), which ``ringmatch promote`` waits for.
5. Until promotion nobody reads the output ring, yet it is created with its
   gated consumer ``publisher`` (the publisher started at promotion needs it).
   A drain thread of the supervisor therefore commits ``publisher`` up to the
   output cursor (``OutputDrain``); without it the standby's matcher would
   block once the output ring is full (capacity events) and the standby would
   fall behind and never finish a promotion.  The drain stops *before* the
   publisher starts; events after its last commit stay in the ring for the
   publisher, which rebuilds from the journal anyway (publisher rule 1).
"""
import json
import os
import signal
import sys
import threading
import time

from engine.supervisor import Child, Supervisor, find_matcher_interpreter

__all__ = ["StandbySupervisor", "OutputDrain", "role_path"]


def role_path(data_dir, shard):
    return os.path.join(data_dir, "run", "%s.role" % shard)


class OutputDrain(object):
    """Rule 5: consume the standby's output ring as ``publisher`` until stopped.

    A thread polls (up to 50 ms per wait) and commits every batch at once:
    O(1) per batch, no copy.
    """

    def __init__(self, ring_out, consumer="publisher", poll_timeout=0.05):
        self.consumer = ring_out.consumer(consumer)
        self.poll_timeout = poll_timeout
        self.drained = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="standby-output-drain",
                                        daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        consumer = self.consumer
        while not self._stop.is_set():
            batch = consumer.poll(1 << 16, timeout=self.poll_timeout)
            if batch is not None:
                consumer.commit(batch.last_seq)
                self.drained += batch.count

    def stop(self, timeout=5.0):
        """Stop and join; after this returns the consumer is never committed again."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()


class StandbySupervisor(Supervisor):
    """A Supervisor that runs a hot standby (rules 1-4)."""

    def __init__(self, runtime, shard_name=None, log=None, listen=("127.0.0.1", 9100)):
        runtime.raw["standby"] = None                    # rule 3
        runtime.standby = None
        replication = dict(runtime.raw.get("replication") or {})
        replication["listen"] = {"host": listen[0], "port": int(listen[1])}
        runtime.raw["replication"] = replication
        runtime.replication = replication
        Supervisor.__init__(self, runtime, shard_name, log)
        self.promoted = False
        self._promote_requested = []
        self.output_drain = None

    def start(self):
        from replicator.epoch import EpochStore
        self.acquire_lock()
        try:
            os.makedirs(self.runtime.data_dir, exist_ok=True)
            EpochStore(self.runtime.data_dir, self.shard.name).become_standby()   # rule 3
            try:
                os.unlink(role_path(self.runtime.data_dir, self.shard.name))
            except FileNotFoundError:
                pass
            self.config_path = os.path.join(self.runtime.run_dir(), "%s.json" % self.shard.name)
            self.runtime.dump(self.config_path)
            self._checkpoint()                      # supervisor rule 6: a signal stops here
            self.create_rings()
            self.output_drain = OutputDrain(self.rings[1]).start()           # rule 5
            matcher_python, interp = find_matcher_interpreter(
                self.runtime.matcher.get("interpreter", "auto"), should_stop=self._checkpoint)
            plan = [("journaler", sys.executable, "journaler.process"),
                    ("receiver", sys.executable, "replicator.receiver_process"),
                    ("matcher", matcher_python, "engine.matcher_process")]
            for name, python, module in plan:                 # rule 1
                child = Child(name, self._argv(python, module))
                self.children[name] = child
                self.log.event("child_started", child=name, child_pid=child.start(),
                               role="standby")
                self._checkpoint()
        except BaseException:
            self.stop()
            raise

    def _stop_output_drain(self):
        if self.output_drain is not None:
            if not self.output_drain.stop():
                self.log.error("output_drain_stuck")
            self.output_drain = None

    def destroy_rings(self):
        self._stop_output_drain()                                # rule 5: before unmapping
        Supervisor.destroy_rings(self)

    def tick_clock(self, now=None):                          # rule 2
        if self.promoted:
            return Supervisor.tick_clock(self, now)
        return None

    def maybe_snapshot(self, now=None):                      # rule 2
        if self.promoted:
            return Supervisor.maybe_snapshot(self, now)
        return None

    def _drain_and_snapshot(self, timeout):                  # rule 2
        if self.promoted:
            return Supervisor._drain_and_snapshot(self, timeout)
        self._drain(timeout)

    def _drain(self, timeout):
        ring_in = self.rings[0]
        target = ring_in.cursor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ring_in.consumer_sequence("matcher") >= target:
                return True
            if not self.children["matcher"].alive():
                break
            time.sleep(0.01)
        self.log.error("drain_timeout", matcher_seq=ring_in.consumer_sequence("matcher"),
                       target=target)
        return False

    def promote(self, timeout=30.0):
        """Rule 4.  Returns the new epoch."""
        from replicator.epoch import EpochStore
        store = EpochStore(self.runtime.data_dir, self.shard.name)
        receiver = self.children.get("receiver")
        if receiver is None or not receiver.alive():
            raise RuntimeError("no live receiver to promote")
        receiver.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while store.load().role != "primary":
            if time.monotonic() > deadline:
                raise RuntimeError("receiver did not persist the promotion")
            time.sleep(0.01)
        epoch = store.load().epoch
        self._drain(timeout)
        self._stop_output_drain()                               # rule 5: before the publisher
        self.promoted = True
        seq = self.rings[0].cursor
        child = Child("publisher", self._argv(sys.executable, "publisher.process"))
        self.children["publisher"] = child
        self.log.event("promoted", epoch=epoch, seq=seq, child_pid=child.start())
        path = role_path(self.runtime.data_dir, self.shard.name)
        with open(path + ".tmp", "w") as f:
            json.dump({"role": "primary", "epoch": epoch, "seq": seq}, f)
        os.replace(path + ".tmp", path)
        return epoch

    def run_forever(self, poll_interval=0.2):
        old = signal.signal(signal.SIGUSR1, lambda s, f: self._promote_requested.append(s))
        original_poll = self.poll_children

        def poll_and_promote():
            if self._promote_requested and not self.promoted:
                self._promote_requested[:] = []
                try:
                    self.promote()
                except RuntimeError as exc:
                    self.log.error("promote_failed", error=exc)
            return original_poll()
        self.poll_children = poll_and_promote
        try:
            return Supervisor.run_forever(self, poll_interval)
        finally:
            signal.signal(signal.SIGUSR1, old)
