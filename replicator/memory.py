"""Reference RecordSource / RecordSink implementations without shared memory.

``MemorySource`` is an append-only list of records standing in for the
primary's input ring; ``FileSink`` stands in for the standby's ring plus
journaler: written records are appended to a file by a background "journaler"
thread that fsyncs per batch (group commit) and only then advances the durable
sequence.  Both keep the exact contracts of sender.RecordSource and
receiver.RecordSink, so the protocol tests and the loopback benchmark exercise
the real sender and receiver over real TCP; the ring adapters
(``replicator.ring_io``) are the production implementations.
"""
import os
import threading

__all__ = ["MemorySource", "FileSink", "read_records_file"]


class MemorySource(object):
    """An in-memory input ring: ``append`` publishes, ``commit`` is the gate.  O(1) per call.

    >>> src = MemorySource(8); src.append([b"a" * 8, b"b" * 8]); src.cursor()
    2
    """

    def __init__(self, record_size=64, first_seq=1):
        self.record_size = record_size
        self.base = first_seq           # sequence of self._records[0]
        self._records = []
        self._gate = first_seq - 1
        self._cond = threading.Condition()
        self._hashes = []
        self.gate_history = None        # tests may set a list to record every commit

    def append(self, records):
        """Publish records; returns the sequence of the last one."""
        with self._cond:
            for r in records:
                if len(r) != self.record_size:
                    raise ValueError("record of %d bytes, need %d" % (len(r), self.record_size))
                self._records.append(bytes(r))
            self._cond.notify_all()
            return self.base + len(self._records) - 1

    def add_state_hash(self, seq, value):
        with self._cond:
            self._hashes.append((seq, value))

    def cursor(self):
        return self.base + len(self._records) - 1

    def wait_for(self, seq, timeout):
        with self._cond:
            if self.cursor() < seq and timeout > 0:
                self._cond.wait_for(lambda: self.cursor() >= seq, timeout)
            return self.cursor()

    def read(self, first_seq, max_count):
        if first_seq < self.base or first_seq > self.cursor():
            raise IndexError("sequence %d not in [%d, %d]" % (first_seq, self.base, self.cursor()))
        i = first_seq - self.base
        chunk = self._records[i:i + max_count]
        return len(chunk), [b"".join(chunk)]

    def commit(self, seq):
        with self._cond:
            if seq < self._gate:
                raise ValueError("gate moved backwards: %d -> %d" % (self._gate, seq))
            if seq > self.cursor():
                raise ValueError("gate %d beyond cursor %d" % (seq, self.cursor()))
            self._gate = seq
            if self.gate_history is not None:
                self.gate_history.append(seq)
            self._cond.notify_all()

    def committed(self):
        return self._gate

    def wait_committed(self, seq, timeout):
        """Test helper: wait until the gate reaches ``seq``; returns the gate."""
        with self._cond:
            self._cond.wait_for(lambda: self._gate >= seq, timeout)
            return self._gate

    def state_hashes(self):
        with self._cond:
            out, self._hashes = self._hashes, []
            return out

    def record(self, seq):
        return self._records[seq - self.base]


class FileSink(object):
    """A standby journal in one file: write() queues, a thread appends + fsyncs.

    The file holds raw records from ``first_seq`` on (the first 8 bytes of the
    file are first_seq, little endian).  On open, a torn last record is cut.
    ``durable_sequence()`` only covers records that were fsynced (``fsync=False``:
    written to the OS).
    """

    def __init__(self, path, record_size=64, first_seq=1, fsync=True):
        self.path = path
        self.record_size = record_size
        self.fsync = fsync
        exists = os.path.exists(path) and os.path.getsize(path) >= 8
        self._f = open(path, "r+b" if exists else "w+b")
        if exists:
            self.first_seq = int.from_bytes(self._f.read(8), "little")
            size = os.path.getsize(path) - 8
            whole = size - size % record_size
            self._f.truncate(8 + whole)
            count = whole // record_size
        else:
            self.first_seq = first_seq
            self._f.write(first_seq.to_bytes(8, "little"))
            self._f.flush()
            os.fsync(self._f.fileno())
            count = 0
        self._f.seek(0, os.SEEK_END)
        self._next = self.first_seq + count
        self._durable = self._next - 1
        self._pending = []
        self._cond = threading.Condition()
        self._closed = False
        self._hashes = []
        self._thread = threading.Thread(target=self._journal, name="file-sink", daemon=True)
        self._thread.start()

    def next_sequence(self):
        return self._next

    def write(self, first_seq, payload):
        if first_seq != self._next:
            raise ValueError("write at %d, sink needs %d" % (first_seq, self._next))
        if len(payload) % self.record_size:
            raise ValueError("payload of %d bytes is not whole records" % len(payload))
        with self._cond:
            self._pending.append(bytes(payload))
            self._next += len(payload) // self.record_size
            self._cond.notify_all()

    def durable_sequence(self):
        return self._durable

    def wait_durable(self, seq, timeout):
        with self._cond:
            self._cond.wait_for(lambda: self._durable >= seq, timeout)
            return self._durable

    def add_state_hash(self, seq, value):
        with self._cond:
            self._hashes.append((seq, value))

    def state_hashes(self):
        with self._cond:
            out, self._hashes = self._hashes, []
            return out

    def _journal(self):
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending and self._closed:
                    return
                batch, self._pending = self._pending, []
                upto = self._next - 1
            data = b"".join(batch)
            self._f.write(data)
            self._f.flush()
            if self.fsync:
                os.fsync(self._f.fileno())
            with self._cond:
                self._durable = upto
                self._cond.notify_all()

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5)
        self._f.close()


def read_records_file(path, record_size=64):
    """(first_seq, [record bytes]) of a FileSink file (whole records only)."""
    with open(path, "rb") as f:
        data = f.read()
    first = int.from_bytes(data[:8], "little")
    body = data[8:]
    n = len(body) // record_size
    return first, [body[i * record_size:(i + 1) * record_size] for i in range(n)]
