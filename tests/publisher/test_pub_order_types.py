"""POST /orders for every order type and time in force the matcher supports, against
``ringmatch run``: the immediate answer, and the later outcomes (TRIGGERED stops,
EXPIRED GTT orders) as GET /orders/{id} and the user WebSocket channel show them."""
import json
import threading
import time

import pytest
import websockets.sync.client as wsc

from publisher.auth import sign

pytestmark = pytest.mark.timeout(120)

P = "ETH-USD"


class UserFeed(object):
    """The user channel of one key, read by a thread: every report in arrival order."""

    def __init__(self, url, key, secret):
        self._cm = wsc.connect(url)
        self.ws = self._cm.__enter__()
        ts = "%.3f" % time.time()
        self.ws.send(json.dumps({"type": "subscribe", "channels": ["user"], "key": key,
                                 "timestamp": ts, "signature": sign(secret, ts, "GET", "/ws")}))
        first = json.loads(self.ws.recv(10))
        assert first["type"] == "subscriptions", first
        self.reports = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for raw in self.ws:
                m = json.loads(raw)
                if m.get("type") == "report":
                    with self.cond:
                        self.reports.append(m)
                        self.cond.notify_all()
        except Exception:
            pass

    def wait(self, order_id, event, timeout=10.0):
        def find():
            return [m for m in self.reports if m["order_id"] == order_id and m["event"] == event]
        with self.cond:
            assert self.cond.wait_for(find, timeout), (order_id, event, self.events(order_id))
            return find()[0]

    def events(self, order_id):
        return [m["event"] for m in list(self.reports) if m["order_id"] == order_id]

    def close(self):
        self._cm.__exit__(None, None, None)
        self.thread.join(5)


def _place(c, **body):
    body.setdefault("product_id", P)
    r = c.post("/orders", body)
    assert r.status_code == 200, (body, r.text)
    return r.json()


