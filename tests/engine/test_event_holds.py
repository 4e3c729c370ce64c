"""The events carry every live order's hold and every stop's stop price (docs/records.md).

A reader folding the event stream -- hold = ``aux`` of the order's last ACCEPTED, FILL,
AMENDED or naming BOOK_DELTA -- must know exactly what the matcher holds for each live
order after every command, without the matcher's hold rule M4; and a waiting stop's
stop price is in its ACCEPTED (``trade_id``).  DEFAULT_CONFIG has a maker rebate, a
maker fee and a zero maker fee (three shapes of the rest hold).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _engine_streams as streams  # noqa: E402

from engine.config import DEFAULT_CONFIG  # noqa: E402
from engine.events import ListSink  # noqa: E402
from engine.matcher import Matcher  # noqa: E402
from ringbuf.records import CommandKind, EventFlags, EventKind  # noqa: E402

pytestmark = [pytest.mark.pypy, pytest.mark.timeout(300)]

_HOLD_KINDS = (EventKind.ACCEPTED, EventKind.FILL, EventKind.AMENDED)


def _fold(events, holds, stops):
    for e in events:
        if e.kind == EventKind.ACCEPTED and e.command_kind == CommandKind.NEW_ORDER:
            holds[e.order_id] = e.aux
            if e.flags & EventFlags.STOP:
                stops[e.order_id] = e.trade_id
        elif e.kind in _HOLD_KINDS or (e.kind == EventKind.BOOK_DELTA and e.order_id):
            holds[e.order_id] = e.aux


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_folded_holds_equal_the_matchers_after_every_command(seed):
    sink = ListSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    holds, stops = {}, {}
    kinds = set()
    seq = 0
    for cmd in streams.random_stream(seed, 4000):
        seq += 1
        m.process(seq, cmd)
        events = sink.take()
        kinds.update((e.kind, e.reason) for e in events)
        _fold(events, holds, stops)
        if cmd.kind == CommandKind.NEW_ORDER and cmd.stop_price and seq in m.orders:
            assert stops[seq] == cmd.stop_price
        for oid, o in m.orders.items():
            assert holds.get(oid) == o.hold, (seq, oid)
            if o.level is None:                           # a waiting stop
                assert stops[oid] == o.stop_price
        for account_id in range(1, 7):                    # held = sum of the folded holds
            for asset in streams.ASSETS:
                held = sum(holds[oid] for oid, o in m.orders.items()
                           if o.account_id == account_id and asset ==
                           (m.symbols[o.symbol_id].spec.quote_asset if o.side == 1
                            else m.symbols[o.symbol_id].spec.base_asset))
                assert m.balance(account_id, asset)[1] == held, (seq, account_id, asset)
    # the stream exercised what the fold relies on
    assert (EventKind.AMENDED, 503) in kinds and (EventKind.FILL, 0) in kinds
