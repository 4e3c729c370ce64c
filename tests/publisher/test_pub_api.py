"""REST API against a running engine: real processes, real sockets on loopback.

The engine fixture (pub_harness.Engine) runs the matcher and
``python -m publisher.process``; every request below goes over HTTP.
"""
import json
import time

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def clean_books(alice, bob):
    for c in (alice, bob):
        assert c.delete("/orders").status_code == 200
    yield


def _book(anon, product, level=2):
    r = anon.get("/products/%s/book?level=%d" % (product, level))
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------ market data
def test_products_and_docs(anon):
    r = anon.get("/products")
    assert r.status_code == 200
    names = [p["id"] for p in r.json()]
    assert names == ["BTC-USD", "ETH-USD", "ETH-BTC"]
    btc = anon.get("/products/BTC-USD").json()
    assert btc["quote_increment"] == "1" and btc["base_increment"] == "0.01"
    assert anon.get("/products/DOGE-USD").status_code == 404
    assert anon.get("/docs").status_code == 200
    spec = anon.get("/openapi.json").json()
    for path in ("/orders", "/orders/{order_id}", "/products/{product_id}/book",
                 "/products/{product_id}/ticker", "/products/{product_id}/trades", "/accounts"):
        assert path in spec["paths"], path
    assert "RM-Seq" in r.headers


def test_book_levels_and_errors(alice, anon):
    for price in ("29000", "29001", "29001"):
        assert alice.order("BTC-USD", "buy", "0.10", price).status_code == 200
    assert alice.order("BTC-USD", "sell", "0.05", "31000").status_code == 200
    book = _book(anon, "BTC-USD", 2)
    assert book["bids"][:2] == [["29001", "0.20"], ["29000", "0.10"]]
    assert book["asks"][0] == ["31000", "0.05"]
    l1 = _book(anon, "BTC-USD", 1)
    assert l1["bids"] == [["29001", "0.20"]] and l1["asks"] == [["31000", "0.05"]]
    assert anon.get("/products/BTC-USD/book?level=4").status_code == 400
    assert anon.get("/products/BTC-USD/book?level=x").status_code == 400
    assert anon.get("/products/NOPE/book").status_code == 404
    t = anon.get("/products/BTC-USD/ticker").json()
    assert t["best_bid"] == "29001" and t["best_ask"] == "31000"


def test_order_fills_trades_ticker_and_balances(alice, bob, anon):
    before_a = {a["currency"]: a for a in alice.get("/accounts").json()}
    before_b = {a["currency"]: a for a in bob.get("/accounts").json()}
    r = alice.order("ETH-USD", "sell", "2.0", "2000.0", client_oid="777001")
    assert r.status_code == 200, r.text
    maker = r.json()
    assert maker["status"] == "open" and maker["client_oid"] == "777001"
    assert maker["remaining_size"] == "2.0" and maker["fills"] == []
    r = bob.order("ETH-USD", "buy", "0.5", "2001.0")
    assert r.status_code == 200, r.text
    taker = r.json()
    assert taker["status"] == "done" and taker["done_reason"] == "filled"
    assert taker["filled_size"] == "0.5" and len(taker["fills"]) == 1
    fill = taker["fills"][0]
    assert fill["price"] == "2000.0" and fill["size"] == "0.5" and fill["liquidity"] == "T"
    assert fill["counter_order_id"] == maker["id"]
    # read-your-writes: the very next reads reflect the trade
    trades = anon.get("/products/ETH-USD/trades?limit=1").json()
    assert trades[0]["price"] == "2000.0" and trades[0]["size"] == "0.5"
    assert trades[0]["side"] == "buy"
    ticker = anon.get("/products/ETH-USD/ticker").json()
    assert ticker["price"] == "2000.0" and ticker["last_size"] == "0.5"
    assert ticker["best_ask"] == "2000.0" and ticker["best_ask_size"] == "1.5"
    mine = alice.get("/orders/%s" % maker["id"]).json()
    assert mine["filled_size"] == "0.5" and mine["remaining_size"] == "1.5"
    assert alice.get("/orders/client:777001").json()["id"] == maker["id"]
    # balances: notional 1000.00 USD; taker fee 5 bps = 0.50; maker fee 2 bps = 0.20
    after_a = {a["currency"]: a for a in alice.get("/accounts").json()}
    after_b = {a["currency"]: a for a in bob.get("/accounts").json()}
    from decimal import Decimal as D
    assert D(after_b["USD"]["balance"]) == D(before_b["USD"]["balance"]) - D("1000.50")
    assert D(after_b["ETH"]["balance"]) == D(before_b["ETH"]["balance"]) + D("0.5")
    assert D(after_a["USD"]["balance"]) == D(before_a["USD"]["balance"]) + D("999.80")
    assert D(after_a["ETH"]["hold"]) == D(before_a["ETH"]["hold"]) + D("1.5")
    assert D(after_a["ETH"]["available"]) == D(before_a["ETH"]["available"]) - D("2.0")
    stats = anon.get("/products/ETH-USD/stats").json()
    assert stats["last"] == "2000.0"


