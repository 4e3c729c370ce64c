"""The publisher process: clean SIGTERM of a bare ``publisher.process`` (loop mode: the
only place the harness starts the publisher without ``ringmatch run``, to see its own
exit code), rebuild after a restart under ``ringmatch run``, and the ring feed."""
import json
import os
import signal
import time

import pytest

from pub_harness import Engine

pytestmark = pytest.mark.timeout(120)


def test_sigterm_stops_cleanly(tmp_path):
    import websockets.sync.client as wsc
    engine = Engine(tmp_path, mode="loop").start()
    try:
        with wsc.connect(engine.ws_url) as ws:
            ws.send('{"type": "ping"}')
            assert "pong" in ws.recv(5)
            engine.publisher.send_signal(signal.SIGTERM)
            assert engine.publisher.wait(15) == 0
        assert "event=stopped signal=15" in engine.log_text()
    finally:
        engine.stop()


PRODUCTS = ("BTC-USD", "ETH-USD", "ETH-BTC")
_VOLATILE = ("sequence", "input_seq")    # WS message sequences restart; the shutdown SNAPSHOT adds a seq


def _strip(d):
    return {k: v for k, v in d.items() if k not in _VOLATILE}


def _state(anon, clients, ids):
    """Everything a user can read: books, tickers, trades, stats, orders, balances."""
    out = {}
    for p in PRODUCTS:
        out["book", p] = _strip(anon.get("/products/%s/book?level=2" % p).json())
        out["ticker", p] = _strip(anon.get("/products/%s/ticker" % p).json())
        out["trades", p] = anon.get("/products/%s/trades?limit=1000" % p).json()
        out["stats", p] = _strip(anon.get("/products/%s/stats" % p).json())
    for c in clients:
        out["orders", c.key] = c.get("/orders?status=all&limit=1000").json()
        out["accounts", c.key] = c.get("/accounts").json()
        for oid in ids.get(c.key, ()):
            out["order", oid] = c.get("/orders/%s" % oid).json()
    return out


def _diff(a, b):
    return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}


def _activity(alice, bob, ids, base):
    """Trades, resting orders, a triggered stop, a pending stop, a GTT that expires,
    a rejection, a cancel and an amend, all through the REST API."""
    def place(c, *args, **kw):
        r = c.order(*args, **kw)
        body = r.json()
        ids.setdefault(c.key, []).append(body["id"])
        return r, body
    for i in range(5):
        assert place(alice, "BTC-USD", "sell", "0.10", str(base + 1000 + i))[0].status_code == 200
        assert place(bob, "BTC-USD", "buy", "0.10", str(base + i))[0].status_code == 200
    r, taker = place(bob, "BTC-USD", "buy", "0.15", str(base + 1001))
    assert r.status_code == 200 and taker["status"] == "done", taker
    r, stop = place(alice, "BTC-USD", "sell", "0.05", type="stop_loss", stop_price=str(base + 3))
    assert stop["status"] == "pending"
    r, tp = place(alice, "BTC-USD", "sell", "0.05", type="take_profit_limit",
                  stop_price=str(base + 5000), price=str(base + 4990))
    assert tp["status"] == "pending"
    place(alice, "BTC-USD", "sell", "0.20", str(base + 3))            # trades at base+4, base+3
    got = alice.get("/orders/%s" % stop["id"]).json()
    assert got["status"] == "done" and got["filled_size"] == "0.05", got   # triggered, filled
    r, gtt = place(bob, "ETH-USD", "buy", "0.1", "1000.0", time_in_force="GTT",
                   expire_time="%.3f" % (time.time() + 0.5))
    assert gtt["status"] == "open"
    r, rest = place(bob, "ETH-USD", "buy", "0.2", "1001.0")
    r, rej = place(alice, "ETH-USD", "buy", "100000", "1000.0")
    assert r.status_code == 400 and rej["status"] == "rejected"
    ids["k-alice"][-1] = rej["id"]
    assert bob.patch("/orders/%s" % rest["id"], {"price": "1002.0", "size": "0.3"}).status_code == 200
    time.sleep(0.6)
    r, late = place(bob, "ETH-USD", "buy", "0.1", "999.0")             # its time expires the GTT
    assert bob.get("/orders/%s" % gtt["id"]).json()["done_reason"] == "expired"
    assert bob.delete("/orders/%s" % late["id"]).status_code == 200


