"""Issue 16, "For traders" REST history against the real engine (``ringmatch run``):
``GET /fills`` and ``GET /orders`` with Coinbase cursor pagination, candles checked
against OHLCV computed here from the trades this test caused (``GET
/products/{id}/trades``), the level 3 book against the orders placed here, stats,
and the 400s with their messages.  Plus ``History`` fed synthetic trades across many
buckets (stream time is the command time, which REST clients do not choose).
"""
import datetime
import time
from decimal import Decimal
from urllib.parse import urlencode

import pytest

from publisher.history import GRANULARITIES, History, page
from ringbuf.records import EventKind
from test_coinbase_auth import cb_client, create_key, wait_accepted

pytestmark = pytest.mark.timeout(240)


def _walk(client, path, limit):
    """Every item of a listing, page by page with ``after`` = the previous CB-AFTER."""
    seen, cursor, pages = [], None, 0
    while True:
        sep = "&" if "?" in path else "?"
        url = path + sep + "limit=%d" % limit + ("" if cursor is None else "&after=%s" % cursor)
        r = client.get(url)
        assert r.status_code == 200, r.text
        items = r.json()
        if not items:
            assert "CB-AFTER" not in r.headers
            return seen, pages
        assert len(items) <= limit
        pages += 1
        assert r.headers["CB-BEFORE"] and r.headers["CB-AFTER"]
        seen.extend(items)
        cursor = r.headers["CB-AFTER"]


def _ohlcv(trades, g):
    """{bucket start: [low, high, open, close, volume]} from GET /trades items (Decimals)."""
    out = {}
    for t in sorted(trades, key=lambda t: t["trade_id"]):      # stream order
        ts = datetime.datetime.fromisoformat(t["time"].replace("Z", "+00:00")).timestamp()
        b = int(ts) - int(ts) % g
        p, q = Decimal(t["price"]), Decimal(t["size"])
        c = out.get(b)
        if c is None:
            out[b] = [p, p, p, p, q]
        else:
            c[0], c[1], c[3], c[4] = min(c[0], p), max(c[1], p), p, c[4] + q
    return out


@pytest.fixture(scope="module")
def traded(alice, bob, anon):
    """Alice rests sells on ETH-USD, Bob takes them in several orders, in two minutes of
    wall-clock time (so that 60 s candles have two buckets).  -> (bob's fills, orders)."""
    bob_fills, alice_orders = [], []

    def phase(prices):
        for px in prices:
            r = alice.order("ETH-USD", "sell", "0.3", px)
            assert r.status_code == 200, r.text
            alice_orders.append(r.json()["id"])
        for size, px in (("0.4", prices[-1]), ("0.2", prices[-1]), ("0.3", prices[-1])):
            r = bob.order("ETH-USD", "buy", size, px)
            assert r.status_code == 200, r.text
            bob_fills.extend(r.json()["fills"])

    phase(["2000.0", "2000.5", "2001.0"])
    time.sleep(60.2 - time.time() % 60)            # the next minute
    phase(["1999.0", "2002.0", "2003.5"])
    return bob_fills, alice_orders


