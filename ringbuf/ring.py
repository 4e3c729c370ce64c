"""Ring, Producer, Consumer, Batch: the shared-memory disruptor ring.

Theory of operation
-------------------
A ring is one POSIX shared-memory segment (layout in ``header``) mapped by
every process that uses it.  Producers claim sequences through a sequencer
(``sequencer``), write records into the slots ``seq & mask`` and publish;
consumers wait on a barrier (``barrier``) for the seq they want, read, and
commit their gating sequence once per batch.  Producers never claim past
``min(leaf consumer sequences) + capacity``, so no unread slot is ever
overwritten.  Sequences start at 1; a consumer sequence of 0 means "nothing
consumed".

Per record::

    seq = p.claim(); rec = p.record(seq); rec.price = ...; p.publish(seq)

Batched::

    first, views = p.claim_batch(n)      # 1-2 writable memoryviews (wrap)
    ...copy n * record_size bytes...; p.publish_batch(first, n)
    batch = c.poll(max_batch=4096)       # Batch or None
    ...read batch.chunks...; c.commit(batch.last_seq)

Using a Producer/Consumer after ``Ring.close()`` raises (TypeError from a
detached pointer) instead of touching unmapped memory.

Producer ids (rules P1-P3; the id ranges live in ``records``)
P1. Ids 0x7F00..0x7FFF are privileged (supervisor, CLI, replicator): ``producer()``
    hands one out only with ``privileged=True``.  Fixed ids must be below 0x8000.
P2. ``producer_id=None`` takes the next automatic id from a counter in the
    header (``AUTO_ID_OFFSET``): ``0x8000 | (n mod 32768)``, skipping ids of
    live producers.  An id therefore comes back only after 32768 later
    automatic attaches to this ring: an incarnation, not a table slot.
P3. On a command ring, every record an ordinary (unprivileged) producer
    publishes through ``write``, ``write_batch``, ``publish`` or
    ``publish_batch`` gets the producer's own id stamped into its
    ``producer_id`` field just before it is published, so a client cannot
    claim another producer's id (or a privileged one) through this API.
    Privileged producers publish records as given (the standby's replicator
    relays the primary's records unchanged).  A process of the same uid that
    writes the shared memory directly is not stopped by this (docs/ring.md).
"""
import array
import mmap
import os
import platform
import struct
import sys
import time
import weakref

import posix_ipc

from . import header as H
from ._native import NULL, address_of, ffi, int32_at, int64_at, lib
from .barrier import SequenceBarrier
from .errors import (RingClosedError, RingConfigError, RingError, RingMismatchError,
                     raise_for)
from .reaper import ClaimReaper, process_alive, process_start_time
from .sequence import Sequence
from .sequencer import MultiProducerSequencer, SingleProducerSequencer
from .wait_strategy import make_space_wait, make_wait_strategy
from .records import (AUTO_PRODUCER_ID_BASE, PRIVILEGED_PRODUCER_ID_MAX,
                      PRIVILEGED_PRODUCER_ID_MIN)

__all__ = ["Ring", "RingSpec", "Producer", "Consumer", "Batch"]

_monotonic_ns = lib.rm_monotonic_ns
_U16 = struct.Struct("<H")
_LITTLE = sys.byteorder == "little"
_PYPY = platform.python_implementation() == "PyPy"


class RingSpec(object):
    """What a ring is: capacity, record size, consumers, strategy (create/attach parameters).

    >>> RingSpec(capacity=8, consumers={"a": []}).capacity
    8
    """

    __slots__ = ("capacity", "record_size", "consumers", "wait_strategy", "single_producer",
                 "claim_timeout", "record_kind")

    def __init__(self, capacity, record_size=64, consumers=None, wait_strategy="backoff",
                 single_producer=False, claim_timeout=1.0, record_kind=None):
        self.capacity = capacity
        self.record_size = record_size
        self.consumers = dict(consumers or {})
        self.wait_strategy = wait_strategy
        self.single_producer = single_producer
        self.claim_timeout = claim_timeout
        self.record_kind = record_kind

    def __repr__(self):
        return "RingSpec(%s)" % ", ".join("%s=%r" % (k, getattr(self, k)) for k in self.__slots__)


def _segment_name(name):
    if not isinstance(name, str) or not name or "/" in name:
        raise RingConfigError("ring name must be a non-empty string without '/': %r" % (name,))
    return "/" + name


def _order_consumers(name, consumers):
    """Index consumers, validate dependencies (known, acyclic).  Returns [(name, [dep idx])]."""
    names = list(consumers)
    if not names:
        raise RingConfigError("ring %r: at least one consumer is needed (producers are gated "
                              "by consumers)" % name)
    if len(names) > H.MAX_CONSUMERS:
        raise RingConfigError("ring %r: at most %d consumers, got %d"
                              % (name, H.MAX_CONSUMERS, len(names)))
    index = {n: i for i, n in enumerate(names)}
    table = []
    for n in names:
        deps = list(consumers[n] or [])
        for d in deps:
            if d not in index:
                raise RingConfigError("ring %r: consumer %r depends on unknown consumer %r"
                                      % (name, n, d))
            if d == n:
                raise RingConfigError("ring %r: consumer %r depends on itself" % (name, n))
        table.append((n, [index[d] for d in deps]))
    # acyclic: repeatedly remove consumers whose deps are all removed
    done, remaining = set(), set(range(len(names)))
    while remaining:
        ready = [i for i in remaining if all(d in done for d in table[i][1])]
        if not ready:
            raise RingConfigError("ring %r: consumer dependencies form a cycle among %s"
                                  % (name, sorted(names[i] for i in remaining)))
        done.update(ready)
        remaining.difference_update(ready)
    return table


