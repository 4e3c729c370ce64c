"""The columnar read model gives the same views as the object model (the reference).

A seeded session of generated commands (every order kind, cancels, amends, mass
cancels, withdrawals, a few halts; pub_session.session) runs through the real
engine.matcher.Matcher; its 128-byte events go, in random batch sizes, into both
read models through their services (object model: the decoder's tuples and
PublisherService; columnar: EventBatch and ColumnarService).  After every batch the
two ``apply`` results must agree (L2 changes, trades, tickers, closed sequences,
execution reports); at checkpoints every view must: books (level 1 and 2 JSON),
tickers with 24h statistics, trade tapes, every order (``order_json`` plus status,
hold, fills...), rejections, per-account open and all-order listings, client order
id lookups and balances (available and held), level 3 books and the REST history
(fills per account, candles: publisher/history.py).

Two configurations: the shipped keeps (1 ms to 3 ms between commands), and small keeps
(done orders, rejections, trades) with stream time stretched so that the 24h
window slides and done orders are forgotten and compacted.
Default: 50k commands; ``-m slow``: 1M.
"""
import random

import pytest

from engine.commands import Command
from engine.config import DEFAULT_CONFIG
from engine.events import BytesSink
from engine.matcher import Matcher
from publisher.columnar import ColumnarReadModel, EventBatch
from publisher.columnar_service import ColumnarService
from publisher.event_decoder import decode_chunk
from publisher.products import Catalog
from publisher.read_model import ReadModel
from publisher.service import PublisherService
from publisher.views import book_json, order_json, ticker_json, trade_json
from pub_session import ACCOUNTS, T0, session

_SPECS = {sid: DEFAULT_CONFIG.symbol_by_id(sid) for sid in DEFAULT_CONFIG.symbols}
_CATALOG = Catalog.from_exchange(DEFAULT_CONFIG)
_ORDER_EXTRA = ("account_id", "symbol_id", "flags", "price", "qty", "stop_price", "funds",
                "filled", "remaining", "executed_value", "fees", "status", "done_reason",
                "reason", "client_order_id", "created_ns", "done_ns", "last_seq", "fills",
                "hold", "is_open")


class _NullHub(object):
    user_subs = None

    def publish(self, changes):
        pass


def _commands(n, seed, stretch=1):
    """session() with a few halts/resumes; ``stretch`` multiplies stream time."""
    rng = random.Random(seed + 1000)
    out = []
    for cmd in session(n, seed):
        if stretch != 1:
            cmd.timestamp_ns = T0 + (cmd.timestamp_ns - T0) * stretch
            if cmd.expire_ns:
                cmd.expire_ns = T0 + (cmd.expire_ns - T0) * stretch
        out.append(cmd)
        if rng.random() < 0.0005:
            sym = rng.choice((1, 2, 3))
            out.append(Command.halt(sym, timestamp_ns=cmd.timestamp_ns, producer_id=0x7F00))
            out.append(Command.resume(sym, timestamp_ns=cmd.timestamp_ns, producer_id=0x7F00))
    return out[:n]


def _trade_tuple(t):
    return (t.trade_id, t.price, t.qty, t.taker_side, t.timestamp_ns, t.seq,
            t.maker_order_id, t.taker_order_id)


def _order_view(o):
    product = _CATALOG.by_id.get(o.symbol_id)
    return (order_json(o, product), tuple(getattr(o, a) for a in _ORDER_EXTRA))


def _compare_changes(a, b, orders=True):
    """Equal batch changes; ``orders``: also the order views of the user reports."""
    assert a.level2 == b.level2
    assert list(a.level2) == list(b.level2)
    for sym, levels in a.level2.items():
        assert list(levels.items()) == list(b.level2[sym].items()), sym
    assert sorted(a.trades) == sorted(b.trades)
    for sym, trades in a.trades.items():
        assert [_trade_tuple(t) for t in trades] == [_trade_tuple(t) for t in b.trades[sym]]
    assert a.ticker == b.ticker
    assert list(a.closed_seqs) == list(b.closed_seqs)
    assert a.ts_ns == b.ts_ns
    assert [tuple(e) for e in a.status] == [tuple(e) for e in b.status]
    assert sorted(a.user) == sorted(b.user)
    for acct, reports in a.user.items():
        theirs = b.user[acct]
        assert [tuple(e) for e, _o in reports] == [tuple(e) for e, _o in theirs], acct
        assert [o is None for _e, o in reports] == [o is None for _e, o in theirs], acct
        if orders:
            assert [None if o is None else _order_view(o) for _e, o in reports] == \
                [None if o is None else _order_view(o) for _e, o in theirs], acct


