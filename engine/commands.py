"""Command: a plain Python object with every command-record field (default 0).

The matcher reads commands by attribute, so a :class:`Command`, a cffi
``rm_command_t*`` from the ring, or anything else with the same attribute names
can be passed to ``Matcher.process``.  The record's union slot (offset 32) has
three names; a :class:`Command` keeps them as three attributes and the matcher
reads the one that applies to the command kind (``funds`` for a BY_FUNDS market
buy, ``expire_ns`` for a GTT order, ``order_id`` for CANCEL/AMEND).
:meth:`Command.pack` writes whichever of them is non-zero.

Example::

    >>> from engine.commands import Command
    >>> c = Command.limit(account_id=7, symbol_id=1, side=BUY, price=100, qty=5)
    >>> Command.unpack(c.pack()).price
    100
"""
from ringbuf.records import (COMMAND_SLOTS, CommandKind, OrderFlags, OrderType, Side,
                             StpMode, SUPERVISOR_PRODUCER_ID, TimeInForce, command_struct)

__all__ = ["Command", "COMMAND_ATTRS"]

BUY = int(Side.BUY)
SELL = int(Side.SELL)

#: every attribute of a Command (record slots plus the union aliases)
COMMAND_ATTRS = ("kind", "side", "order_type", "tif", "stp", "flags", "symbol_id",
                 "account_id", "producer_id", "check", "price", "qty", "funds", "expire_ns",
                 "order_id", "stop_price", "timestamp_ns", "client_order_id")

_UNION = ("funds", "expire_ns", "order_id")


