"""The production RecordSource / RecordSink: the shard's rings and journal.

Theory of operation:

1. ``RingSource`` (primary) is consumer ``replicator`` of the input ring.  A
   slot ``s`` is still intact while ``s`` is above the matcher's sequence --
   producers are gated on the matcher, the ring's only leaf consumer -- and
   the matcher never passes the journaler.  So a read of ``s`` comes from the
   ring when ``s > matcher's sequence`` (copied and re-checked when ``s`` is
   below our own gate, as the matcher may pass it meanwhile) and from the
   journal otherwise (``s <= matcher <= journaler``: durably journaled).  This
   is the catch-up of a standby that fell behind the ring.  ``wait_for`` of a
   sequence at or below our own polled position answers at once (it is
   published; the ring's barrier cannot tell for a lapped slot).
2. ``commit`` polls the consumer up to the committed sequence first (the ring
   only lets a consumer commit what it polled) and then commits: the gate.
3. State hashes: the matcher answers SNAPSHOT and STATE_HASH commands with an
   event (``EventKind.SNAPSHOT`` / ``STATE_HASH``) whose ``aux`` holds the low
   63 bits of its state hash.  ``OutputHashFollower`` follows the output ring
   *without* a gating sequence (it can never slow the matcher), picks those
   events with numpy, and validates after the copy that the slots were not
   overwritten meanwhile (then it skips ahead: a hash missed is only a
   comparison not made).
4. ``RingSink`` (standby) is a producer on the standby's input ring -- the only
   one: the standby runs no publisher and its supervisor publishes no
   commands.  Each received batch is claimed, copied and published; the
   claimed sequence must be exactly the one the primary sent (else the ring
   does not continue the journal and writing would corrupt it: RingSinkError).
   The durable sequence is the standby journaler's gating sequence.
5. A receiver killed between claim and publish leaves claimed slots that the
   ring's reaper fills with NOP records naming our producer id (docs/ring.md)
   -- at the primary's sequences, where the primary had real commands.  A
   standby holding such a record is no longer a copy: ``reaped_tail`` finds
   them (the last ``capacity`` records of the ring and of the journal; a
   write is at most ``capacity // 4`` records, and nothing is written after
   a reap because the receiver refuses to start) and the receiver process
   refuses to resume or acknowledge (exit 3: re-seed the standby).
"""
import time

from ringbuf.records import EventKind
from ringbuf.errors import RingError

__all__ = ["RingSource", "RingSink", "RingSinkError", "OutputHashFollower"]

_HASH_KINDS = (int(EventKind.SNAPSHOT), int(EventKind.STATE_HASH))


class RingSinkError(RuntimeError):
    """The standby's ring handed out another sequence than the primary's (rule 4)."""


class OutputHashFollower(object):
    """Follow an output ring without gating; return new (seq, hash) pairs (rule 3).

    O(new events) per call, in numpy.
    """

    def __init__(self, ring_out, start=None):
        import numpy as np
        from ringbuf import records
        self.np = np
        self.ring = ring_out
        self.dtype = records.EVENT_DTYPE
        self.capacity = ring_out.capacity
        self.mask = self.capacity - 1
        self.data = ring_out._data_ro          # read-only view of the slots
        self.next = ring_out.cursor + 1 if start is None else start
        self.skipped = 0

    def poll(self, max_events=1 << 16):
        cursor = self.ring.cursor
        seq = self.next
        if seq > cursor:
            return []
        if cursor - seq >= self.capacity:
            self.skipped += cursor - self.capacity + 1 - seq
            seq = cursor - self.capacity + 1
        last = min(cursor, seq + max_events - 1)
        np = self.np
        size = self.dtype.itemsize
        parts = []
        s = seq
        while s <= last:
            start = s & self.mask
            n = min(last - s + 1, self.capacity - start)
            parts.append(np.frombuffer(self.data[start * size:(start + n) * size],
                                       dtype=self.dtype).copy())
            s += n
        if self.ring.cursor - seq >= self.capacity:      # overwritten while copying
            self.skipped += last - seq + 1
            self.next = last + 1
            return []
        self.next = last + 1
        out = []
        for arr in parts:
            kinds = arr["kind"]
            sel = arr[(kinds == _HASH_KINDS[0]) | (kinds == _HASH_KINDS[1])]
            for seq_, aux in zip(sel["seq"].tolist(), sel["aux"].tolist()):
                out.append((seq_, aux))
        return out