def _compare_views(ref, col, client_keys):
    assert ref.applied_seq == col.applied_seq
    assert ref.events_applied == col.events_applied
    for p in _CATALOG.products:
        sid = p.symbol_id
        a, b = ref.symbol(sid), col.symbol(sid)
        assert dict(a.bids) == dict(b.bids) and dict(a.asks) == dict(b.asks), sid
        for level in (1, 2):
            assert book_json(a, p, level, ref.applied_seq) == book_json(b, p, level, col.applied_seq)
        assert a.stats() == b.stats(), sid
        assert ticker_json(a, p, ref.applied_seq) == ticker_json(b, p, col.applied_seq)
        assert (a.last_price, a.last_qty, a.last_trade_id, a.halted, a.book_seq) == \
            (b.last_price, b.last_qty, b.last_trade_id, b.halted, b.book_seq), sid
        assert len(a.trades) == len(b.trades)
        assert [_trade_tuple(t) for t in a.trades] == [_trade_tuple(t) for t in b.trades]
        assert [trade_json(t, p) for t in list(a.trades)[-100:]] == \
            [trade_json(t, p) for t in list(b.trades)[-100:]]
    ref_ids = sorted(ref.orders)
    col_orders = col.orders
    assert ref_ids == sorted(col_orders)
    for oid in ref_ids:
        assert _order_view(ref.order(oid)) == _order_view(col.order(oid)), oid
    for oid in ref.rejections:
        assert _order_view(ref.order(oid)) == _order_view(col.order(oid)), oid
    probe = ref_ids[:1] + [max(ref_ids or [0]) + 10 ** 6]
    for oid in probe:
        assert (ref.order(oid) is None) == (col.order(oid) is None)
    for acct in ACCOUNTS + (999,):
        for sid in (None, 1, 2, 3):
            assert [o.order_id for o in ref.open_orders(acct, sid)] == \
                [o.order_id for o in col.open_orders(acct, sid)], (acct, sid)
            assert [o.order_id for o in ref.account_orders(acct, sid)] == \
                [o.order_id for o in col.account_orders(acct, sid)], (acct, sid)
        assert ref.account_balances(acct) == col.account_balances(acct), acct
    for acct, coid in client_keys:
        a, b = ref.order_by_client_id(acct, coid), col.order_by_client_id(acct, coid)
        assert (a is None) == (b is None), (acct, coid)
        if a is not None:
            assert a.order_id == b.order_id
    for p in _CATALOG.products:                      # REST history (issue 16): level 3
        assert ref.level3(p.symbol_id) == col.level3(p.symbol_id), p.name
    assert ref.history.snapshot() == col.history.snapshot()    # fills rings, candles
    ref._check()
    col._check()


