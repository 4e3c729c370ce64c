"""Sequencers: how producers claim slots and publish them.

Theory of operation
-------------------
The cursor is one shared int64.  Sequences start at 1; slot of seq ``s`` is
``s & mask``.  A producer may claim up to ``min(gating) + capacity`` where
``gating`` are the sequences of the leaf consumers, so no unread slot is ever
overwritten.

1. ``SingleProducerSequencer``: the cursor is the highest *published* seq.
   Claims are local (no atomics); ``publish`` is one release store.
2. ``MultiProducerSequencer`` (LMAX style): the cursor is the highest
   *claimed* seq.  A claim writes its intent ``[lo, hi]`` into the producer's
   table entry, then CASes the cursor (so every claimed-but-unpublished slot
   is covered by its claimant's entry: the dead-producer rule in
   ``reaper``).  ``publish`` stores the round number ``s >> log2(capacity)``
   into the slot's availability marker (release); a consumer reads a slot only
   when the marker equals the round of the seq it wants.
3. Both wake futex waiters after publishing when the ring's wait strategy
   can block (``check_waiters``).

Both implement the ``Sequencer`` protocol; ``tests/ringbuf`` runs one contract
suite over both.
"""
try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object

import functools

from ._native import NULL, ffi, lib

__all__ = ["Sequencer", "SingleProducerSequencer", "MultiProducerSequencer"]


class Sequencer(Protocol):
    """Role: claim and publish slots for one producer."""

    def try_claim(self, n=1):
        """First seq of ``n`` claimed slots, or None when the ring is full.  Never blocks."""

    def publish(self, lo, hi):
        """Make seqs ``lo..hi`` (claimed by this producer) visible to consumers."""

    def remaining_capacity(self):
        """Slots that could be claimed right now."""


class SingleProducerSequencer(object):
    """Claims for the only producer of a ring: local counter, one release store per publish.

    try_claim: O(1) amortized (the gating minimum is cached and re-read only
    when the cached value says the ring may be full).
    """

    __slots__ = ("_cursor", "_gating", "_ngating", "_capacity", "_futex", "_check",
                 "_next", "_cached_gating")

    def __init__(self, cursor_ptr, gating_array, ngating, capacity, futex_ptr, check_waiters):
        self._cursor = cursor_ptr
        self._gating = gating_array
        self._ngating = ngating
        self._capacity = capacity
        self._futex = futex_ptr
        self._check = 1 if check_waiters else 0
        # restart-safe: continue after what is already published
        self._next = lib.rm_load_acquire(cursor_ptr)
        self._cached_gating = lib.rm_min_sequence(gating_array, ngating, self._next)

    def try_claim(self, n=1):
        hi = self._next + n
        if hi - self._capacity > self._cached_gating:
            if n > self._capacity:
                raise ValueError("cannot claim %d slots of a ring of %d" % (n, self._capacity))
            g = self._cached_gating = lib.rm_min_sequence(self._gating, self._ngating, self._next)
            if hi - self._capacity > g:
                return None
        lo = self._next + 1
        self._next = hi
        return lo

    def publish(self, lo, hi):
        # release store of the cursor; pairs with the acquire load in rm_barrier_available
        lib.rm_publish_sp(self._cursor, hi, self._futex, self._check)

    def publish_one_function(self):
        """``publish_one(seq)``: a partial of the C call (no Python frame per publish)."""
        return functools.partial(lib.rm_publish_sp_at, self._cursor, self._futex, self._check)

    def claim_one_function(self, wait):
        """``claim_one(timeout=None)`` for the per-record hot path; ``wait(n, timeout)`` when full.

        One Python frame, no C call unless the cached gating value says full.
        """
        cap = self._capacity
        sq = self

        def claim_one(timeout=None):
            nxt = sq._next + 1
            if nxt - cap > sq._cached_gating:
                lo = sq.try_claim(1)
                return lo if lo is not None else wait(1, timeout)
            sq._next = nxt
            return nxt
        return claim_one

    def remaining_capacity(self):
        g = lib.rm_min_sequence(self._gating, self._ngating, self._next)
        return self._capacity - (self._next - g)

    @property
    def claimed(self):
        """Highest seq claimed by this producer."""
        return self._next


class MultiProducerSequencer(object):
    """Claims shared by many producers: CAS on the cursor plus per-slot availability markers.

    try_claim: O(1) expected (CAS retries under contention); publish: O(n) for n slots.
    """

    __slots__ = ("_cursor", "_gating", "_ngating", "_capacity", "_futex", "_check",
                 "_avail", "_mask", "_shift", "_entry", "_cache")

    def __init__(self, cursor_ptr, gating_array, ngating, capacity, futex_ptr, check_waiters,
                 avail_ptr, entry_ptr):
        self._cursor = cursor_ptr
        self._gating = gating_array
        self._ngating = ngating
        self._capacity = capacity
        self._futex = futex_ptr
        self._check = 1 if check_waiters else 0
        self._avail = avail_ptr
        self._mask = capacity - 1
        self._shift = capacity.bit_length() - 1
        self._entry = entry_ptr if entry_ptr is not None else NULL
        self._cache = ffi.new("int64_t *", lib.rm_min_sequence(gating_array, ngating,
                                                                lib.rm_load_acquire(cursor_ptr)))

    def try_claim(self, n=1):
        if n > self._capacity or n < 1:
            raise ValueError("cannot claim %d slots of a ring of %d" % (n, self._capacity))
        lo = lib.rm_mp_try_claim(self._cursor, n, self._capacity, self._gating, self._ngating,
                                 self._cache, self._entry)
        return lo or None

    def publish(self, lo, hi):
        # release stores of the availability markers; pairs with rm_highest_published
        lib.rm_publish_mp(self._avail, self._mask, self._shift, lo, hi, self._entry,
                          self._futex, self._check)

    def publish_one_function(self):
        """``publish_one(seq)``: a partial of the C call (no Python frame per publish)."""
        return functools.partial(lib.rm_publish_mp_one, self._avail, self._mask, self._shift,
                                 self._entry, self._futex, self._check)

    def claim_one_function(self, wait):
        """``claim_one(timeout=None)``: one C call (intent + CAS); ``wait`` when full."""
        c_claim = functools.partial(lib.rm_mp_try_claim, self._cursor, 1, self._capacity,
                                    self._gating, self._ngating, self._cache, self._entry)

        def claim_one(timeout=None):
            lo = c_claim()
            return lo if lo else wait(1, timeout)
        return claim_one

    def remaining_capacity(self):
        cur = lib.rm_load_acquire(self._cursor)
        g = lib.rm_min_sequence(self._gating, self._ngating, cur)
        return self._capacity - (cur - g)

    @property
    def claimed(self):
        """Highest seq claimed by any producer (the shared cursor)."""
        return lib.rm_load_acquire(self._cursor)