@pytest.mark.parametrize("body,reason", [
    ({"product_id": "BTC-USD", "side": "buy", "size": "9000", "price": "100000"},
     "INSUFFICIENT_FUNDS"),
    ({"product_id": "ETH-BTC", "side": "sell", "size": "0.001", "type": "market"}, "NO_LIQUIDITY"),
])
def test_rejections_carry_the_reason(alice, body, reason):
    r = alice.post("/orders", body)
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["reason"] == reason and reason in out["message"]
    assert out["status"] == "rejected"
    # a rejected order can be looked up with its reason
    got = alice.get("/orders/%s" % out["id"]).json()
    assert got["status"] == "rejected" and got["reject_reason"] == reason


def test_unknown_account_is_rejected(engine):
    carol = engine.client("k-carol")             # never deposited: the matcher has no account
    r = carol.order("BTC-USD", "buy", "0.01", "100")
    assert r.status_code == 400 and r.json()["reason"] == "UNKNOWN_ACCOUNT"
    carol.close()


@pytest.mark.parametrize("body,needle", [
    ({"product_id": "BTC-USD", "side": "buy", "size": "0.001", "price": "100"}, "multiple of"),
    ({"product_id": "BTC-USD", "side": "buy", "size": "0.01", "price": "100.5"}, "multiple of"),
    ({"product_id": "BTC-USD", "side": "up", "size": "0.01", "price": "100"}, "side"),
    ({"product_id": "BTC-USD", "side": "buy", "size": "abc", "price": "100"}, "decimal"),
    ({"product_id": "BTC-USD", "side": "buy", "size": 1, "price": "100"}, "size"),
    ({"product_id": "BTC-USD", "side": "buy", "size": "0.01", "price": "100", "x": 1}, "x"),
    ({"product_id": "BTC-USD", "side": "buy", "size": "0.01", "price": "100",
      "client_oid": "abc"}, "client_oid"),
    ({"product_id": "BTC-USD", "side": "buy", "size": "0.01", "price": "100",
      "client_oid": str(1 << 64)}, "client_oid"),
    ({"product_id": "BTC-USD", "side": "buy", "size": "0.01", "price": "100",
      "time_in_force": "GTT"}, "expire_time"),
    ({"product_id": "BTC-USD", "side": "buy", "type": "market", "size": "0.01", "funds": "10"},
     "size or funds"),
    ({"product_id": "BTC-USD", "side": "buy", "size": "0.01", "price": "1" + "0" * 30}, "range"),
    ({"product_id": "BTC-USD", "side": "buy", "size": "0.01", "price": "1e3"}, "decimal"),
    ({"side": "buy", "size": "0.01", "price": "100"}, "product_id"),
])
def test_invalid_input_is_400_with_message(alice, body, needle):
    r = alice.post("/orders", body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["message"]


def test_unknown_product_order_is_404(alice):
    r = alice.order("DOGE-USD", "buy", "1", "1")
    assert r.status_code == 404 and "DOGE-USD" in r.json()["message"]


def test_malformed_bodies_never_500(alice):
    for raw in (b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b'{"product_id": null}'):
        r = alice.request("POST", "/orders", raw_body=raw)
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
        assert "message" in r.json()
    for path in ("/orders/%20", "/orders/-1", "/orders/99999999999999999999999",
                 "/orders/client:", "/orders/client:-5"):
        r = alice.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code)


