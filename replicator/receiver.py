"""The standby side of replication: receive records, journal them, acknowledge.

Theory of operation (numbered rules; protocol.py has the wire rules):

1. The receiver listens; one primary session at a time (a new connection is
   served when the previous one ended -- a silent peer is dropped after
   ``io_timeout_s``, the primary heartbeats every half second).
2. HELLO is checked: shard, schema hash and record size must be ours (else
   ERROR).  Fencing (protocol rule 7): a HELLO with an epoch lower than ours,
   or any HELLO once this node has been promoted, gets FENCED(our epoch).  A
   higher epoch is adopted and persisted before anything else happens.
3. RESUME names ``sink.next_sequence()``: the next record the standby needs
   (its ring continues its journal, so that is where it is).
4. DATA frames are written to the sink at exactly their sequences.  A frame
   that starts after the sequence we need (a gap: something was lost or
   corrupted) or whose payload CRC fails is discarded and one NACK names the
   sequence we need; nothing is NACKed again until a frame starting there
   arrives (go-back-N).  A frame wholly before it (a re-send) is skipped; one
   overlapping it is trimmed.  A corrupt header drops the connection (the
   primary reconnects and resumes by rule 3).
5. An acker thread sends ACK(sink.durable_sequence()) whenever the durable
   sequence (the standby journaler's gating sequence) advances, and at least
   every ``heartbeat_s`` as a keep-alive.
6. STATE_HASH frames and the standby matcher's own state hashes
   (``sink.state_hashes()``) go to a StateHashMonitor, which raises the alarm
   on a divergence.
7. ``promote()`` ends the session, persists epoch + 1 with role primary and
   keeps listening only to answer FENCED to an old primary that comes back.
"""
import socket
import threading
import time

from replicator import protocol
from replicator.protocol import FrameType
from replicator.state_hash import StateHashMonitor

__all__ = ["RecordSink", "Receiver", "ReceiverStats"]

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object


class RecordSink(Protocol):
    """Where the receiver writes (the standby's input ring in production)."""

    record_size = 64

    def next_sequence(self):
        """The next sequence this standby needs (its last written + 1)."""

    def write(self, first_seq, payload):
        """Write ``len(payload) // record_size`` records at exactly ``first_seq``..."""

    def durable_sequence(self):
        """Highest sequence durable in the standby's journal."""

    def state_hashes(self):
        """New (seq, hash) pairs from the standby's matcher since the last call."""


class ReceiverStats(object):
    """Counters read by tests and the status view."""

    __slots__ = ("sessions", "frames", "records", "bytes", "crc_errors", "header_errors",
                 "nacks", "duplicates", "gaps", "fenced_peers", "refused_peers", "acks")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}


class _Conn(object):
    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()
        self.dead = False
        self.wake = threading.Event()
        self.received = 0
        self.acked = -1

    def send(self, data):
        with self.lock:
            self.sock.sendall(data)


