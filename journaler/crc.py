"""CRC32C (Castagnoli), the checksum of every journal block and snapshot.

``crc32c(data, value=0) -> int`` continues a running checksum, so a block's
header and its records (1-2 ring chunks) are checksummed without copying.

The ``crc32c`` PyPI package (hardware SSE4.2 / ARMv8 with a C software
fallback) is used when it imports; it builds on CPython and on PyPy.  Without
it a table-driven pure-Python implementation (slicing-by-4) gives the same
values, slowly (a few MB/s on CPython, much faster on PyPy): verification and
replay still work everywhere, only slower.  ``IMPLEMENTATION`` says which one
is in use; the benchmark prints it.
"""
__all__ = ["crc32c", "crc32c_python", "IMPLEMENTATION"]

_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_tables():
    t0 = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        t0.append(c)
    tables = [t0]
    for _ in range(3):
        prev = tables[-1]
        tables.append([(prev[i] >> 8) ^ t0[prev[i] & 0xFF] for i in range(256)])
    return tables


_T0, _T1, _T2, _T3 = _make_tables()


def crc32c_python(data, value=0):
    """Pure-Python CRC32C of ``data`` (bytes-like) continuing ``value``.  O(n).

    >>> hex(crc32c_python(b"123456789"))
    '0xe3069283'
    """
    mv = memoryview(data).cast("B")
    n = len(mv)
    crc = value ^ 0xFFFFFFFF
    t0, t1, t2, t3 = _T0, _T1, _T2, _T3
    i = 0
    end4 = n - (n % 4)
    while i < end4:
        crc ^= mv[i] | (mv[i + 1] << 8) | (mv[i + 2] << 16) | (mv[i + 3] << 24)
        crc = (t3[crc & 0xFF] ^ t2[(crc >> 8) & 0xFF]
               ^ t1[(crc >> 16) & 0xFF] ^ t0[crc >> 24])
        i += 4
    while i < n:
        crc = (crc >> 8) ^ t0[(crc ^ mv[i]) & 0xFF]
        i += 1
    return crc ^ 0xFFFFFFFF


try:
    import crc32c as _crc32c_pkg

    def crc32c(data, value=0):
        """CRC32C of ``data`` continuing ``value`` (the ``crc32c`` package).  O(n).

        >>> hex(crc32c(b"123456789"))
        '0xe3069283'
        """
        return _crc32c_pkg.crc32c(data, value)

    IMPLEMENTATION = "crc32c-package(%s)" % (
        "hardware" if getattr(_crc32c_pkg, "hardware_based", False) else "software")
except ImportError:  # pragma: no cover - depends on the environment
    crc32c = crc32c_python
    IMPLEMENTATION = "pure-python"
