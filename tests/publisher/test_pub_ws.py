"""WebSocket feeds against a running engine (real processes, loopback sockets)."""
import asyncio
import json
import socket
import time
from decimal import Decimal

import pytest
import websockets

from engine.config import DEFAULT_CONFIG
from engine.events import ListSink
from engine.matcher import Matcher
from publisher.auth import sign
from pub_harness import Engine
from pub_session import engine_matcher, matcher_l2, session

pytestmark = pytest.mark.timeout(180)


class BookBuilder(object):
    """A client's view of one product's L2 book from snapshot + l2update (gap rule)."""

    def __init__(self):
        self.bids, self.asks = {}, {}
        self.seq = None
        self.gaps = 0
        self.resyncs = 0
        self.snapshots = 0

    def on(self, m):
        t = m["type"]
        if t == "snapshot":
            self.bids = {Decimal(p): Decimal(q) for p, q in m["bids"]}
            self.asks = {Decimal(p): Decimal(q) for p, q in m["asks"]}
            self.seq = m["sequence"]
            self.snapshots += 1
            return True
        if t == "resync":
            self.resyncs += 1
            self.seq = None
            return True
        if t != "l2update":
            return False
        if self.seq is None:
            return True                  # waiting for a snapshot
        if m["sequence"] != self.seq + 1:
            self.gaps += 1
            self.seq = None
            return "gap"
        self.seq = m["sequence"]
        for side, p, q in m["changes"]:
            book = self.bids if side == "buy" else self.asks
            if Decimal(q) == 0:
                book.pop(Decimal(p), None)
            else:
                book[Decimal(p)] = Decimal(q)
        return True


