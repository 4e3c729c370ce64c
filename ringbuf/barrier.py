"""SequenceBarrier: what a consumer may read next.

A consumer may read seq ``s`` when ``s`` is published (single producer: the
cursor is ``>= s``; multi producer: the slot's availability marker holds the
round of ``s``) and every consumer it depends on has committed ``>= s``.
The whole test is one C call (``rm_barrier_available``); waiting is delegated
to the wait strategy; a claimed slot that stays unpublished longer than the
ring's claim timeout triggers the reaper (``reaper`` module, rule 2).
"""
from ._native import ffi, lib

__all__ = ["SequenceBarrier"]

_monotonic_ns = lib.rm_monotonic_ns


class SequenceBarrier(object):
    """Wait for a seq to become readable by one consumer.

    ``available(seq)``: O(deps + published run).  ``wait_for``: O(wait).
    """

    __slots__ = ("_c", "_keep", "_strategy", "_futex", "_cursor", "_reaper",
                 "_claim_timeout_ns", "_check_ns")

    def __init__(self, cursor_ptr, avail_ptr, dep_ptrs, mask, shift, strategy, futex_ptr,
                 reaper, claim_timeout_ns):
        deps = ffi.new("int64_t *[]", list(dep_ptrs) or [ffi.NULL])
        c = ffi.new("rm_barrier_t *")
        c.cursor = cursor_ptr
        c.avail = avail_ptr if avail_ptr is not None else ffi.NULL
        c.deps = deps
        c.ndeps = len(dep_ptrs)
        c.mask = mask
        c.shift = shift
        self._c = c
        self._keep = deps
        self._strategy = strategy
        self._futex = futex_ptr
        self._cursor = cursor_ptr
        # only a barrier that reads the producers' slots directly can see a dead claim
        self._reaper = reaper if not dep_ptrs else None
        self._claim_timeout_ns = claim_timeout_ns
        # a barrier with a reaper re-checks for a dead claim every claim_timeout / 4 (at
        # most 100 ms); one without never needs to: its waits end on a wake-up, the
        # deadline or the strategy's own slice (250 ms), not on a 100 ms idle wake-up
        self._check_ns = (max(1000000, min(claim_timeout_ns // 4, 100000000))
                          if self._reaper is not None else 1 << 62)

    @property
    def c_barrier(self):
        return self._c

    def available(self, seq):
        """Highest seq readable now (``seq - 1`` if none).  Never blocks."""
        return lib.rm_barrier_available(self._c, seq)

    def wait_for(self, seq, timeout_ns=None):
        """Highest readable seq, waiting until ``>= seq`` or ``timeout_ns`` passes (-> ``< seq``)."""
        c = self._c
        a = lib.rm_barrier_available(c, seq)
        if a >= seq:
            return a
        strategy = self._strategy
        now = _monotonic_ns()
        deadline = None if timeout_ns is None else now + timeout_ns
        stalled_since = None
        while True:
            slice_deadline = now + self._check_ns
            if deadline is not None and deadline < slice_deadline:
                slice_deadline = deadline
            a = strategy.wait_for(c, seq, self._futex, slice_deadline)
            if a >= seq:
                return a
            now = _monotonic_ns()
            if self._reaper is not None and lib.rm_load_acquire(self._cursor) >= seq:
                if stalled_since is None:
                    stalled_since = now
                elif now - stalled_since >= self._claim_timeout_ns:
                    if self._reaper.recover(seq):
                        stalled_since = None
                        continue
            else:
                stalled_since = None
            if deadline is not None and now >= deadline:
                return lib.rm_barrier_available(c, seq)
