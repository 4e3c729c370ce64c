"""One small exception hierarchy for the journal, snapshots and recovery.

Exceptions here mean I/O failures, corrupt files or broken invariants between
the journal and the ring -- never bad business input.
"""
__all__ = [
    "JournalError", "JournalIOError", "JournalSequenceError", "JournalGapError",
    "JournalOverlapError", "JournalSchemaError", "JournalFormatError", "SnapshotError",
]


class JournalError(Exception):
    """Base class of every journal / snapshot / recovery error."""


class JournalIOError(JournalError):
    """A write, fsync or file creation failed (disk full, EIO, ...).

    Nothing past ``durable_sequence`` is acknowledged; the caller retries from
    the writer's ``next_sequence`` after a back-off.  ``errno`` and ``op`` say
    what failed.
    """

    def __init__(self, message, errno=None, op=None, path=None):
        JournalError.__init__(self, message)
        self.errno = errno
        self.op = op
        self.path = path


class JournalSequenceError(JournalError):
    """An append (or a ring batch) does not continue the journal exactly.

    ``expected`` is the next sequence the journal needs; ``got`` the one offered.
    """

    def __init__(self, message, expected=None, got=None):
        JournalError.__init__(self, message)
        self.expected = expected
        self.got = got


class JournalGapError(JournalSequenceError):
    """Records between the journal's end and the offered sequence are missing."""


class JournalOverlapError(JournalSequenceError):
    """The offered records start at or before a sequence already journaled."""


class JournalSchemaError(JournalError):
    """A segment or snapshot was written with another record schema or size."""


class JournalFormatError(JournalError, ValueError):
    """A segment or block header is not what this reader understands.

    ``path`` and ``offset`` name where; ``reason`` is a short word for logs.
    """

    def __init__(self, message, path=None, offset=None, reason="format"):
        JournalError.__init__(self, message)
        self.path = path
        self.offset = offset
        self.reason = reason


class SnapshotError(JournalError):
    """A snapshot file is missing, corrupt, or does not restore to its state hash."""
