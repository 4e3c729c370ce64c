"""Bad commands of every kind are rejected with the right reason and change nothing;
amend and cancel edge cases."""
import pytest

from engine.commands import Command
from engine.events import ListSink
from engine.matcher import Matcher
from engine.config import DEFAULT_CONFIG
from ringbuf.records import CommandKind as CK, EventKind as K, OrderFlags as F, \
    OrderType as OT, Reason as R, TimeInForce as T

pytestmark = pytest.mark.pypy

BUY, SELL, SYM = 1, 2, 1


def world():
    sink = ListSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    seq = 0
    for acct in (1, 2):
        for asset in (1, 2, 3):
            seq += 1
            m.process(seq, Command.deposit(acct, asset, 10 ** 9))
    seq += 1
    m.process(seq, Command.limit(1, SYM, BUY, 100, 5, client_order_id=77))    # order 7
    seq += 1
    m.process(seq, Command.limit(1, SYM, SELL, 110, 5))                      # order 8
    seq += 1
    m.process(seq, Command.stop(1, SYM, SELL, OT.STOP_LOSS, stop_price=90, qty=1))  # 9
    sink.clear()
    return m, sink, seq + 1


def lim(**kw):
    base = dict(kind=CK.NEW_ORDER, side=BUY, order_type=OT.LIMIT, tif=T.GTC, symbol_id=SYM,
                account_id=2, price=100, qty=1)
    base.update(kw)
    return Command(**base)


