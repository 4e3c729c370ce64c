"""Scenario tables: per order type and per STP mode, the expected events.

Each scenario is a list of commands (after funding accounts 1, 2, 3 with every
asset) and, for the last command, the expected events as
``(kind, reason, account_id, order_id, price, qty, remaining)`` tuples (``None``
= don't care); balances and book are checked where they matter.
"""
import pytest

from engine.commands import Command
from engine.config import DEFAULT_CONFIG
from engine.events import ListSink
from engine.matcher import Matcher
from ringbuf.records import EventFlags, EventKind as K, OrderType, Reason as R, StpMode, \
    TimeInForce

pytestmark = pytest.mark.pypy

BUY, SELL = 1, 2
SYM = 1            # BTC-USD: tick 1 USD, lot 0.01 BTC, u = 1 cent, maker -1 bps, taker 5 bps
USD, BTC = 1, 2
FUND = 10 ** 9


class World(object):
    def __init__(self, config=DEFAULT_CONFIG):
        self.sink = ListSink()
        self.m = Matcher(config, self.sink)
        self.seq = 0
        for acct in (1, 2, 3):
            for asset in (1, 2, 3):
                self.do(Command.deposit(acct, asset, FUND))

    def do(self, cmd):
        self.seq += 1
        self.sink.clear()
        self.m.process(self.seq, cmd)
        self.m._check()
        events = self.sink.events
        if cmd.kind:
            outcomes = [e for e in events if e.kind in (K.ACCEPTED, K.REJECTED)]
            assert len(outcomes) == 1
            assert events[-1].flags & EventFlags.LAST
            assert all(not e.flags & EventFlags.LAST for e in events[:-1])
            assert [e.event_index for e in events] == list(range(len(events)))
            assert all(e.seq == self.seq for e in events)
        return events


def L(acct, side, price, qty, **kw):
    return Command.limit(acct, SYM, side, price, qty, **kw)


def shape(events):
    return [(K(e.kind).name, R(e.reason).name, e.account_id, e.order_id, e.price, e.qty,
             e.remaining) for e in events]


def match(events, expected):
    got = shape(events)
    assert len(got) == len(expected), "\n".join(map(str, got))
    for g, x in zip(got, expected):
        for gv, xv in zip(g, x):
            if xv is not None:
                assert gv == xv, "%r != %r\n%s" % (g, x, "\n".join(map(str, got)))


