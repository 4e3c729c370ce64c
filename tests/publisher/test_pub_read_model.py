"""The read model, built only from the matcher's events, agrees with the matcher.

A seeded random session (every order kind) runs through the real
engine.matcher.Matcher; its events go through the 128-byte records and the
publisher's decoder into the ReadModel in random batch sizes.  At checkpoints
the model's books, best bid/ask, last price, open orders and balances must
equal the matcher's own state.
"""
import random

import pytest

from engine.config import DEFAULT_CONFIG
from engine.events import BytesSink
from engine.matcher import Matcher
from publisher.event_decoder import decode_chunk
from publisher.read_model import ReadModel
from publisher.service import PublisherService
from pub_session import ACCOUNTS, matcher_l2, session


class _NullHub(object):
    def publish(self, changes):
        pass


def _model():
    specs = {sid: DEFAULT_CONFIG.symbol_by_id(sid) for sid in DEFAULT_CONFIG.symbols}
    return ReadModel(sorted(DEFAULT_CONFIG.symbols), specs=specs)


def _compare(model, matcher):
    for sid in DEFAULT_CONFIG.symbols:
        view = model.symbol(sid)
        bids, asks = matcher_l2(matcher, sid)
        assert dict(view.bids) == bids, sid
        assert dict(view.asks) == asks, sid
        assert view.best_bid() == matcher.best_bid(sid)
        assert view.best_ask() == matcher.best_ask(sid)
        assert view.last_price == matcher.last_price(sid)
    for acct in ACCOUNTS:
        balances = model.account_balances(acct)
        for asset in DEFAULT_CONFIG.assets:
            assert balances.get(asset, (0, 0)) == matcher.balance(acct, asset), (acct, asset)
        mine = {o.order_id: o.remaining for o in model.open_orders(acct)}
        theirs = {oid: o.remaining for oid, o in matcher.orders.items() if o.account_id == acct}
        assert mine == theirs, acct
    model._check()


def _run(n, seed, checkpoints=10):
    rng = random.Random(seed)
    sink = BytesSink()
    matcher = Matcher(DEFAULT_CONFIG, sink)
    model = _model()
    service = PublisherService(None, model, _NullHub())
    cmds = session(n, seed)
    every = max(1, n // checkpoints)
    pending = []
    for seq, cmd in enumerate(cmds, 1):
        matcher.process(seq, cmd)
        pending.append(sink.take())
        if rng.random() < 0.3 or seq % every == 0:
            events = []
            for chunk in pending:
                decode_chunk(chunk, events)
            pending = []
            service.on_events(events)
        if seq % every == 0:
            assert model.applied_seq == seq
            _compare(model, matcher)
    return model, matcher


def test_read_model_equals_matcher_small():
    model, _ = _run(4000, seed=11)
    assert sum(len(v.trades) for v in model.symbols.values()) > 100   # the session traded


def test_duplicate_events_after_matcher_restart_are_skipped():
    sink = BytesSink()
    matcher = Matcher(DEFAULT_CONFIG, sink)
    model = _model()
    service = PublisherService(None, model, _NullHub())
    chunks = []
    for seq, cmd in enumerate(session(600, seed=5), 1):
        matcher.process(seq, cmd)
        chunks.append(sink.take())
    events = []
    for c in chunks:
        decode_chunk(c, events)
    half = len(events) // 2
    service.on_events(events[:half])
    service.on_events(events[half // 2:])       # a restarted matcher re-publishes a tail
    assert service.skipped == half - half // 2
    _compare(model, matcher)


@pytest.mark.timeout(600)
def test_read_model_equals_matcher_100k():
    _run(100_000, seed=12, checkpoints=20)


def test_24h_window_uses_stream_time():
    from engine.commands import Command
    from engine.events import ListSink
    sink = ListSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    model = _model()
    day = 24 * 3600 * 10 ** 9
    t = 1_700_000_000 * 10 ** 9
    seq = 0
    cmds = [Command.deposit(1, a, 10 ** 15, timestamp_ns=t) for a in (1, 2, 3)]
    cmds += [Command.deposit(2, a, 10 ** 15, timestamp_ns=t) for a in (1, 2, 3)]
    for price, dt in ((100, 0), (120, 3600), (90, 7200), (110, day + 1800)):
        cmds.append(Command.limit(1, 1, 2, price, 5, timestamp_ns=t + dt))
        cmds.append(Command.limit(2, 1, 1, price, 5, timestamp_ns=t + dt))
    for cmd in cmds:
        seq += 1
        m.process(seq, cmd)
    model.apply(sink.take())
    stats = model.symbol(1).stats()
    # the first trade (100 at t) left the window when the 110 trade came at t + 1 day + 30 min
    assert stats == {"open": 120, "high": 120, "low": 90, "last": 110, "volume": 15,
                     "quote_volume": 120 * 5 + 90 * 5 + 110 * 5}


def test_seed_from_matcher_snapshot_then_events():
    """Rebuild rule: a model seeded from a restored matcher snapshot plus later events
    equals the matcher (books, open orders, balances)."""
    sink = BytesSink()
    matcher = Matcher(DEFAULT_CONFIG, sink)
    cmds = session(3000, seed=9)
    for seq, cmd in enumerate(cmds[:1500], 1):
        matcher.process(seq, cmd)
    sink.take()
    restored = Matcher.restore(DEFAULT_CONFIG, matcher.snapshot(), BytesSink())
    model = _model()
    model.seed_from_matcher(restored, 1500)
    service = PublisherService(None, model, _NullHub())
    service.last_seq, service.last_index = 1500, 1 << 62
    for seq, cmd in enumerate(cmds[1500:], 1501):
        matcher.process(seq, cmd)
        events = []
        decode_chunk(sink.take(), events)
        service.on_events(events)
    assert model.applied_seq == 3000
    _compare(model, matcher)