REJECTS = [
    (Command(kind=99), R.UNKNOWN_COMMAND),
    (lim(symbol_id=42), R.UNKNOWN_SYMBOL),
    (lim(account_id=999), R.UNKNOWN_ACCOUNT),
    (lim(account_id=0), R.UNKNOWN_ACCOUNT),                  # the fee account cannot trade
    (lim(side=0), R.INVALID_SIDE),
    (lim(side=3), R.INVALID_SIDE),
    (lim(order_type=0), R.INVALID_ORDER_TYPE),
    (lim(order_type=7), R.INVALID_ORDER_TYPE),
    (lim(tif=0), R.INVALID_TIF),
    (lim(tif=9), R.INVALID_TIF),
    (lim(order_type=OT.MARKET, price=0, tif=T.GTT), R.INVALID_TIF),
    (lim(order_type=OT.STOP_LIMIT, stop_price=120, tif=T.FOK), R.INVALID_TIF),
    (lim(flags=F.BY_CLIENT_ID), R.INVALID_FLAGS),
    (lim(flags=64), R.INVALID_FLAGS),
    (lim(flags=F.POST_ONLY, tif=T.IOC), R.INVALID_FLAGS),
    (lim(flags=F.POST_ONLY_REPRICE), R.INVALID_FLAGS),
    (lim(flags=F.BY_FUNDS), R.INVALID_FLAGS),
    (lim(order_type=OT.MARKET, price=0, side=SELL, flags=F.BY_FUNDS, qty=0, funds=5),
     R.INVALID_FLAGS),
    (lim(stp=4), R.INVALID_STP),
    (lim(price=0), R.INVALID_PRICE),
    (lim(price=-5), R.INVALID_PRICE),
    (lim(price=(1 << 63) - 1), R.VALUE_OVERFLOW),
    (lim(order_type=OT.MARKET, price=100, tif=T.IOC), R.INVALID_PRICE),
    (lim(qty=0), R.INVALID_QTY),
    (lim(qty=-1), R.INVALID_QTY),
    (lim(qty=(1 << 63) - 1), R.QTY_ABOVE_MAX),
    (lim(order_type=OT.MARKET, price=0, tif=T.IOC, flags=F.BY_FUNDS, qty=0, funds=0),
     R.INVALID_FUNDS),
    (lim(order_type=OT.MARKET, price=0, tif=T.IOC, flags=F.BY_FUNDS, qty=3, funds=5),
     R.INVALID_QTY),
    (lim(order_type=OT.MARKET, price=0, tif=T.IOC, flags=F.BY_FUNDS, qty=0, funds=1 << 63),
     R.VALUE_OVERFLOW),
    (lim(order_type=OT.STOP_LIMIT, stop_price=0), R.INVALID_STOP_PRICE),
    (lim(stop_price=5), R.INVALID_STOP_PRICE),
    (lim(tif=T.GTT, expire_ns=0), R.INVALID_EXPIRY),
    (lim(client_order_id=77, account_id=1), R.DUPLICATE_CLIENT_ORDER_ID),
    (lim(price=110, flags=F.POST_ONLY), R.POST_ONLY_WOULD_TAKE),
    (lim(price=10 ** 4, qty=10 ** 6), R.INSUFFICIENT_FUNDS),
    (lim(price=200, qty=6, tif=T.FOK), R.FOK_NOT_FILLABLE),
    (lim(symbol_id=2, order_type=OT.MARKET, price=0, tif=T.IOC), R.NO_LIQUIDITY),
    (Command.cancel(2, order_id=7), R.NOT_ORDER_OWNER),
    (Command.cancel(1, order_id=12345), R.ORDER_NOT_FOUND),
    (Command.cancel(1, client_order_id=78), R.ORDER_NOT_FOUND),
    (Command.cancel(2, client_order_id=77), R.ORDER_NOT_FOUND),   # not owner's coid
    (Command.cancel(999, order_id=7), R.UNKNOWN_ACCOUNT),
    (Command(kind=CK.CANCEL, account_id=1, order_id=7, flags=1), R.INVALID_FLAGS),
    (Command.amend(1, order_id=7, qty=5), R.AMEND_NOT_ALLOWED),       # nothing changes
    (Command.amend(1, order_id=7, price=110), R.AMEND_NOT_ALLOWED),   # would cross
    (Command.amend(1, order_id=9, qty=3), R.AMEND_NOT_ALLOWED),       # stop orders
    (Command.amend(1, order_id=7, qty=-1), R.INVALID_QTY),
    (Command.amend(1, order_id=7, price=-1), R.INVALID_PRICE),
    (Command.amend(1, order_id=7, qty=10 ** 9), R.QTY_ABOVE_MAX),
    (Command.amend(2, order_id=7, qty=3), R.NOT_ORDER_OWNER),
    (Command.amend(1, order_id=8, qty=10 ** 6), R.INSUFFICIENT_FUNDS),
    (Command.mass_cancel(999), R.UNKNOWN_ACCOUNT),
    (Command.mass_cancel(1, symbol_id=42), R.UNKNOWN_SYMBOL),
    (Command.deposit(0, 1, 5), R.UNKNOWN_ACCOUNT),
    (Command.deposit(1, 42, 5), R.UNKNOWN_ASSET),
    (Command.deposit(1, 1, 0), R.INVALID_AMOUNT),
    (Command.deposit(1, 1, -5), R.INVALID_AMOUNT),
    (Command.deposit(1, 1, (1 << 62)), R.VALUE_OVERFLOW),
    (Command.withdraw(999, 1, 5), R.UNKNOWN_ACCOUNT),
    (Command.withdraw(1, 1, 10 ** 10), R.INSUFFICIENT_FUNDS),
    (Command.withdraw(1, 2, 0), R.INVALID_AMOUNT),
    (Command.halt(42), R.UNKNOWN_SYMBOL),
    (Command.resume(SYM), R.NOT_HALTED),
    (Command.stop(2, SYM, SELL, OT.STOP_LOSS, stop_price=90, qty=1), None),   # accepted
]


@pytest.mark.parametrize("cmd,reason", REJECTS, ids=[
    "%d-%s" % (i, R(r).name if r is not None else "accepted") for i, (_, r) in enumerate(REJECTS)])
def test_reject_reason_and_no_state_change(cmd, reason):
    m, sink, seq = world()
    before = m._encode(clock=False)
    m.process(seq, cmd)
    m._check()
    events = sink.events
    if reason is None:
        assert events[0].kind == K.ACCEPTED
        return
    assert len(events) == 1
    e = events[0]
    assert (K(e.kind), R(e.reason)) == (K.REJECTED, reason)
    assert e.seq == seq and e.flags & 4
    assert m._encode(clock=False) == before