class Command(object):
    """One input command; every field defaults to 0.  O(1) to build."""

    __slots__ = COMMAND_ATTRS

    def __init__(self, kind=0, side=0, order_type=0, tif=0, stp=0, flags=0, symbol_id=0,
                 account_id=0, producer_id=0, check=0, price=0, qty=0, funds=0, expire_ns=0,
                 order_id=0, stop_price=0, timestamp_ns=0, client_order_id=0):
        # plain ints (not IntEnum members): cheaper to compare on the hot path
        self.kind = int(kind)
        self.side = int(side)
        self.order_type = int(order_type)
        self.tif = int(tif)
        self.stp = int(stp)
        self.flags = int(flags)
        self.symbol_id = symbol_id
        self.account_id = account_id
        self.producer_id = producer_id
        self.check = check
        self.price = price
        self.qty = qty
        self.funds = funds
        self.expire_ns = expire_ns
        self.order_id = order_id
        self.stop_price = stop_price
        self.timestamp_ns = timestamp_ns
        self.client_order_id = client_order_id

    # -- friendly constructors ------------------------------------------------
    @classmethod
    def limit(cls, account_id, symbol_id, side, price, qty, tif=TimeInForce.GTC, expire_ns=0,
              post_only=False, reprice=False, stp=StpMode.DECREMENT_AND_CANCEL,
              client_order_id=0, timestamp_ns=0, producer_id=0):
        """A limit order (GTC by default; GTT needs ``expire_ns``)."""
        flags = 0
        if post_only:
            flags |= OrderFlags.POST_ONLY
        if reprice:
            flags |= OrderFlags.POST_ONLY_REPRICE
        return cls(CommandKind.NEW_ORDER, int(side), OrderType.LIMIT, int(tif), int(stp),
                   int(flags), symbol_id, account_id, producer_id, 0, price, qty, 0, expire_ns,
                   0, 0, timestamp_ns, client_order_id)

    @classmethod
    def market(cls, account_id, symbol_id, side, qty=0, funds=0, tif=TimeInForce.IOC,
               stp=StpMode.DECREMENT_AND_CANCEL, client_order_id=0, timestamp_ns=0,
               producer_id=0):
        """A market order by size (``qty`` lots) or, for a buy, by quote ``funds``."""
        flags = int(OrderFlags.BY_FUNDS) if funds else 0
        return cls(CommandKind.NEW_ORDER, int(side), OrderType.MARKET, int(tif), int(stp),
                   flags, symbol_id, account_id, producer_id, 0, 0, qty, funds, 0, 0, 0,
                   timestamp_ns, client_order_id)

    @classmethod
    def stop(cls, account_id, symbol_id, side, order_type, stop_price, qty=0, price=0, funds=0,
             tif=TimeInForce.GTC, expire_ns=0, stp=StpMode.DECREMENT_AND_CANCEL,
             client_order_id=0, timestamp_ns=0, producer_id=0):
        """A stop-loss / stop-limit / take-profit / take-profit-limit order."""
        flags = int(OrderFlags.BY_FUNDS) if funds else 0
        return cls(CommandKind.NEW_ORDER, int(side), int(order_type), int(tif), int(stp),
                   flags, symbol_id, account_id, producer_id, 0, price, qty, funds, expire_ns, 0,
                   stop_price, timestamp_ns, client_order_id)

    @classmethod
    def cancel(cls, account_id, order_id=0, client_order_id=0, timestamp_ns=0, producer_id=0,
               symbol_id=0):
        """Cancel by order id, or by client order id when ``client_order_id`` is given."""
        flags = int(OrderFlags.BY_CLIENT_ID) if client_order_id else 0
        return cls(CommandKind.CANCEL, flags=flags, symbol_id=symbol_id, account_id=account_id,
                   producer_id=producer_id, order_id=order_id, timestamp_ns=timestamp_ns,
                   client_order_id=client_order_id)

    @classmethod
    def amend(cls, account_id, order_id=0, price=0, qty=0, client_order_id=0, timestamp_ns=0,
              producer_id=0, symbol_id=0):
        """Amend price (0 = keep) and/or total qty (0 = keep)."""
        flags = int(OrderFlags.BY_CLIENT_ID) if client_order_id else 0
        return cls(CommandKind.AMEND, flags=flags, symbol_id=symbol_id, account_id=account_id,
                   producer_id=producer_id, price=price, qty=qty, order_id=order_id,
                   timestamp_ns=timestamp_ns, client_order_id=client_order_id)

    @classmethod
    def mass_cancel(cls, account_id, symbol_id=0, timestamp_ns=0, producer_id=0):
        """Cancel every live order (and stop) of the account; symbol 0 = all symbols."""
        return cls(CommandKind.MASS_CANCEL, symbol_id=symbol_id, account_id=account_id,
                   producer_id=producer_id, timestamp_ns=timestamp_ns)

    @classmethod
    def deposit(cls, account_id, asset_id, amount, timestamp_ns=0, producer_id=0):
        return cls(CommandKind.DEPOSIT, symbol_id=asset_id, account_id=account_id, qty=amount,
                   timestamp_ns=timestamp_ns, producer_id=producer_id)

    @classmethod
    def withdraw(cls, account_id, asset_id, amount, timestamp_ns=0, producer_id=0):
        return cls(CommandKind.WITHDRAW, symbol_id=asset_id, account_id=account_id, qty=amount,
                   timestamp_ns=timestamp_ns, producer_id=producer_id)

    @classmethod
    def halt(cls, symbol_id, timestamp_ns=0, producer_id=0):
        return cls(CommandKind.HALT, symbol_id=symbol_id, timestamp_ns=timestamp_ns,
                   producer_id=producer_id)

    @classmethod
    def resume(cls, symbol_id, timestamp_ns=0, producer_id=0):
        return cls(CommandKind.RESUME, symbol_id=symbol_id, timestamp_ns=timestamp_ns,
                   producer_id=producer_id)

    @classmethod
    def snapshot(cls, timestamp_ns=0, producer_id=0):
        return cls(CommandKind.SNAPSHOT, timestamp_ns=timestamp_ns, producer_id=producer_id)

    @classmethod
    def state_hash(cls, timestamp_ns=0, producer_id=0):
        return cls(CommandKind.STATE_HASH, timestamp_ns=timestamp_ns, producer_id=producer_id)

    @classmethod
    def clock(cls, timestamp_ns, producer_id=SUPERVISOR_PRODUCER_ID):
        """A trusted clock tick (matcher rule M9; only a privileged producer's counts)."""
        return cls(CommandKind.CLOCK, timestamp_ns=timestamp_ns, producer_id=producer_id)

    # -- record bytes -----------------------------------------------------------
    def as_tuple(self):
        """Field values in record slot order (union slot: the first non-zero alias)."""
        union = self.funds or self.expire_ns or self.order_id
        out = []
        for name in COMMAND_SLOTS:
            out.append(union if name == "funds" else int(getattr(self, name)))
        return tuple(out)

    def pack(self):
        """The 64-byte record (raises struct.error if a value does not fit its slot)."""
        return command_struct.pack(*self.as_tuple())

    @classmethod
    def unpack(cls, data, offset=0):
        """Command from a 64-byte record; the union value is set on all three aliases."""
        values = command_struct.unpack_from(data, offset)
        cmd = cls()
        for name, value in zip(COMMAND_SLOTS, values):
            setattr(cmd, name, value)
        cmd.expire_ns = cmd.order_id = cmd.funds
        return cmd

    @classmethod
    def from_record(cls, rec):
        """Copy any object with the command attributes (e.g. a cffi pointer)."""
        cmd = cls()
        for name in COMMAND_ATTRS:
            setattr(cmd, name, getattr(rec, name))
        return cmd

    def __eq__(self, other):
        return isinstance(other, Command) and all(
            getattr(self, n) == getattr(other, n) for n in COMMAND_ATTRS)

    def __ne__(self, other):
        return not self == other

    __hash__ = None

    def __repr__(self):
        parts = ["%s=%r" % (n, getattr(self, n)) for n in COMMAND_ATTRS if getattr(self, n)]
        return "Command(%s)" % ", ".join(parts)
