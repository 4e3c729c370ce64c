"""Matcher workload: a seeded generator, the CSV format, and conversion to commands.

CSV format (header required)::

    side,type,price,qty,order_id,cancel_target_id

* ``side``: ``B`` or ``S``;
* ``type``: ``L`` limit GTC, ``M`` market, ``I`` IOC limit, ``F`` FOK limit, ``C`` cancel;
* ``price``: integer ticks (0 for market);
* ``qty``: integer lots (0 for cancel);
* ``order_id``: the row's own id (unique, positive);
* ``cancel_target_id``: for ``C`` the ``order_id`` of the order to cancel (its side
  and price are repeated in the row), else 0.

The generator (:func:`generate`) draws about 64% limit, 25% cancel, 4% IOC, 2% FOK
and 5% market orders around a mid price that drifts by a random walk.  Limit
prices lie mostly behind the mid (a book forms) and sometimes cross it (trades).
Cancels target a resting order of the generator's own bookkeeping (80% one of
the 200 most recent, as market makers re-quote; 20% any); the
generator does not match, so some targets are already filled by the time the
cancel arrives (the cancel is then refused: ORDER_NOT_FOUND).

Accounts: orders are spread round-robin over ``accounts`` accounts
(``1..accounts``); a cancel is sent by the account of its target.

Example::

    >>> rows = generate(1000, seed=7)
    >>> write_csv("/tmp/w.csv", rows); read_csv("/tmp/w.csv") == rows
    True
"""
import csv
import random

__all__ = ["HEADER", "Row", "generate", "write_csv", "read_csv", "to_commands",
           "TYPE_SHARES", "generate_commands"]

HEADER = ("side", "type", "price", "qty", "order_id", "cancel_target_id")

#: target shares of each row type
TYPE_SHARES = (("L", 0.64), ("C", 0.25), ("I", 0.04), ("F", 0.02), ("M", 0.05))


def Row(side, type_, price, qty, order_id, cancel_target_id=0):
    """One workload row as a plain tuple ``(side, type, price, qty, order_id, target)``."""
    return (side, type_, price, qty, order_id, cancel_target_id)


def generate(n, seed=1, mid=100000, spread_ticks=50, max_qty=100):
    """Return ``n`` workload rows (tuples in CSV column order), deterministic in ``seed``.

    O(n).  The mid moves by -1/0/+1 tick per row with probability 0.1 each way
    and never drops below ``2 * spread_ticks``.
    """
    rng = random.Random(seed)
    rand = rng.random
    randint = rng.randint
    rows = []
    live = []            # resting limit orders: [order_id, side, price]
    live_index = {}      # order_id -> index in live
    thresholds = []
    acc = 0.0
    for type_, share in TYPE_SHARES:
        acc += share
        thresholds.append((acc, type_))
    for order_id in range(1, n + 1):
        step = rand()
        if step < 0.1:
            mid -= 1
        elif step > 0.9:
            mid += 1
        if mid < 2 * spread_ticks:
            mid = 2 * spread_ticks
        r = rand()
        type_ = "L"
        for limit, t in thresholds:
            if r < limit:
                type_ = t
                break
        if type_ == "C" and not live:
            type_ = "L"
        side = "B" if rand() < 0.5 else "S"
        if type_ == "C":
            # most cancels hit recent orders (as market makers re-quote), some old ones
            if rand() < 0.8:
                i = randint(max(0, len(live) - 200), len(live) - 1)
            else:
                i = randint(0, len(live) - 1)
            target = live[i]
            last = live.pop()
            if i < len(live):
                live[i] = last
                live_index[last[0]] = i
            del live_index[target[0]]
            rows.append((target[1], "C", target[2], 0, order_id, target[0]))
            continue
        qty = randint(1, max_qty)
        if type_ == "M":
            rows.append((side, "M", 0, qty, order_id, 0))
            continue
        if type_ == "L":
            # mostly behind the mid; ~10% cross it by a few ticks
            offset = randint(-3, spread_ticks) if rand() < 0.9 else randint(-5, 0)
        else:
            offset = randint(-5, 1)     # IOC/FOK: aggressive
        price = mid - offset if side == "B" else mid + offset
        rows.append((side, type_, price, qty, order_id, 0))
        if type_ == "L":
            live_index[order_id] = len(live)
            live.append([order_id, side, price])
    return rows