def _do(m, sink, seq, cmd):
    sink.clear()
    m.process(seq, cmd)
    m._check()
    return sink.events


def test_amend_qty_down_keeps_priority_up_loses_it():
    m, sink, seq = world()
    _do(m, sink, seq, Command.limit(2, SYM, BUY, 100, 5))     # order seq, behind 7
    book = m.book(SYM)
    assert book.orders_at(BUY, 100) == [7, seq]
    _do(m, sink, seq + 1, Command.amend(1, order_id=7, qty=3))
    assert book.orders_at(BUY, 100) == [7, seq]
    assert m.best_bid(SYM) == (100, 8)
    _do(m, sink, seq + 2, Command.amend(1, order_id=7, qty=4))
    assert book.orders_at(BUY, 100) == [seq, 7]
    ev = _do(m, sink, seq + 3, Command.amend(2, order_id=seq, price=101))
    assert [K(e.kind) for e in ev] == [K.ACCEPTED, K.AMENDED, K.BOOK_DELTA, K.BOOK_DELTA]
    assert m.best_bid(SYM) == (101, 5)


def test_amend_below_filled_rejected_and_hold_follows_amend():
    m, sink, seq = world()
    _do(m, sink, seq, Command.limit(2, SYM, SELL, 100, 3))    # fills 3 of order 7
    assert m.order(7).filled == 3
    ev = _do(m, sink, seq + 1, Command.amend(1, order_id=7, qty=3))
    assert R(ev[0].reason) == R.AMEND_BELOW_FILLED
    ev = _do(m, sink, seq + 2, Command.amend(1, order_id=7, qty=2))
    assert R(ev[0].reason) == R.AMEND_BELOW_FILLED
    held_before = m.balance(1, 1)[1]
    _do(m, sink, seq + 3, Command.amend(1, order_id=7, qty=10, price=101))
    assert m.order(7).remaining == 7
    assert m.balance(1, 1)[1] == held_before + 101 * 7 - 100 * 2


def test_cancel_by_client_id_and_reuse_after_done():
    m, sink, seq = world()
    ev = _do(m, sink, seq, Command.cancel(1, client_order_id=77))
    assert [K(e.kind) for e in ev] == [K.ACCEPTED, K.CANCELLED, K.BOOK_DELTA]
    assert ev[1].order_id == 7 and R(ev[1].reason) == R.CANCELLED_BY_USER
    ev = _do(m, sink, seq + 1, Command.cancel(1, client_order_id=77))
    assert R(ev[0].reason) == R.ORDER_NOT_FOUND
    ev = _do(m, sink, seq + 2, Command.limit(1, SYM, BUY, 100, 1, client_order_id=77))
    assert ev[0].kind == K.ACCEPTED
    ev = _do(m, sink, seq + 3, Command.cancel(1, order_id=7))
    assert R(ev[0].reason) == R.ORDER_NOT_FOUND                     # already cancelled


def test_mass_cancel_by_symbol_and_all():
    m, sink, seq = world()
    _do(m, sink, seq, Command.limit(1, 2, BUY, 300, 1))
    ev = _do(m, sink, seq + 1, Command.mass_cancel(1, symbol_id=SYM))
    assert ev[0].kind == K.ACCEPTED and ev[0].qty == 3
    cancelled = [e.order_id for e in ev if e.kind == K.CANCELLED]
    assert cancelled == [7, 8, 9]
    assert all(R(e.reason) == R.CANCELLED_MASS for e in ev if e.kind == K.CANCELLED)
    ev = _do(m, sink, seq + 2, Command.mass_cancel(1))
    assert [e.order_id for e in ev if e.kind == K.CANCELLED] == [seq]
    assert m.balance(1, 1)[1] == 0 and m.balance(1, 2)[1] == 0
