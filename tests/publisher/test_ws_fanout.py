"""WebSocket fan-out to many subscribers: shared frames, conflation, books equal to REST.

In one process and one asyncio loop: the real app (``create_app``) served by
uvicorn's ``websockets-sansio`` protocol on a loopback socket (the publisher's
own listener, ``publisher.process._listen``), the columnar service fed batches
by an in-test matcher, and 50 raw WebSocket clients subscribed to one product's
level2 and trades, plus one client that never reads.  No shared memory, no child
process.
"""
import asyncio
import base64
import json
import os
import struct
import types

import httpx
import pytest

from engine.config import DEFAULT_CONFIG
from engine.events import ListSink
from engine.matcher import Matcher
from pub_harness import free_port
from pub_session import session

pytestmark = pytest.mark.timeout(60)

PRODUCT = "BTC-USD"
SUBSCRIBERS = 50


class RawClient(object):
    """A minimal asyncio WebSocket client (RFC 6455: masked sends, unmasked frames in)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.messages = []             # (payload bytes, parsed)

    @classmethod
    async def connect(cls, port, rcvbuf=0):
        import socket
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n" % (port, key)).encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        return cls(reader, writer)

    def send(self, obj):
        data = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(data)
        header = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else \
            struct.pack("!BBH", 0x81, 0x80 | 126, n)
        self.writer.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    async def recv(self):
        """Next text message: (payload bytes, parsed JSON)."""
        while True:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            assert not b1 & 0x80, "server frames are unmasked"
            payload = await self.reader.readexactly(n)
            if b0 & 0x0F == 0x1:
                assert b0 & 0x80 and not b0 & 0x70, "one unfragmented, uncompressed frame"
                return payload, json.loads(payload)

    async def until_pong(self, ping=True):
        if ping:
            self.send({"type": "ping"})
        while True:
            payload, m = await self.recv()
            if m["type"] == "pong":
                return m
            self.messages.append((payload, m))

    def close(self):
        self.writer.close()


def _book(client):
    """Snapshot + l2updates of ``client.messages`` (gap rule): (bids, asks, sequence)."""
    bids, asks, seq = None, None, None
    for _, m in client.messages:
        if m.get("product_id") != PRODUCT:
            continue
        if m["type"] == "snapshot":
            bids, asks, seq = dict(m["bids"]), dict(m["asks"]), m["sequence"]
        elif m["type"] == "l2update":
            assert m["sequence"] == seq + 1, "gap"
            seq = m["sequence"]
            for side, price, size in m["changes"]:
                book = bids if side == "buy" else asks
                if float(size) == 0:
                    book.pop(price, None)
                else:
                    book[price] = size
    return bids, asks, seq


def test_50_subscribers_share_frames_and_end_with_the_rest_book():
    import uvicorn
    from publisher.app import create_app
    from publisher.auth import KeyStore
    from publisher.process import _listen, build_service

    service = build_service({"ws_conflate_ms": 5.0}, types.SimpleNamespace(
        symbols=None), DEFAULT_CONFIG)
    hub = service.hub
    app = create_app(service, KeyStore.from_config({}), access_log=False)
    port = free_port()
    listener = _listen("127.0.0.1", port, 128 * 1024)
    server = uvicorn.Server(uvicorn.Config(app, ws="websockets-sansio", lifespan="off",
                                           log_level="warning", access_log=False))
    matcher = Matcher(DEFAULT_CONFIG, ListSink())
    commands = session(12000, seed=31)
    sub = {"type": "subscribe", "product_ids": [PRODUCT], "channels": ["level2", "trades"]}

    async def main():
        serving = asyncio.ensure_future(server.serve(sockets=[listener]))
        clients, stuck = [], None
        try:
            while not server.started:
                assert not serving.done(), serving
                await asyncio.sleep(0.01)
            stuck = await RawClient.connect(port, rcvbuf=4096)     # never reads
            stuck.send(sub)
            for _ in range(SUBSCRIBERS):
                c = await RawClient.connect(port)
                c.send(sub)
                clients.append(c)
            for c in clients:
                await c.until_pong()       # subscribed, snapshot received
            assert all(c.raw is not None for c in hub.clients)       # direct writes (rule 6)
            published0, fanouts0 = hub.published, hub.fanouts
            level2_0 = hub.encoded.get(("level2", 1), 0)

            readers = [asyncio.ensure_future(c.until_pong(ping=False)) for c in clients]
            sink = matcher.sink
            batches = 0
            for start in range(0, len(commands), 40):               # the burst: 300 batches
                for seq in range(start + 1, min(len(commands), start + 40) + 1):
                    matcher.process(seq, commands[seq - 1])
                service.on_events(sink.take())
                batches += 1
                if batches % 4 == 0:
                    await asyncio.sleep(0)
            # a ping flushes what is pending (rule 5); each reader stops at its pong
            await asyncio.sleep(0.05)
            for c in clients:
                c.send({"type": "ping"})
            await asyncio.wait_for(asyncio.gather(*readers), 30)
            for c in clients:
                await c.until_pong()
            async with httpx.AsyncClient(base_url="http://127.0.0.1:%d" % port) as http:
                rest = (await http.get("/products/%s/book?level=2" % PRODUCT)).json()
            return (rest, hub.published - published0, hub.fanouts - fanouts0,
                    hub.encoded.get(("level2", 1), 0) - level2_0, batches, clients)
        finally:
            for c in clients + ([stuck] if stuck is not None else []):
                c.close()
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    rest, published, fanouts, level2_sent, batches, clients = asyncio.run(main())
    assert published == batches                  # ingestion took every batch
    assert level2_sent <= fanouts < published    # conflated: fewer fan-outs than batches
    assert level2_sent > 10
    rest_bids = {p: q for p, q in rest["bids"]}
    rest_asks = {p: q for p, q in rest["asks"]}
    assert rest_bids and rest_asks
    frames = {}
    for c in clients:
        bids, asks, seq = _book(c)
        assert (bids, asks, seq) == (rest_bids, rest_asks, rest["sequence"])
        updates = [(m["sequence"], payload) for payload, m in c.messages
                   if m["type"] == "l2update" and m["product_id"] == PRODUCT]
        # at most one level2 message per fan-out (hence per published batch), all received
        assert len(updates) == level2_sent
        for sequence, payload in updates:          # the same bytes for every client
            assert frames.setdefault(sequence, payload) == payload
    assert len(frames) == level2_sent


def test_formatted_messages_equal_json_dumps_of_the_views():
    """The hub formats l2update/trades text itself (memoized strings); it must equal
    json.dumps of views.trade_json and of [side, price, size] lists, for Trade lists (the
    object model) and columnar TradeLists alike."""
    import random
    import numpy as np
    from publisher.columnar import TRADE_DTYPE, TradeList
    from publisher.products import Catalog
    from publisher.read_model import Trade
    from publisher.views import trade_json
    from publisher.ws import Formats, last_trade_ns
    rng = random.Random(5)
    for name in ("BTC-USD", "ETH-BTC"):
        product = Catalog.from_exchange(DEFAULT_CONFIG).product(name)
        fmt = Formats(product, limit=64)             # small memo: misses and clears too
        trades = [Trade(i, rng.randint(1, 10 ** 7), rng.randint(1, 10 ** 6), rng.choice((1, 2)),
                        rng.choice((0, rng.randint(1, 2 * 10 ** 18))), i, 7, 8)
                  for i in range(1, 2000)]
        expected = json.dumps([trade_json(t, product) for t in trades], separators=(",", ":"))
        assert fmt.trades_json(trades) == expected
        columns = np.array([(t.trade_id, t.price, t.qty, t.taker_side, t.timestamp_ns, t.seq,
                             t.maker_order_id, t.taker_order_id) for t in trades], TRADE_DTYPE)
        lazy = TradeList(columns[:700])
        lazy.extend(TradeList(columns[700:]))
        assert fmt.trades_json(lazy) == expected
        assert last_trade_ns(lazy) == trades[-1].timestamp_ns
        levels = {(rng.choice((1, 2)), rng.randint(1, 10 ** 7)): rng.choice((0, rng.randint(1, 10 ** 6)))
                  for _ in range(500)}
        assert fmt.levels_json(levels) == json.dumps(
            [[{1: "buy", 2: "sell"}[s], product.fmt_price(p), product.fmt_qty(q)]
             for (s, p), q in levels.items()], separators=(",", ":"))
