"""Coinbase Exchange WebSocket forms against a running engine: heartbeat, the subscription
object form, Coinbase error messages, UUID client_oid on the user channel (ws rules 7-9)."""
import asyncio
import datetime
import json
import statistics
import time

import pytest
import websockets

from pub_wsmsg import recv as _recv, sync as _sync, until as _until

from publisher.auth import sign

pytestmark = pytest.mark.timeout(180)


def _user_subscribe(key, secret, **extra):
    ts = "%.3f" % time.time()
    msg = {"type": "subscribe", "channels": ["user"], "key": key, "timestamp": ts,
           "signature": sign(secret, ts, "GET", "/ws")}
    msg.update(extra)
    return json.dumps(msg)


def test_heartbeat_once_a_second_with_sequence_and_last_trade_id(engine, alice, bob):
    async def main():
        async with websockets.connect(engine.ws_url) as ws:
            await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"],
                                      "channels": ["level2", "trades", "heartbeat",
                                                   {"name": "heartbeat",
                                                    "product_ids": ["ETH-USD"]}]}))
            subs, _ = await _until(ws, lambda m: m["type"] == "subscriptions")
            assert {"name": "heartbeat", "product_ids": ["BTC-USD", "ETH-USD"]} in subs["channels"]
            r = await asyncio.to_thread(alice.order, "BTC-USD", "sell", "0.10", "30500")
            assert r.status_code == 200, r.text
            r = await asyncio.to_thread(bob.order, "BTC-USD", "buy", "0.04", "30500")
            assert r.status_code == 200, r.text
            r = await asyncio.to_thread(bob.order, "BTC-USD", "buy", "0.03", "30500")
            assert r.status_code == 200, r.text
            last_l2 = last_trade = None
            beats = {"BTC-USD": [], "ETH-USD": []}
            deadline = time.monotonic() + 4.6
            while time.monotonic() < deadline:
                try:
                    m = await _recv(ws, max(0.01, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                if m["type"] in ("snapshot", "l2update"):
                    last_l2 = m["sequence"]
                elif m["type"] == "trades":
                    last_trade = m["trades"][-1]["trade_id"]
                elif m["type"] == "heartbeat":
                    beats[m["product_id"]].append((time.monotonic(), m))
            assert last_trade is not None and last_l2 is not None
            for product, got in beats.items():
                assert 3 <= len(got) <= 6, (product, len(got))
                gaps = [b[0] - a[0] for a, b in zip(got, got[1:])]
                assert 0.6 <= statistics.median(gaps) <= 1.5, (product, gaps)
                for _t, m in got:
                    assert set(m) == {"type", "sequence", "last_trade_id", "product_id", "time"}
                    when = datetime.datetime.strptime(m["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
                    age = time.time() - when.replace(tzinfo=datetime.timezone.utc).timestamp()
                    assert -2 < age < 10, m
            # the last heartbeat of BTC-USD shows what the client has seen, and what REST says
            hb = beats["BTC-USD"][-1][1]
            assert hb["sequence"] == last_l2, (hb, last_l2)
            assert hb["last_trade_id"] == last_trade, (hb, last_trade)
            book = (await asyncio.to_thread(alice.get, "/products/BTC-USD/book?level=2")).json()
            assert book["sequence"] == hb["sequence"]
            tape = (await asyncio.to_thread(alice.get, "/products/BTC-USD/trades")).json()
            assert max(t["trade_id"] for t in tape) == hb["last_trade_id"]
            assert beats["ETH-USD"][-1][1]["sequence"] == (await asyncio.to_thread(
                alice.get, "/products/ETH-USD/book?level=2")).json()["sequence"]
            # unsubscribing the whole channel (no product_ids, as Coinbase) stops heartbeats
            await ws.send(json.dumps({"type": "unsubscribe", "channels": ["heartbeat"]}))
            subs, _ = await _until(ws, lambda m: m["type"] == "subscriptions")
            assert [c["name"] for c in subs["channels"]] == ["level2", "trades"]
            await asyncio.sleep(2.5)
            assert not [m for m in await _sync(ws) if m["type"] == "heartbeat"]
    asyncio.run(main())


def test_object_subscription_form_subscribes_exactly_and_unsubscribes(engine, alice):
    async def main():
        async with websockets.connect(engine.ws_url) as ws:
            await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": [
                "level2", {"name": "ticker", "product_ids": ["ETH-USD"]}]}))
            subs, _ = await _until(ws, lambda m: m["type"] == "subscriptions")
            assert subs["channels"] == [{"name": "level2", "product_ids": ["BTC-USD"]},
                                        {"name": "ticker", "product_ids": ["ETH-USD"]}]
            first = await _sync(ws)
            assert sorted((m["type"], m["product_id"]) for m in first) == [
                ("snapshot", "BTC-USD"), ("ticker", "ETH-USD")]
            for product, size, price in (("BTC-USD", "0.01", "29000"),
                                         ("ETH-USD", "0.1", "1500.0")):
                r = await asyncio.to_thread(alice.order, product, "buy", size, price)
                assert r.status_code == 200, r.text
            await _until(ws, lambda m: m["type"] == "l2update")
            await _until(ws, lambda m: m["type"] == "ticker")
            seen = {(m["type"], m["product_id"]) for m in await _sync(ws) if "product_id" in m}
            assert seen <= {("l2update", "BTC-USD"), ("ticker", "ETH-USD")}, seen
            # today's form beside it, then unsubscribe in object form
            await ws.send(json.dumps({"type": "subscribe", "product_ids": ["ETH-BTC"],
                                      "channels": ["trades"]}))
            subs, _ = await _until(ws, lambda m: m["type"] == "subscriptions")
            assert subs["channels"] == [{"name": "level2", "product_ids": ["BTC-USD"]},
                                        {"name": "ticker", "product_ids": ["ETH-USD"]},
                                        {"name": "trades", "product_ids": ["ETH-BTC"]}]
            await ws.send(json.dumps({"type": "unsubscribe", "channels": [
                {"name": "ticker", "product_ids": ["ETH-USD"]},
                {"name": "trades", "product_ids": ["ETH-BTC"]}]}))
            subs, _ = await _until(ws, lambda m: m["type"] == "subscriptions")
            assert subs["channels"] == [{"name": "level2", "product_ids": ["BTC-USD"]}]
            await ws.send(json.dumps({"type": "unsubscribe", "product_ids": [],
                                      "channels": ["level2"]}))
            subs, _ = await _until(ws, lambda m: m["type"] == "subscriptions")
            assert subs["channels"] == []
            for product, size, price in (("BTC-USD", "0.01", "29001"),
                                         ("ETH-USD", "0.1", "1501.0")):
                r = await asyncio.to_thread(alice.order, product, "buy", size, price)
                assert r.status_code == 200, r.text
            await asyncio.sleep(0.5)
            assert await _sync(ws) == []
    asyncio.run(main())


