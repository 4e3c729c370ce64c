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
           "TYPE_SHARES"]

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
