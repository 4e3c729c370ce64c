"""One small exception hierarchy for the journal, snapshots and recovery.

Exceptions here mean I/O failures, corrupt files or broken invariants between
the journal and the ring -- never bad business input.
"""
__all__ = [
    "JournalError", "JournalIOError", "JournalSequenceError", "JournalGapError",
    "JournalOverlapError", "JournalSchemaError", "JournalFormatError", "JournalCorruptError",
    "SnapshotError", "SnapshotStaleError",
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


class JournalCorruptError(JournalError):
    """Damage that is not a torn tail: start-up stops and no file is changed.

    Raised by recovery (``reader.assess_journal``, ``recover_journal``,
    ``recovery.durable_sequence``) for a CRC mismatch or bad block followed by
    more data, a bad header of a non-last segment, a gap or overlap between
    segments.  Fields: ``path`` (segment file), ``offset`` (byte offset of the
    damage), ``reason`` (short word), ``detail``, ``valid_through`` (last seq
    of the valid prefix), ``first_lost_seq`` / ``last_lost_seq`` (the records a
    cut at the damage would discard; ``last_lost_seq`` is the highest seq of any
    intact block after it, at least ``first_lost_seq``), ``records_after``
    (intact records found after the damage).
    """

    def __init__(self, message, path=None, offset=None, reason=None, detail=None,
                 valid_through=None, first_lost_seq=None, last_lost_seq=None,
                 records_after=None):
        JournalError.__init__(self, message)
        self.path = path
        self.offset = offset
        self.reason = reason
        self.detail = detail
        self.valid_through = valid_through
        self.first_lost_seq = first_lost_seq
        self.last_lost_seq = last_lost_seq
        self.records_after = records_after

    def fields(self):
        """The log fields of the one ``fatal`` line (``engine.log`` key=value)."""
        return {"file": self.path, "offset": self.offset, "damage": self.reason,
                "detail": self.detail, "valid_through": self.valid_through,
                "first_lost_seq": self.first_lost_seq, "last_lost_seq": self.last_lost_seq,
                "records_after": self.records_after}


class SnapshotError(JournalError):
    """A snapshot file is missing, corrupt, or does not restore to its state hash."""


class SnapshotStaleError(SnapshotError):
    """A readable snapshot that is not bound to this journal: never restored.

    ``reason``: ``beyond_journal_end`` (its seq is past the journal's durable
    end), ``binding_mismatch`` (the journal's records ending at its seq are not
    the ones it summarised), ``journal_missing`` (the journal no longer holds
    them), ``unbound_v1`` (format version 1 carries no binding).
    ``snapshot_digest`` / ``journal_digest``: ``count:crc32c`` of the binding
    in the file and in the journal (``-`` when there is none).
    """

    def __init__(self, message, reason=None, snapshot_digest="-", journal_digest="-"):
        SnapshotError.__init__(self, message)
        self.reason = reason
        self.snapshot_digest = snapshot_digest
        self.journal_digest = journal_digest