class RingSource(object):
    """The primary's input ring (consumer ``replicator``) plus its journal (rules 1-3)."""

    def __init__(self, ring_in, data_dir, shard, ring_out=None, journal_batch=1 << 15,
                 wait_strategy=None):
        self.ring = ring_in
        self.consumer = ring_in.consumer("replicator", wait_strategy=wait_strategy)
        self.data_dir = data_dir
        self.shard = shard
        self.record_size = ring_in.record_size
        self.mask = ring_in.capacity - 1
        self.capacity = ring_in.capacity
        self.data = ring_in._data_ro
        self.journal_batch = journal_batch
        self._journal_cache = (0, 0, b"")        # (first seq, count, bytes)
        self.journal_reads = 0
        self.hashes = OutputHashFollower(ring_out) if ring_out is not None else None

    def cursor(self):
        return self.ring.cursor

    def wait_for(self, seq, timeout):
        consumer = self.consumer
        polled = consumer.polled
        if seq <= polled:
            # rule 1: a catch-up below our own position.  Never ask the barrier about it:
            # a multi-producer slot's marker holds only its latest round, so a sequence the
            # ring has lapped would never look published.  Everything <= polled is.
            return max(polled, consumer.available())
        return consumer.wait_for(seq, timeout)

    def committed(self):
        return self.consumer.sequence

    def commit(self, seq):
        consumer = self.consumer
        while consumer.polled < seq:                 # rule 2
            if consumer.poll(seq - consumer.polled, timeout=0) is None:
                raise RuntimeError("cannot poll up to %d (cursor %d)" % (seq, self.ring.cursor))
        consumer.commit(seq)

    def read(self, first_seq, max_count):
        if first_seq <= self.ring.consumer_sequence("matcher"):
            # rule 1: the slot may be reused; the journal has it (matcher <= journaler)
            journaled = self.ring.consumer_sequence("journaler")
            return self._read_journal(first_seq, min(max_count, journaled - first_seq + 1))
        cursor = self.ring.cursor
        count = min(max_count, cursor - first_seq + 1)
        size = self.record_size
        start = first_seq & self.mask
        if start + count <= self.capacity:
            chunks = [self.data[start * size:(start + count) * size]]
        else:
            n1 = self.capacity - start
            chunks = [self.data[start * size:], self.data[:(count - n1) * size]]
        if first_seq > self.consumer.sequence:
            # above our own gate: the matcher cannot pass it, the slots stay intact
            return count, chunks
        # catch-up below our gate: copy, then check nobody could have reused the slots
        copied = [bytes(c) for c in chunks]
        if self.ring.consumer_sequence("matcher") >= first_seq:
            return self.read(first_seq, max_count)          # now in the journal
        return count, copied

    def _read_journal(self, first_seq, count):
        c_first, c_count, c_data = self._journal_cache
        if not (c_first <= first_seq < c_first + c_count):
            from journaler.reader import JournalReader
            reader = JournalReader(self.data_dir, self.shard, check_crc=False)
            parts = []
            got_first = None
            got = 0
            for first, n, view in reader.blocks(after=first_seq - 1,
                                                last=first_seq + self.journal_batch - 1):
                if got_first is None:
                    got_first = first
                parts.append(bytes(view))
                got += n
            if got_first != first_seq:
                raise RuntimeError("journal of %s does not hold sequence %d (problem: %s)"
                                   % (self.shard, first_seq, reader.problem))
            self._journal_cache = (first_seq, got, b"".join(parts))
            c_first, c_count, c_data = self._journal_cache
            self.journal_reads += 1
        size = self.record_size
        offset = (first_seq - c_first) * size
        n = min(count, c_first + c_count - first_seq)
        return n, [memoryview(c_data)[offset:offset + n * size]]

    def state_hashes(self):
        return self.hashes.poll() if self.hashes is not None else []


class RingSink(object):
    """The standby's input ring as the receiver's sink (rule 4)."""

    def __init__(self, ring_in, ring_out=None, producer_id=0x7FFE):
        self.ring = ring_in
        self.producer = ring_in.producer(producer_id=producer_id, privileged=True)
        self.record_size = ring_in.record_size
        self.max_chunk = max(1, ring_in.capacity // 4)
        self.hashes = OutputHashFollower(ring_out) if ring_out is not None else None

    def next_sequence(self):
        return self.ring.cursor + 1

    def write(self, first_seq, payload):
        try:
            self.producer.write_batch(payload, self.max_chunk, expect_first=first_seq)
        except RingError as exc:
            # the claimed slots cannot be un-claimed: the error stops the receiver and
            # the operator must re-seed
            raise RingSinkError("standby ring out of step with the primary (%s): another "
                                "producer is writing to the standby's ring" % exc)

    def durable_sequence(self):
        return self.ring.consumer_sequence("journaler")

    def reaped_tail(self, data_dir=None, shard=None):
        """Sequences of the ring's and the journal's tail reaped from a dead receiver (rule 5).

        O(capacity) with numpy.  Returns a sorted list (empty when all is well).
        """
        import numpy as np
        from ringbuf import records
        nop, pid = int(records.CommandKind.NOP), self.producer.producer_id
        found = set()
        cursor = self.ring.cursor
        capacity = self.ring.capacity
        first = max(1, cursor - capacity + 1)
        if cursor >= first:
            seqs = np.arange(first, cursor + 1, dtype=np.int64)
            slots = np.frombuffer(self.ring._data_ro, dtype=records.COMMAND_DTYPE)
            arr = slots[seqs & (capacity - 1)]
            hit = (arr["kind"] == nop) & (arr["producer_id"] == pid)
            found.update(seqs[hit].tolist())
        if data_dir is not None:
            from journaler.recovery import durable_sequence
            from journaler.reader import JournalReader
            end = durable_sequence(data_dir, shard)
            if end > 0:
                reader = JournalReader(data_dir, shard, check_crc=False)
                seqs, arr = reader.array(after=max(0, end - capacity))
                hit = (arr["kind"] == nop) & (arr["producer_id"] == pid)
                found.update(seqs[hit].tolist())
        return sorted(found)

    def state_hashes(self):
        return self.hashes.poll() if self.hashes is not None else []
