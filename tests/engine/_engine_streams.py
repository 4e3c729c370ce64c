"""Seeded command streams for engine tests (same output on CPython and PyPy).

Only ``random.Random(seed).randrange`` is used: the Mersenne Twister and
``randrange`` give the same numbers on both interpreters.
"""
import random

from engine.commands import Command
from ringbuf.records import CommandKind, OrderFlags

SYMBOLS = (1, 2, 3)        # DEFAULT_CONFIG: BTC-USD, ETH-USD, ETH-BTC
ASSETS = (1, 2, 3)
MIDS = {1: 1000, 2: 300, 3: 50}


def funding(n_accounts, amount=10 ** 12, ts=0):
    """Deposit commands giving accounts 1..n every asset."""
    return [Command.deposit(a, asset, amount, timestamp_ns=ts)
            for a in range(1, n_accounts + 1) for asset in ASSETS]


def random_stream(seed, n, n_accounts=6, symbols=SYMBOLS, with_admin=True):
    """A list of ``n`` valid-looking but adversarial commands (after funding)."""
    rnd = random.Random(seed)
    rr = rnd.randrange
    cmds = funding(n_accounts, amount=10 ** 9 + rr(10 ** 9))
    seq = len(cmds)
    order_ids = []
    ts = 1000
    for _ in range(n):
        seq += 1
        ts += rr(0, 50)
        acct = rr(1, n_accounts + 1)
        sym = symbols[rr(len(symbols))]
        mid = MIDS[sym]
        r = rr(100)
        coid = rr(1, 8) if rr(3) == 0 else 0
        if r < 45:
            side = rr(1, 3)
            tif = (1, 1, 1, 2, 3, 4)[rr(6)]
            flags = 0
            if tif in (1, 2) and rr(6) == 0:
                flags = OrderFlags.POST_ONLY | (OrderFlags.POST_ONLY_REPRICE if rr(2) else 0)
            price = mid + rr(-6, 7)
            c = Command.limit(acct, sym, side, price, rr(1, 12), tif=tif,
                              expire_ns=ts + rr(1, 400) if tif == 2 else 0,
                              stp=rr(4), client_order_id=coid, timestamp_ns=ts)
            c.flags = int(flags)
            order_ids.append(seq)
        elif r < 52:
            side = rr(1, 3)
            if side == 1 and rr(2):
                c = Command.market(acct, sym, side, funds=rr(1, 5000), tif=(1, 3)[rr(2)],
                                   stp=rr(4), client_order_id=coid, timestamp_ns=ts)
            else:
                c = Command.market(acct, sym, side, qty=rr(1, 15), tif=(1, 3, 4)[rr(3)],
                                   stp=rr(4), client_order_id=coid, timestamp_ns=ts)
        elif r < 60:
            side = rr(1, 3)
            otype = rr(3, 7)
            limit_type = otype in (4, 6)
            tif = (1, 2)[rr(2)]
            funds = rr(1, 3000) if (side == 1 and not limit_type and rr(3) == 0 and tif == 1) else 0
            c = Command.stop(acct, sym, side, otype, stop_price=mid + rr(-8, 9),
                             qty=0 if funds else rr(1, 8),
                             price=mid + rr(-5, 6) if limit_type else 0, funds=funds, tif=tif,
                             expire_ns=ts + rr(1, 500) if tif == 2 else 0, stp=rr(4),
                             client_order_id=coid, timestamp_ns=ts)
            order_ids.append(seq)
        elif r < 75 and order_ids:
            target = order_ids[-rr(1, min(len(order_ids), 30) + 1)]
            if rr(4) == 0:
                c = Command.cancel(acct, client_order_id=rr(1, 8), timestamp_ns=ts)
            else:
                c = Command.cancel(acct if rr(3) else rr(1, n_accounts + 1), order_id=target,
                                   timestamp_ns=ts)
        elif r < 87 and order_ids:
            target = order_ids[-rr(1, min(len(order_ids), 30) + 1)]
            c = Command.amend(acct, order_id=target, price=(mid + rr(-6, 7)) if rr(2) else 0,
                              qty=rr(0, 14), timestamp_ns=ts)
        elif r < 90:
            c = Command.mass_cancel(acct, symbol_id=0 if rr(2) else sym, timestamp_ns=ts)
        elif r < 95 or not with_admin:
            asset = ASSETS[rr(3)]
            if rr(2):
                c = Command.withdraw(acct, asset, rr(1, 10 ** 6), timestamp_ns=ts)
            else:
                c = Command.deposit(acct, asset, rr(1, 10 ** 6), timestamp_ns=ts)
        elif r < 97:
            c = Command.halt(sym, timestamp_ns=ts) if r == 95 else Command.resume(sym, timestamp_ns=ts)
        elif r < 98:
            c = Command.state_hash(timestamp_ns=ts)
        else:
            c = Command(kind=CommandKind.NOP)
        cmds.append(c)
    return cmds


def run(matcher, commands, first_seq=1, check=False):
    seq = first_seq
    for c in commands:
        matcher.process(seq, c)
        if check:
            matcher._check()
        seq += 1
    return seq