def test_every_order_type(alice, bob):
    # resting liquidity from bob on both sides of ETH-USD
    assert bob.order("ETH-USD", "sell", "5.0", "2100.0").status_code == 200
    assert bob.order("ETH-USD", "buy", "5.0", "1900.0").status_code == 200
    cases = [
        ({"type": "market", "side": "buy", "size": "0.3"}, "done", "0.3"),
        ({"type": "market", "side": "buy", "funds": "220.00"}, "done", "0.1"),
        ({"type": "market", "side": "sell", "size": "0.2"}, "done", "0.2"),
        ({"type": "limit", "side": "buy", "size": "0.2", "price": "2100.0",
          "time_in_force": "IOC"}, "done", "0.2"),
        ({"type": "limit", "side": "buy", "size": "0.2", "price": "2050.0",
          "time_in_force": "IOC"}, "done", "0.0"),
        ({"type": "limit", "side": "buy", "size": "0.2", "price": "2100.0",
          "time_in_force": "FOK"}, "done", "0.2"),
        ({"type": "limit", "side": "buy", "size": "0.2", "price": "2000.0",
          "time_in_force": "GTT", "expire_time": str(time.time() + 3600)}, "open", "0.0"),
        ({"type": "limit", "side": "buy", "size": "0.2", "price": "2000.0",
          "post_only": True}, "open", "0.0"),
        ({"type": "stop_loss", "side": "sell", "size": "0.2", "stop_price": "1800.0"},
         "pending", "0.0"),
        ({"type": "stop_limit", "side": "sell", "size": "0.2", "stop_price": "1800.0",
          "price": "1790.0"}, "pending", "0.0"),
        ({"type": "take_profit", "side": "sell", "size": "0.2", "stop_price": "2500.0"},
         "pending", "0.0"),
        ({"type": "take_profit_limit", "side": "sell", "size": "0.2", "stop_price": "2500.0",
          "price": "2490.0"}, "pending", "0.0"),
    ]
    for extra, status, filled in cases:
        body = {"product_id": "ETH-USD"}
        body.update(extra)
        r = alice.post("/orders", body)
        assert r.status_code == 200, (extra, r.text)
        out = r.json()
        assert out["status"] == status, (extra, out)
        assert out["filled_size"] == filled, (extra, out)
        assert out["type"] == extra["type"]
    # post-only that would take: rejected, or re-priced one tick behind
    r = alice.post("/orders", {"product_id": "ETH-USD", "side": "buy", "size": "0.1",
                               "price": "2100.0", "post_only": True})
    assert r.status_code == 400 and r.json()["reason"] == "POST_ONLY_WOULD_TAKE"
    r = alice.post("/orders", {"product_id": "ETH-USD", "side": "buy", "size": "0.1",
                               "price": "2100.0", "post_only": True, "post_only_reprice": True})
    assert r.status_code == 200 and r.json()["price"] == "2099.9", r.text
    r = alice.post("/orders", {"product_id": "ETH-USD", "side": "buy", "size": "50.0",
                               "price": "2100.0", "time_in_force": "FOK"})
    assert r.status_code == 400 and r.json()["reason"] == "FOK_NOT_FILLABLE"
    opened = alice.get("/orders?status=open&product_id=ETH-USD").json()
    assert sorted(o["status"] for o in opened) == ["open"] * 3 + ["pending"] * 4


def test_self_trade_prevention(alice):
    r = alice.order("ETH-BTC", "sell", "0.010", "0.05000")
    assert r.status_code == 200
    maker_id = r.json()["id"]
    r = alice.order("ETH-BTC", "buy", "0.010", "0.05000", stp="co")
    assert r.status_code == 200 and r.json()["fills"] == []
    assert alice.get("/orders/%s" % maker_id).json()["status"] == "done"


def test_cancel_paths(alice, bob):
    oid = alice.order("BTC-USD", "buy", "0.01", "20000", client_oid="42").json()["id"]
    assert bob.delete("/orders/%s" % oid).status_code == 404        # not bob's
    assert bob.get("/orders/%s" % oid).status_code == 404
    assert bob.patch("/orders/%s" % oid, {"size": "0.02"}).status_code == 404
    assert bob.delete("/orders/client:42").status_code == 404
    assert bob.delete("/orders").json()["canceled"] == []
    assert oid not in [o["id"] for o in bob.get("/orders?status=all").json()]
    got = alice.get("/orders/%s" % oid).json()
    assert got["status"] == "open" and got["size"] == "0.01"      # untouched by bob
    r = alice.delete("/orders/%s" % oid)
    assert r.status_code == 200 and r.json()["id"] == oid
    got = alice.get("/orders/%s" % oid).json()
    assert got["status"] == "done" and got["done_reason"] == "canceled"
    r = alice.delete("/orders/%s" % oid)
    assert r.status_code == 404 and r.json()["reason"] == "ORDER_NOT_FOUND"
    assert alice.delete("/orders/12x").status_code == 400
    oid2 = alice.order("BTC-USD", "buy", "0.01", "20000", client_oid="43").json()["id"]
    r = alice.delete("/orders/client:43")
    assert r.status_code == 200 and r.json()["id"] == oid2
    assert alice.delete("/orders/client:43").status_code == 404


