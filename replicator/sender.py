"""The primary side of replication: stream the input ring to a standby.

Theory of operation (numbered rules; protocol.py has the wire rules):

1. The sender connects to the standby, says HELLO and streams DATA frames from
   the sequence the standby's RESUME names (protocol rule 5).  Records come
   from a ``RecordSource``: the ring, or -- for sequences the ring no longer
   holds -- the journal (``replicator.ring_source``).
2. Gating (what the matcher may act on) is the source's ``commit``:

   * ``sync``: the highest sequence the standby acknowledged as durable in its
     journal.  The matcher never acts on a command the standby could lack.
   * ``async``: the highest sequence *sent* (written to the socket).  A
     command the matcher acted on may be lost with the primary if the standby
     had not journaled it yet -- the documented trade-off for latency.  While
     no standby is connected, async gating follows the ring's cursor (the
     standby catches up from the journal when it comes back).

   The gate never moves backwards and never passes the ring's cursor.
3. Unreachable standby in sync mode (no connection, or a connection with
   records outstanding and no ack progress): ``on_unreachable: stall`` keeps
   the gate where it is (the matcher, and so every acknowledgement, waits;
   a warning is logged every few seconds); ``degrade`` waits
   ``degrade_after_s`` and then gates like async with a loud ERROR line
   (``replication_degraded``).  Synchronous gating is restored once the
   standby is connected again and everything up to the gate has been sent.
4. A NACK rewinds the send position to the sequence named (go-back-N); a
   dropped connection is re-established with a back-off and resumed from
   where the standby says it is.
5. FENCED (or a RESUME/ACK with a higher epoch) means a standby was promoted:
   the sender persists the higher epoch with role ``fenced`` and stops; its
   gate never advances again, so this primary's matcher cannot act on
   anything new (no split brain).  A primary started with role ``fenced`` in
   its epoch store refuses to run at all.
6. State hashes the primary's matcher reports (``source.state_hashes()``)
   are sent in-band as STATE_HASH frames after the DATA frame holding their
   sequence, so the standby compares them at the same sequence.
"""
import socket
import threading
import time

from replicator import protocol
from replicator.protocol import FrameType

__all__ = ["RecordSource", "Sender", "SenderStats", "MODES", "POLICIES"]

MODES = ("sync", "async")
POLICIES = ("stall", "degrade")

try:  # typing.Protocol is 3.8+; the role is documentation here
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object


class RecordSource(Protocol):
    """What the sender reads from and gates (the ring in production, memory in tests)."""

    record_size = 64

    def cursor(self):
        """Highest published sequence."""

    def wait_for(self, seq, timeout):
        """Wait until ``cursor() >= seq`` or ``timeout`` seconds pass; return the cursor."""

    def read(self, first_seq, max_count):
        """(count >= 1, [bytes-like chunks]) of records from ``first_seq`` (<= cursor)."""

    def commit(self, seq):
        """Advance the replicator's gating sequence to ``seq`` (monotonic)."""

    def committed(self):
        """The gating sequence last committed."""

    def state_hashes(self):
        """New (seq, state hash) pairs reported by the primary's matcher since the last call."""


class SenderStats(object):
    """Counters a status view or a test reads (plain ints; written by the sender)."""

    __slots__ = ("frames", "records", "bytes", "connects", "disconnects", "nacks",
                 "state_hashes", "degraded_events")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}


class _Session(object):
    def __init__(self, sock):
        self.sock = sock
        self.dead = False
        self.error = None
        self.rewind = None


