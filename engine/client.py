"""Producer client for colocated processes: place orders, read execution reports.

>>> from engine.client import EngineClient
>>> with EngineClient.attach(data_dir="./var") as c:          # doctest: +SKIP
...     oid = c.place_order("BTC-USD", "buy", qty="0.5", price="30000.00", account=7)
...     report = c.next_report(timeout=1.0)

Theory of operation:

1. Placing: a command is packed into its 64-byte record in one go and written
   to a claimed slot of the input ring, then published.  The order id is the
   sequence of that slot (sequence = identity).  One lock per client makes it
   safe to share between threads; many processes may place at once (the ring
   is multi-producer).
2. Reports: the client follows the output ring *without* a gating sequence, so
   a slow client can never stall the matcher.  Each slot read is validated
   after the copy (the producer cursor must still be within one lap of it);
   if the client fell more than a ring behind it raises ``ReportsLost`` and
   resumes at the oldest slot still in the ring.
3. A report belongs to this client when (a) its ``producer_id`` is the client's,
   (b) its account is one of the client's (the ``account`` given at attach and
   every account named in a command it sent), and (c) it concerns this
   incarnation: an outcome (ACCEPTED/REJECTED) of a command sequenced after
   the attach, any other event of an order placed after it.  The automatic
   producer id is itself an incarnation (ring rule P2: reused only after 32768
   later attaches); (c) also covers fixed ids and a ring re-created by a
   restart of the engine (sequences continue the journal, so the attach
   sequence still separates incarnations).
4. Reports are de-duplicated by ``(seq, event_index)``: the output stream is
   ordered by it, and a restarted matcher re-publishes its replayed tail
   (docs/interfaces.md), so the client keeps a high-water mark over every
   event it reads and drops each event at or below it.  ``next_report``,
   ``reports`` and ``wait_outcome`` all read through this filter.
5. Administration (``publish_admin``, ``ClockTicker``) uses a privileged
   producer id (ringbuf.records); the ring refuses those ids to an
   ``EngineClient`` and stamps the client's own id into its records.
"""
import os
import threading
import time
from decimal import Decimal

from ringbuf.records import (
    CommandKind, EventKind, OrderFlags, OrderType, Side, StpMode, TimeInForce,
    command_struct, EVENT_SIZE, SUPERVISOR_PRODUCER_ID,
)

__all__ = ["EngineClient", "ReportsLost", "publish_admin", "publish_clock", "ClockTicker",
           "pack_command"]

_pack = command_struct.pack


_coid_lock = threading.Lock()
_coid_next = [0]


