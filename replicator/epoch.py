"""The epoch store: a small fsynced file saying which epoch and role this node has.

Theory of operation:

1. ``<data dir>/replication/<shard>.epoch`` holds one JSON object
   ``{"epoch": int, "role": "primary"|"standby"|"fenced", "fenced_by": int,
   "updated_ns": int}``.  A missing file is epoch 1, role ``primary`` (a fresh
   engine with no replication history).
2. Writes go to a temp file, which is fsynced, renamed over the old one, and the
   directory is fsynced: after ``save`` returns, a crash leaves either the old
   or the new state, never a torn one.
3. The epoch never decreases: ``save`` refuses a lower epoch
   (``EpochRegressionError``).  Promotion is ``promote()``: epoch + 1, role
   ``primary``, persisted *before* the node opens to producers.
4. A primary that learns of a higher epoch calls ``fence(higher)``: the role
   becomes ``fenced``; ``check_may_be_primary`` then refuses to start it as a
   primary (``FencedError``) until an operator re-seeds it as a standby.
"""
import json
import os
import time

__all__ = ["EpochState", "EpochStore", "EpochRegressionError", "FencedError", "ROLES"]

ROLES = ("primary", "standby", "fenced")


class EpochRegressionError(ValueError):
    """An attempt to store an epoch lower than the one on disk (rule 3)."""


class FencedError(RuntimeError):
    """This node was fenced by a higher epoch and must not act as primary (rule 4)."""


class EpochState(object):
    """One persisted state: epoch, role, the epoch that fenced us (0 = none)."""

    __slots__ = ("epoch", "role", "fenced_by", "updated_ns")

    def __init__(self, epoch=1, role="primary", fenced_by=0, updated_ns=0):
        if role not in ROLES:
            raise ValueError("role %r is not one of %s" % (role, ROLES))
        if epoch < 1:
            raise ValueError("epoch %r < 1" % (epoch,))
        self.epoch = int(epoch)
        self.role = role
        self.fenced_by = int(fenced_by)
        self.updated_ns = int(updated_ns)

    def as_dict(self):
        return {"epoch": self.epoch, "role": self.role, "fenced_by": self.fenced_by,
                "updated_ns": self.updated_ns}

    def __repr__(self):
        return "EpochState(epoch=%d, role=%s, fenced_by=%d)" % (self.epoch, self.role,
                                                                 self.fenced_by)


class EpochStore(object):
    """Load and durably save the epoch state of one shard (rules 1-4).

    Each operation is O(1) plus two fsyncs for a save.

    >>> import tempfile
    >>> store = EpochStore(tempfile.mkdtemp(), "shard0")
    >>> store.load().epoch
    1
    >>> store.promote().epoch
    2
    """

    def __init__(self, data_dir, shard):
        self.directory = os.path.join(os.path.abspath(data_dir), "replication")
        self.path = os.path.join(self.directory, "%s.epoch" % shard)
        self.shard = shard

    def exists(self):
        return os.path.exists(self.path)

    def load(self):
        """The persisted state, or the default (epoch 1, primary) when there is none.

        Raises ValueError when the file exists but is unreadable (never guessed).
        """
        try:
            with open(self.path) as f:
                raw = json.load(f)
        except FileNotFoundError:
            return EpochState()
        except ValueError as exc:
            raise ValueError("epoch file %s is corrupt: %s" % (self.path, exc))
        return EpochState(raw["epoch"], raw["role"], raw.get("fenced_by", 0),
                          raw.get("updated_ns", 0))

    def save(self, epoch, role, fenced_by=0):
        """Persist (rule 2); refuse an epoch lower than the stored one (rule 3)."""
        current = self.load()
        if epoch < current.epoch:
            raise EpochRegressionError("epoch %d < stored epoch %d in %s"
                                       % (epoch, current.epoch, self.path))
        state = EpochState(epoch, role, fenced_by, time.time_ns())
        os.makedirs(self.directory, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state.as_dict(), f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return state

    def promote(self):
        """Epoch + 1, role primary, persisted (rule 3).  Returns the new state."""
        current = self.load()
        return self.save(current.epoch + 1, "primary")

    def become_standby(self, epoch=None):
        """Role standby at ``epoch`` (default: the stored one; never lower)."""
        current = self.load()
        return self.save(max(current.epoch, epoch or current.epoch), "standby")

    def fence(self, higher_epoch):
        """Record that ``higher_epoch`` superseded us: role fenced (rule 4)."""
        current = self.load()
        return self.save(max(current.epoch, higher_epoch), "fenced", fenced_by=higher_epoch)

    def check_may_be_primary(self):
        """Raise FencedError when this node was fenced or is a standby; else the state."""
        state = self.load()
        if state.role == "fenced":
            raise FencedError(
                "shard %r was fenced by epoch %d (a standby was promoted); this node must "
                "not act as primary -- re-seed it as a standby (%s)"
                % (self.shard, state.fenced_by, self.path))
        if state.role == "standby":
            raise FencedError("shard %r is a standby at epoch %d; run `ringmatch promote` "
                              "to make it primary (%s)" % (self.shard, state.epoch, self.path))
        return state