class Sender(object):
    """Stream a RecordSource to a standby at ``address`` (rules 1-6).

    ``run(stop_event)`` blocks until stopped or fenced; ``start()`` runs it in
    a thread.  Per DATA frame: O(records) for the CRC and one copy into the
    socket.

    >>> sender = Sender(source, ("127.0.0.1", 9100), "shard0", epoch_store=store)  # doctest: +SKIP
    >>> sender.start(); ...; sender.stop()                                          # doctest: +SKIP
    """

    def __init__(self, source, address, shard, epoch_store=None, epoch=None, mode="sync",
                 on_unreachable="stall", degrade_after_s=5.0, max_batch=4096, log=None,
                 schema_hash=None, node="", retry_s=0.1, io_timeout_s=5.0,
                 heartbeat_s=0.5, idle_wait_s=0.02):
        if mode not in MODES:
            raise ValueError("replication.mode must be one of %s, not %r" % (MODES, mode))
        if on_unreachable not in POLICIES:
            raise ValueError("replication.on_unreachable must be one of %s, not %r"
                             % (POLICIES, on_unreachable))
        if schema_hash is None:
            from ringbuf.records import SCHEMA_HASH as schema_hash
        self.source = source
        self.address = tuple(address)
        self.shard = shard
        self.epoch_store = epoch_store
        if epoch is None:
            epoch = epoch_store.check_may_be_primary().epoch if epoch_store else 1
        self.epoch = epoch
        self.mode = mode
        self.on_unreachable = on_unreachable
        self.degrade_after_s = float(degrade_after_s)
        self.max_batch = max_batch
        self.log = log
        self.schema_hash = schema_hash
        self.node = node or socket.gethostname()
        self.retry_s = retry_s
        self.io_timeout_s = io_timeout_s
        self.heartbeat_s = heartbeat_s
        self.idle_wait_s = idle_wait_s
        self.stats = SenderStats()
        # shared between the send loop and the ack reader (guarded by _gate_lock)
        self.acked = 0
        self.sent = 0
        self.connected = False
        self.degraded = False
        self.fenced = False
        self.fenced_by = 0
        self._gate_lock = threading.Lock()
        self._stalled_since = None      # rule 3: when the standby stopped making progress
        self._last_stall_log = 0.0
        self._pending_hashes = []
        self._stop = threading.Event()
        self._thread = None

    # -- logging -------------------------------------------------------------------------
    def _event(self, name, level="event", **fields):
        if self.log is not None:
            getattr(self.log, level)(name, **fields)

    # -- rule 2: the gate ----------------------------------------------------------------
    def _update_gate(self):
        with self._gate_lock:
            if self.fenced:
                return
            source = self.source
            if self.mode == "sync" and not self.degraded:
                target = self.acked
            elif self.connected and not self.degraded:
                target = self.sent
            else:
                target = source.cursor()
            target = min(target, source.cursor())
            if target > source.committed():
                source.commit(target)

    # -- rule 3 ----------------------------------------------------------------------------
    def _check_progress(self, now):
        outstanding = self.sent > self.acked or not self.connected
        if not outstanding:
            self._stalled_since = None
            return
        if self._stalled_since is None:
            self._stalled_since = now
            return
        stalled = now - self._stalled_since
        if self.mode != "sync" or self.degraded:
            return
        if self.on_unreachable == "degrade" and stalled >= self.degrade_after_s:
            with self._gate_lock:
                self.degraded = True
            self.stats.degraded_events += 1
            self._event("replication_degraded", level="error", mode="async",
                        stalled_s="%.1f" % stalled, acked=self.acked,
                        committed=self.source.committed(), cursor=self.source.cursor(),
                        warning="STANDBY UNREACHABLE: acknowledged commands may now be "
                                "lost if this primary dies")
        elif stalled >= 1.0 and now - self._last_stall_log >= 5.0:
            self._last_stall_log = now
            self._event("replication_stalled", level="warning", stalled_s="%.1f" % stalled,
                        acked=self.acked, cursor=self.source.cursor(),
                        policy=self.on_unreachable)

    def _maybe_restore_sync(self, next_send):
        if self.degraded and self.connected and next_send > self.source.committed():
            with self._gate_lock:
                self.degraded = False
            self._stalled_since = None
            self._event("replication_sync_restored", acked=self.acked, sent=next_send - 1)

    # -- rule 5 ------------------------------------------------------------------------------
    def _fence(self, higher_epoch, why):
        with self._gate_lock:
            self.fenced = True
            self.fenced_by = higher_epoch
        if self.epoch_store is not None:
            self.epoch_store.fence(higher_epoch)
        self._event("fenced", level="error", epoch=self.epoch, higher_epoch=higher_epoch,
                    reason=why, action="this primary stops: its gate never advances again")
        self._stop.set()

    # -- thread control ------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self.run, name="replicator-sender", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=5.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop_event=None):
        """Connect, stream, reconnect, until stopped or fenced (rules 1-5)."""
        stop = self._stop if stop_event is None else _AnyEvent(self._stop, stop_event)
        while not stop.is_set() and not self.fenced:
            sock = self._connect()
            if sock is None:
                self._idle_while_disconnected(stop, self.retry_s)
                continue
            session = _Session(sock)
            self.stats.connects += 1
            try:
                self._stream(session, stop)
            except (OSError, protocol.ProtocolError) as exc:
                session.error = exc
            except Exception as exc:            # a bug must not end replication silently
                session.error = exc
                self._event("session_failed", level="error", error=repr(exc),
                            acked=self.acked, sent=self.sent)
            finally:
                self._close_session(session)
            if not self.fenced and not stop.is_set():
                self._event("disconnected", level="warning", error=session.error or "closed",
                            acked=self.acked, sent=self.sent)
                self.stats.disconnects += 1
                self._idle_while_disconnected(stop, self.retry_s)
        self._event("sender_stopped", acked=self.acked, sent=self.sent, fenced=self.fenced)

    def _connect(self):
        try:
            sock = socket.create_connection(self.address, timeout=self.io_timeout_s)
        except OSError:
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _idle_while_disconnected(self, stop, seconds):
        deadline = time.monotonic() + seconds
        with self._gate_lock:
            self.connected = False
        while not stop.is_set():
            now = time.monotonic()
            self._check_progress(now)
            self._update_gate()
            if now >= deadline:
                return
            self.source.wait_for(self.source.committed() + 1, min(0.01, deadline - now))

    def _close_session(self, session):
        with self._gate_lock:
            self.connected = False
        session.dead = True
        try:
            session.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        session.sock.close()
        reader = getattr(session, "reader", None)
        if reader is not None:
            reader.join(self.io_timeout_s)

    def _handshake(self, session):
        sock = session.sock
        sock.settimeout(self.io_timeout_s)
        sock.sendall(protocol.hello(self.epoch, self.shard, self.schema_hash,
                                    self.source.record_size, self.source.cursor(), self.node))
        frame = protocol.read_frame(sock)
        if frame.type == FrameType.FENCED or frame.epoch > self.epoch:
            self._fence(frame.epoch, "standby answered %s with epoch %d"
                        % (FrameType(frame.type).name, frame.epoch))
            return None
        if frame.type == FrameType.ERROR:
            self._event("standby_refused", level="error",
                        reason=bytes(frame.payload).decode(errors="replace"))
            raise protocol.ProtocolError("standby refused: %s" % bytes(frame.payload).decode(
                errors="replace"))
        if frame.type != FrameType.RESUME:
            raise protocol.ProtocolError("expected RESUME, got %r" % frame)
        next_seq = frame.first_seq
        cursor = self.source.cursor()
        if next_seq > cursor + 1:
            self._event("standby_ahead", level="error", standby_next=next_seq, cursor=cursor,
                        detail="the standby holds records this primary does not; refusing "
                               "to overwrite them (promote the standby or re-seed it)")
            time.sleep(1.0)
            raise protocol.ProtocolError("standby is ahead of the primary")
        return next_seq

    def _stream(self, session, stop):
        next_send = self._handshake(session)
        if next_send is None:
            return
        sock = session.sock
        with self._gate_lock:
            self.connected = True
            # the send position restarts at the standby's; `sent` is what is on the wire now
            self.sent = next_send - 1
        self._stalled_since = None
        self._event("connected", standby="%s:%d" % self.address, epoch=self.epoch,
                    resume_from=next_send, cursor=self.source.cursor(), mode=self.mode)
        session.reader = threading.Thread(target=self._read_acks, args=(session,),
                                          name="replicator-acks", daemon=True)
        session.reader.start()
        source = self.source
        stats = self.stats
        epoch = self.epoch
        max_batch = self.max_batch
        last_heartbeat = 0.0
        pending_hashes = self._pending_hashes
        while not stop.is_set() and not session.dead and not self.fenced:
            rewind = session.rewind
            if rewind is not None:
                session.rewind = None
                if rewind <= next_send:
                    next_send = rewind
                    self.sent = next_send - 1
                stats.nacks += 1
                self._event("nack", resend_from=rewind)
            now = time.monotonic()
            if now - last_heartbeat >= self.heartbeat_s:
                last_heartbeat = now
                sock.sendall(protocol.heartbeat(epoch, source.cursor()))
            cursor = source.wait_for(next_send, self.idle_wait_s)
            if cursor >= next_send:
                count, chunks = source.read(next_send, min(max_batch, cursor - next_send + 1))
                parts = [protocol.data_header(epoch, next_send, count, chunks)]
                parts.extend(chunks)
                data = b"".join(parts)
                sock.sendall(data)
                next_send += count
                self.sent = next_send - 1
                stats.frames += 1
                stats.records += count
                stats.bytes += len(data)
            new_hashes = source.state_hashes()
            if new_hashes:
                pending_hashes.extend(new_hashes)
            while pending_hashes and pending_hashes[0][0] < next_send:
                seq, value = pending_hashes.pop(0)
                sock.sendall(protocol.state_hash(epoch, seq, value))
                stats.state_hashes += 1
            self._maybe_restore_sync(next_send)
            self._check_progress(time.monotonic())
            self._update_gate()
        if session.error is not None:
            raise session.error

    def _read_acks(self, session):
        """Reader thread: ACK / NACK / FENCED from the standby (rules 2, 4, 5)."""
        sock = session.sock
        try:
            while not session.dead:
                # the standby acks at least every heartbeat: a timeout is a dead link
                frame = protocol.read_frame(sock)
                if frame.epoch > self.epoch or frame.type == FrameType.FENCED:
                    self._fence(frame.epoch, "standby sent %s with epoch %d"
                                % (FrameType(frame.type).name, frame.epoch))
                    break
                if frame.type == FrameType.ACK:
                    if frame.first_seq > self.acked:
                        with self._gate_lock:
                            self.acked = frame.first_seq
                        self._stalled_since = None
                        self._update_gate()
                elif frame.type == FrameType.NACK:
                    session.rewind = frame.first_seq
                elif frame.type == FrameType.ERROR:
                    raise protocol.ProtocolError("standby error: %s" % bytes(
                        frame.payload).decode(errors="replace"))
        except (OSError, protocol.ProtocolError) as exc:
            if not session.dead:
                session.error = exc
        finally:
            session.dead = True


class _AnyEvent(object):
    def __init__(self, *events):
        self.events = events

    def is_set(self):
        return any(e.is_set() for e in self.events)
