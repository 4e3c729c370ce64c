"""Test helper: a seeded random trading session of engine Commands (all order kinds).

``session(n, seed)`` yields Commands: deposits first, then limit (GTC/GTT/IOC/FOK,
post-only, re-price), market by size and by funds, stops and take-profits,
cancels (by id and client id), amends, mass cancels and withdrawals over the
three default symbols and six accounts.  Prices hover around a per-symbol mid
so books form and trade.  Deterministic in ``seed``.
"""
import random

from engine.commands import Command
from ringbuf.records import OrderType, StpMode, TimeInForce

ACCOUNTS = (201, 202, 203, 204, 205, 206)
MIDS = {1: 30000, 2: 20000, 3: 5000}          # ticks per default symbol
T0 = 1_700_000_000 * 10 ** 9


def session(n, seed=1, accounts=ACCOUNTS):
    rng = random.Random(seed)
    ts = T0
    placed = []                                # (account, order_id, client_oid)
    seq = 0
    out = []
    for acct in accounts:                      # fund everyone
        for asset, amount in ((1, 10 ** 12), (2, 10 ** 12), (3, 10 ** 15)):
            out.append(Command.deposit(acct, asset, amount, timestamp_ns=ts))
    mids = dict(MIDS)
    coid = 0
    while len(out) < n:
        ts += rng.randint(1, 3) * 10 ** 6
        acct = rng.choice(accounts)
        sym = rng.choice((1, 2, 3))
        mids[sym] = max(100, mids[sym] + rng.choice((-1, 0, 0, 1)))
        mid = mids[sym]
        side = rng.choice((1, 2))
        r = rng.random()
        coid += 1
        cid = coid if rng.random() < 0.3 else 0
        stp = rng.choice((0, 0, 0, 1, 2, 3))
        if r < 0.45:
            off = rng.randint(-5, 25)
            price = mid - off if side == 1 else mid + off
            tif = rng.choice((TimeInForce.GTC,) * 6 + (TimeInForce.GTT, TimeInForce.IOC,
                                                       TimeInForce.FOK))
            post = tif == TimeInForce.GTC and rng.random() < 0.1
            cmd = Command.limit(acct, sym, side, max(1, price), rng.randint(1, 50), tif=tif,
                                expire_ns=ts + rng.randint(1, 2000) * 10 ** 6 if tif == TimeInForce.GTT else 0,
                                post_only=post, reprice=post and rng.random() < 0.5,
                                stp=stp, client_order_id=cid, timestamp_ns=ts)
        elif r < 0.52:
            if side == 1 and rng.random() < 0.5:
                cmd = Command.market(acct, sym, side, funds=rng.randint(1, 10 ** 6), stp=stp,
                                     client_order_id=cid, timestamp_ns=ts)
            else:
                cmd = Command.market(acct, sym, side, qty=rng.randint(1, 40), stp=stp,
                                     client_order_id=cid, timestamp_ns=ts)
        elif r < 0.58:
            otype = rng.choice((OrderType.STOP_LOSS, OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT,
                                OrderType.TAKE_PROFIT_LIMIT))
            trigger = mid + rng.randint(-30, 30)
            limit = trigger + (rng.randint(0, 10) if side == 1 else -rng.randint(0, 10))
            has_limit = otype in (OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT_LIMIT)
            cmd = Command.stop(acct, sym, side, otype, max(1, trigger), qty=rng.randint(1, 20),
                               price=max(1, limit) if has_limit else 0,
                               client_order_id=cid, timestamp_ns=ts)
        elif r < 0.80 and placed:
            a, oid, c = placed[-rng.randint(1, min(len(placed), 100))]
            if c and rng.random() < 0.3:
                cmd = Command.cancel(a, client_order_id=c, timestamp_ns=ts)
            else:
                cmd = Command.cancel(a if rng.random() < 0.95 else acct, order_id=oid, timestamp_ns=ts)
        elif r < 0.90 and placed:
            a, oid, c = placed[-rng.randint(1, min(len(placed), 100))]
            cmd = Command.amend(a, order_id=oid, price=mid + rng.randint(-20, 20) if rng.random() < 0.5 else 0,
                                qty=rng.randint(1, 60) if rng.random() < 0.7 else 0, timestamp_ns=ts)
        elif r < 0.92:
            cmd = Command.mass_cancel(acct, sym if rng.random() < 0.7 else 0, timestamp_ns=ts)
        elif r < 0.94:
            cmd = Command.withdraw(acct, rng.choice((1, 2, 3)), rng.randint(1, 10 ** 6), timestamp_ns=ts)
        else:
            cmd = Command.limit(acct, sym, side, max(1, mid + rng.randint(-3, 3)), rng.randint(1, 30),
                                stp=stp, timestamp_ns=ts)
        out.append(cmd)
        seq = len(out)
        if cmd.kind == 1:
            placed.append((cmd.account_id, seq, cmd.client_order_id))
    return out[:n]


def matcher_l2(matcher, symbol_id):
    """The matcher's L2 book as (bids {price: qty}, asks {price: qty})."""
    book = matcher.book(symbol_id)
    return ({p: lv.total for p, lv in book.bid_levels.items()},
            {p: lv.total for p, lv in book.ask_levels.items()})


def engine_matcher(engine, commands, last):
    """An in-test Matcher in the state the engine's matcher has after input ``last``.

    Run mode: the engine's journal up to ``last`` replayed (what the engine really
    sequenced: the supervisor's CLOCK ticks sit between the session's commands, so
    order ids and stream time differ from ``enumerate(commands, 1)``; docs/engine.md
    M9).  Loop mode (no supervisor, no ticks): ``commands`` at sequences 1, 2, ...
    """
    from engine.config import DEFAULT_CONFIG
    from engine.events import ListSink
    from engine.matcher import Matcher
    matcher = Matcher(DEFAULT_CONFIG, ListSink())
    if engine.mode == "run":
        from journaler.recovery import journal_records
        records = journal_records(engine.raw["data_dir"], engine.shard, last=last)
    else:
        records = enumerate(commands, 1)
    for seq, record in records:
        matcher.process(seq, record)
        matcher.sink.events.clear()
    return matcher
