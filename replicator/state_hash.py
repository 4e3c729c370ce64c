"""Compare the primary's in-band state hashes with the standby's at the same sequence.

The primary's replicator sends STATE_HASH(seq, h) frames (protocol rule 2);
the standby's matcher, which applies the same commands, reports its own hash
at the same sequence (the matcher answers a STATE_HASH command with an
``EventKind.STATE_HASH`` event whose ``aux`` is the state hash's low 63 bits).
When both sides have a value for a sequence they are compared; a mismatch is a
divergence: logged as an ERROR line and counted, and ``on_divergence`` (if
given) is called -- the standby is then not a faithful copy and must not be
promoted without an operator looking at it.
"""
import threading

__all__ = ["StateHashMonitor", "HASH_MASK"]

#: events carry the low 63 bits of the 64-bit state hash (aux is a signed int64)
HASH_MASK = (1 << 63) - 1


class StateHashMonitor(object):
    """Pair up (seq, hash) reports from the two sides.  O(1) per report.

    >>> m = StateHashMonitor()
    >>> m.add_primary(10, 5); m.add_local(10, 5); m.matched
    1
    >>> m.add_primary(20, 5); m.add_local(20, 6); m.divergences
    [(20, 5, 6)]
    """

    def __init__(self, log=None, on_divergence=None, keep=4096):
        self.log = log
        self.on_divergence = on_divergence
        self.keep = keep
        self.primary = {}
        self.local = {}
        self.matched = 0
        self.last_matched_seq = 0
        self.divergences = []
        self._lock = threading.Lock()

    def add_primary(self, seq, value):
        self._add(self.primary, self.local, seq, value, True)

    def add_local(self, seq, value):
        self._add(self.local, self.primary, seq, value, False)

    def _add(self, mine, theirs, seq, value, from_primary):
        value &= HASH_MASK
        with self._lock:
            other = theirs.pop(seq, None)
            if other is None:
                mine[seq] = value
                if len(mine) > self.keep:
                    for old in sorted(mine)[:len(mine) - self.keep]:
                        del mine[old]
                return
        primary, local = (value, other) if from_primary else (other, value)
        if primary == local:
            self.matched += 1
            self.last_matched_seq = max(self.last_matched_seq, seq)
            return
        self.divergences.append((seq, primary, local))
        if self.log is not None:
            self.log.error("state_hash_divergence", seq=seq, primary="%016x" % primary,
                           standby="%016x" % local,
                           alarm="STANDBY DIVERGED: do not promote without investigation")
        if self.on_divergence is not None:
            self.on_divergence(seq, primary, local)