def _wait_new_publisher(client, old_pid, engine, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = client.get("/time")
            if r.status_code == 200 and r.json()["pid"] != old_pid:
                return r.json()["pid"]
        except Exception:
            pass
        assert time.monotonic() < deadline, engine.log_text()
        time.sleep(0.1)


def _rebuilt_lines(engine):
    return [line for line in engine.log_lines() if "proc=publisher" in line and "event=rebuilt" in line]


def test_publisher_restart_rebuilds_from_snapshot_and_journal(tmp_path):
    """kill -9 of the publisher under ringmatch run, then a stop/start of the whole
    engine: every view equals what it was before; then a rebuild that may only use
    the newest snapshot keeps the state (books, balances, live orders, prices)."""
    engine = Engine(tmp_path, mode="run").start()
    clients = []
    try:
        anon = engine.client(None)
        alice, bob = engine.client("k-alice"), engine.client("k-bob")
        clients += [anon, alice, bob]
        for c in (alice, bob):
            for cur, amt in (("USD", "1000000"), ("BTC", "10"), ("ETH", "100")):
                c.deposit(cur, amt)
        ids = {}
        _activity(alice, bob, ids, 29000)
        before = _state(anon, (alice, bob), ids)
        assert before["ticker", "BTC-USD"]["volume_24h"] not in (None, "0")

        # 1. kill -9 the publisher: the supervisor restarts it, it rebuilds from the journal
        pid = alice.get("/time").json()["pid"]
        assert pid == engine.child_pids()["publisher"]
        os.kill(pid, signal.SIGKILL)
        _wait_new_publisher(alice, pid, engine)
        after = _state(anon, (alice, bob), ids)
        assert _diff(before, after) == {}
        assert "start=journal" in _rebuilt_lines(engine)[-1]

        # 2. more activity, then stop and start the whole engine (shutdown snapshot)
        for c in (alice, bob):
            assert c.delete("/orders?product_id=BTC-USD").status_code == 200
        _activity(alice, bob, ids, 28000)
        before = _state(anon, (alice, bob), ids)
        engine.restart()
        after = _state(anon, (alice, bob), ids)
        assert _diff(before, after) == {}
        line = _rebuilt_lines(engine)[-1]
        assert "start=journal" in line and "mode=journal" in line, line
        from journaler.snapshot import list_snapshots
        assert list_snapshots(engine.raw["data_dir"], engine.shard), "no shutdown snapshot"

        # 3. only the newest snapshot may be used (no history replay): the state is kept
        # (a few commands of history: the restarted supervisor's CLOCK ticks, docs/engine.md
        # M9, follow the shutdown snapshot before the publisher rebuilds)
        engine.raw["publisher"]["rebuild_history_commands"] = 10
        with open(engine.config_path, "w") as f:
            json.dump(engine.raw, f)
        engine.restart()
        line = _rebuilt_lines(engine)[-1]
        assert "mode=snapshot+journal" in line and "start=snapshot" in line, line
        after = _state(anon, (alice, bob), ids)
        for p in PRODUCTS:
            assert after["book", p] == before["book", p]
            t0, t1 = before["ticker", p], after["ticker", p]
            for k in ("price", "trade_id", "best_bid", "best_bid_size", "best_ask", "best_ask_size"):
                assert t1[k] == t0[k], (p, k)
        for c in (alice, bob):
            assert after["accounts", c.key] == before["accounts", c.key]
            live = lambda orders: [(o["id"], o["status"], o["price"], o["size"], o["stop_price"],
                                    o["filled_size"], o["remaining_size"], o["client_oid"])
                                   for o in orders if o["status"] in ("open", "pending")]
            assert live(after["orders", c.key]) == live(before["orders", c.key])
            assert live(before["orders", c.key])
    finally:
        for c in clients:
            c.close()
        engine.stop()
    assert engine.segments() == []


@pytest.mark.timeout(60)
def test_ring_feed_during_rebuild_drops_derived_events_and_holds_later_ones():
    """Process rule 2: before go_live the feed commits and drops events with
    seq <= skip_upto (the rebuild derives them) and holds later ones, which are
    handed to the loop in order once live."""
    import asyncio
    from engine.events import BytesSink
    from engine.matcher import Matcher
    from engine.config import DEFAULT_CONFIG
    from engine.matcher_process import RingEventWriter
    from publisher.process import RingFeed
    from pub_session import session
    from ringbuf import Ring
    from ringbuf.records import EVENT_SIZE

    name = "rm-%d-feedtest" % os.getpid()
    ring = Ring.create(name, capacity=1 << 14, record_size=128, consumers={"publisher": []},
                       single_producer=True)
    feed = None
    try:
        writer = RingEventWriter(ring.producer(producer_id=0), EVENT_SIZE, 1024)
        sink = BytesSink()
        matcher = Matcher(DEFAULT_CONFIG, sink)
        for seq, cmd in enumerate(session(600, seed=3), 1):
            matcher.process(seq, cmd)
        writer.flush(sink.take())
        total = ring.cursor
        got = []
        feed = RingFeed(ring.consumer("publisher"), None, got.extend, max_batch=256,
                        max_inflight=4, skip_upto=100)
        feed.start()
        deadline = time.monotonic() + 10
        while (feed.dropped == 0 or not feed.held) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert feed.dropped > 0 and feed.held and got == []
        assert all(e.seq > 100 for batch in feed.held for e in batch)
        time.sleep(0.3)
        assert len(feed.held) == 4                      # bounded: the ring gates the rest
        assert ring.consumer_sequence("publisher") < total

        async def live():
            feed.go_live(asyncio.get_running_loop())
            while sum(1 for _ in got) + feed.dropped < total:
                await asyncio.sleep(0.01)
        asyncio.run(asyncio.wait_for(live(), 10))
        seqs = [(e.seq, e.event_index) for e in got]
        assert seqs == sorted(seqs) and seqs[0][0] == 101 and seqs[-1][0] == 600
        assert feed.dropped + len(got) == total
    finally:
        if feed is not None:
            feed.stop()
        ring.close()
        ring.unlink()


@pytest.mark.parametrize("segments,snaps,durable,history,expect", [
    ([1], [], 500, 1000, 0),                     # whole journal: replay it all
    ([1], [300], 500, 1000, 0),                  # oldest start wins while within the bound
    ([1], [300], 500, 250, 300),                 # too long from 0: the snapshot
    ([301, 900], [300, 800], 1000, 10 ** 6, 300),  # pruned: the oldest snapshot with a tail
    ([801], [300, 800], 1000, 10 ** 6, 800),     # the journal lost the older one's tail
    ([1], [300, 800], 1000, 100, None),          # every start too long: the newest snapshot
    ([1], [1200], 1000, 10 ** 6, 0),             # a snapshot past the journal end is ignored
])
def test_rebuild_start_point(tmp_path, segments, snaps, durable, history, expect):
    """Rebuild rule 3: the oldest start whose replay stays within the bound."""
    from journaler.segment import journal_dir, segment_name
    from journaler.snapshot import snapshot_dir, snapshot_name
    from publisher.rebuild import choose_start
    data = str(tmp_path)
    os.makedirs(journal_dir(data))
    os.makedirs(snapshot_dir(data))
    for first in segments:
        open(os.path.join(journal_dir(data), segment_name("s0", first)), "wb").close()
    for seq in snaps:
        open(os.path.join(snapshot_dir(data), snapshot_name("s0", seq)), "wb").close()
    assert choose_start(data, "s0", durable, history) == expect


def test_publisher_killed_under_load_rebuilds_to_the_matchers_state(tmp_path):
    """kill -9 of the publisher while a colocated producer floods the engine: the new
    publisher (rebuild from the journal while the ring feed drops what it derives and
    holds what comes after) ends with the matcher's books, balances and open orders."""
    import threading
    from decimal import Decimal
    from engine.config import DEFAULT_CONFIG
    from engine.events import ListSink
    from engine.matcher import Matcher
    from publisher.products import Catalog
    from pub_harness import KEYS, ApiClient
    from pub_session import ACCOUNTS, engine_matcher, matcher_l2, session
    from test_pub_ws import _flood, _wait_seq

    keys = [{"key": "s%d" % a, "secret": "x%d" % a, "account_id": a} for a in ACCOUNTS]
    engine = Engine(tmp_path, mode="run", publisher_extra={"api_keys": KEYS + keys}).start()
    clients = []
    try:
        cmds = session(20000, seed=31)
        box = {}

        def flood():
            last = 0
            for i in range(0, len(cmds), 250):
                last = _flood(engine.shard, cmds[i:i + 250])
                time.sleep(0.01)
            box["last"] = last
        writer = threading.Thread(target=flood)
        writer.start()
        anon = engine.client(None)
        clients.append(anon)
        while anon.get("/time").json()["input_seq"] < 5000:
            time.sleep(0.02)
        pid = anon.get("/time").json()["pid"]
        os.kill(pid, signal.SIGKILL)
        _wait_new_publisher(anon, pid, engine)
        writer.join(120)
        last = box.get("last")
        assert last >= len(cmds)          # (plus the supervisor's CLOCK ticks in between)
        _wait_seq(anon, last)
        line = _rebuilt_lines(engine)[-1]
        assert "start=journal" in line, line

        matcher = engine_matcher(engine, cmds, last)
        cat = Catalog.from_exchange(DEFAULT_CONFIG)
        for p in cat.products:
            book = anon.get("/products/%s/book?level=2" % p.name).json()
            bids, asks = matcher_l2(matcher, p.symbol_id)
            assert {p.price_to_ticks(a): p.qty_to_lots(b) for a, b in book["bids"]} == bids
            assert {p.price_to_ticks(a): p.qty_to_lots(b) for a, b in book["asks"]} == asks
            last = matcher.last_price(p.symbol_id)
            tick = anon.get("/products/%s/ticker" % p.name).json()
            assert tick["price"] == (p.fmt_price(last) if last else None)
        for k in keys:
            c = ApiClient(engine.url, None)
            c.key, c.secret = k["key"], k["secret"]
            clients.append(c)
            for a in c.get("/accounts").json():
                asset = cat.asset_by_name[a["currency"]]
                avail, held = matcher.balance(k["account_id"], asset.asset_id)
                assert (Decimal(a["available"]), Decimal(a["hold"])) == \
                    (Decimal(asset.fmt(avail)), Decimal(asset.fmt(held))), (k, a)
            mine = {int(o["id"]): o["remaining_size"] for o in c.get("/orders?status=open&limit=100000").json()}
            theirs = {oid: cat.by_id[o.symbol_id].fmt_qty(o.remaining)
                      for oid, o in matcher.orders.items() if o.account_id == k["account_id"]}
            assert mine == theirs, k
    finally:
        for c in clients:
            c.close()
        engine.stop()
    assert engine.segments() == []


@pytest.mark.timeout(60)
def test_ring_feed_live_behind_loop_coalesces_in_order_within_max_batch():
    """Process rule 2: while the loop is busy, newly polled events are appended to the
    scheduled batch: every event arrives exactly once, in stream order, and no batch
    handed to ``on_events`` exceeds ``max_batch``."""
    import asyncio
    import threading
    from engine.events import BytesSink
    from engine.matcher import Matcher
    from engine.config import DEFAULT_CONFIG
    from engine.matcher_process import RingEventWriter
    from publisher.process import RingFeed
    from pub_session import session
    from ringbuf import Ring
    from ringbuf.records import EVENT_SIZE

    name = "rm-%d-feedmerge" % os.getpid()
    ring = Ring.create(name, capacity=1 << 14, record_size=128, consumers={"publisher": []},
                       single_producer=True)
    feed = None
    writer_thread = None
    try:
        writer = RingEventWriter(ring.producer(producer_id=0), EVENT_SIZE, 1024)
        sink = BytesSink()
        matcher = Matcher(DEFAULT_CONFIG, sink)
        chunks = []
        for seq, cmd in enumerate(session(600, seed=5), 1):
            matcher.process(seq, cmd)
            if seq % 3 == 0:
                chunks.append(sink.take())
        chunks.append(sink.take())
        expected = sum(len(c) for c in chunks) // EVENT_SIZE
        batches = []

        def on_events(events):
            batches.append(list(events))
            time.sleep(0.02)                       # a slow loop: the feed runs ahead

        feed = RingFeed(ring.consumer("publisher"), None, on_events, max_batch=64,
                        max_inflight=2)

        def write():
            for c in chunks:
                writer.flush(c)
                time.sleep(0.0005)

        async def live():
            feed.go_live(asyncio.get_running_loop())
            feed.start()
            writer_thread.start()
            while sum(len(b) for b in batches) < expected:
                await asyncio.sleep(0.01)
        writer_thread = threading.Thread(target=write, daemon=True)
        asyncio.run(asyncio.wait_for(live(), 30))
        got = [(e.seq, e.event_index) for b in batches for e in b]
        assert len(got) == expected == len(set(got))
        assert got == sorted(got) and got[-1][0] == 600
        assert max(len(b) for b in batches) <= 64
        assert feed.merged > 0                     # coalescing happened
        assert len(batches) < len(chunks)
    finally:
        if feed is not None:
            feed.stop()
        if writer_thread is not None and writer_thread.is_alive():
            writer_thread.join(5)
        ring.close()
        ring.unlink()


# ------------------------------------------------ publisher.* config reaches its component
def _service(pub, read_model=None):
    import types
    from engine.config import DEFAULT_CONFIG
    from publisher.process import build_service
    return build_service(pub, types.SimpleNamespace(symbols=None), DEFAULT_CONFIG,
                         read_model=read_model)


def test_config_ws_queue_bytes_and_max_interval_reach_the_hub():
    hub = _service({"ws_max_queue_bytes": 123456, "ws_max_interval_s": 0.5}).hub
    assert (hub.max_queue_bytes, hub.max_interval_s) == (123456, 0.5)
    hub = _service({}).hub                                      # the defaults
    assert (hub.max_queue_bytes, hub.max_interval_s) == (4 << 20, 0.25)


@pytest.mark.parametrize("kind", ["columnar", "object"])
def test_config_fills_per_account_reaches_the_history_and_survives_a_rebuild_reset(kind):
    from publisher.history import FILLS_KEEP
    from publisher.rebuild import _reset
    service = _service({"fills_per_account": 3}, read_model=kind)
    assert service.model.history.fills_keep == 3
    _reset(service)                      # the rebuild's re-initialised model: a new History
    assert service.model.history.fills_keep == 3
    assert _service({}, read_model=kind).model.history.fills_keep == FILLS_KEEP == 10000


@pytest.mark.parametrize("setting, lines", [({}, 1), ({"access_log": True}, 1),
                                            ({"access_log": False}, 0)])
def test_config_access_log_switches_the_request_lines(setting, lines):
    from starlette.testclient import TestClient
    from publisher.app import create_app
    from publisher.auth import KeyStore
    from publisher.process import app_options

    class Log(object):
        def __init__(self):
            self.events = []

        def event(self, name, **fields):
            self.events.append(name)

    service = _service({})
    service.log = Log()
    app = create_app(service, KeyStore.from_config({}), **app_options(setting))
    with TestClient(app) as client:
        assert client.get("/products").status_code == 200
    assert service.log.events.count("http") == lines
