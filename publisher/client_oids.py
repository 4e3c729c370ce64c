"""``client_oid`` as Coinbase sends it (a UUID) onto the record's 64-bit ``client_order_id``.

Theory of operation (numbered rules; the code refers to them):

1. The command record (docs/records.md) has a u64 ``client_order_id``; a
   UUID has 128 bits and cannot fit, and the record layout does not change.
   So a UUID maps deterministically to ``(1 << 63) | first 63 bits of
   SHA-256(uuid bytes)``: the same UUID always gives the same integer, so
   the matcher's duplicate check and the publisher's idempotent retries
   (app.py rule 8) work on UUIDs unchanged, also after a restart.
2. An integer ``client_oid`` (ASCII digits, 1..2^64-1) is used as it is.
3. The publisher remembers (account, integer) -> the UUID text as the client
   first sent it, for the newest ``capacity`` UUIDs, and answers with that
   text wherever the order shows its ``client_oid``.  UUIDs differing only in
   letter case are one UUID.
4b. With a ``path`` (``<data>/run/<shard>.client_oids``, 0600) each new UUID
   is appended as a line ``<account> <uuid>`` (flushed, not fsynced) and the
   file is read back at start, so a restarted publisher still answers with
   the UUIDs; a line that does not parse (a torn tail) is skipped, and the
   integer is recomputed from the UUID, never read.  The file is rewritten
   with the newest ``capacity`` entries when it holds twice as many lines.
   A UUID whose line was lost (a crash before the flush reached the kernel,
   or a file that cannot be written) shows its integer after a restart;
   rule 1 still finds the order by its UUID.
4. Two UUIDs of one account mapping to one integer (probability about
   n^2 / 2^64 for n UUIDs) are refused (``ClientOidCollision``) while the
   first is among the ``capacity`` UUIDs remembered: the second never passes
   as a retry of the first.
"""
import hashlib
import os
import re
import uuid
from collections import OrderedDict

__all__ = ["ClientOids", "ClientOidCollision", "uuid_to_int", "UUID_RE"]

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}\Z")
_DIGITS_RE = re.compile(r"[0-9]{1,20}\Z")
_MAX_U64 = (1 << 64) - 1
_TOP = 1 << 63


class ClientOidCollision(ValueError):
    """Rule 4: this UUID maps to the integer of another UUID of the same account."""


def uuid_to_int(text):
    """Rule 1: the u64 a UUID maps to (top bit set).  O(1).

    >>> uuid_to_int("7E0C5A3C-1F0B-4B54-9E7E-3A2C6E2D8F10") == uuid_to_int("7e0c5a3c-1f0b-4b54-9e7e-3a2c6e2d8f10")
    True
    >>> uuid_to_int("7e0c5a3c-1f0b-4b54-9e7e-3a2c6e2d8f10") >= 1 << 63
    True
    """
    digest = hashlib.sha256(uuid.UUID(text).bytes).digest()
    return _TOP | (int.from_bytes(digest[:8], "big") & (_TOP - 1))


class ClientOids(object):
    """The publisher's side of rules 1-4b.  ``parse`` O(1); memory O(capacity)."""

    def __init__(self, capacity=262144, path=None):
        self.capacity = int(capacity)
        self.texts = OrderedDict()        # (account_id, int) -> (normalized uuid, text as sent)
        self.path = path
        self.fd = None
        self.lines = 0
        if path is not None:
            self._load()
            self._open()

    def __len__(self):
        return len(self.texts)

    # ------------------------------------------------------------ rule 4b
    def _load(self):
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except OSError:
            return
        end = raw.rfind(b"\n") + 1
        if end < len(raw):                        # rule 4b: a torn tail, cut off
            try:
                os.truncate(self.path, end)
            except OSError:
                self.path = None                  # appending would join it: memory only
        for line in raw[:end].decode("ascii", "replace").splitlines():
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit() or not UUID_RE.match(parts[1]):
                continue                                          # a foreign line
            self._remember((int(parts[0]), uuid_to_int(parts[1])), parts[1])
            self.lines += 1

    def _open(self):
        if self.path is None:
            return
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                              0o600)
        except OSError:
            self.fd = None                # no run dir (a bare publisher): memory only
            return
        try:
            os.fchmod(self.fd, 0o600)     # a file made by an older version, or by hand
        except OSError:
            pass

    def _append(self, account_id, text):
        if self.fd is None:
            return
        try:
            os.write(self.fd, ("%d %s\n" % (account_id, text)).encode("ascii"))
            self.lines += 1
            if self.lines > 2 * self.capacity:
                self._compact()
        except OSError:
            self.close()

    def _compact(self):
        from publisher.key_file import write_private
        data = "".join("%d %s\n" % (key[0], entry[1]) for key, entry in self.texts.items())
        write_private(self.path, data.encode("ascii"))                  # rule 4b
        os.close(self.fd)
        self.fd = None
        self.lines = len(self.texts)
        self._open()

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _remember(self, key, text):
        self.texts[key] = (text.lower(), text)
        self.texts.move_to_end(key)
        if len(self.texts) > self.capacity:
            self.texts.popitem(last=False)

    @staticmethod
    def parse(text):
        """``client_oid`` text -> (integer, is_uuid); ValueError with a reason when neither."""
        if not isinstance(text, str):
            raise ValueError("not a string")
        if _DIGITS_RE.match(text):
            value = int(text)
            if not 0 < value <= _MAX_U64:
                raise ValueError("out of range (1..2^64-1)")
            return value, False
        if UUID_RE.match(text):
            return uuid_to_int(text), True
        raise ValueError("neither a UUID nor an integer 1..2^64-1")

    def bind(self, account_id, text):
        """Rules 1, 3, 4: the integer of ``text`` for ``account_id``, remembering a UUID's text.

        Raises ValueError (not a client_oid) or ClientOidCollision.
        """
        value, is_uuid = self.parse(text)
        if not is_uuid:
            return value
        key = (account_id, value)
        norm = text.lower()
        known = self.texts.get(key)
        if known is not None:
            if known[0] != norm:
                raise ClientOidCollision("client_oid %s maps to the same 64-bit id as another "
                                         "UUID of this account; use another UUID" % text)
            self.texts.move_to_end(key)
            return value
        self._remember(key, text)
        self._append(account_id, text)
        return value

    def text(self, account_id, value):
        """What to show as the order's ``client_oid`` (None when it has none)."""
        if not value:
            return None
        known = self.texts.get((account_id, value))
        return known[1] if known is not None else str(value)