class Ring(object):
    """A shared-memory ring; ``create`` or ``attach``, then ``producer()`` / ``consumer(name)``.

    Context manager: leaving the block calls ``close()`` (not ``unlink()``).
    """

    def __init__(self, name, shm_name, mm, hdr, layout, table, owner):
        self.name = name
        self._shm_name = shm_name
        self._mmap = mm
        self.header = hdr
        self._layout = layout
        self._table = table                       # [(name, [dep indexes])]
        self._index = {n: i for i, (n, _) in enumerate(table)}
        self.created = owner
        self._closed = False
        self._users = weakref.WeakSet()
        base = self._base = address_of(mm)
        self._cursor = int64_at(base, H.CURSOR_OFFSET)
        self._futex = int32_at(base, H.FUTEX_OFFSET)
        # words 4/5 of the futex line: the futex word + waiter count of consumers that wait
        # on other consumers (a matcher on the journaler): only those consumers' commits wake
        # them, never a producer's publish (they could not proceed on it anyway)
        self._dep_futex = int32_at(base, H.FUTEX_OFFSET + 16)
        self._reaper_lock = int64_at(base, H.REAPER_OFFSET)
        self._consumer_seqs = [int64_at(base, H.cache_line(i, H.CONSUMER_SEQ_OFFSET))
                               for i in range(len(table))]
        self._producer_table = [int64_at(base, H.cache_line(i, H.PRODUCER_OFFSET))
                                for i in range(H.MAX_PRODUCERS)]
        self._avail = int64_at(base, layout.avail_offset)
        self._data = base + layout.data_offset
        self._view = memoryview(mm)
        self._data_view = self._view[layout.data_offset:layout.data_offset
                                     + layout.capacity * layout.record_size]
        self._data_ro = self._data_view.toreadonly()
        depended = set(d for _, deps in table for d in deps)
        self._leaves = [i for i in range(len(table)) if i not in depended]
        self._gating = ffi.new("int64_t *[]", [self._consumer_seqs[i] for i in self._leaves])
        self._ctype = H.RECORD_TYPES[hdr.record_kind]
        self.wait_strategy = H.WAIT_STRATEGY_NAMES.get(hdr.wait_strategy, "backoff")
        self._signals = make_wait_strategy(self.wait_strategy).needs_signal
        self._reaper = None if hdr.single_producer else ClaimReaper(self)

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, name, capacity, record_size=64, consumers=None, wait_strategy="backoff",
               single_producer=False, claim_timeout=1.0, mode=0o600, record_kind=None,
               schema_hash=None, initial_sequence=0):
        """Create and map a new ring segment ``name`` (must not exist).

        ``initial_sequence`` S makes the first published record S + 1 and every
        consumer start at S (a ring re-created after a restart continues the
        journal's sequences: sequence = order id).

        ``consumers`` maps each consumer name to the names it depends on
        (``{"journaler": [], "matcher": ["journaler"]}``).  ``record_kind``
        is "command", "event" or "raw" (default: command for 64-byte records,
        event for 128-byte ones, else raw).  O(capacity) (initializes markers).

        Raises RingConfigError (capacity not a power of two, bad consumers...),
        RingExistsError, RingOSError.

        >>> ring = Ring.create("rm-doc-%d" % os.getpid(), 8, consumers={"c": []})
        >>> ring.unlink(); ring.close()
        """
        shm_name = _segment_name(name)
        layout = H.Layout(capacity, record_size)
        table = _order_consumers(name, consumers or {})
        make_wait_strategy(wait_strategy)
        kind = {"command": H.RECORD_COMMAND, "event": H.RECORD_EVENT, "raw": H.RECORD_RAW}
        if record_kind is None:
            rk = {64: H.RECORD_COMMAND, 128: H.RECORD_EVENT}.get(record_size, H.RECORD_RAW)
        else:
            if record_kind not in kind:
                raise RingConfigError("record_kind must be one of %s" % sorted(kind))
            rk = kind[record_kind]
        ctype = H.RECORD_TYPES[rk]
        if ctype is not None and ffi.sizeof(ctype) != record_size:
            raise RingConfigError("record size %d does not match %s (%d bytes)"
                                  % (record_size, ctype, ffi.sizeof(ctype)))
        if not (claim_timeout > 0):
            raise RingConfigError("claim_timeout must be > 0, got %r" % (claim_timeout,))
        # every check before the segment exists: a refused create leaves nothing behind
        if not isinstance(initial_sequence, int) or initial_sequence < 0:
            raise RingConfigError("initial_sequence must be an int >= 0, got %r"
                                  % (initial_sequence,))
        try:
            shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=mode,
                                         size=layout.total_size)
        except posix_ipc.ExistentialError:
            from .errors import RingExistsError
            raise RingExistsError("ring %r already exists (unlink it first)" % name)
        try:
            mm = mmap.mmap(shm.fd, layout.total_size)
        except OSError as exc:
            shm.close_fd()
            posix_ipc.unlink_shared_memory(shm_name)
            raise_for(exc, "mmap", name)
        shm.close_fd()
        hdr = H.new_header(layout, rk, single_producer, wait_strategy, len(table),
                           int(claim_timeout * 1e9), schema_hash)
        magic = hdr.magic
        hdr.magic = b"\0" * 8          # published last: attachers wait for it
        H.pack_header(mm, hdr)
        start = initial_sequence.to_bytes(8, "little", signed=True)
        mm[H.CURSOR_OFFSET:H.CURSOR_OFFSET + 8] = start
        for i, (n, deps) in enumerate(table):
            H.pack_consumer(mm, i, n, sum(1 << d for d in deps))
            off = H.cache_line(i, H.CONSUMER_SEQ_OFFSET)
            mm[off:off + 8] = start
        mm[layout.avail_offset:layout.avail_offset + 8 * capacity] = b"\xff" * (8 * capacity)
        for i in range(H.MAX_PRODUCERS):
            off = H.cache_line(i, H.PRODUCER_OFFSET)
            mm[off + 8 * H.P_LO:off + 8 * H.P_LO + 8] = (1).to_bytes(8, "little")
        mm[0:8] = magic
        mm.flush()
        hdr.magic = magic
        return cls(name, shm_name, mm, hdr, layout, table, owner=True)

    @classmethod
    def attach(cls, name, capacity=None, record_size=None, consumers=None, schema_hash=None,
               wait=1.0):
        """Map an existing ring; refuse it if its header differs from what is expected.

        Checks magic, header version, records layout version and schema hash
        always; capacity, record size and consumers when given.  Waits up to
        ``wait`` seconds for a segment that is still being created.  O(1).

        Raises RingNotFoundError, RingMismatchError (naming the field).
        """
        shm_name = _segment_name(name)
        try:
            shm = posix_ipc.SharedMemory(shm_name)
        except posix_ipc.ExistentialError:
            from .errors import RingNotFoundError
            raise RingNotFoundError("no ring %r" % name)
        try:
            size = shm.size
            if size < H.HEADER_SIZE:
                raise RingMismatchError(name, "segment size", size, ">= %d" % H.HEADER_SIZE)
            mm = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        try:
            deadline = time.monotonic() + wait
            while mm[0:8] == b"\0" * 8 and time.monotonic() < deadline:
                time.sleep(0.001)
            hdr = H.unpack_header(mm)
            if hdr.magic == H.MAGIC and hdr.total_size != size:
                raise RingMismatchError(name, "segment size", size, hdr.total_size)
            found = None
            if hdr.magic == H.MAGIC and consumers is not None:
                rows = H.unpack_consumers(mm, hdr.n_consumers)
                found = {n: [rows[d][0] for d in deps] for n, deps in rows}
            layout = H.check(name, hdr, schema_hash, capacity, record_size, consumers, found)
            table = H.unpack_consumers(mm, hdr.n_consumers)
        except BaseException:
            mm.close()
            raise
        return cls(name, shm_name, mm, hdr, layout, table, owner=False)

    def close(self):
        """Unmap the ring; detaches this process's producers and consumers.  Idempotent.

        If the caller still holds memoryviews from batches, the mapping stays
        until they are released (no use-after-unmap).
        """
        if self._closed:
            return
        self._closed = True
        for user in list(self._users):
            user._detach()
        self._gating = self._avail = self._data = self._cursor = None
        self._consumer_seqs = self._producer_table = []
        try:
            ffi.release(self._base)
        except Exception:
            pass
        self._base = None
        for v in (self._data_ro, self._data_view, self._view):
            try:
                v.release()
            except (BufferError, ValueError):
                pass
        self._data_ro = self._data_view = self._view = None
        try:
            self._mmap.close()
        except BufferError:
            pass  # user-held views keep the mapping alive; freed with them

    def unlink(self):
        """Remove the segment name (mappings stay valid until closed).  Idempotent."""
        try:
            posix_ipc.unlink_shared_memory(self._shm_name)
        except posix_ipc.ExistentialError:
            pass

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_open(self):
        if self._closed:
            raise RingClosedError("ring %r is closed" % self.name)

    # ---------------------------------------------------------------- roles
    def producer(self, producer_id=0, check_waiters=None, privileged=False, wait_strategy=None):
        """A Producer registered in the producer table (dead-producer detection).

        ``producer_id=None`` picks an automatic id (rule P2: never reused
        before 32768 later automatic attaches, never one of a live producer).
        A privileged id (0x7F00..0x7FFF) needs ``privileged=True`` (rule P1);
        an ordinary producer's id is stamped into its records (rule P3).

        ``check_waiters`` (default: the ring's strategy can block) makes every
        publish wake futex waiters.  ``wait_strategy`` is how ``claim`` /
        ``claim_batch`` wait while the ring is full (``wait_strategy.make_space_wait``:
        default ``RINGMATCH_PRODUCER_WAIT`` or the machine's default, which
        blocks on the ring's space futex).  Raises RingError if the table is full,
        the id is privileged or out of range, or, on a single-producer ring,
        another live producer is registered.
        """
        self._check_open()
        if producer_id is not None:
            if not isinstance(producer_id, int) or not 0 <= producer_id < AUTO_PRODUCER_ID_BASE:
                raise RingError("ring %r: a fixed producer id must be 0..0x7fff, got %r"
                                % (self.name, producer_id))
            if PRIVILEGED_PRODUCER_ID_MIN <= producer_id <= PRIVILEGED_PRODUCER_ID_MAX \
                    and not privileged:
                raise RingError("ring %r: producer id 0x%x is reserved for privileged "
                                "producers (supervisor, CLI): pass privileged=True"
                                % (self.name, producer_id))
        elif privileged:
            raise RingError("ring %r: a privileged producer needs a fixed id" % self.name)
        p = Producer(self, producer_id, self._signals if check_waiters is None else check_waiters,
                     privileged, wait_strategy)
        self._users.add(p)
        return p

    def consumer(self, name, wait_strategy=None):
        """The Consumer ``name`` (declared at create); resumes after its committed sequence.

        Raises RingConfigError for an unknown name, or for a blocking strategy
        on a ring whose producers do not signal.
        """
        self._check_open()
        if name not in self._index:
            raise RingConfigError("ring %r has no consumer %r (consumers: %s)"
                                  % (self.name, name, ", ".join(self._index)))
        strategy = make_wait_strategy(wait_strategy or self.wait_strategy)
        if strategy.needs_signal and not self._signals:
            raise RingConfigError("wait strategy %r blocks, but ring %r was created with %r "
                                  "whose producers do not signal" % (strategy.name, self.name,
                                                                     self.wait_strategy))
        c = Consumer(self, name, self._index[name], strategy)
        self._users.add(c)
        return c

    # ---------------------------------------------------------------- state
    @property
    def capacity(self):
        return self._layout.capacity

    @property
    def record_size(self):
        return self._layout.record_size

    @property
    def consumer_names(self):
        return [n for n, _ in self._table]

    def consumer_dependencies(self, name):
        return [self._table[d][0] for d in self._table[self._index[name]][1]]

    @property
    def claimed(self):
        """Highest claimed seq (= ``cursor`` on a single-producer ring)."""
        self._check_open()
        return lib.rm_load_acquire(self._cursor)

    @property
    def cursor(self):
        """Highest seq published with every earlier seq published too.  O(unpublished run)."""
        self._check_open()
        claimed = lib.rm_load_acquire(self._cursor)
        if self.header.single_producer:
            return claimed
        low = lib.rm_min_sequence(self._gating, len(self._leaves), claimed)
        return lib.rm_highest_published(self._avail, self._layout.mask, self._layout.shift,
                                        low + 1, claimed)

    def read(self, seq):
        """A copy (bytes) of slot ``seq`` as it is now.  O(record size).

        No gating: for non-gating followers (engine.client) that validate
        afterwards that the producer has not lapped ``seq`` (cursor - seq < capacity).
        """
        self._check_open()
        rs = self._layout.record_size
        off = (seq & self._layout.mask) * rs
        return bytes(self._data_ro[off:off + rs])

    def consumer_sequence(self, name):
        """Committed sequence of consumer ``name`` (acquire load)."""
        self._check_open()
        return lib.rm_load_acquire(self._consumer_seqs[self._index[name]])

    def consumers(self):
        """``[{name, depends_on, sequence, lag}]`` for every consumer.  O(consumers)."""
        cursor = self.cursor
        out = []
        for n, deps in self._table:
            seq = self.consumer_sequence(n)
            out.append({"name": n, "depends_on": [self._table[d][0] for d in deps],
                        "sequence": seq, "lag": cursor - seq})
        return out

    def producers(self):
        """``[{slot, pid, alive, producer_id, claim_lo, claim_hi}]`` of registered producers."""
        self._check_open()
        out = []
        for i, e in enumerate(self._producer_table):
            pid = lib.rm_load_acquire(e + H.P_PID)
            if pid:
                lo, hi = lib.rm_load_acquire(e + H.P_LO), lib.rm_load_acquire(e + H.P_HI)
                out.append({"slot": i, "pid": pid,
                            "alive": process_alive(pid, lib.rm_load_acquire(e + H.P_START)),
                            "producer_id": lib.rm_load_acquire(e + H.P_ID),
                            "claim": [lo, hi] if lo <= hi else None})
        return out

    @property
    def recovered_slots(self):
        """How many slots of dead producers were published as NOP records."""
        self._check_open()
        return lib.rm_load_acquire(self._reaper_lock + 1)

    def recover_dead_producers(self):
        """Publish NOPs for orphaned claims now (any process may call it; rule 3 in ``reaper``)."""
        self._check_open()
        if self._reaper is None:
            return 0
        low = lib.rm_min_sequence(self._gating, len(self._leaves), self.claimed)
        return self._reaper.recover(low + 1)

    def info(self):
        """Everything ``ringmatch ring inspect`` shows, as a dict."""
        self._check_open()
        return {"name": self.name, "header": self.header.as_dict(), "cursor": self.cursor,
                "claimed": self.claimed, "consumers": self.consumers(),
                "producers": self.producers(), "recovered_slots": self.recovered_slots}

    def _check(self):
        """Assert the ring's structural invariants (consumers never pass producers or deps)."""
        claimed = self.claimed
        for n, deps in self._table:
            seq = self.consumer_sequence(n)
            assert 0 <= seq <= claimed, (n, seq, claimed)
            for d in deps:
                assert seq <= self.consumer_sequence(self._table[d][0]), (n, d)
        low = lib.rm_min_sequence(self._gating, len(self._leaves), claimed)
        assert claimed - low <= self.capacity, (claimed, low)

    def __repr__(self):
        return "Ring(%r, capacity=%d, record_size=%d%s)" % (
            self.name, self._layout.capacity, self._layout.record_size,
            ", closed" if self._closed else "")