# ------------------------------------------------------------------ fills
def test_fills_walk_with_after_cursors(traded, alice, bob, carol):
    bob_fills, alice_orders = traded
    assert len(bob_fills) == 8
    # Alice was the maker of every fill Bob got; all of hers, newest first, each once
    mine, pages = _walk(alice, "/fills?product_id=ETH-USD", 3)
    assert pages == 3
    assert sorted(f["trade_id"] for f in mine) == sorted(f["trade_id"] for f in bob_fills)
    assert [f["trade_id"] for f in mine] == sorted((f["trade_id"] for f in mine), reverse=True)
    assert len({f["trade_id"] for f in mine}) == len(mine)
    by_trade = {f["trade_id"]: f for f in bob_fills}
    for f in mine:
        theirs = by_trade[f["trade_id"]]
        assert set(f) == {"trade_id", "product_id", "order_id", "price", "size", "fee", "side",
                          "liquidity", "created_at", "settled"}
        assert (f["product_id"], f["side"], f["liquidity"], f["settled"]) == \
            ("ETH-USD", "sell", "M", True)
        assert (f["price"], f["size"], f["order_id"]) == \
            (theirs["price"], theirs["size"], theirs["counter_order_id"])
        assert f["created_at"] == theirs["created_at"] and f["order_id"] in alice_orders
    # Bob's view: his own fills only (taker), with the fees his order answers showed
    bobs, _ = _walk(bob, "/fills?product_id=ETH-USD", 1000)
    assert [(f["trade_id"], f["fee"], f["liquidity"], f["side"]) for f in bobs] == \
        [(f["trade_id"], f["fee"], "T", "buy") for f in
         sorted(bob_fills, key=lambda f: f["trade_id"], reverse=True)]
    assert carol.get("/fills?product_id=ETH-USD").json() == []
    assert carol.get("/fills?order_id=%s" % alice_orders[0]).json() == []  # not hers
    # by order: its fills, fees adding up to the order's fill_fees
    oid = alice_orders[1]
    of = alice.get("/fills?order_id=%s" % oid).json()
    assert of and all(f["order_id"] == oid for f in of)
    assert {f["trade_id"] for f in of} == {f["trade_id"] for f in mine if f["order_id"] == oid}
    order = alice.get("/orders/%s" % oid).json()
    assert sum(Decimal(f["fee"]) for f in of) == Decimal(order["fill_fees"])
    assert sum(Decimal(f["size"]) for f in of) == Decimal(order["filled_size"])


def test_fills_before_cursor_and_headers(traded, alice):
    everything = alice.get("/fills?product_id=ETH-USD&limit=1000").json()
    r = alice.get("/fills?product_id=ETH-USD&limit=4")
    first = r.json()
    assert first == everything[:4] and int(r.headers["CB-BEFORE"]) > int(r.headers["CB-AFTER"])
    older = alice.get("/fills?product_id=ETH-USD&limit=4&after=%s" % r.headers["CB-AFTER"])
    assert older.json() == everything[4:8]
    # before = the newer page, nearest the cursor first in the list's newest-first order
    back = alice.get("/fills?product_id=ETH-USD&limit=3&before=%s" % older.headers["CB-BEFORE"])
    assert back.json() == everything[1:4]
    newest = alice.get("/fills?product_id=ETH-USD&before=%s" % r.headers["CB-BEFORE"])
    assert newest.status_code == 200 and newest.json() == [] and "CB-BEFORE" not in newest.headers


def test_fills_errors(alice, anon):
    for path, needle in (("/fills", "order_id or product_id is required"),
                         ("/fills?product_id=ETH-USD&limit=0", "limit"),
                         ("/fills?product_id=ETH-USD&limit=1001", "limit"),
                         ("/fills?product_id=ETH-USD&after=x", "after"),
                         ("/fills?product_id=ETH-USD&before=5&after=3", "not both"),
                         ("/fills?order_id=abc", "order_id")):
        r = alice.get(path)
        assert r.status_code == 400, (path, r.text)
        assert needle in r.json()["message"], (path, r.text)
    assert alice.get("/fills?product_id=NOPE").status_code == 404
    r = anon.get("/fills?product_id=ETH-USD")
    assert r.status_code == 401 and r.json()["message"]


def test_fills_with_a_coinbase_signed_view_key(engine, traded, alice):
    key = create_key(engine, 101, "view")             # Alice's account, view scope
    with cb_client(engine, key) as c:
        r = wait_accepted(c, "/fills?product_id=ETH-USD&limit=1000")
        assert r.status_code == 200, r.text
        assert r.json() == alice.get("/fills?product_id=ETH-USD&limit=1000").json()
        r = c.get("/fills", params={"product_id": "ETH-USD", "limit": "2"})
        assert r.status_code == 200 and len(r.json()) == 2 and "CB-AFTER" in r.headers


# ------------------------------------------------------------------ orders
def test_orders_listing_paginates_newest_first(traded, alice):
    _bob_fills, alice_orders = traded
    done, pages = _walk(alice, "/orders?status=done&product_id=ETH-USD", 2)
    ids = [o["id"] for o in done]
    assert pages >= 2 and len(ids) == len(set(ids))
    assert ids == sorted(ids, key=int, reverse=True)
    assert set(alice_orders) - {o["id"] for o in alice.get("/orders?status=open").json()} \
        <= set(ids)
    r = alice.get("/orders?status=all&limit=2")
    assert r.headers["CB-BEFORE"] == r.json()[0]["id"] and r.headers["CB-AFTER"] == r.json()[1]["id"]
    assert alice.get("/orders?status=all&before=1&after=2").status_code == 400