def test_mass_cancel(alice, anon):
    ids = [alice.order(p, "buy", s, px).json()["id"] for p, s, px in
           (("BTC-USD", "0.01", "20000"), ("BTC-USD", "0.01", "20001"), ("ETH-USD", "0.1", "1000.0"))]
    r = alice.delete("/orders?product_id=BTC-USD")
    assert r.status_code == 200 and sorted(r.json()["canceled"]) == sorted(ids[:2])
    assert [o["id"] for o in alice.get("/orders?status=open").json()] == [ids[2]]
    r = alice.delete("/orders")
    assert r.json()["canceled"] == [ids[2]]
    assert alice.get("/orders?status=open").json() == []
    assert alice.delete("/orders?product_id=NOPE").status_code == 404
    done = alice.get("/orders?status=done&limit=3").json()
    assert {o["id"] for o in done} == set(ids)


def test_amend(alice, anon):
    oid = alice.order("BTC-USD", "buy", "0.05", "20000").json()["id"]
    r = alice.patch("/orders/%s" % oid, {"price": "20005", "size": "0.08"})
    assert r.status_code == 200, r.text
    assert r.json()["price"] == "20005" and r.json()["size"] == "0.08"
    book = _book(anon, "BTC-USD")
    assert ["20005", "0.08"] in book["bids"] and not any(b[0] == "20000" for b in book["bids"])
    assert alice.patch("/orders/%s" % oid, {}).status_code == 400
    assert alice.patch("/orders/%s" % oid, {"size": "0.001"}).status_code == 400
    assert alice.patch("/orders/999999999", {"size": "0.01"}).status_code == 404


def test_auth_failures(engine, alice):
    anon = engine.client(None)
    r = anon.get("/accounts")
    assert r.status_code == 401 and "missing" in r.json()["message"]
    from publisher.auth import signed_headers
    h = signed_headers("k-alice", "wrong", "GET", "/accounts")
    assert anon.get("/accounts", headers=h).status_code == 401
    h = signed_headers("k-alice", "alice-secret", "GET", "/accounts", timestamp=time.time() - 120)
    r = anon.get("/accounts", headers=h)
    assert r.status_code == 401 and "window" in r.json()["message"]
    h = signed_headers("nobody", "x", "GET", "/accounts")
    assert anon.get("/accounts", headers=h).status_code == 401
    # signature over another body does not authorise this body
    body = json.dumps({"product_id": "BTC-USD", "side": "buy", "size": "0.01", "price": "1"})
    h = signed_headers("k-alice", "alice-secret", "POST", "/orders", body.replace("0.01", "0.02"))
    h["Content-Type"] = "application/json"
    assert anon.request("POST", "/orders", raw_body=body.encode(), headers=h).status_code == 401
    anon.close()


def test_rate_limit_429(engine, alice):
    slow = engine.client("k-slow")              # 2/s, burst 3
    codes = [slow.get("/orders").status_code for _ in range(6)]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:], codes
    r = slow.get("/orders")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "message" in r.json()
    assert alice.get("/orders").status_code == 200          # per key: others are not limited
    r = slow.post("/orders", {"product_id": "BTC-USD", "side": "buy", "size": "0.01",
                              "price": "100"})
    assert r.status_code == 429                             # writes too, before reaching the ring
    time.sleep(1.1)
    assert slow.get("/orders").status_code == 200
    slow.close()


def test_read_your_writes_by_seq(alice, anon):
    r = alice.order("BTC-USD", "sell", "0.01", "45678")
    seq = r.json()["seq"]
    assert int(r.headers["RM-Seq"]) >= seq
    b = anon.get("/products/BTC-USD/book?level=2&min_seq=%d" % seq)
    assert int(b.headers["RM-Seq"]) >= seq and ["45678", "0.01"] in b.json()["asks"]
    t0 = time.monotonic()
    r = anon.get("/products/BTC-USD/ticker?min_seq=%d" % (seq + 10 ** 9))
    assert r.status_code == 503 and time.monotonic() - t0 < 5


def test_withdraw_and_deposit_errors(engine):
    dave = engine.client("k-carol")
    r = dave.post("/accounts/withdraw", {"currency": "USD", "amount": "1"})
    assert r.status_code == 400 and r.json()["reason"] in ("UNKNOWN_ACCOUNT", "INSUFFICIENT_FUNDS")
    assert dave.post("/accounts/deposit", {"currency": "XYZ", "amount": "1"}).status_code == 404
    assert dave.post("/accounts/deposit", {"currency": "USD", "amount": "0.001"}).status_code == 400
    dave.close()
