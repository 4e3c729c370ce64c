"""PublisherService over the columnar read model: the same rules, per batch not per event.

``publisher.service.PublisherService`` rules 1-4 hold unchanged; ``on_events`` takes an
``EventBatch`` (or anything ``as_event_array`` takes) and does the per-event parts with
numpy: the duplicate skip (rule 2) is one comparison over the batch, and only the
events of commands someone waits for (REST writes, rule 3) become Python tuples.  A
batch of at most ``SMALL_BATCH`` events becomes tuples once (``tolist``), read here and
by the model's per-event path.
"""

import numpy as np

from publisher.columnar import (SMALL_BATCH, EventBatch, as_event_array, _events_of, _E_SEQ,
                                _E_EVENT_INDEX, _iter_unpack, ColumnarChanges)
from publisher.service import PublisherService

__all__ = ["ColumnarService"]


class ColumnarService(PublisherService):
    """A PublisherService whose model is a ``ColumnarReadModel``."""

    def __init__(self, catalog, model, hub, sender=None, log=None, **kw):
        PublisherService.__init__(self, catalog, model, hub, sender=sender, log=log, **kw)
        subs = getattr(hub, "user_subs", None)
        if subs is not None and hasattr(model, "report_accounts"):
            model.report_accounts = subs          # reports only for subscribed accounts

    @staticmethod
    def decode_bytes(data):
        """Event records (bytes) -> the batch ``on_events`` takes (zero-copy)."""
        return EventBatch.from_bytes(data)

    def on_events(self, events):
        """Apply one batch (loop thread, rule 1)."""
        arr = events.array if events.__class__ is EventBatch else as_event_array(events)
        n = len(arr)
        if not n:
            return None
        last_seq, last_index = self.last_seq, self.last_index
        recs = None
        if n <= SMALL_BATCH:                  # the per-event path: Python tuples, no numpy
            try:
                recs = list(_iter_unpack(arr))
            except (BufferError, TypeError, ValueError):     # not contiguous
                recs = arr.tolist()
            first, last = recs[0], recs[-1]
            s0, i0 = first[_E_SEQ], first[_E_EVENT_INDEX]
        else:
            s0, i0 = int(arr["seq"][0]), int(arr["event_index"][0])
        if s0 < last_seq or (s0 == last_seq and i0 <= last_index):
            seqs = arr["seq"]
            keep = (seqs > last_seq) | ((seqs == last_seq) & (arr["event_index"] > last_index))
            kept = int(keep.sum())
            self.skipped += n - kept                           # rule 2
            if not kept:
                return None
            sel = np.flatnonzero(keep)
            arr = arr.take(sel)
            if recs is not None:
                recs = [recs[i] for i in sel.tolist()]
                last = recs[-1]
        if recs is not None:
            self.last_seq, self.last_index = last[_E_SEQ], last[_E_EVENT_INDEX]
            changes = self.model._apply_small(arr, ColumnarChanges(), recs)
            history = getattr(self.model, "history", None)   # fills, candles (REST)
            if history is not None:
                history.record_events(recs)       # tuples in PublishedEvent's field order
        else:
            self.last_seq = int(arr["seq"][-1])
            self.last_index = int(arr["event_index"][-1])
            changes = self.model.apply(arr)
            history = getattr(self.model, "history", None)
            if history is not None:
                history.record_array(arr)
        self.batches += 1
        waiters = self.waiters
        if waiters:
            keys = np.fromiter(waiters, np.int64, len(waiters))
            mine = np.isin(arr["seq"], keys)
            if mine.any():
                for e in _events_of(arr[mine]):
                    waiters[e.seq].events.append(e)
        self.hub.publish(changes)
        if waiters:
            closed = np.asarray(changes.closed_seqs, np.int64)
            hit = closed[np.isin(closed, np.fromiter(waiters, np.int64, len(waiters)))]
            self._resolve_waiters(hit.tolist())                   # rule 3
        if self.seq_waiters:
            self._wake_seq_waiters()
        if self.on_batch is not None:
            self.on_batch(arr, changes)
        return changes