# ------------------------------------------------------------------ candles
def test_candles_equal_ohlcv_of_the_trades(traded, anon):
    trades = anon.get("/products/ETH-USD/trades?limit=1000").json()
    assert len(trades) == 8
    for g in GRANULARITIES:
        r = anon.get("/products/ETH-USD/candles?granularity=%d" % g)
        assert r.status_code == 200, r.text
        got = r.json()
        want = _ohlcv(trades, g)
        assert [c[0] for c in got] == sorted(want, reverse=True), g
        for c in got:
            lo, hi, op, cl, v = want[c[0]]
            assert [Decimal(repr(x)) for x in c[1:]] == [lo, hi, op, cl, v], (g, c)
    assert len(_ohlcv(trades, 60)) == 2
    # start/end select buckets: only the second minute (ISO 8601 and unix seconds)
    second = max(_ohlcv(trades, 60))
    iso = datetime.datetime.fromtimestamp(second, datetime.timezone.utc).isoformat()
    for params in ({"start": iso, "end": iso}, {"start": str(second), "end": str(second + 59)}):
        r = anon.get("/products/ETH-USD/candles?" + urlencode(dict(params, granularity="60")))
        assert [c[0] for c in r.json()] == [second], params
    r = anon.get("/products/ETH-USD/candles?granularity=60&start=%d&end=%d"
                 % (second - 600, second - 300))
    assert r.status_code == 200 and r.json() == []


def test_candles_errors(anon):
    for query, needle in (("granularity=61", "granularity must be one of 60, 300"),
                          ("granularity=abc", "granularity"),
                          ("granularity=60&start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00Z",
                           "spans 1441 candles of 60 s; at most 300"),
                          ("granularity=60&start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z",
                           "start is after end"),
                          ("granularity=60&start=yesterday", "start must be an ISO 8601")):
        r = anon.get("/products/ETH-USD/candles?" + query)
        assert r.status_code == 400, (query, r.text)
        assert needle in r.json()["message"], (query, r.text)
    ok = anon.get("/products/ETH-USD/candles?granularity=86400"
                  "&start=2026-01-01T00:00:00Z&end=2026-10-27T00:00:00Z")
    assert ok.status_code == 200                     # exactly 300 daily buckets
    assert anon.get("/products/NOPE/candles").status_code == 404


# ------------------------------------------------------------------ level 3, stats
def test_level3_is_every_resting_order(alice, bob, anon):
    for c in (alice, bob):
        assert c.delete("/orders?product_id=ETH-BTC").status_code == 200
    placed = []                                       # (side, price, size, id)
    for c, side, size, px in ((alice, "buy", "1.000", "0.05000"), (bob, "buy", "2.000", "0.05000"),
                              (alice, "buy", "0.500", "0.04990"), (bob, "sell", "1.500", "0.05100"),
                              (alice, "sell", "0.250", "0.05100"), (alice, "sell", "3.000", "0.05200")):
        r = c.order("ETH-BTC", side, size, px)
        assert r.status_code == 200 and r.json()["status"] == "open", r.text
        placed.append((side, px, size, r.json()["id"]))

    def expect():
        bids = sorted((p for p in placed if p[0] == "buy"), key=lambda p: (-Decimal(p[1]), int(p[3])))
        asks = sorted((p for p in placed if p[0] == "sell"), key=lambda p: (Decimal(p[1]), int(p[3])))
        return [[p, s, i] for _sd, p, s, i in bids], [[p, s, i] for _sd, p, s, i in asks]

    book = anon.get("/products/ETH-BTC/book?level=3").json()
    assert (book["bids"], book["asks"]) == expect()
    l2 = anon.get("/products/ETH-BTC/book?level=2").json()
    for side in ("bids", "asks"):                     # level 3 adds up to level 2
        sums = {}
        for p, s, _i in book[side]:
            sums[p] = sums.get(p, Decimal(0)) + Decimal(s)
        assert [[p, str(q)] for p, q in sums.items()] == [[p, s] for p, s in l2[side]]
    # a partial fill of the best bid's first order, and a cancel
    r = bob.order("ETH-BTC", "sell", "0.400", "0.05000")
    assert r.status_code == 200 and r.json()["fills"][0]["counter_order_id"] == placed[0][3]
    placed[0] = placed[0][:2] + ("0.600", placed[0][3])
    assert alice.delete("/orders/%s" % placed[5][3]).status_code == 200
    del placed[5]
    book = anon.get("/products/ETH-BTC/book?level=3").json()
    assert (book["bids"], book["asks"]) == expect()
    r = anon.get("/products/ETH-BTC/book?level=4")
    assert r.status_code == 400 and "level must be 1, 2 or 3" in r.json()["message"]