def write_csv(path, rows):
    """Write rows with the header.  O(rows)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows(rows)


def read_csv(path):
    """Read a workload CSV into tuples; ValueError on a bad header, side or type.  O(rows)."""
    out = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            raise ValueError("%s: header must be %s" % (path, ",".join(HEADER)))
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            side, type_ = row[0].strip(), row[1].strip()
            if side not in ("B", "S") or type_ not in ("L", "M", "I", "F", "C"):
                raise ValueError("%s:%d: bad side/type %r" % (path, lineno, row))
            out.append((side, type_, int(row[2]), int(row[3]), int(row[4]), int(row[5])))
    return out


def to_commands(rows, symbol_id, accounts, first_seq):
    """Turn rows into ``[(seq, Command)]`` starting at ``first_seq``.

    Row ``i`` gets seq ``first_seq + i``; a NEW order's matcher id is its seq, so
    cancels are resolved through the map ``order_id -> seq``.  Orders go
    round-robin over accounts ``1..accounts``; a cancel uses its target's account.
    O(rows).  Raises ValueError for a cancel of an unknown order_id.
    """
    from engine.commands import Command
    from ringbuf.records import CommandKind, OrderType, Side, TimeInForce
    new_order = int(CommandKind.NEW_ORDER)
    cancel = int(CommandKind.CANCEL)
    limit, market = int(OrderType.LIMIT), int(OrderType.MARKET)
    tifs = {"L": int(TimeInForce.GTC), "I": int(TimeInForce.IOC), "F": int(TimeInForce.FOK),
            "M": int(TimeInForce.IOC)}
    sides = {"B": int(Side.BUY), "S": int(Side.SELL)}
    seq_of = {}
    account_of = {}
    out = []
    n_orders = 0
    for i, (side, type_, price, qty, order_id, target) in enumerate(rows):
        seq = first_seq + i
        if type_ == "C":
            if target not in seq_of:
                raise ValueError("row %d cancels unknown order_id %d" % (i, target))
            cmd = Command(kind=cancel, symbol_id=symbol_id, account_id=account_of[target],
                          order_id=seq_of[target])
        else:
            account = 1 + n_orders % accounts
            n_orders += 1
            seq_of[order_id] = seq
            account_of[order_id] = account
            cmd = Command(kind=new_order, side=sides[side],
                          order_type=market if type_ == "M" else limit, tif=tifs[type_],
                          symbol_id=symbol_id, account_id=account, price=price, qty=qty)
        out.append((seq, cmd))
    return out


def generate_commands(n, seed=1, symbol_id=1, accounts=1000, mid=100000, spread_ticks=50,
                      max_qty=100):
    """The same mix as :func:`generate`, vectorized (numpy): ``(commands, target_row)``.

    ``commands`` is a ``COMMAND_DTYPE`` array of ``n`` records (NEW_ORDER and
    CANCEL, ``symbol_id``); ``target_row[i]`` is, for a cancel, the row of the
    limit order it cancels (always an earlier row), else -1.  A cancel's
    ``order_id`` must be set to its target's sequence once that is known (the
    load generator does it at claim time).  Unlike :func:`generate` it does not
    track which orders are still resting: a target may already be filled or
    cancelled (the cancel is then refused, ORDER_NOT_FOUND).  Orders go
    round-robin over accounts ``1..accounts``; a cancel uses its target's
    account, side and price.  O(n), about 0.1 us per row; deterministic in
    ``seed``.

    >>> cmds, target = generate_commands(1000, seed=7)
    >>> bool((target[target >= 0] < (target >= 0).nonzero()[0]).all())
    True
    """
    import numpy as np
    from ringbuf.records import COMMAND_DTYPE, CommandKind, OrderType, Side, TimeInForce
    rng = np.random.default_rng(seed)
    steps = rng.choice(np.array([-1, 0, 1], dtype=np.int64), size=n, p=[0.1, 0.8, 0.1])
    mids = np.maximum(mid + np.cumsum(steps), 2 * spread_ticks)
    shares = np.cumsum([share for _, share in TYPE_SHARES])
    codes = np.searchsorted(shares, rng.random(n) * shares[-1], side="right")
    codes = np.minimum(codes, len(TYPE_SHARES) - 1)
    names = [t for t, _ in TYPE_SHARES]
    is_ = {t: codes == names.index(t) for t in names}
    if n:
        is_["C"][0] = False                 # the first row cannot cancel anything
        is_["L"][0] = True
        for t in ("I", "F", "M"):
            is_[t][0] = False
    buy = rng.random(n) < 0.5
    qty = rng.integers(1, max_qty + 1, size=n)
    crossing = rng.random(n) >= 0.9
    offset = np.where(crossing, rng.integers(-5, 1, size=n),
                      rng.integers(-3, spread_ticks + 1, size=n))
    aggressive = is_["I"] | is_["F"]
    offset = np.where(aggressive, rng.integers(-5, 2, size=n), offset)
    price = np.where(buy, mids - offset, mids + offset)
    price[is_["M"]] = 0
    orders = ~is_["C"]
    account = 1 + (np.cumsum(orders) - 1) % accounts

    cmds = np.zeros(n, dtype=COMMAND_DTYPE)
    cmds["symbol_id"] = symbol_id
    cmds["kind"] = np.where(orders, int(CommandKind.NEW_ORDER), int(CommandKind.CANCEL))
    cmds["side"] = np.where(buy, int(Side.BUY), int(Side.SELL))
    cmds["order_type"] = np.where(is_["M"], int(OrderType.MARKET), int(OrderType.LIMIT))
    tif = np.full(n, int(TimeInForce.GTC), dtype=np.int64)
    tif[is_["I"] | is_["M"]] = int(TimeInForce.IOC)
    tif[is_["F"]] = int(TimeInForce.FOK)
    cmds["tif"] = tif
    cmds["account_id"] = account
    cmds["price"] = price
    cmds["qty"] = qty

    target_row = np.full(n, -1, dtype=np.int64)
    cancel_rows = np.nonzero(is_["C"])[0]
    limit_rows = np.nonzero(is_["L"])[0]
    if len(cancel_rows):
        before = np.searchsorted(limit_rows, cancel_rows)      # limit rows earlier than each cancel
        recent = rng.random(len(cancel_rows)) < 0.8
        back = np.where(recent, rng.integers(0, 200, size=len(cancel_rows)) % before,
                        (rng.random(len(cancel_rows)) * before).astype(np.int64))
        targets = limit_rows[before - 1 - back]
        target_row[cancel_rows] = targets
        cmds["account_id"][cancel_rows] = account[targets]
        cmds["side"][cancel_rows] = cmds["side"][targets]
        cmds["price"][cancel_rows] = price[targets]
        cmds["qty"][cancel_rows] = 0
        cmds["order_type"][cancel_rows] = 0
        cmds["tif"][cancel_rows] = 0
    return cmds, target_row
