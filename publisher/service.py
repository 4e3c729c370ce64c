"""The publisher's core: events in, read model + fan-out + order outcomes out.

Theory of operation (numbered rules; the code refers to them):

1. Everything here runs on the asyncio loop thread; the ring consumer thread
   hands batches over with ``loop.call_soon_threadsafe(service.on_events, batch)``,
   so the read model, the hub and the waiters need no locks.
2. Events are applied at most once: the output stream is ordered by
   (seq, event_index), and after a matcher restart the matcher re-publishes the
   events of its journal tail (engine/matcher_process.py rule 1); anything at
   or below the last applied (seq, event_index) is skipped.
3. A command is written to the input ring on the loop thread and its waiter is
   registered before the loop can run ``on_events`` again, so no outcome can be
   missed.  The waiter resolves when the command's LAST event has been applied
   to the read model: a read after the answer reflects the write
   (read-your-writes by sequence).
4. The ring being full is back-pressure, not an error: ``submit`` retries
   ``try_claim`` with a short sleep and answers 503 after ``claim_timeout_s``.
"""
import asyncio
import heapq
import time

from ringbuf.records import COMMAND_SLOTS, EventFlags, command_struct

__all__ = ["PublisherService", "CommandSender", "RingFull", "OutcomeTimeout"]

_LAST = int(EventFlags.LAST)

#: command fields in record order, with the name used to set the union slot
COMMAND_FIELD_NAMES = ("kind", "side", "order_type", "tif", "stp", "flags", "symbol_id",
                       "account_id", "producer_id", "check", "price", "qty", "funds",
                       "stop_price", "timestamp_ns", "client_order_id")


assert tuple(COMMAND_SLOTS) == tuple(n if n != "funds" else "funds" for n in COMMAND_FIELD_NAMES)


class RingFull(Exception):
    """The input ring stayed full for longer than the claim timeout (rule 4)."""


class OutcomeTimeout(Exception):
    """The command's outcome event did not arrive in time."""


class CommandSender(object):
    """Write commands into the input ring through a ``ringbuf`` producer."""

    def __init__(self, producer, producer_id):
        self.producer = producer
        self.producer_id = producer_id

    def try_send(self, fields):
        """Write one command (dict of fields, missing = 0); return its seq or None when full."""
        get = fields.get
        values = [get(name, 0) for name in COMMAND_FIELD_NAMES]
        values[8] = self.producer_id
        return self.producer.write(command_struct.pack(*values), timeout=0)


class _Waiter(object):
    __slots__ = ("future", "events")

    def __init__(self, future):
        self.future = future
        self.events = []


class PublisherService(object):
    """Glue between the event stream, the read model, the hub and REST writes."""

    def __init__(self, catalog, model, hub, sender=None, log=None, claim_timeout_s=2.0,
                 outcome_timeout_s=10.0):
        self.catalog = catalog
        self.model = model
        self.hub = hub
        self.sender = sender
        self.log = log
        self.claim_timeout_s = claim_timeout_s
        self.outcome_timeout_s = outcome_timeout_s
        self.waiters = {}             # seq -> _Waiter
        self.seq_waiters = []         # heap of (seq, id, future) for wait_applied
        self.last_seq = 0             # rule 2
        self.last_index = -1
        self.skipped = 0
        self.batches = 0
        self.ready = False            # rebuild done
        self.on_batch = None          # optional hook(events, changes) (benchmarks)

    # ------------------------------------------------------------ events in
    def on_events(self, events):
        """Apply one batch (loop thread, rule 1)."""
        last_seq, last_index = self.last_seq, self.last_index
        fresh = events
        if events and (events[0].seq < last_seq or
                       (events[0].seq == last_seq and events[0].event_index <= last_index)):
            fresh = []
            for e in events:                                   # rule 2
                if e.seq > last_seq or (e.seq == last_seq and e.event_index > last_index):
                    fresh.append(e)
                    last_seq, last_index = e.seq, e.event_index
                else:
                    self.skipped += 1
        if not fresh:
            return None
        tail = fresh[-1]
        self.last_seq, self.last_index = tail.seq, tail.event_index
        changes = self.model.apply(fresh)
        history = getattr(self.model, "history", None)       # fills, candles (REST)
        if history is not None:
            history.record_events(fresh)
        self.batches += 1
        waiters = self.waiters
        if waiters:
            for e in fresh:
                w = waiters.get(e.seq)
                if w is not None:
                    w.events.append(e)
        self.hub.publish(changes)
        if waiters:
            self._resolve_waiters(changes.closed_seqs)
        self._wake_seq_waiters()
        if self.on_batch is not None:
            self.on_batch(fresh, changes)
        return changes

    def _resolve_waiters(self, closed_seqs):
        """Rule 3: a submit() whose command's LAST event was applied gets its events."""
        waiters = self.waiters
        for seq in closed_seqs:
            w = waiters.pop(seq, None)
            if w is not None and not w.future.done():
                w.future.set_result(w.events)

    def _wake_seq_waiters(self):
        """Readers waiting for ``min_seq`` the model has now applied."""
        heap = self.seq_waiters
        applied = self.model.applied_seq
        while heap and heap[0][0] <= applied:
            _s, _i, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(applied)

    # ------------------------------------------------------------ writes
    async def submit(self, fields):
        """Send one command; return (seq, [its events]) once its LAST event is applied.

        Raises RingFull (rule 4) or OutcomeTimeout.
        """
        loop = asyncio.get_running_loop()
        fields = dict(fields)
        fields.setdefault("timestamp_ns", time.time_ns())
        deadline = loop.time() + self.claim_timeout_s
        delay = 0.0002
        while True:
            seq = self.sender.try_send(fields)
            if seq is not None:
                break
            if loop.time() >= deadline:
                raise RingFull("the input ring is full; try again")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.01)
        waiter = _Waiter(loop.create_future())
        self.waiters[seq] = waiter                             # rule 3: before yielding
        try:
            events = await asyncio.wait_for(waiter.future, self.outcome_timeout_s)
        except asyncio.TimeoutError:
            self.waiters.pop(seq, None)
            raise OutcomeTimeout("no outcome for command %d within %.1fs"
                                 % (seq, self.outcome_timeout_s))
        return seq, events

    async def wait_applied(self, seq, timeout=2.0):
        """Wait until the read model reflects input ``seq``; return True if it does."""
        if self.model.applied_seq >= seq:
            return True
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self.seq_waiters, (seq, id(fut), fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