#: offset of the ``producer_id`` field in a command record (records.COMMAND_FIELDS)
_PRODUCER_ID_OFFSET = 12
_AUTO_IDS = 0x8000          # automatic ids: AUTO_PRODUCER_ID_BASE | 0..0x7fff


class Producer(object):
    """Claims, fills and publishes slots.  Obtain with ``Ring.producer()``.

    claim/try_claim/publish: O(1); batches O(n) in C.
    """

    def __init__(self, ring, producer_id, check_waiters, privileged=False, wait_strategy=None):
        self._ring = ring
        #: how claim/claim_batch wait while the ring is full (a SpaceWaitStrategy)
        self.wait_strategy = make_space_wait(wait_strategy, ring._signals)
        self.producer_id = producer_id
        self.privileged = privileged
        layout = ring._layout
        self._capacity = layout.capacity
        self._mask = layout.mask
        self._record_size = layout.record_size
        self._data = ring._data
        self._data_view = ring._data_view
        self._entry = self._register(ring, 0 if producer_id is None else producer_id)
        #: index in the ring's producer table; unique among this ring's live producers
        self.slot = [i for i, e in enumerate(ring._producer_table) if e == self._entry][0]
        if producer_id is None:
            self.producer_id = self._next_automatic_id(ring, self._entry)    # rule P2
            lib.rm_store_release(self._entry + H.P_ID, self.producer_id)
        #: rule P3: records of an ordinary producer on a command ring carry its id
        self._stamp = not privileged and ring.header.record_kind == H.RECORD_COMMAND
        self._ptr_type = ffi.typeof((ring._ctype or "char") + " *")
        self._records = ffi.cast(self._ptr_type, ring._data)
        if ring.header.single_producer:
            self._sequencer = SingleProducerSequencer(
                ring._cursor, ring._gating, len(ring._leaves), self._capacity, ring._futex,
                check_waiters)
        else:
            self._sequencer = MultiProducerSequencer(
                ring._cursor, ring._gating, len(ring._leaves), self._capacity, ring._futex,
                check_waiters, ring._avail, self._entry)
        self.try_claim_n = self._sequencer.try_claim
        self._publish = self._sequencer.publish
        # per-record hot path: instance attributes shadow the documented methods below
        # with equivalent functions that cost one Python frame (or none) per call
        self.claim = self._sequencer.claim_one_function(self._wait_claim)
        self.publish = self._sequencer.publish_one_function()
        records, mask = self._records, self._mask
        if self._stamp:
            publish_one, pid = self.publish, self.producer_id

            def stamped_publish(seq):
                records[seq & mask].producer_id = pid
                publish_one(seq)
            self.publish = stamped_publish

        def record(seq):
            return records + (seq & mask)
        self.record = record

    @staticmethod
    def _next_automatic_id(ring, own_entry):
        """Rule P2: the next counter value whose id no other live producer holds.

        O(ids skipped x producers); at most MAX_PRODUCERS - 1 ids can be skipped.
        """
        counter = int64_at(ring._base, H.AUTO_ID_OFFSET)
        in_use = set()
        for e in ring._producer_table:
            if e != own_entry and lib.rm_load_acquire(e + H.P_PID):
                in_use.add(lib.rm_load_acquire(e + H.P_ID))
        for _ in range(_AUTO_IDS):
            n = lib.rm_fetch_add(counter, 1)
            candidate = AUTO_PRODUCER_ID_BASE | (n % _AUTO_IDS)
            if candidate not in in_use:
                return candidate
        raise RingError("ring %r: no automatic producer id free" % ring.name)

    @staticmethod
    def _register(ring, producer_id):
        me, start = os.getpid(), process_start_time(os.getpid())
        table = ring._producer_table
        if ring.header.single_producer:
            for e in table:
                pid = lib.rm_load_acquire(e + H.P_PID)
                if pid and process_alive(pid, lib.rm_load_acquire(e + H.P_START)):
                    raise RingError("ring %r is single-producer and producer pid %d is live"
                                    % (ring.name, pid))
        for e in table:
            pid = lib.rm_load_acquire(e + H.P_PID)
            if pid:
                lo, hi = lib.rm_load_acquire(e + H.P_LO), lib.rm_load_acquire(e + H.P_HI)
                if process_alive(pid, lib.rm_load_acquire(e + H.P_START)):
                    continue
                if lo <= hi and not ring.header.single_producer:
                    continue  # an orphaned claim: leave it to the reaper
            if lib.rm_cas(e + H.P_PID, pid, me):
                lib.rm_store_release(e + H.P_START, start)
                lib.rm_store_release(e + H.P_ID, producer_id)
                lib.rm_store_release(e + H.P_HI, 0)
                lib.rm_store_release(e + H.P_LO, 1)
                lib.rm_store_release(e + H.P_STATE, H.P_ACTIVE)
                return e
        raise RingError("ring %r: producer table full (%d live producers)"
                        % (ring.name, H.MAX_PRODUCERS))

    def _detach(self):
        self.close()

    def close(self):
        """Leave the producer table; later calls on this producer raise.  Idempotent.

        The Ring stays open.  Close only after publishing every claim (an
        unpublished claim of a closed producer is never repaired).
        """
        e, self._entry = self._entry, None
        if e is not None and self._ring._producer_table:
            lib.rm_store_release(e + H.P_STATE, H.P_FREE)
            lib.rm_store_release(e + H.P_PID, 0)
        self._records = self._data = self._data_view = self._sequencer = None
        self.try_claim_n = self._publish = self.claim = self.publish = self.record = None

    # ---------------------------------------------------------------- per record
    def try_claim(self):
        """Claim one slot: its seq, or None when the ring is full.  Never blocks.  O(1)."""
        try_claim_n = self.try_claim_n
        if try_claim_n is None:
            raise RingClosedError("producer of ring %r is closed" % self._ring.name)
        return try_claim_n(1)

    def claim(self, timeout=None):
        """Claim one slot, waiting (``wait_strategy``: by default on the futex) while full.

        Returns the seq, or None if ``timeout`` seconds pass first.
        """
        seq = self.try_claim_n(1)
        if seq is None:
            return self._wait_claim(1, timeout)
        return seq

    def _wait_claim(self, n, timeout):
        """Claim ``n`` slots, waiting while the ring is full; None after ``timeout`` s.

        The wait is the producer's space wait strategy: by default it blocks on
        the ring's space futex, which the gating (leaf) consumers signal when
        they commit and a producer is registered as waiting (``rm_commit``), so
        a producer facing a full ring uses no CPU.  A claim that fails again
        after a wake (other producers took the space) waits again.
        """
        deadline = None if timeout is None else _monotonic_ns() + int(timeout * 1e9)
        try_claim = self.try_claim_n
        sequencer = self._sequencer
        ring = self._ring
        wait = self.wait_strategy.wait_for_space
        capacity = self._capacity
        while True:
            seq = try_claim(n)
            if seq is not None:
                return seq
            # the lowest gating sequence that lets n more slots past the cursor
            needed = sequencer.claimed + n - capacity
            g = wait(ring._gating, len(ring._leaves), needed, ring._futex, deadline)
            if g < needed and deadline is not None and _monotonic_ns() >= deadline:
                return try_claim(n)

    def record(self, seq):
        """The cffi record pointer (``rm_command_t *`` / ``rm_event_t *``) of slot ``seq``.  O(1)."""
        return self._records + (seq & self._mask)

    def publish(self, seq):
        """Publish one claimed seq.  O(1)."""
        self._publish(seq, seq)

    def write(self, data, timeout=None):
        """Claim one slot, copy ``record_size`` bytes of ``data`` into it, publish; returns seq."""
        seq = self.claim(timeout)
        if seq is None:
            return None
        size = self._record_size
        ffi.memmove(self._data + (seq & self._mask) * size, data, size)   # any record kind
        self.publish(seq)          # stamps the producer id (rule P3)
        return seq

    def _stamp_views(self, views):
        """Rule P3: write this producer's id into every record of ``views``.  O(records).

        One strided store per view (records are little-endian; a big-endian host
        packs record by record).  CPython, 4096 records: 0.09 -> 0.01 us each.
        """
        pid, size = self.producer_id, self._record_size
        if _LITTLE:
            first, stride = _PRODUCER_ID_OFFSET // 2, size // 2
            for view in views:
                view.cast("H")[first::stride] = array.array("H", [pid]) * (len(view) // size)
            return
        pack_into = _U16.pack_into
        for view in views:
            for offset in range(_PRODUCER_ID_OFFSET, len(view), size):
                pack_into(view, offset, pid)

    # ---------------------------------------------------------------- batched
    def _views(self, first, n):
        rs = self._record_size
        start = (first & self._mask) * rs
        end = start + n * rs
        total = self._capacity * rs
        view = self._data_view
        if end <= total:
            return [view[start:end]]
        return [view[start:total], view[0:end - total]]

    def try_claim_batch(self, n):
        """Claim ``n`` slots: ``(first_seq, [writable memoryview, ...])`` or None when full."""
        first = self.try_claim_n(n)
        if first is None:
            return None
        return first, self._views(first, n)

    def claim_batch(self, n, timeout=None):
        """Claim ``n`` slots, waiting while full: ``(first_seq, views)``.

        ``views`` are 1 or 2 writable memoryviews (2 when the batch wraps the
        ring's end) of ``n * record_size`` bytes in all.  O(1).  Returns None
        on timeout.  Raises ValueError if ``n`` exceeds the capacity.
        """
        first = self.try_claim_n(n)
        if first is None:
            first = self._wait_claim(n, timeout)
            if first is None:
                return None
        return first, self._views(first, n)

    def write_batch(self, data, max_chunk=None, expect_first=None):
        """Claim, copy and publish whole records from ``data``; return the first seq.

        ``data`` holds ``k * record_size`` bytes; it goes in chunks of at most
        ``max_chunk`` records (default a quarter of the ring), each claimed,
        copied through raw byte views and published.  With ``expect_first``,
        a chunk that is not claimed at the expected sequence raises RingError
        before anything of it is published (its slots stay claimed; the
        dead-producer rule fills them if this producer then exits).
        """
        size = self._record_size
        total = len(data) // size
        if total * size != len(data):
            raise ValueError("%d bytes is not a whole number of %d-byte records"
                             % (len(data), size))
        chunk = max_chunk or max(1, self._capacity // 4)
        # one memcpy per contiguous part, from the source's raw pointer: PyPy reads a
        # read-only memoryview byte by byte (~19 us per 128-byte event, issue 13)
        src = ffi.from_buffer(data)
        base, mask = self._data, self._mask
        done = 0
        first_seq = None
        while done < total:
            n = min(total - done, chunk)
            first, views = self.claim_batch(n)
            if expect_first is not None and first != expect_first + done:
                raise RingError("ring %r gave sequence %d where %d was expected"
                                % (self._ring.name, first, expect_first + done))
            if first_seq is None:
                first_seq = first
            offset = done * size
            pos = (first & mask) * size
            for view in views:
                length = len(view)
                ffi.memmove(base + pos, src + offset, length)
                offset += length
                pos = 0                 # a second part starts at the ring's first slot
            if self._stamp:
                self._stamp_views(views)
            self._publish(first, first + n - 1)
            done += n
        return first_seq

    def publish_batch(self, first, n):
        """Publish seqs ``first .. first + n - 1``.  O(n) in C (multi producer), O(1) single.

        An ordinary producer's id is stamped into the records first (rule P3; O(n)).
        """
        if self._stamp:
            self._stamp_views(self._views(first, n))
        self._publish(first, first + n - 1)

    def __repr__(self):
        return "Producer(%r, producer_id=%d)" % (self._ring.name, self.producer_id)


class Batch(object):
    """Records ``first_seq .. last_seq`` a consumer may read (read-only views).

    ``chunks``: ``[(first_seq, memoryview)]``, two when the batch wraps.
    """

    __slots__ = ("first_seq", "count", "chunks", "_consumer")

    def __init__(self, first_seq, count, chunks, consumer):
        self.first_seq = first_seq
        self.count = count
        self.chunks = chunks
        self._consumer = consumer

    @property
    def last_seq(self):
        return self.first_seq + self.count - 1

    def __len__(self):
        return self.count

    def records(self):
        """Iterate ``(seq, cffi record pointer)``.  O(1) per record."""
        rec = self._consumer.record
        for seq in range(self.first_seq, self.first_seq + self.count):
            yield seq, rec(seq)

    def arrays(self, dtype=None):
        """numpy views of the chunks (read-only), one per chunk; default dtype from records."""
        import numpy as np
        if dtype is None:
            dtype = self._consumer._dtype()
        return [np.frombuffer(v, dtype=dtype) for _, v in self.chunks]

    def array(self, dtype=None):
        """One numpy array of the batch: a view, or a copy when the batch wraps."""
        if len(self.chunks) == 1:
            return self.arrays(dtype)[0]
        import numpy as np
        if dtype is None:
            dtype = self._consumer._dtype()
        # raw byte copy (np.concatenate would drop the union aliases of the dtype)
        return np.frombuffer(bytearray(self.tobytes()), dtype=dtype)

    def copy_into(self, dest, offset=0):
        """Copy the batch's bytes into the writable buffer ``dest`` at ``offset``; returns the size.

        O(bytes), one memcpy per chunk (slice assignment on CPython, ``ffi.memmove``
        on PyPy, where bytearray slice assignment from a memoryview is slow).
        Raises ValueError if ``dest`` is too small.
        """
        total = self.count * self._consumer._record_size
        if offset < 0 or offset + total > len(dest):
            raise ValueError("destination of %d bytes cannot take %d bytes at offset %d"
                             % (len(dest), total, offset))
        if _PYPY:
            # PyPy reads read-only memoryviews byte by byte (~8 MB/s): copy from the
            # mapping's raw pointer instead
            c = self._consumer
            rs, mask, data = c._record_size, c._mask, c._ring._data
            out = ffi.from_buffer(dest)
            for first, view in self.chunks:
                n = len(view)
                ffi.memmove(out + offset, data + (first & mask) * rs, n)
                offset += n
            return total
        for _, view in self.chunks:
            n = len(view)
            dest[offset:offset + n] = view
            offset += n
        return total

    def tobytes(self):
        """The batch's bytes (a copy)."""
        return b"".join(v.tobytes() for _, v in self.chunks)

    def __repr__(self):
        return "Batch(first_seq=%d, count=%d, chunks=%d)" % (self.first_seq, self.count,
                                                             len(self.chunks))


class Consumer(object):
    """Reads the ring in order behind its dependencies; commits its gating sequence.

    poll: O(1) when records are available (plus the wait); commit: O(1).
    """

    def __init__(self, ring, name, index, strategy):
        self._ring = ring
        self.name = name
        layout = ring._layout
        self._mask = layout.mask
        self._capacity = layout.capacity
        self._record_size = layout.record_size
        self._seq_ptr = ring._consumer_seqs[index]
        self.sequence_obj = Sequence(self._seq_ptr)
        deps = ring._table[index][1]
        self._barrier = SequenceBarrier(
            ring._cursor, None if ring.header.single_producer else ring._avail,
            [ring._consumer_seqs[d] for d in deps], layout.mask, layout.shift, strategy,
            ring._dep_futex if deps else ring._futex, ring._reaper,
            ring.header.claim_timeout_ns)
        self.wait_strategy = strategy
        self._records = ffi.cast(ffi.typeof((ring._ctype or "char") + " *"), ring._data)
        self._ro = ring._data_ro
        # a consumer others depend on wakes their futex waits when it commits
        self._signal_commit = 1 if (ring._signals and any(
            index in d for _, d in ring._table)) else 0
        # a leaf consumer gates producers: it wakes producers blocked on a full ring
        self._signal_space = 1 if (ring._signals and index in ring._leaves) else 0
        # a consumer is either depended on or a leaf: one rm_commit, on the futex pair it
        # signals (dependents' pair = words 4/5; rm_commit's producer pair = words 2/3)
        if self._signal_commit and self._signal_space:       # pragma: no cover (impossible)
            raise RingError("consumer %r is both depended on and a leaf" % (name,))
        self._commit_futex = ring._dep_futex if self._signal_commit else ring._futex
        self._polled = lib.rm_load_acquire(self._seq_ptr)

    def _detach(self):
        self._records = self._ro = self._seq_ptr = self._barrier = None

    def _dtype(self):
        from . import records
        kind = self._ring.header.record_kind
        if kind == H.RECORD_COMMAND:
            return records.COMMAND_DTYPE
        if kind == H.RECORD_EVENT:
            return records.EVENT_DTYPE
        return "V%d" % self._record_size

    @property
    def sequence(self):
        """Last committed seq (acquire load)."""
        return lib.rm_load_acquire(self._seq_ptr)

    @property
    def polled(self):
        """Last seq handed out by ``poll`` (>= ``sequence``)."""
        return self._polled

    def available(self):
        """Highest seq readable now without waiting."""
        return self._barrier.available(self._polled + 1)

    def wait_for(self, seq, timeout=None):
        """Highest readable seq once ``seq`` is readable, or ``< seq`` after ``timeout`` s."""
        return self._barrier.wait_for(seq, None if timeout is None else int(timeout * 1e9))

    def poll(self, max_batch=4096, timeout=None):
        """The next Batch of up to ``max_batch`` records, or None if none came within ``timeout``.

        ``timeout=None`` waits as long as it takes; ``0`` never waits.  Each
        poll continues after the previous poll (commit separately).
        """
        nxt = self._polled + 1
        a = self._barrier.wait_for(nxt, None if timeout is None else int(timeout * 1e9))
        if a < nxt:
            return None
        count = a - nxt + 1
        if count > max_batch:
            count = max_batch
        self._polled = nxt + count - 1
        rs = self._record_size
        start = (nxt & self._mask) * rs
        end = start + count * rs
        total = self._capacity * rs
        ro = self._ro
        if end <= total:
            chunks = [(nxt, ro[start:end])]
        else:
            first_n = (total - start) // rs
            chunks = [(nxt, ro[start:total]), (nxt + first_n, ro[0:end - total])]
        return Batch(nxt, count, chunks, self)

    def record(self, seq):
        """cffi pointer to the record of ``seq`` (read only by convention).  O(1)."""
        return self._records + (seq & self._mask)

    def commit(self, last_seq):
        """Release ``last_seq`` and everything before it to producers and dependents.

        Release store of the gating sequence; pairs with the acquire loads in
        the producers' gating check and dependents' barriers.  Raises
        RingError when ``last_seq`` was not polled yet.
        """
        if last_seq > self._polled:
            raise RingError("consumer %r: commit(%d) past the last polled seq %d"
                            % (self.name, last_seq, self._polled))
        # rm_commit: release store, then (one fence) wakes only where waiters are registered
        lib.rm_commit(self._seq_ptr, last_seq, self._commit_futex, self._signal_commit,
                      self._signal_space)

    def seek(self, seq):
        """Continue after ``seq``: records up to it were consumed by other means.

        Used by a restarted matcher that replayed them from the journal.  The
        next ``poll`` starts at ``seq + 1``; ``commit(seq)`` is then allowed.
        Raises RingError if ``seq`` is behind the committed sequence or not
        yet available to this consumer.  O(1).
        """
        committed = lib.rm_load_acquire(self._seq_ptr)
        if seq < committed:
            raise RingError("consumer %r: seek(%d) behind the committed seq %d"
                            % (self.name, seq, committed))
        if seq > self._polled and self._barrier.available(self._polled + 1) < seq:
            raise RingError("consumer %r: seek(%d) past what is available" % (self.name, seq))
        self._polled = seq

    def rewind(self):
        """Forget uncommitted polls: the next poll starts after ``sequence``."""
        self._polled = lib.rm_load_acquire(self._seq_ptr)

    def __repr__(self):
        return "Consumer(%r, %r, sequence=%d)" % (self._ring.name, self.name, self.sequence)
