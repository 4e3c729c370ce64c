"""The one module that imports the compiled cffi extension (``ffi``, ``lib``).

Everything else reaches C through the names re-exported here, so there is a
single place that knows how a Python buffer becomes a C pointer.
"""
from ._ringbuf_cffi import ffi, lib

__all__ = ["ffi", "lib", "address_of", "int64_at", "int32_at", "NULL"]

NULL = ffi.NULL


def address_of(buffer):
    """Return a ``char *`` into a writable buffer (an mmap); keeps the buffer exported.

    Release it with ``ffi.release(ptr)`` before closing the mmap.
    """
    return ffi.from_buffer("char[]", buffer, require_writable=True)


def int64_at(base, offset):
    """``int64_t *`` at byte ``offset`` of the ``char *`` base (8-byte aligned)."""
    if offset % 8:
        raise ValueError("int64 at unaligned offset %d" % offset)
    return ffi.cast("int64_t *", base + offset)


def int32_at(base, offset):
    """``int32_t *`` at byte ``offset`` of the ``char *`` base (4-byte aligned)."""
    if offset % 4:
        raise ValueError("int32 at unaligned offset %d" % offset)
    return ffi.cast("int32_t *", base + offset)