def _next_client_order_id():
    """An automatic client order id, unique per account in practice.

    Process-wide (two clients in one process never collide), starting from the
    wall clock in microseconds with the pid in the low 16 bits, so a restarted
    producer does not repeat ids of its orders still open from before.
    """
    with _coid_lock:
        if not _coid_next[0]:
            _coid_next[0] = ((time.time_ns() // 1000) << 16 | (os.getpid() & 0xFFFF)) \
                & 0x7FFFFFFFFFFFFFFF
        _coid_next[0] += 1 << 16
        return _coid_next[0]


class ReportsLost(RuntimeError):
    """The client fell more than one output ring behind; reports were overwritten."""


def pack_command(kind, side=0, order_type=0, tif=0, stp=0, flags=0, symbol_id=0,
                 account_id=0, producer_id=0, check=0, price=0, qty=0, aux=0,
                 stop_price=0, timestamp_ns=0, client_order_id=0):
    """Pack one 64-byte command record (``aux``: funds / expire_ns / order_id)."""
    return _pack(kind, side, order_type, tif, stp, flags, symbol_id, account_id,
                 producer_id, check, price, qty, aux, stop_price, timestamp_ns,
                 client_order_id)


def _write_and_publish(producer, data):
    """Claim one slot, copy the packed record in, publish; return the sequence."""
    return producer.write(data)


def publish_admin(ring, kind, symbol_id=0, producer_id=SUPERVISOR_PRODUCER_ID,
                  timestamp_ns=None):
    """Publish an admin command (SNAPSHOT, HALT, RESUME, STATE_HASH, CLOCK); return its seq.

    For the supervisor and the CLI only: the producer is privileged (rule 5;
    ``producer_id`` must be in the privileged range, docs/engine.md M9).
    Registers a producer for the one write and detaches it again, so periodic
    callers (the snapshot timer, the clock) never fill the producer table.
    Raises RingError for an ordinary id.
    """
    producer = ring.producer(producer_id=producer_id, privileged=True)
    try:
        return _write_and_publish(producer, pack_command(
            int(kind), symbol_id=symbol_id, producer_id=producer_id,
            timestamp_ns=time.time_ns() if timestamp_ns is None else timestamp_ns))
    finally:
        producer.close()


def publish_clock(ring, timestamp_ns=None):
    """Publish one trusted clock tick (CommandKind.CLOCK, wall clock now); return its seq."""
    return publish_admin(ring, CommandKind.CLOCK, timestamp_ns=timestamp_ns)


class ClockTicker(object):
    """The supervisor's trusted clock: a CLOCK tick at most every ``every_s`` seconds.

    ``tick()`` publishes one now (call it right after creating the input ring, so
    the first record of a new ring is a tick); ``maybe_tick()`` from the
    supervision loop publishes when ``every_s`` passed.  O(1) per call.
    """

    def __init__(self, ring, every_s=1.0):
        self.ring = ring
        self.every_s = every_s
        self.last = None

    def tick(self, now=None):
        self.last = time.monotonic() if now is None else now
        return publish_clock(self.ring)

    def maybe_tick(self, now=None):
        now = time.monotonic() if now is None else now
        if self.last is None or now - self.last >= self.every_s:
            return self.tick(now)
        return None


_SIDES = {"buy": Side.BUY, "b": Side.BUY, "sell": Side.SELL, "s": Side.SELL}
_TYPES = {"limit": OrderType.LIMIT, "market": OrderType.MARKET,
          "stop_loss": OrderType.STOP_LOSS, "stop_limit": OrderType.STOP_LIMIT,
          "take_profit": OrderType.TAKE_PROFIT, "take_profit_limit": OrderType.TAKE_PROFIT_LIMIT}
_TIFS = {"GTC": TimeInForce.GTC, "GTT": TimeInForce.GTT, "IOC": TimeInForce.IOC,
         "FOK": TimeInForce.FOK}
_STPS = {"dc": StpMode.DECREMENT_AND_CANCEL, "co": StpMode.CANCEL_OLDEST,
         "cn": StpMode.CANCEL_NEWEST, "cb": StpMode.CANCEL_BOTH}


_OUTCOMES = (EventKind.ACCEPTED, EventKind.REJECTED)


def _enum(table, value, what):
    """Map a name (any case) or an int code to the wire code."""
    if isinstance(value, int):
        return int(value)
    key = str(value).upper() if what == "tif" else str(value).lower()
    try:
        return int(table[key])
    except KeyError:
        raise ValueError("unknown %s %r (one of %s)" % (what, value, ", ".join(sorted(table))))


class EngineClient(object):
    """A producer attached to a running engine shard (rules 1-3 above)."""

    def __init__(self, ring_in, ring_out, exchange, producer_id=None, account=None):
        self.ring_in = ring_in
        self.ring_out = ring_out
        self.exchange = exchange
        self.account = account
        # producer_id None: an automatic id, an incarnation (ring rule P2)
        self.producer = ring_in.producer(producer_id=producer_id)
        self.producer_id = self.producer.producer_id
        #: accounts whose reports this client receives (rule 3b); grows with each command
        self.accounts = set() if account is None else {account}
        #: every command this client sends is sequenced after this (rule 3c)
        self.first_seq = ring_in.claimed + 1
        self._lock = threading.Lock()
        self._report_lock = threading.Lock()
        self._next_out = ring_out.cursor + 1
        self._high_water = -1          # (seq << 32 | event_index) of the last event read
        self._pending = []

    # -- attach / close -------------------------------------------------------
    @classmethod
    def attach(cls, shard="shard0", data_dir=None, config=None, producer_id=None, account=None):
        """Attach to the engine running ``shard``; ``config``/``data_dir`` locate its config.

        Raises RingError (ringbuf.errors) when the engine is not running.
        """
        from engine.runtime import RuntimeConfig
        from ringbuf import Ring
        if config is None and data_dir is not None:
            candidate = os.path.join(os.path.abspath(data_dir), "run", "%s.json" % shard)
            config = candidate if os.path.exists(candidate) else None
        runtime = RuntimeConfig.load(config)
        spec = runtime.shard(shard)
        ring_in = Ring.attach(spec.input_ring)
        try:
            ring_out = Ring.attach(spec.output_ring)
        except BaseException:
            ring_in.close()
            raise
        return cls(ring_in, ring_out, runtime.exchange(), producer_id, account)

    def close(self):
        self.ring_in.close()
        self.ring_out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- commands -------------------------------------------------------------
    def _symbol(self, symbol):
        if isinstance(symbol, int):
            return self.exchange.symbol_by_id(symbol)
        return self.exchange.symbol(symbol)

    def _send(self, data):
        with self._lock:
            return _write_and_publish(self.producer, data)

    def _account(self, account):
        account = self.account if account is None else account
        if account is None:
            raise ValueError("no account given (and the client has no default account)")
        self.accounts.add(account)     # before the command exists: its reports are ours
        return account

    def _price(self, spec, value):
        if value is None:
            return 0
        if isinstance(value, int):
            return value
        return self.exchange.price_to_ticks(spec, Decimal(str(value)))

    def _qty(self, spec, value):
        if value is None:
            return 0
        if isinstance(value, int):
            return value
        return self.exchange.qty_to_lots(spec, Decimal(str(value)))

    def place_order(self, symbol, side, qty=None, price=None, order_type="limit", tif="GTC",
                    post_only=False, reprice=False, stop_price=None, funds=None,
                    expire_ns=0, client_order_id=None, account=None, stp="dc"):
        """Place an order; return its order id (the input sequence).

        Prices and quantities are Decimals/strings (converted by the symbol's
        tick and lot) or ints (already ticks/lots).  ``funds`` (quote asset,
        Decimal or minor units) makes a market buy by funds.  The outcome
        arrives as an ACCEPTED or REJECTED report.
        """
        spec = self._symbol(symbol)
        flags = 0
        if post_only:
            flags |= int(OrderFlags.POST_ONLY)
            if reprice:
                flags |= int(OrderFlags.POST_ONLY_REPRICE)
        aux = 0
        if funds is not None:
            flags |= int(OrderFlags.BY_FUNDS)
            aux = funds if isinstance(funds, int) else self.exchange.amount_to_minor(
                spec.quote_asset, Decimal(str(funds)))
        elif expire_ns:
            aux = int(expire_ns)
        if client_order_id is None:
            client_order_id = _next_client_order_id()
        return self._send(pack_command(
            int(CommandKind.NEW_ORDER), _enum(_SIDES, side, "side"),
            _enum(_TYPES, order_type, "order type"), _enum(_TIFS, tif, "tif"),
            _enum(_STPS, stp, "stp"), flags, spec.symbol_id, self._account(account),
            self.producer_id, 0, self._price(spec, price), self._qty(spec, qty), aux,
            self._price(spec, stop_price), time.time_ns(), client_order_id))

    def cancel(self, order_id=None, client_order_id=None, account=None):
        """Cancel by order id or by client order id; return the command's sequence."""
        if (order_id is None) == (client_order_id is None):
            raise ValueError("give exactly one of order_id and client_order_id")
        flags = int(OrderFlags.BY_CLIENT_ID) if client_order_id is not None else 0
        return self._send(pack_command(
            int(CommandKind.CANCEL), flags=flags, account_id=self._account(account),
            producer_id=self.producer_id, aux=order_id or 0,
            timestamp_ns=time.time_ns(), client_order_id=client_order_id or 0))

    def amend(self, order_id, symbol, price=None, qty=None, account=None):
        """Amend price and/or total quantity of an open order; return the sequence."""
        spec = self._symbol(symbol)
        return self._send(pack_command(
            int(CommandKind.AMEND), symbol_id=spec.symbol_id, account_id=self._account(account),
            producer_id=self.producer_id, price=self._price(spec, price),
            qty=self._qty(spec, qty), aux=order_id, timestamp_ns=time.time_ns()))

    def mass_cancel(self, account=None, symbol=None):
        """Cancel every open order of the account (optionally one symbol only)."""
        symbol_id = self._symbol(symbol).symbol_id if symbol is not None else 0
        return self._send(pack_command(
            int(CommandKind.MASS_CANCEL), symbol_id=symbol_id, account_id=self._account(account),
            producer_id=self.producer_id, timestamp_ns=time.time_ns()))

    def _transfer(self, kind, asset, amount, account):
        asset_spec = self.exchange.asset(asset) if not isinstance(asset, int) \
            else self.exchange.asset_by_id(asset)
        units = amount if isinstance(amount, int) else self.exchange.amount_to_minor(
            asset_spec.asset_id, Decimal(str(amount)))
        return self._send(pack_command(
            int(kind), symbol_id=asset_spec.asset_id, account_id=self._account(account),
            producer_id=self.producer_id, qty=units, timestamp_ns=time.time_ns()))

    def deposit(self, asset, amount, account=None):
        return self._transfer(CommandKind.DEPOSIT, asset, amount, account)

    def withdraw(self, asset, amount, account=None):
        return self._transfer(CommandKind.WITHDRAW, asset, amount, account)

    # -- execution reports (rules 2, 3) ---------------------------------------
    def _read_available(self):
        """Copy every event published since the last call; keep this producer's."""
        from engine.events import Event
        ring = self.ring_out
        cursor = ring.cursor
        seq = self._next_out
        if seq > cursor:
            return False
        capacity = ring.capacity
        if cursor - seq >= capacity:
            lost = cursor - capacity + 1 - seq
            self._next_out = cursor - capacity + 1
            raise ReportsLost("%d events were overwritten before this client read them" % lost)
        unpack = Event.unpack
        mine, accounts, first, pending = self.producer_id, self.accounts, self.first_seq, \
            self._pending
        high_water = self._high_water
        while seq <= cursor:
            data = ring.read(seq)
            if ring.cursor - seq >= capacity:   # overwritten while we copied
                self._next_out = seq
                self._high_water = high_water
                raise ReportsLost("event %d was overwritten while being read" % seq)
            event = unpack(data)
            seq += 1
            key = event.seq << 32 | event.event_index
            if key <= high_water:                 # rule 4: a replayed tail, seen already
                continue
            high_water = key
            if event.producer_id == mine and event.account_id in accounts and (
                    event.seq >= first if event.kind in _OUTCOMES or not event.order_id
                    else event.order_id >= first):  # rule 3
                pending.append(event)
        self._next_out = seq
        self._high_water = high_water
        return True

    def next_report(self, timeout=None):
        """Return this producer's next execution report (an Event), or None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.00005
        with self._report_lock:
            while True:
                if self._pending:
                    return self._pending.pop(0)
                if self._read_available() and self._pending:
                    return self._pending.pop(0)
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                time.sleep(delay)
                delay = min(delay * 2, 0.002)

    def reports(self, timeout=None):
        """Iterate over reports until none arrives within ``timeout``."""
        while True:
            report = self.next_report(timeout)
            if report is None:
                return
            yield report

    def wait_outcome(self, seq, timeout=5.0):
        """Wait for the ACCEPTED/REJECTED report of command ``seq``; return (outcome, others).

        Reports of other commands read meanwhile stay queued for ``next_report``.
        """
        deadline = time.monotonic() + timeout
        with self._report_lock:
            while True:
                for i, event in enumerate(self._pending):
                    if event.seq == seq and event.kind in (EventKind.ACCEPTED, EventKind.REJECTED):
                        del self._pending[i]
                        return event
                if not self._read_available():
                    if time.monotonic() >= deadline:
                        raise TimeoutError("no outcome for command %d within %.1fs" % (seq, timeout))
                    time.sleep(0.0002)

    async def areport(self, timeout=None, poll_interval=0.0005):
        """asyncio variant of ``next_report`` (polls without blocking the loop)."""
        import asyncio
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            report = self.next_report(timeout=0)
            if report is not None:
                return report
            if deadline is not None and loop.time() >= deadline:
                return None
            await asyncio.sleep(poll_interval)


def _running_shards(data_dir):
    """Shard names with a resolved config in ``<data_dir>/run`` (written by ``ringmatch run``)
    whose lock holder lives."""
    from engine.admin_cli import running_shards
    run_dir = os.path.join(os.path.abspath(data_dir), "run")
    return [name for name in sorted(running_shards(data_dir))
            if _lock_holder_alive(os.path.join(run_dir, name + ".lock"))]


def _lock_holder_alive(path):
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return pid > 0


class ShardedClient(object):
    """Route commands by symbol to the shard that trades it (one EngineClient per shard).

    Order ids are input sequences, unique within a shard only, so cancel and
    amend name the symbol too.  Balances live per shard: deposit to the shard
    of the symbol you will trade (``deposit(..., symbol=...)``).

    >>> with ShardedClient.attach(data_dir="./var", account=7) as c:      # doctest: +SKIP
    ...     oid = c.place_order("ETH-USD", "buy", qty="1", price="2000")
    """

    def __init__(self, clients, shard_of_symbol):
        self.clients = clients                  # shard name -> EngineClient
        self.shard_of_symbol = shard_of_symbol  # symbol name -> shard name

    @classmethod
    def attach(cls, data_dir=None, config=None, producer_id=None, account=None):
        """Attach to every shard of the engine whose config (or data dir) is given.

        With only ``data_dir``, the shards are those the running engine wrote
        resolved configs for (``<data_dir>/run/<shard>.json``).
        """
        from engine.runtime import RuntimeConfig
        if config is None and data_dir is None:
            raise ValueError("give data_dir or config")
        if config is not None:
            runtime = RuntimeConfig.load(config)
            data_dir = data_dir or runtime.data_dir
            names = [s.name for s in runtime.shards]
        else:
            names = _running_shards(data_dir)
            if not names:
                raise ValueError("no running shard found in %s/run" % data_dir)
        clients, owner = {}, {}
        try:
            for name in names:
                # the shard's own resolved config (run/<shard>.json): its symbols only
                c = clients[name] = EngineClient.attach(
                    shard=name, data_dir=data_dir, producer_id=producer_id, account=account)
                for spec in c.exchange.symbols.values():
                    owner[spec.name] = name
        except BaseException:
            for c in clients.values():
                c.close()
            raise
        return cls(clients, owner)

    def client(self, symbol):
        """The EngineClient of the shard trading ``symbol``.  Raises KeyError naming it."""
        try:
            return self.clients[self.shard_of_symbol[symbol]]
        except KeyError:
            raise KeyError("no shard trades %r (symbols: %s)"
                           % (symbol, ", ".join(sorted(self.shard_of_symbol))))

    def place_order(self, symbol, *args, **kwargs):
        return self.client(symbol).place_order(symbol, *args, **kwargs)

    def cancel(self, symbol, order_id=None, client_order_id=None, account=None):
        return self.client(symbol).cancel(order_id, client_order_id, account)

    def amend(self, symbol, order_id, price=None, qty=None, account=None):
        return self.client(symbol).amend(order_id, symbol, price, qty, account)

    def deposit(self, asset, amount, symbol, account=None):
        return self.client(symbol).deposit(asset, amount, account)

    def close(self):
        for c in self.clients.values():
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