def test_every_order_type_and_tif_with_later_outcomes(engine, alice, bob):
    for c in (alice, bob):
        assert c.delete("/orders").status_code == 200
    feed = UserFeed(engine.ws_url, "k-alice", "alice-secret")
    try:
        for side, price in (("sell", "2010.0"), ("sell", "2020.0"), ("buy", "1990.0"),
                            ("buy", "1980.0")):
            _place(bob, side=side, size="1.0", price=price)
        # waiting stops of the four kinds, a GTT limit and a GTT stop
        sl = _place(alice, type="stop_loss", side="buy", size="0.2", stop_price="2010.0")
        tp = _place(alice, type="take_profit", side="sell", size="0.2", stop_price="2010.0")
        sll = _place(alice, type="stop_limit", side="sell", size="0.2", stop_price="1990.0",
                     price="1985.0")
        tpl = _place(alice, type="take_profit_limit", side="buy", size="0.2", stop_price="1990.0",
                     price="1995.0")
        expire = "%.3f" % (time.time() + 1.0)
        gtt = _place(alice, side="buy", size="0.1", price="1950.0", time_in_force="GTT",
                     expire_time=expire)
        gtt_stop = _place(alice, type="stop_loss", side="sell", size="0.1", stop_price="1900.0",
                          time_in_force="GTT", expire_time=expire)
        for o, stop in ((sl, "2010.0"), (tp, "2010.0"), (sll, "1990.0"), (tpl, "1990.0"),
                        (gtt_stop, "1900.0")):
            assert o["status"] == "pending" and o["stop_price"] == stop, o
            assert feed.wait(o["id"], "accepted")["status"] == "pending"
        assert gtt["status"] == "open" and gtt["time_in_force"] == "GTT"
        assert sll["price"] == "1985.0" and tpl["type"] == "take_profit_limit"

        # market buy by funds trades at 2010.0: the rising stops trigger (stop-loss buy,
        # take-profit sell); the take-profit's market sell trades at 1990.0, which
        # triggers the falling ones (stop-limit sell, take-profit-limit buy)
        mk = _place(alice, type="market", side="buy", funds="250.00")
        assert mk["status"] == "done" and mk["filled_size"] == "0.1" and mk["funds"] == "250.00"
        assert [f["price"] for f in mk["fills"]] == ["2010.0"]
        for o in (sl, tp, sll, tpl):
            rep = feed.wait(o["id"], "triggered")
            got = alice.get("/orders/%s" % o["id"]).json()
            assert got["status"] != "pending" and got["stop_price"] == o["stop_price"], got
            assert rep["order_id"] == o["id"]
        done = {o["id"]: alice.get("/orders/%s" % o["id"]).json() for o in (sl, tp, sll)}
        for oid, got in done.items():
            assert got["status"] == "done" and got["done_reason"] == "filled", got
            assert got["filled_size"] == "0.2"
            assert feed.events(oid)[-1] == "fill"
        assert alice.get("/orders/%s" % sl["id"]).json()["executed_value"] == "402.00"
        rested = alice.get("/orders/%s" % tpl["id"]).json()
        assert rested["status"] == "open" and rested["price"] == "1995.0"
        assert rested["remaining_size"] == "0.2"
        book = alice.get("/products/%s/book?level=2" % P).json()
        assert ["1995.0", "0.2"] in book["bids"]
        assert alice.get("/products/%s/ticker" % P).json()["price"] in ("1990.0", "1995.0")

        # GTT: any later command whose stream time passes expire_time expires both
        time.sleep(max(0.0, float(expire) - time.time()) + 0.1)
        _place(bob, side="buy", size="0.1", price="1000.0")
        for o in (gtt, gtt_stop):
            got = alice.get("/orders/%s" % o["id"]).json()
            assert got["status"] == "done" and got["done_reason"] == "expired", got
            assert got["remaining_size"] == "0.0"
            feed.wait(o["id"], "expired")
        assert ["1950.0", "0.1"] not in alice.get("/products/%s/book?level=2" % P).json()["bids"]
        assert {o["id"] for o in alice.get("/orders?status=open").json()} == {tpl["id"]}

        # post-only: rejected when it would take, re-priced one tick behind with reprice
        r = alice.post("/orders", {"product_id": P, "side": "buy", "size": "0.1",
                                   "price": "2010.0", "post_only": True})
        assert r.status_code == 400 and r.json()["reason"] == "POST_ONLY_WOULD_TAKE"
        feed.wait(r.json()["id"], "rejected")
        assert alice.get("/orders/%s" % r.json()["id"]).json()["status"] == "rejected"
        po = _place(alice, side="buy", size="0.1", price="2010.0", post_only=True,
                    post_only_reprice=True)
        assert po["status"] == "open" and po["price"] == "2009.9" and po["fills"] == []
        assert feed.wait(po["id"], "accepted")["price"] == "2009.9"
        assert alice.delete("/orders/%s" % po["id"]).status_code == 200
        feed.wait(po["id"], "canceled")
        ask = _place(alice, side="sell", size="0.1", price="1990.0", post_only=True,
                     post_only_reprice=True)           # best bid: tpl's 1995.0
        assert ask["price"] == "1995.1" and ask["status"] == "open"
        for o in (ask, tpl):                            # no self-trades below
            assert alice.delete("/orders/%s" % o["id"]).status_code == 200

        # IOC / FOK / market by size, and the user channel's per-connection sequence
        ioc = _place(alice, side="buy", size="0.5", price="2010.0", time_in_force="IOC")
        assert ioc["status"] == "done" and ioc["filled_size"] == "0.5"
        fok = alice.post("/orders", {"product_id": P, "side": "buy", "size": "9.0",
                                     "price": "2020.0", "time_in_force": "FOK"})
        assert fok.status_code == 400 and fok.json()["reason"] == "FOK_NOT_FILLABLE"
        ms = _place(alice, type="market", side="sell", size="0.1")
        assert ms["status"] == "done" and ms["fills"][0]["liquidity"] == "T"
        feed.wait(ms["id"], "fill")
        seqs = [m["sequence"] for m in feed.reports]
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        feed.close()
        for c in (alice, bob):
            c.delete("/orders")
