"""ClaimReaper: fills the slots of a producer that died between claim and publish.

Theory of operation (the dead-producer rule; also in docs/ring.md)
------------------------------------------------------------------
1. Every producer of a multi-producer ring owns one entry of the producer
   table: pid, process start time (``/proc/PID/stat`` field 22, so a reused
   pid is not mistaken for the original), producer id, and its claim intent
   ``[lo, hi]``, written *before* the CAS that claims those slots and cleared
   after they are published.  Hence every claimed-but-unpublished slot is
   covered by its claimant's entry.
2. A consumer waiting for seq ``s`` with ``s <= cursor`` (claimed) that stays
   unpublished for the ring's ``claim_timeout`` calls ``recover(s)``.
3. ``recover`` takes the reaper lock (a CAS of its pid into the segment; a lock
   held by a dead pid is taken over), then for every unpublished seq in
   ``[s, cursor]``: if a *live* producer's entry covers it, it is left alone;
   otherwise the dead producer whose entry covers it is its owner, and the
   slot is overwritten with a NOP record (``kind = NOP``,
   ``producer_id`` = the dead producer's id, ``order_id`` = its pid) and
   published.  Entries of dead producers whose ranges are now published are
   freed.
4. A live but stopped producer (SIGSTOP, a debugger) is never reaped: pid
   liveness, not the timeout alone, decides.
"""
import os

from ._native import ffi, lib
from .header import (MAX_PRODUCERS, P_CLAIM_NS, P_FREE, P_HI, P_ID, P_LO, P_PID, P_START,
                     P_STATE, RECORD_TYPES)

__all__ = ["ClaimReaper", "process_start_time", "process_alive"]


def process_start_time(pid):
    """Start time of ``pid`` in clock ticks since boot, or 0 if unknown."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return 0
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


def process_alive(pid, start_time=0):
    """True when ``pid`` runs (not a zombie) and, if known, started at ``start_time``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return True  # no /proc view of it: trust kill()
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return False
    return not start_time or int(rest[19]) == start_time


class ClaimReaper(object):
    """Recovers orphaned claims of dead producers on a multi-producer ring (rules 1-4)."""

    def __init__(self, ring):
        self._ring = ring

    def _entries(self):
        table = self._ring._producer_table
        out = []
        for i in range(MAX_PRODUCERS):
            e = table[i]
            load = lib.rm_load_acquire
            pid = load(e + P_PID)
            if pid == 0:
                continue
            out.append((i, e, pid, load(e + P_START), load(e + P_ID), load(e + P_STATE),
                        load(e + P_LO), load(e + P_HI), load(e + P_CLAIM_NS)))
        return out

    def recover(self, seq):
        """Publish NOP records for orphaned slots from ``seq`` on; returns how many.

        O(producers + cursor - seq).  Returns 0 when another live process holds
        the reaper lock or nothing is orphaned.
        """
        ring = self._ring
        lock = ring._reaper_lock
        me = os.getpid()
        holder = lib.rm_load_acquire(lock)
        if holder != 0 and holder != me:
            if process_alive(holder) or not lib.rm_cas(lock, holder, me):
                return 0
        elif holder == 0 and not lib.rm_cas(lock, 0, me):
            return 0
        try:
            return self._recover_locked(seq)
        finally:
            lib.rm_store_release(lock, 0)

    def _recover_locked(self, seq):
        ring = self._ring
        avail, mask, shift = ring._avail, ring._layout.mask, ring._layout.shift
        cursor = lib.rm_load_acquire(ring._cursor)
        live, dead = [], []
        for entry in self._entries():
            (live if process_alive(entry[2], entry[3]) else dead).append(entry)
        recovered = 0
        s = seq
        while s <= cursor:
            s = lib.rm_highest_published(avail, mask, shift, s, cursor) + 1
            if s > cursor:
                break
            if any(e[6] <= s <= e[7] for e in live):
                s += 1
                continue
            owners = [e for e in dead if e[6] <= s <= e[7]]
            if not owners:
                s += 1
                continue
            owner = max(owners, key=lambda e: e[8])
            self._write_nop(s, owner[4], owner[2])
            lib.rm_publish_mp(avail, mask, shift, s, s, ffi.NULL, ring._futex, 1)
            recovered += 1
            s += 1
        for e in dead:
            lo, hi = e[6], e[7]
            if lo > hi or lib.rm_highest_published(avail, mask, shift, lo, hi) >= hi:
                ptr = e[1]
                lib.rm_store_release(ptr + P_STATE, P_FREE)
                lib.rm_store_release(ptr + P_LO, 1)
                lib.rm_store_release(ptr + P_HI, 0)
                lib.rm_store_release(ptr + P_PID, 0)
        if recovered:
            lib.rm_fetch_add(ring._reaper_lock + 1, recovered)
        return recovered

    def _write_nop(self, seq, producer_id, pid):
        ring = self._ring
        layout = ring._layout
        slot = ring._data + (seq & layout.mask) * layout.record_size
        ffi.memmove(slot, b"\0" * layout.record_size, layout.record_size)
        ctype = RECORD_TYPES[ring.header.record_kind]
        if ctype is not None:
            rec = ffi.cast(ctype + " *", slot)
            rec.kind = 0
            rec.producer_id = producer_id & 0xFFFF
            rec.order_id = pid