# seqs: funding takes 1..9, so the first order is seq 10; a BOOK_DELTA names the order
# that rests there (order_id), else 0
SCENARIOS = {
    "limit rests": (
        [L(1, BUY, 100, 5)],
        [("ACCEPTED", "OK", 1, 10, 100, 5, 5), ("BOOK_DELTA", "OK", 0, 10, 100, 5, None)]),
    "limit crosses, fills at maker price, rest rests": (
        [L(1, SELL, 100, 3), L(2, BUY, 105, 5)],
        [("ACCEPTED", "OK", 2, 11, 105, 5, 5),
         ("FILL", "OK", 1, 10, 100, 3, 0), ("FILL", "OK", 2, 11, 100, 3, 2),
         ("TRADE", "OK", 2, 11, 100, 3, None),
         ("BOOK_DELTA", "OK", 0, 0, 100, 0, None), ("BOOK_DELTA", "OK", 0, 11, 105, 2, None)]),
    "price-time priority across levels": (
        [L(1, SELL, 101, 1), L(3, SELL, 100, 1), L(1, SELL, 100, 1), L(2, BUY, 101, 3)],
        [("ACCEPTED", "OK", 2, 13, 101, 3, 3),
         ("FILL", "OK", 3, 11, 100, 1, 0), ("FILL", "OK", 2, 13, 100, 1, 2), ("TRADE",) + (None,) * 6,
         ("FILL", "OK", 1, 12, 100, 1, 0), ("FILL", "OK", 2, 13, 100, 1, 1), ("TRADE",) + (None,) * 6,
         ("BOOK_DELTA", "OK", 0, 0, 100, 0, None),
         ("FILL", "OK", 1, 10, 101, 1, 0), ("FILL", "OK", 2, 13, 101, 1, 0), ("TRADE",) + (None,) * 6,
         ("BOOK_DELTA", "OK", 0, 0, 101, 0, None)]),
    "IOC remainder cancelled": (
        [L(1, SELL, 100, 2), L(2, BUY, 100, 5, tif=TimeInForce.IOC)],
        [("ACCEPTED", "OK", 2, 11, 100, 5, 5), ("FILL",) + (None,) * 6, ("FILL",) + (None,) * 6,
         ("TRADE",) + (None,) * 6, ("BOOK_DELTA", "OK", 0, 0, 100, 0, None),
         ("CANCELLED", "CANCELLED_IOC_REMAINDER", 2, 11, 100, 3, 0)]),
    "FOK not fillable rejected": (
        [L(1, SELL, 100, 2), L(2, BUY, 100, 5, tif=TimeInForce.FOK)],
        [("REJECTED", "FOK_NOT_FILLABLE", 2, 11, 100, 5, None)]),
    "FOK fillable fills": (
        [L(1, SELL, 100, 2), L(3, SELL, 101, 3), L(2, BUY, 101, 5, tif=TimeInForce.FOK)],
        [("ACCEPTED", "OK", 2, 12, 101, 5, 5)] + [(None,) * 7] * 3 +
        [("BOOK_DELTA", "OK", 0, 0, 100, 0, None)] + [(None,) * 7] * 3 +
        [("BOOK_DELTA", "OK", 0, 0, 101, 0, None)]),
    "post-only would take rejected": (
        [L(1, SELL, 100, 2), L(2, BUY, 100, 1, post_only=True)],
        [("REJECTED", "POST_ONLY_WOULD_TAKE", 2, 11, 100, 1, None)]),
    "post-only re-priced one tick behind": (
        [L(1, SELL, 100, 2), L(2, BUY, 103, 1, post_only=True, reprice=True)],
        [("ACCEPTED", "OK", 2, 11, 99, 1, 1), ("BOOK_DELTA", "OK", 0, 11, 99, 1, None)]),
    "market by size, book runs out": (
        [L(1, SELL, 100, 2), Command.market(2, SYM, BUY, qty=5)],
        [("ACCEPTED", "OK", 2, 11, 0, 5, 5)] + [(None,) * 7] * 4 +
        [("CANCELLED", "CANCELLED_MARKET_REMAINDER", 2, 11, 0, 3, 0)]),
    "market with empty book rejected": (
        [Command.market(2, SYM, SELL, qty=5)],
        [("REJECTED", "NO_LIQUIDITY", 2, 10, 0, 5, None)]),
    "market by funds buys what the funds pay for": (
        # 100 ticks x 1 lot = 100 cents + 5 bps fee (ceil -> 1): 250 cents buy 2 lots
        [L(1, SELL, 100, 5), Command.market(2, SYM, BUY, funds=250)],
        [("ACCEPTED", "OK", 2, 11, 0, 0, 0), ("FILL", "OK", 1, 10, 100, 2, 3),
         ("FILL", "OK", 2, 11, 100, 2, 0), ("TRADE",) + (None,) * 6,
         ("BOOK_DELTA", "OK", 0, 0, 100, 3, None),
         ("CANCELLED", "CANCELLED_NO_FUNDS", 2, 11, 0, 0, 0)]),
    "stop-limit waits, triggers on last trade": (
        [Command.stop(3, SYM, BUY, OrderType.STOP_LIMIT, stop_price=101, qty=1, price=102),
         L(1, SELL, 101, 1), L(1, SELL, 102, 1), L(2, BUY, 101, 1)],
        [("ACCEPTED", "OK", 2, 13, 101, 1, 1), ("FILL", "OK", 1, 11, 101, 1, 0),
         ("FILL", "OK", 2, 13, 101, 1, 0), ("TRADE",) + (None,) * 6,
         ("BOOK_DELTA", "OK", 0, 0, 101, 0, None),
         ("TRIGGERED", "OK", 3, 10, 102, 1, 1),
         ("FILL", "OK", 1, 12, 102, 1, 0), ("FILL", "OK", 3, 10, 102, 1, 0),
         ("TRADE",) + (None,) * 6, ("BOOK_DELTA", "OK", 0, 0, 102, 0, None)]),
    "stop-loss sell triggers as market": (
        [L(1, BUY, 99, 3), L(1, BUY, 100, 1),
         Command.stop(3, SYM, SELL, OrderType.STOP_LOSS, stop_price=100, qty=2),
         L(2, SELL, 100, 1)],
        [("ACCEPTED", "OK", 2, 13, 100, 1, 1)] + [(None,) * 7] * 4 +
        [("TRIGGERED", "OK", 3, 12, 0, 2, 2), ("FILL", "OK", 1, 10, 99, 2, 1),
         ("FILL", "OK", 3, 12, 99, 2, 0), ("TRADE",) + (None,) * 6,
         ("BOOK_DELTA", "OK", 0, 0, 99, 1, None)]),
    "take-profit sell triggers when price rises": (
        [L(1, BUY, 100, 1), Command.stop(3, SYM, SELL, OrderType.TAKE_PROFIT, stop_price=105,
                                         qty=1),
         L(1, SELL, 105, 1), L(2, BUY, 105, 1)],
        [("ACCEPTED",) + (None,) * 6] + [(None,) * 7] * 4 +
        [("TRIGGERED", "OK", 3, 11, 0, 1, 1), ("FILL", "OK", 1, 10, 100, 1, 0),
         ("FILL", "OK", 3, 11, 100, 1, 0), ("TRADE",) + (None,) * 6,
         ("BOOK_DELTA", "OK", 0, 0, 100, 0, None)]),
    "stops trigger in (stop price, arrival) order": (
        [L(1, SELL, 100, 1),
         Command.stop(3, SYM, BUY, OrderType.STOP_LIMIT, stop_price=99, qty=1, price=90),
         Command.stop(2, SYM, BUY, OrderType.STOP_LIMIT, stop_price=98, qty=1, price=91),
         Command.stop(3, SYM, BUY, OrderType.STOP_LIMIT, stop_price=98, qty=1, price=92),
         L(2, BUY, 100, 1)],
        [(None,) * 7] * 5 +
        [("TRIGGERED", "OK", 2, 12, 91, 1, 1), ("BOOK_DELTA", "OK", 0, 12, 91, 1, None),
         ("TRIGGERED", "OK", 3, 13, 92, 1, 1), ("BOOK_DELTA", "OK", 0, 13, 92, 1, None),
         ("TRIGGERED", "OK", 3, 11, 90, 1, 1), ("BOOK_DELTA", "OK", 0, 11, 90, 1, None)]),
    "GTT expires when stream time reaches it, before the command": (
        [L(1, BUY, 100, 1, tif=TimeInForce.GTT, expire_ns=500, timestamp_ns=10),
         Command.deposit(2, 1, 5, timestamp_ns=500)],
        [("EXPIRED", "CANCELLED_EXPIRED", 1, 10, 100, 1, 0),
         ("BOOK_DELTA", "OK", 0, 0, 100, 0, None), ("ACCEPTED", "OK", 2, 0, 0, 5, None),
         ("BALANCE", "OK", 2, 0, 0, 5, None)]),
    "GTT still live just before expiry": (
        [L(1, BUY, 100, 1, tif=TimeInForce.GTT, expire_ns=500, timestamp_ns=10),
         Command.deposit(2, 1, 5, timestamp_ns=499)],
        [("ACCEPTED", "OK", 2, 0, 0, 5, None), ("BALANCE",) + (None,) * 6]),
    # ---- self-trade prevention, the taker's mode decides
    "STP cancel oldest": (
        [L(1, SELL, 100, 2), L(2, SELL, 100, 2),
         L(1, BUY, 100, 3, stp=StpMode.CANCEL_OLDEST)],
        [("ACCEPTED", "OK", 1, 12, 100, 3, 3), ("CANCELLED", "CANCELLED_STP", 1, 10, 100, 2, 0),
         ("FILL", "OK", 2, 11, 100, 2, 0), ("FILL", "OK", 1, 12, 100, 2, 1),
         ("TRADE",) + (None,) * 6, ("BOOK_DELTA", "OK", 0, 0, 100, 0, None),
         ("BOOK_DELTA", "OK", 0, 12, 100, 1, None)]),
    "STP cancel newest": (
        [L(1, SELL, 100, 2), L(2, SELL, 100, 2),
         L(1, BUY, 100, 3, stp=StpMode.CANCEL_NEWEST)],
        [("ACCEPTED", "OK", 1, 12, 100, 3, 3), ("BOOK_DELTA", "OK", 0, 0, 100, 4, None),
         ("CANCELLED", "CANCELLED_STP", 1, 12, 100, 3, 0)]),
    "STP cancel both": (
        [L(1, SELL, 100, 2), L(2, SELL, 100, 2),
         L(1, BUY, 100, 3, stp=StpMode.CANCEL_BOTH)],
        [("ACCEPTED", "OK", 1, 12, 100, 3, 3), ("CANCELLED", "CANCELLED_STP", 1, 10, 100, 2, 0),
         ("BOOK_DELTA", "OK", 0, 0, 100, 2, None),
         ("CANCELLED", "CANCELLED_STP", 1, 12, 100, 3, 0)]),
    "STP decrement-and-cancel, maker larger": (
        [L(1, SELL, 100, 5), L(1, BUY, 100, 3, stp=StpMode.DECREMENT_AND_CANCEL)],
        [("ACCEPTED", "OK", 1, 11, 100, 3, 3), ("AMENDED", "CANCELLED_STP", 1, 10, 100, 2, 2),
         ("BOOK_DELTA", "OK", 0, 0, 100, 2, None),
         ("CANCELLED", "CANCELLED_STP", 1, 11, 100, 3, 0)]),
    "STP decrement-and-cancel, taker larger continues": (
        [L(1, SELL, 100, 2), L(2, SELL, 100, 4), L(1, BUY, 100, 5)],
        [("ACCEPTED", "OK", 1, 12, 100, 5, 5), ("CANCELLED", "CANCELLED_STP", 1, 10, 100, 2, 0),
         ("AMENDED", "CANCELLED_STP", 1, 12, 100, 3, 3),
         ("FILL", "OK", 2, 11, 100, 3, 1), ("FILL", "OK", 1, 12, 100, 3, 0),
         ("TRADE",) + (None,) * 6, ("BOOK_DELTA", "OK", 0, 0, 100, 1, None)]),
    "STP decrement-and-cancel, equal sizes cancel both": (
        [L(1, SELL, 100, 3), L(1, BUY, 100, 3)],
        [("ACCEPTED", "OK", 1, 11, 100, 3, 3), ("CANCELLED", "CANCELLED_STP", 1, 10, 100, 3, 0),
         ("BOOK_DELTA", "OK", 0, 0, 100, 0, None),
         ("CANCELLED", "CANCELLED_STP", 1, 11, 100, 3, 0)]),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(name):
    commands, expected = SCENARIOS[name]
    w = World()
    for cmd in commands[:-1]:
        events = w.do(cmd)
        assert events[0].kind == K.ACCEPTED, shape(events)
    match(w.do(commands[-1]), expected)


def test_fill_settlement_and_fees_exact():
    w = World()
    # maker sells 10 lots at 1000 ticks: notional 10000 cents; maker rebate 1bps -> -1,
    # taker fee 5 bps -> 5 cents
    w.do(L(1, SELL, 1000, 10))
    before = {a: (w.m.balance(a, USD), w.m.balance(a, BTC)) for a in (0, 1, 2)}
    events = w.do(L(2, BUY, 1010, 10))
    fills = [e for e in events if e.kind == K.FILL]
    assert [(e.flags & 3, e.fee, e.amount) for e in fills] == [(1, -1, 10000), (2, 5, 10000)]
    assert w.m.balance(1, USD) == (before[1][0][0] + 10000 + 1, 0)
    assert w.m.balance(1, BTC) == (FUND - 10 * 1000000, 0)
    assert w.m.balance(2, USD) == (before[2][0][0] - 10000 - 5, 0)
    assert w.m.balance(2, BTC) == (FUND + 10 * 1000000, 0)
    assert w.m.balance(0, USD) == (4, 0)
    assert w.m.last_price(SYM) == 1000
    assert w.m.best_ask(SYM) is None and w.m.best_bid(SYM) is None


def test_buy_hold_includes_worst_case_fee_and_is_released():
    w = World()
    events = w.do(L(2, BUY, 1000, 10))
    # rests as maker: need = notional only (maker fee is a rebate)
    assert events[0].aux == 10000 + 5          # hold taken at acceptance incl. taker fee
    assert w.m.balance(2, USD) == (FUND - 10000, 10000)
    w.do(Command.cancel(2, order_id=10))
    assert w.m.balance(2, USD) == (FUND, 0)


def test_insufficient_funds_rejected_without_state_change():
    w = World()
    w.do(Command.withdraw(3, USD, FUND - 50))
    h = w.m._encode(clock=False)
    events = w.do(L(3, BUY, 100, 1))          # needs 100 + 1
    match(events, [("REJECTED", "INSUFFICIENT_FUNDS", 3, None, 100, 1, None)])
    assert w.m._encode(clock=False) == h


def test_price_band():
    from engine.config import Asset, ExchangeConfig, SymbolSpec
    cfg = ExchangeConfig([Asset(1, "USD", 2), Asset(2, "BTC", 8), Asset(3, "ETH", 9)],
                         [SymbolSpec(1, "BTC-USD", 2, 1, "1", "0.01", taker_fee_bps=5,
                                     price_band_bps=1000)])
    w = World(cfg)
    w.do(L(1, SELL, 1000, 1))
    w.do(L(2, BUY, 1000, 1))
    match(w.do(L(2, BUY, 1101, 1)), [("REJECTED", "PRICE_OUT_OF_BAND", 2, None, 1101, 1, None)])
    assert w.do(L(2, BUY, 1100, 1))[0].kind == K.ACCEPTED
    assert w.do(L(2, SELL, 900, 1))[0].kind == K.ACCEPTED


def test_halt_blocks_orders_and_resume_reopens():
    w = World()
    w.do(L(1, BUY, 100, 1))
    match(w.do(Command.halt(SYM)), [("ACCEPTED",) + (None,) * 6,
                                    ("SYMBOL_STATUS", "SYMBOL_HALTED") + (None,) * 5])
    match(w.do(L(2, SELL, 100, 1)), [("REJECTED", "SYMBOL_HALTED") + (None,) * 5])
    match(w.do(Command.halt(SYM)), [("REJECTED", "ALREADY_HALTED") + (None,) * 5])
    assert w.do(Command.cancel(1, order_id=10))[0].kind == K.ACCEPTED   # cancel allowed
    w.do(Command.resume(SYM))
    match(w.do(Command.resume(SYM)), [("REJECTED", "NOT_HALTED") + (None,) * 5])
    assert w.do(L(2, SELL, 100, 1))[0].kind == K.ACCEPTED


def test_snapshot_and_state_hash_commands_emit_their_event():
    w = World()
    events = w.do(Command.snapshot())
    assert [e.kind for e in events] == [K.ACCEPTED, K.SNAPSHOT]
    assert events[1].aux == w.m.state_hash() & ((1 << 63) - 1)
    events = w.do(Command.state_hash())
    assert [e.kind for e in events] == [K.ACCEPTED, K.STATE_HASH]


def test_nop_produces_nothing():
    w = World()
    h = w.m.state_hash()
    assert w.do(Command()) == []
    assert w.m.state_hash() == h
