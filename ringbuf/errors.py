"""One small exception hierarchy for the ring, and one function that turns a
C return code or an OS error into an exception from it.

Exceptions mean bugs, misconfiguration or OS failures; a full ring or an
empty poll are values (``None``), never exceptions.
"""
import errno
import os

__all__ = [
    "RingError", "RingMismatchError", "RingExistsError", "RingNotFoundError",
    "RingClosedError", "RingConfigError", "RingOSError", "raise_for",
]


class RingError(Exception):
    """Base class of every error raised by ``ringbuf``."""


class RingConfigError(RingError, ValueError):
    """A ring parameter is invalid (capacity not a power of two, unknown consumer...)."""


class RingMismatchError(RingError):
    """Attach found a segment whose header differs from what the caller expects.

    ``field`` names what differs, ``found`` / ``expected`` hold both values.
    """

    def __init__(self, name, field, found, expected):
        self.name, self.field, self.found, self.expected = name, field, found, expected
        super().__init__("ring %r: %s differs: segment has %s, expected %s"
                         % (name, field, _fmt(found), _fmt(expected)))


def _fmt(value):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFFFF:
        return "0x%x" % value
    return repr(value)


class RingExistsError(RingError, FileExistsError):
    """``Ring.create`` found a segment of that name already."""


class RingNotFoundError(RingError, FileNotFoundError):
    """``Ring.attach`` found no segment of that name."""


class RingClosedError(RingError):
    """The ring (or the producer/consumer) was closed."""


class RingOSError(RingError, OSError):
    """A system call made for the ring failed."""


def raise_for(code, what, name=None):
    """Turn a C return code (``-errno``) or an ``OSError`` into a ring exception.

    Return codes ``>= 0`` are success and are returned unchanged, so callers
    can write ``n = raise_for(lib.rm_futex_wake(p, 1), "futex wake")``.

    O(1).  Raises RingExistsError, RingNotFoundError or RingOSError.

    >>> raise_for(0, "futex wait")
    0
    """
    if isinstance(code, OSError):
        err = code.errno
        detail = code.strerror or str(code)
    else:
        if code >= 0:
            return code
        err = -code
        detail = os.strerror(err)
    label = "%s %r" % (what, name) if name is not None else what
    if err == errno.EEXIST:
        raise RingExistsError(err, "%s: already exists" % label)
    if err == errno.ENOENT:
        raise RingNotFoundError(err, "%s: no such ring" % label)
    raise RingOSError(err, "%s: %s" % (label, detail))