def test_malformed_subscriptions_are_named_and_change_nothing(engine):
    cases = [
        ({"channels": [{"name": "candles", "product_ids": ["BTC-USD"]}]}, "unknown channel"),
        ({"channels": [{"product_ids": ["BTC-USD"]}]}, "unknown channel"),
        ({"channels": [{"name": "level2", "product_ids": ["NOPE"]}]},
         "unknown product 'NOPE' in channels[0].product_ids"),
        ({"channels": [{"name": "level2", "product_ids": "BTC-USD"}]},
         "channels[0].product_ids must be a list"),
        ({"product_ids": "BTC-USD", "channels": ["level2"]}, "product_ids must be a list"),
        ({"product_ids": ["BTC-USD"], "channels": "level2"}, "channels must be a non-empty list"),
        ({"product_ids": ["BTC-USD"], "channels": []}, "channels must be a non-empty list"),
        ({"channels": [{"name": "ticker"}]}, "product_ids is required for ticker"),
        # the valid first entry is not applied either
        ({"product_ids": ["BTC-USD"],
          "channels": ["level2", {"name": "ticker", "product_ids": ["ETH-USD", 7]}]},
         "unknown product 7"),
        ({"channels": [{"name": "user"}], "key": "k-alice",
          "timestamp": "%.3f" % time.time(), "signature": "x"}, "invalid signature"),
    ]

    async def main():
        async with websockets.connect(engine.ws_url) as ws:
            for kind in ("subscribe", "unsubscribe"):
                for body, needle in cases:
                    if kind == "unsubscribe" and needle in ("product_ids is required for ticker",
                                                            "invalid signature"):
                        continue        # both valid for unsubscribe
                    await ws.send(json.dumps(dict(body, type=kind)))
                    m = await _recv(ws)
                    assert m["type"] == "error", (body, m)
                    assert needle in m["reason"], (body, m)
                    assert m["message"].startswith("Failed to %s" % kind), m
                    assert needle in m["message"], m
            await ws.send(b"\xff\xfe not json")                      # a binary frame
            m = await _recv(ws)
            assert m["type"] == "error" and m["reason"] and "bad message" in m["message"], m
            await ws.send(json.dumps(["subscribe"]))
            m = await _recv(ws)
            assert m["type"] == "error" and "JSON object" in m["reason"], m
            # the connection is still there and nothing was subscribed
            assert await _sync(ws) == []
            await ws.send(json.dumps({"type": "unsubscribe", "channels": ["level2"]}))
            subs, _ = await _until(ws, lambda m: m["type"] == "subscriptions")
            assert subs["channels"] == []
    asyncio.run(main())


