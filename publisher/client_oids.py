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
   letter case are one UUID.  After a publisher restart the text of orders
   placed before is not known: they show the integer (rule 1 still finds
   them by their UUID).
4. Two UUIDs of one account mapping to one integer (probability about
   n^2 / 2^64 for n UUIDs) are refused (``ClientOidCollision``): the second
   never passes as a retry of the first.
"""
import hashlib
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
    """The publisher's side of rules 1-4.  ``parse`` O(1); memory O(capacity)."""

    def __init__(self, capacity=262144):
        self.capacity = int(capacity)
        self.texts = OrderedDict()        # (account_id, int) -> (normalized uuid, text as sent)

    def __len__(self):
        return len(self.texts)

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
        self.texts[key] = (norm, text)
        if len(self.texts) > self.capacity:
            self.texts.popitem(last=False)
        return value

    def text(self, account_id, value):
        """What to show as the order's ``client_oid`` (None when it has none)."""
        if not value:
            return None
        known = self.texts.get((account_id, value))
        return known[1] if known is not None else str(value)