async def _recv(ws, timeout=10.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _until(ws, pred, timeout=10.0, builders=None):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("message not seen; got %s" % [m.get("type") for m in seen][-20:])
        m = await _recv(ws, left)
        seen.append(m)
        if builders is not None and m.get("product_id") in builders:
            assert builders[m["product_id"]].on(m) != "gap", m
        if pred(m):
            return m, seen


async def _sync(ws, builders=None):
    """Ping; everything the publisher queued before the pong arrives first."""
    await ws.send(json.dumps({"type": "ping"}))
    while True:
        m = await _recv(ws, 30)
        if m["type"] == "pong":
            return m
        if builders is not None and m.get("product_id") in builders:
            builders[m["product_id"]].on(m)


def test_level2_trades_ticker_and_user_channel(engine, alice, bob):
    async def main():
        async with websockets.connect(engine.ws_url) as ws, \
                websockets.connect(engine.ws_url) as user_ws:
            await ws.send(json.dumps({"type": "subscribe", "product_ids": ["ETH-BTC"],
                                      "channels": ["level2", "trades", "ticker"]}))
            subs, _ = await _until(ws, lambda m: m["type"] == "subscriptions")
            assert {c["name"] for c in subs["channels"]} == {"level2", "trades", "ticker"}
            book = BookBuilder()
            books = {"ETH-BTC": book}
            await _until(ws, lambda m: m["type"] == "snapshot", builders=books)
            ts = "%.3f" % time.time()
            await user_ws.send(json.dumps({"type": "subscribe", "channels": ["user"],
                                           "key": "k-alice", "timestamp": ts,
                                           "signature": sign("alice-secret", ts, "GET", "/ws")}))
            subs, _ = await _until(user_ws, lambda m: m["type"] == "subscriptions")
            assert {"name": "user", "account_id": 101} in subs["channels"]
            r = await asyncio.to_thread(alice.order, "ETH-BTC", "sell", "0.500", "0.06000")
            assert r.status_code == 200
            oid = r.json()["id"]
            await _until(ws, lambda m: m["type"] == "l2update", builders=books)
            assert book.asks[Decimal("0.06000")] == Decimal("0.500")
            rep, _ = await _until(user_ws, lambda m: m["type"] == "report")
            assert rep["event"] == "accepted" and rep["order_id"] == oid and rep["sequence"] == 1
            r = await asyncio.to_thread(bob.order, "ETH-BTC", "buy", "0.200", "0.06000")
            assert r.status_code == 200
            tr, _ = await _until(ws, lambda m: m["type"] == "trades", builders=books)
            assert tr["trades"][0]["price"] == "0.06000" and tr["trades"][0]["size"] == "0.200"
            tk, _ = await _until(ws, lambda m: m["type"] == "ticker" and m["price"] == "0.06000",
                                 builders=books)
            assert tk["best_ask_size"] == "0.300"
            fill, _ = await _until(user_ws, lambda m: m.get("event") == "fill")
            assert fill["order_id"] == oid and fill["liquidity"] == "M"
            assert fill["remaining_size"] == "0.300" and fill["sequence"] == 2
            await _sync(ws, books)
            assert book.gaps == 0 and book.snapshots == 1
            assert book.asks[Decimal("0.06000")] == Decimal("0.300")
    asyncio.run(main())


def test_ws_errors(engine):
    async def main():
        async with websockets.connect(engine.ws_url) as ws:
            for msg, needle in (
                    ("nonsense", "bad message"),
                    (json.dumps({"type": "dance"}), "unknown message type"),
                    (json.dumps({"type": "subscribe", "channels": ["candles"],
                                 "product_ids": ["BTC-USD"]}), "unknown channel"),
                    (json.dumps({"type": "subscribe", "channels": ["level2"],
                                 "product_ids": ["NOPE"]}), "unknown product"),
                    (json.dumps({"type": "subscribe", "channels": ["level2"]}), "product_ids"),
                    (json.dumps({"type": "subscribe", "channels": ["user"], "key": "k-alice",
                                 "timestamp": "%.3f" % time.time(), "signature": "x"}),
                     "invalid signature"),
                    (json.dumps({"type": "subscribe", "channels": ["user"]}), "missing")):
                await ws.send(msg)
                m = await _recv(ws)
                assert m["type"] == "error" and needle in m["message"], (msg, m)
            await ws.send(json.dumps({"type": "ping"}))
            assert (await _recv(ws))["type"] == "pong"
    asyncio.run(main())


def _flood(shard, commands, producer_id=9):
    """Write Commands into the engine's input ring as a colocated producer."""
    from ringbuf import Ring
    ring = Ring.attach("rm-%s-in" % shard)
    try:
        p = ring.producer(producer_id=producer_id)
        last = 0
        for cmd in commands:
            cmd.producer_id = producer_id
            last = p.write(cmd.pack(), timeout=30)
            assert last is not None
        p.close()
        return last
    finally:
        ring.close()


def _wait_seq(client, seq, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/time")
        if r.json()["input_seq"] >= seq:
            return
        time.sleep(0.05)
    raise AssertionError("publisher did not reach seq %d" % seq)


def _session_book_matches(tmp_path, n, seed):
    """Run a seeded session through the engine; a WS client's books equal the matcher's."""
    engine = Engine(tmp_path).start()
    try:
        cmds = session(n, seed)
        products = ["BTC-USD", "ETH-USD", "ETH-BTC"]

        async def main():
            async with websockets.connect(engine.ws_url, max_size=None) as ws:
                await ws.send(json.dumps({"type": "subscribe", "product_ids": products,
                                          "channels": ["level2"]}))
                builders = {p: BookBuilder() for p in products}
                loop = asyncio.get_running_loop()
                writer = loop.run_in_executor(None, _flood, engine.shard, cmds)
                done = False
                while not done:
                    m = await _recv(ws, 60)
                    if m.get("product_id") in builders:
                        assert builders[m["product_id"]].on(m) != "gap", m
                    done = writer.done()
                last = await writer
                api = engine.client(None)
                await asyncio.to_thread(_wait_seq, api, last)
                await _sync(ws, builders)
                return builders, api, last
        builders, api, last = asyncio.run(main())
        # the same input through an in-test matcher: the engine is deterministic
        matcher = engine_matcher(engine, cmds, last)
        from publisher.products import Catalog
        cat = Catalog.from_exchange(DEFAULT_CONFIG)
        for name, b in builders.items():
            p = cat.product(name)
            bids, asks = matcher_l2(matcher, p.symbol_id)
            assert b.gaps == 0 and b.resyncs == 0
            assert {p.price_to_ticks(k): p.qty_to_lots(v) for k, v in b.bids.items()} == bids
            assert {p.price_to_ticks(k): p.qty_to_lots(v) for k, v in b.asks.items()} == asks
            rest = api.get("/products/%s/book?level=2" % name).json()
            assert [[Decimal(x), Decimal(y)] for x, y in rest["bids"]] == \
                sorted(([k, v] for k, v in b.bids.items()), reverse=True)
        assert any(b.bids for b in builders.values()) and any(b.asks for b in builders.values())
        api.close()
        if engine.mode == "run":
            # the engine's own matcher is the one the books were checked against: its
            # shutdown snapshot (after a few more commands: the supervisor's CLOCK ticks
            # and the SNAPSHOT itself) has the in-test matcher's state
            from journaler.recovery import journal_records, restore_latest
            from ringbuf.records import CommandKind
            assert engine.shutdown() == 0, engine.log_text()
            data_dir = engine.raw["data_dir"]
            live, snap_seq = restore_latest(DEFAULT_CONFIG, data_dir, engine.shard)
            assert snap_seq > last
            for seq, record in journal_records(data_dir, engine.shard, after=last):
                assert record.kind in (int(CommandKind.CLOCK), int(CommandKind.SNAPSHOT))
                matcher.process(seq, record)
            assert live.state_hash() == matcher.state_hash()
    finally:
        engine.stop()


@pytest.mark.timeout(600)
def test_ws_book_equals_matcher_book_after_100k_session(tmp_path):
    _session_book_matches(tmp_path, 100_000, seed=22)


def test_slow_client_gets_resync_and_never_slows_others(tmp_path):
    """A client that stops reading overflows its queue: it gets a resync notice and a
    fresh snapshot (never stale deltas), while a reading client sees every update in order."""
    from engine.commands import Command
    from pub_rawws import RawWebSocket
    engine = Engine(tmp_path, publisher_extra={"ws_queue": 8}).start()
    stuck = RawWebSocket("127.0.0.1", engine.port)
    try:
        acct = 301
        cmds = [Command.deposit(acct, a, 10 ** 15) for a in (1, 2, 3)]
        # many distinct price levels: large l2update messages
        cmds += [Command.limit(acct, 1, 1, 1000 + i, 1) for i in range(30000)]
        sub = {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2", "ticker"]}
        stuck.send_json(sub)
        assert stuck.recv_json()["type"] == "subscriptions"

        async def main():
            async with websockets.connect(engine.ws_url, max_size=None) as fast:
                await fast.send(json.dumps(sub))
                fast_book = BookBuilder()
                loop = asyncio.get_running_loop()
                writer = loop.run_in_executor(None, _flood, engine.shard, cmds)
                t0 = time.monotonic()
                while not writer.done():
                    m = await _recv(fast, 60)
                    if m.get("product_id") == "BTC-USD":
                        assert fast_book.on(m) != "gap"
                last = await writer
                await asyncio.to_thread(_wait_seq, engine.client(None), last)
                await _sync(fast, {"BTC-USD": fast_book})
                return fast_book, time.monotonic() - t0
        fast_book, elapsed = asyncio.run(main())
        assert fast_book.gaps == 0 and fast_book.resyncs == 0
        assert len(fast_book.bids) == 30000
        # now the stuck client reads what it was sent: old data, a resync, a fresh snapshot
        stuck_book = BookBuilder()
        saw = []
        while True:
            m = stuck.recv_json(10)
            saw.append(m["type"])
            if m.get("product_id") == "BTC-USD" or m["type"] == "resync":
                assert stuck_book.on(m) != "gap"
            if m["type"] == "snapshot" and stuck_book.resyncs:
                break
        assert "resync" in saw
        stuck.send_json({"type": "ping"})
        while True:
            m = stuck.recv_json(10)
            if m["type"] == "pong":
                break
            stuck_book.on(m)
        assert stuck_book.bids == fast_book.bids      # fresh, not stale
        assert elapsed < 120
    finally:
        stuck.close()
        engine.stop()


def test_gap_detected_and_healed_by_resubscribing(engine, alice, bob):
    """Sequences grow by exactly 1 per message on each channel of a product; a client
    that misses an l2update sees the gap, re-subscribes, gets a fresh snapshot and ends
    with the same book as GET /book."""
    product = "ETH-USD"
    for c in (alice, bob):
        assert c.delete("/orders").status_code == 200

    async def main():
        async with websockets.connect(engine.ws_url) as ws:
            await ws.send(json.dumps({"type": "subscribe", "product_ids": [product],
                                      "channels": ["level2", "trades", "ticker"]}))
            book = BookBuilder()
            seqs = {"trades": [], "ticker": [], "l2update": [], "snapshot": []}
            dropped = []

            async def pump(until, timeout=10.0):
                deadline = time.monotonic() + timeout
                while True:
                    m = await _recv(ws, max(0.1, deadline - time.monotonic()))
                    if m.get("product_id") == product and m["type"] in seqs:
                        seqs[m["type"]].append(m["sequence"])
                        if m["type"] == "l2update" and not dropped and book.seq is not None:
                            dropped.append(m)            # "lost" on the way: not applied
                        else:
                            book.on(m)
                    if until(m):
                        return m
                    assert time.monotonic() < deadline, "timed out"

            await pump(lambda m: m["type"] == "snapshot")
            for i in range(4):
                r = await asyncio.to_thread(alice.order, product, "sell", "0.1", "%d.0" % (2500 + i))
                assert r.status_code == 200
            await pump(lambda m: m["type"] == "l2update" and book.seq is None and book.gaps)
            assert dropped and book.gaps == 1             # the client noticed the gap
            await ws.send(json.dumps({"type": "subscribe", "product_ids": [product],
                                      "channels": ["level2"]}))
            snap = await pump(lambda m: m["type"] == "snapshot")
            assert snap["sequence"] >= dropped[0]["sequence"] and book.snapshots == 2
            r = await asyncio.to_thread(bob.order, product, "buy", "0.1", "2500.0")
            assert r.status_code == 200 and r.json()["filled_size"] == "0.1"
            await pump(lambda m: m["type"] == "trades")
            await _sync(ws, {product: book})
            l2 = seqs["l2update"]
            assert l2 == list(range(l2[0], l2[0] + len(l2)))           # nothing lost on the wire
            for ch in ("trades", "ticker"):
                s = seqs[ch]
                assert s and all(b == a + 1 for a, b in zip(s[1:], s[2:])), (ch, s)
            rest = await asyncio.to_thread(alice.get, "/products/%s/book?level=2" % product)
            rest = rest.json()
            assert sorted([Decimal(p), Decimal(q)] for p, q in rest["asks"]) == \
                sorted([p, q] for p, q in book.asks.items())
            assert sorted([Decimal(p), Decimal(q)] for p, q in rest["bids"]) == \
                sorted([p, q] for p, q in book.bids.items())
            assert book.asks[Decimal("2501.0")] == Decimal("0.1")
    try:
        asyncio.run(main())
    finally:
        for c in (alice, bob):
            c.delete("/orders")


def test_client_stuck_after_resync_is_disconnected(tmp_path):
    """The slow-consumer rule's last step: a client that still does not read
    ``ws_resync_timeout_s`` after its resync is disconnected; others carry on."""
    from engine.commands import Command
    from pub_rawws import RawWebSocket
    engine = Engine(tmp_path, publisher_extra={"ws_queue": 8, "ws_resync_timeout_s": 1.0}).start()
    stuck = RawWebSocket("127.0.0.1", engine.port)
    try:
        stuck.send_json({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2"]})
        assert stuck.recv_json()["type"] == "subscriptions"
        acct = 302
        cmds = [Command.deposit(acct, a, 10 ** 15) for a in (1, 2, 3)]
        cmds += [Command.limit(acct, 1, 1, 1000 + i, 1) for i in range(20000)]
        for i in range(0, len(cmds), 500):                # many l2updates of many levels
            last = _flood(engine.shard, cmds[i:i + 500])
            time.sleep(0.02)
        api = engine.client(None)
        _wait_seq(api, last)
        api.close()
        time.sleep(2.0)                                   # > ws_resync_timeout_s, not reading
        t0 = time.monotonic()
        with pytest.raises(ConnectionError):              # what was buffered, then the end
            for _ in range(100000):
                stuck.recv_json(5)
        assert time.monotonic() - t0 < 5
        import websockets.sync.client as wsc
        with wsc.connect(engine.ws_url) as ws:            # the publisher still serves others
            ws.send(json.dumps({"type": "ping"}))
            assert json.loads(ws.recv(5))["type"] == "pong"
    finally:
        stuck.close()
        engine.stop()