def _run(n, seed, checkpoints=4, stretch=1, keeps=None, max_batch=600):
    keeps = keeps or {}
    rng = random.Random(seed)
    sink = BytesSink()
    matcher = Matcher(DEFAULT_CONFIG, sink)
    ref = ReadModel(sorted(DEFAULT_CONFIG.symbols), specs=_SPECS, **keeps)
    col = ColumnarReadModel(sorted(DEFAULT_CONFIG.symbols), specs=_SPECS, **keeps)
    ref_service = PublisherService(None, ref, _NullHub())
    col_service = ColumnarService(None, col, _NullHub())
    cmds = _commands(n, seed, stretch)
    client_keys = sorted({(c.account_id, c.client_order_id) for c in cmds
                          if c.client_order_id})[:300] + [(201, 10 ** 9)]
    every = max(1, n // checkpoints)
    pending = []
    stats = {"batches": 0, "events": 0, "done": 0, "trades": 0}
    # commands per batch (~3.4 events each): both the per-event path (<= SMALL_BATCH
    # events) and the vectorized one, up to ~max_batch events
    sizes = (1, 3, 12, 60, max(1, max_batch // 3))
    since, target = 0, 1
    for seq, cmd in enumerate(cmds, 1):
        matcher.process(seq, cmd)
        pending.append(sink.take())
        since += 1
        if since >= target or seq % every == 0 or seq == n:
            since, target = 0, rng.choice(sizes)
            stats["large"] = stats.get("large", 0) + (sum(len(p) for p in pending) > 128 * 128)
            data = b"".join(pending)
            pending = []
            if not data:
                continue
            events = []
            decode_chunk(data, events)
            if rng.random() < 0.02 and len(events) > 4:     # a re-published tail (rule 2)
                cut = rng.randrange(1, len(events))
                a = ref_service.on_events(events[:cut])
                b = col_service.on_events(EventBatch.from_bytes(data[:cut * 128]))
                _compare_changes(a, b)
                back = rng.randrange(0, cut)
                events, data = events[back:], data[back * 128:]
            a = ref_service.on_events(events)
            b = col_service.on_events(EventBatch.from_bytes(data))
            assert (a is None) == (b is None)
            if a is not None:                    # report order views: every 4th batch
                _compare_changes(a, b, orders=stats["batches"] % 4 == 0)
            assert ref_service.skipped == col_service.skipped
            stats["batches"] += 1
            stats["events"] += len(events)
        if seq % every == 0 or seq == n:
            _compare_views(ref, col, client_keys)
    stats["done"] = col.done_total
    stats["trades"] = sum(len(v.window) for v in col.symbols.values())
    return ref, col, stats


@pytest.mark.timeout(300)          # ~20 s on a quiet machine; 90 s seen at load 7
def test_columnar_equals_object_model_50k():
    ref, col, stats = _run(50_000, seed=21)
    assert stats["events"] > 100_000 and stats["done"] > 10_000
    assert stats["large"] > 100 and stats["batches"] > 2 * stats["large"]   # both paths
    assert any(v.halted is False and v.trades for v in col.symbols.values())
    assert ref.rejections                           # rejections were compared


@pytest.mark.timeout(300)
def test_columnar_equals_object_model_small_keeps_sliding_window():
    """Done orders forgotten (and compacted), rejections and trade rings overflowing, the
    24h window sliding (stream time stretched 10,000x: ~20 s between commands)."""
    keeps = {"done_orders_keep": 1500, "rejections_keep": 300, "trades_keep": 50}
    ref, col, stats = _run(20_000, seed=22, stretch=10_000, keeps=keeps, checkpoints=5)
    assert col._orders.gen > 0                      # a compaction happened
    assert any(v.window.head > 0 for v in col.symbols.values())   # the window slid
    assert stats["done"] > 5 * 1500


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_columnar_equals_object_model_1m():
    _run(1_000_000, seed=23, checkpoints=5, max_batch=4096)


@pytest.mark.timeout(120)
def test_conflated_changes_merge_equal():
    """The hub's conflation (``Changes.merge`` of consecutive batches) gives the same
    merged changes for both models, across the per-event and the vectorized paths."""
    rng = random.Random(31)
    sink = BytesSink()
    matcher = Matcher(DEFAULT_CONFIG, sink)
    ref = ReadModel(sorted(DEFAULT_CONFIG.symbols), specs=_SPECS)
    col = ColumnarReadModel(sorted(DEFAULT_CONFIG.symbols), specs=_SPECS)
    acc_ref = acc_col = None
    merged = 0
    since, target = 0, 2
    for seq, cmd in enumerate(_commands(6000, seed=31), 1):
        matcher.process(seq, cmd)
        since += 1
        if since >= target:                  # ~6 or ~300 events a batch: both paths
            since, target = 0, rng.choice((2, 100, 100))
            data = sink.take()
            if not data:
                continue
            events = []
            decode_chunk(data, events)
            a, b = ref.apply(events), col.apply(EventBatch.from_bytes(data))
            if acc_ref is None or rng.random() < 0.1:
                if acc_ref is not None:
                    _compare_changes(acc_ref, acc_col)
                acc_ref, acc_col = a, b
            else:
                acc_ref, acc_col = acc_ref.merge(a), acc_col.merge(b)
                merged += 1
    _compare_changes(acc_ref, acc_col)
    assert merged > 20


@pytest.mark.timeout(300)
def test_sorted_last_writer_fallback_equal(monkeypatch):
    """The variant used when numpy would not assign repeated indices in order."""
    import publisher.columnar as columnar
    monkeypatch.setattr(columnar, "_SEQUENTIAL_ASSIGN", False)
    _run(8000, seed=24, checkpoints=2, keeps={"done_orders_keep": 1000})


@pytest.mark.timeout(120)
def test_totals_hash_table_matches_a_dict():
    """The balances' key -> slot table (vectorized lookups, one-key inserts from the
    per-event path, batches of new keys, growth of the table) finds what a dict does."""
    import numpy as np
    from publisher.columnar import _Totals
    rng = random.Random(41)
    tot = _Totals()
    ref = {}
    pool = [rng.randrange(1, 1 << 32) * 65536 + rng.randrange(0, 8) for _ in range(30000)]
    for step in range(300):
        if rng.random() < 0.5:
            for _ in range(rng.randrange(1, 20)):
                key = rng.choice(pool)
                slot = tot.slot(key)
                assert ref.setdefault(key, slot) == slot
        else:
            keys = [rng.choice(pool) for _ in range(rng.randrange(1, 3000))]
            slots = tot.slots(np.array(keys, np.int64)).tolist()
            for key, slot in zip(keys, slots):
                assert ref.setdefault(key, slot) == slot
    assert sorted(ref.values()) == list(range(len(ref))) and tot.n == len(ref) > 10000
    tot._check()
