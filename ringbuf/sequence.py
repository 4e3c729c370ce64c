"""Sequence: a 64-bit counter in shared memory, alone on its cache line.

All reads are acquire loads and all writes release stores (C11 ``__atomic``
through cffi), so a consumer that reads a sequence sees every record write
that happened before the store that published it.
"""
from ._native import ffi, lib

__all__ = ["Sequence", "INITIAL"]

#: value of a sequence before anything is published/consumed
INITIAL = 0


class Sequence(object):
    """A view of one shared int64 sequence.

    O(1) per operation.

    >>> s = Sequence(ffi.new("int64_t *"))
    >>> s.set(5); s.get()
    5
    """

    __slots__ = ("_ptr", "_keep")

    def __init__(self, ptr, keep=None):
        self._ptr = ptr
        self._keep = keep

    @property
    def pointer(self):
        """The ``int64_t *`` (for the C helpers)."""
        return self._ptr

    def get(self):
        """Acquire load; pairs with the release store in ``set``."""
        return lib.rm_load_acquire(self._ptr)

    def set(self, value):
        """Release store; pairs with the acquire load in ``get``."""
        lib.rm_store_release(self._ptr, value)

    def compare_and_set(self, expected, value):
        """CAS (acq_rel); True when the sequence held ``expected`` and now holds ``value``."""
        return bool(lib.rm_cas(self._ptr, expected, value))

    def add_and_get(self, delta):
        """Atomic fetch-add (acq_rel); returns the new value."""
        return lib.rm_fetch_add(self._ptr, delta) + delta

    def __repr__(self):
        return "Sequence(%d)" % self.get()


def sequence_array(sequences):
    """A C ``int64_t *[]`` of the given Sequences (kept alive by the caller)."""
    return ffi.new("int64_t *[]", [s.pointer for s in sequences] or [ffi.NULL])