def test_uuid_client_oid_in_user_channel_reports(engine, alice, bob):
    uuid_text = "8B9D1E4A-3f4e-4c1b-9d0a-2b8f6c0e7a11"      # shown as sent, letter case too

    async def main():
        async with websockets.connect(engine.ws_url) as ws:
            await ws.send(_user_subscribe("k-alice", "alice-secret",
                                          channels=[{"name": "user", "product_ids": ["ETH-USD"]}]))
            subs, _ = await _until(ws, lambda m: m["type"] == "subscriptions")
            assert {"name": "user", "account_id": 101} in subs["channels"]
            r = await asyncio.to_thread(alice.order, "ETH-USD", "sell", "0.5", "2500.0",
                                        client_oid=uuid_text)
            assert r.status_code == 200, r.text
            assert r.json()["client_oid"] == uuid_text
            oid = r.json()["id"]
            rep, _ = await _until(ws, lambda m: m["type"] == "report" and m["order_id"] == oid)
            assert rep["event"] == "accepted" and rep["client_oid"] == uuid_text, rep
            r = await asyncio.to_thread(bob.order, "ETH-USD", "buy", "0.2", "2500.0")
            assert r.status_code == 200, r.text
            fill, _ = await _until(ws, lambda m: m["type"] == "report" and m["event"] == "fill"
                                   and m["order_id"] == oid)
            assert fill["client_oid"] == uuid_text, fill
            r = await asyncio.to_thread(alice.delete, "/orders/client:%s" % uuid_text.lower())
            assert r.status_code == 200, r.text
            done, _ = await _until(ws, lambda m: m["type"] == "report" and m["event"] == "canceled"
                                   and m["order_id"] == oid)
            assert done["client_oid"] == uuid_text, done
            # an integer client_oid is shown as the integer, as before
            r = await asyncio.to_thread(alice.order, "ETH-USD", "sell", "0.1", "2600.0",
                                        client_oid="424242")
            assert r.status_code == 200, r.text
            rep, _ = await _until(ws, lambda m: m["type"] == "report"
                                  and m["order_id"] == r.json()["id"])
            assert rep["client_oid"] == "424242", rep
    asyncio.run(main())


def test_heartbeat_is_encoded_once_per_product_and_tick_for_all_subscribers():
    """In-process hub (ws rule 7): one shared message per product per tick, whatever the
    number of subscribers; products without heartbeat subscribers get none."""
    from engine.config import DEFAULT_CONFIG
    from publisher.products import Catalog
    from publisher.read_model import ReadModel
    from publisher.ws import Hub, WsClient

    class Socket(object):
        async def send_text(self, text):
            pass

    async def main():
        hub = Hub(Catalog.from_exchange(DEFAULT_CONFIG), ReadModel([1, 2, 3]))
        hub.heartbeat_s = 60.0                  # ticks driven by hand below
        clients = [WsClient(hub, Socket(), 100) for _ in range(5)]
        for c in clients:
            hub.add(c)
            hub.subscribe(c, "heartbeat", 1)
        hub.subscribe(clients[0], "heartbeat", 2)
        assert hub._hb_handle is not None       # the first subscribe armed the timer
        hub._hb_handle.cancel()
        hub.heartbeat_tick()                    # one tick
        assert hub.encoded == {("heartbeat", 1): 1, ("heartbeat", 2): 1}
        items = [c.queue[0] for c in clients]      # writer-task clients queue the text
        assert len({id(i) for i in items}) == 1     # the same object for every subscriber
        body = json.loads(items[0])
        assert body["type"] == "heartbeat" and body["product_id"] == "BTC-USD"
        assert body["sequence"] == 0 and body["last_trade_id"] == 0
        assert hub._hb_handle is not None           # re-armed while subscribed
        hub._hb_handle.cancel()
        for c in clients:
            hub.remove(c)
        hub.heartbeat_tick()
        assert hub._hb_handle is None               # the timer stopped with its subscribers
        assert hub.encoded == {("heartbeat", 1): 1, ("heartbeat", 2): 1}
    asyncio.run(asyncio.wait_for(main(), 20))