class Receiver(object):
    """Serve primaries on ``listen`` and write what they send into ``sink`` (rules 1-7).

    >>> r = Receiver(sink, ("127.0.0.1", 0), "shard0", epoch_store).start()  # doctest: +SKIP
    >>> r.address                                                            # doctest: +SKIP
    ('127.0.0.1', 40123)
    """

    def __init__(self, sink, listen, shard, epoch_store, log=None, schema_hash=None,
                 io_timeout_s=5.0, heartbeat_s=0.5, ack_poll_s=0.0002, on_divergence=None,
                 monitor=None):
        if schema_hash is None:
            from ringbuf.records import SCHEMA_HASH as schema_hash
        self.sink = sink
        self.listen_address = tuple(listen)
        self.shard = shard
        self.epoch_store = epoch_store
        self.log = log
        self.schema_hash = schema_hash
        self.io_timeout_s = io_timeout_s
        self.heartbeat_s = heartbeat_s
        self.ack_poll_s = ack_poll_s
        self.monitor = monitor or StateHashMonitor(log, on_divergence)
        self.stats = ReceiverStats()
        self.promoted = False
        self.primary_cursor = 0
        self.address = None
        self._server = None
        self._conn = None
        self._stop = threading.Event()
        self._thread = None
        self._session_lock = threading.Lock()

    def _event(self, name, level="event", **fields):
        if self.log is not None:
            getattr(self.log, level)(name, **fields)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self):
        """Bind, listen and serve in a background thread.  Returns self."""
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.listen_address)
        server.listen(4)
        server.settimeout(0.1)
        self._server = server
        self.address = server.getsockname()[:2]
        self._thread = threading.Thread(target=self._serve, name="replicator-receiver",
                                        daemon=True)
        self._thread.start()
        self._event("listening", address="%s:%d" % self.address,
                    next_seq=self.sink.next_sequence(), epoch=self.epoch_store.load().epoch)
        return self

    def stop(self, timeout=5.0):
        self._stop.set()
        self._drop_session()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._server is not None:
            self._server.close()
            self._server = None

    def _drop_session(self):
        conn = self._conn
        if conn is not None:
            conn.dead = True
            conn.wake.set()
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def promote(self):
        """Rule 7: end the session, persist epoch + 1 as primary; returns the EpochState.

        After this returns the sink receives nothing more from the old primary;
        an old primary that connects again is answered FENCED.
        """
        self.promoted = True
        self._drop_session()
        with self._session_lock:      # waits for the session thread to let go of the sink
            state = self.epoch_store.promote()
        self._event("promoted", epoch=state.epoch, next_seq=self.sink.next_sequence(),
                    durable=self.sink.durable_sequence())
        return state

    # -- serving -----------------------------------------------------------------------------
    def _serve(self):
        while not self._stop.is_set():
            try:
                sock, peer = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.io_timeout_s)
            conn = _Conn(sock)
            with self._session_lock:
                self._conn = conn
                try:
                    self._session(conn, peer)
                except (OSError, protocol.ProtocolError) as exc:
                    if not self._stop.is_set():
                        self._event("session_ended", level="warning", peer="%s:%d" % peer[:2],
                                    error=exc, next_seq=self.sink.next_sequence())
                finally:
                    conn.dead = True
                    conn.wake.set()
                    acker = getattr(conn, "acker", None)
                    if acker is not None:
                        acker.join(self.io_timeout_s)
                    try:
                        sock.close()
                    except OSError:
                        pass
                    self._conn = None

    def _refuse(self, conn, reason, epoch):
        self.stats.refused_peers += 1
        self._event("primary_refused", level="error", reason=reason)
        conn.send(protocol.error(epoch, reason))

    def _session(self, conn, peer):
        """One primary connection (rules 2-6)."""
        frame = protocol.read_frame(conn.sock)
        state = self.epoch_store.load()
        if frame.type != FrameType.HELLO:
            return self._refuse(conn, "expected HELLO, got %r" % frame, state.epoch)
        info = protocol.hello_info(frame)
        if info["shard"] != self.shard:
            return self._refuse(conn, "shard %r, this standby serves %r"
                                % (info["shard"], self.shard), state.epoch)
        if info["schema_hash"] != self.schema_hash or \
                info["record_size"] != self.sink.record_size:
            return self._refuse(conn, "schema %016x / record size %d, this standby has "
                                "%016x / %d" % (info["schema_hash"], info["record_size"],
                                                self.schema_hash, self.sink.record_size),
                                state.epoch)
        # rule 2: fencing
        if self.promoted or state.role == "primary" and self.epoch_store.exists() \
                or frame.epoch < state.epoch:
            self.stats.fenced_peers += 1
            self._event("old_primary_fenced", level="warning", peer="%s:%d" % peer[:2],
                        peer_epoch=frame.epoch, epoch=state.epoch, node=info.get("node"))
            conn.send(protocol.fenced(state.epoch, "promoted at epoch %d" % state.epoch))
            return
        epoch = frame.epoch
        if epoch != state.epoch or state.role != "standby":
            self.epoch_store.save(epoch, "standby")
        expected = self.sink.next_sequence()
        self.stats.sessions += 1
        self._event("primary_connected", peer="%s:%d" % peer[:2], epoch=epoch,
                    resume_from=expected, primary_cursor=frame.first_seq, node=info.get("node"))
        conn.received = expected - 1
        conn.send(protocol.resume(epoch, expected))
        conn.acker = threading.Thread(target=self._ack_loop, args=(conn, epoch),
                                      name="replicator-acker", daemon=True)
        conn.acker.start()
        self._receive(conn, epoch, expected)

    def _receive(self, conn, epoch, expected):
        sink = self.sink
        stats = self.stats
        monitor = self.monitor
        record_size = sink.record_size
        sock = conn.sock
        nack_outstanding = False
        while not conn.dead:
            try:
                frame = protocol.read_frame(sock)
            except protocol.PayloadCorrupt as exc:          # rule 4
                stats.crc_errors += 1
                self._event("frame_corrupt", level="warning", error=exc, expected=expected)
                if not nack_outstanding:
                    nack_outstanding = True
                    stats.nacks += 1
                    conn.send(protocol.nack(epoch, expected, "crc"))
                continue
            except protocol.HeaderCorrupt as exc:
                stats.header_errors += 1
                self._event("frame_header_corrupt", level="warning", error=exc,
                            expected=expected, action="drop connection; primary resumes")
                return
            ftype = frame.type
            if ftype == FrameType.DATA:
                if frame.epoch != epoch:
                    raise protocol.ProtocolError("DATA with epoch %d in session of epoch %d"
                                                 % (frame.epoch, epoch))
                count = frame.count
                if count < 1 or count * record_size != frame.payload_len:
                    raise protocol.ProtocolError("DATA count %d does not match %d payload "
                                                 "bytes" % (count, frame.payload_len))
                first = frame.first_seq
                last = first + count - 1
                if first > expected:
                    stats.gaps += 1
                    if not nack_outstanding:
                        nack_outstanding = True
                        stats.nacks += 1
                        conn.send(protocol.nack(epoch, expected, "gap"))
                    continue
                if last < expected:
                    stats.duplicates += 1
                    continue
                payload = frame.payload
                if first < expected:
                    payload = memoryview(payload)[(expected - first) * record_size:]
                sink.write(expected, payload)
                stats.frames += 1
                stats.records += last - expected + 1
                stats.bytes += frame.payload_len
                expected = last + 1
                nack_outstanding = False
                conn.received = last
                conn.wake.set()
            elif ftype == FrameType.STATE_HASH:
                monitor.add_primary(frame.first_seq, protocol.state_hash_value(frame))
            elif ftype == FrameType.HEARTBEAT:
                self.primary_cursor = frame.first_seq
            elif ftype == FrameType.HELLO:
                raise protocol.ProtocolError("HELLO inside a session")
            # other types from a primary are ignored (forward compatibility)

    def _ack_loop(self, conn, epoch):
        """Rule 5 (and the standby's own state hashes, rule 6)."""
        sink = self.sink
        monitor = self.monitor
        last_sent = 0.0
        last_hash_check = 0.0
        try:
            while not conn.dead:
                conn.wake.clear()        # before reading: a later set() is not lost
                durable = sink.durable_sequence()
                now = time.monotonic()
                if durable > conn.acked or now - last_sent >= self.heartbeat_s:
                    conn.send(protocol.ack(epoch, durable))
                    conn.acked = durable
                    last_sent = now
                    self.stats.acks += 1
                if now - last_hash_check >= 0.05:
                    last_hash_check = now
                    for seq, value in sink.state_hashes():
                        monitor.add_local(seq, value)
                if conn.received > durable:
                    time.sleep(self.ack_poll_s)       # journal catching up: poll closely
                else:
                    conn.wake.wait(0.05)
        except OSError:
            conn.dead = True