def test_stats_of_the_trades(traded, anon):
    trades = anon.get("/products/ETH-USD/trades?limit=1000").json()
    s = anon.get("/products/ETH-USD/stats").json()
    ordered = sorted(trades, key=lambda t: t["trade_id"])
    prices = [Decimal(t["price"]) for t in ordered]
    vol = sum(Decimal(t["size"]) for t in ordered)
    assert (Decimal(s["open"]), Decimal(s["high"]), Decimal(s["low"]), Decimal(s["last"])) == \
        (prices[0], max(prices), min(prices), prices[-1])
    assert Decimal(s["volume"]) == vol and Decimal(s["volume_30day"]) == vol
    empty = anon.get("/products/BTC-USD/stats").json()
    assert empty["volume_30day"] == "0.00"


# ------------------------------------------------------------------ History alone
def _trade_event(**fields):
    from publisher.event_decoder import PublishedEvent
    values = dict.fromkeys(PublishedEvent._fields, 0)
    values.update(fields)
    return PublishedEvent(**values)


def test_history_candles_many_buckets_and_cursor_page():
    """Synthetic trades over 3 days, some out of time order: every granularity's buckets
    equal a direct computation, per trade and per numpy batch alike."""
    import random
    import numpy as np
    from publisher.columnar import EVENT_DTYPE
    rng = random.Random(16)
    t0 = 1_790_000_000 * 10 ** 9
    evs = []
    for i in range(3000):
        ts = t0 + i * 87 * 10 ** 9 + rng.randrange(-200 * 10 ** 9, 200 * 10 ** 9)
        evs.append(_trade_event(kind=int(EventKind.TRADE), symbol_id=rng.choice((1, 2)),
                                timestamp_ns=ts, price=rng.randrange(100, 200),
                                qty=rng.randrange(1, 9), trade_id=i + 1))
    a, b = History([1, 2]), History([1, 2])
    for i in range(0, len(evs), 700):
        chunk = evs[i:i + 700]
        a.record_events(chunk)
        arr = np.zeros(len(chunk), EVENT_DTYPE)
        for name in ("kind", "symbol_id", "timestamp_ns", "price", "qty", "trade_id"):
            arr[name] = [getattr(e, name) for e in chunk]
        b.record_array(arr)
    assert a.snapshot() == b.snapshot()
    for sym in (1, 2):
        for g in GRANULARITIES:
            want = {}
            for e in evs:
                if e.symbol_id != sym:
                    continue
                s = e.timestamp_ns // 10 ** 9
                k = s - s % g
                c = want.get(k)
                if c is None:
                    want[k] = [e.price, e.price, e.price, e.price, e.qty]
                else:
                    c[0], c[1], c[3], c[4] = min(c[0], e.price), max(c[1], e.price), e.price, c[4] + e.qty
            end = max(want)
            start = max(min(want), end - 299 * g)
            rows = a.candle_rows(sym, g, start, end)
            assert rows == [(k,) + tuple(want[k]) for k in sorted(want, reverse=True) if k >= start]
    items = list(range(1, 11))
    assert page(items, int, limit=3) == ([10, 9, 8], 10, 8)
    assert page(items, int, after=8, limit=3) == ([7, 6, 5], 7, 5)
    assert page(items, int, before=5, limit=3) == ([8, 7, 6], 8, 6)
    assert page(items, int, after=1) == ([], None, None)


@pytest.fixture(scope="module")
def carol(engine):
    c = engine.client("k-carol")
    yield c
    c.close()
