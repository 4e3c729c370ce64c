"""Issue 12, the REST and WebSocket edge: tried as a user and as an attacker would.

Every test runs against a real engine (pub_harness.Engine: ``ringmatch run``) over
loopback HTTP/WebSocket; the numbers in the test names are the issue's items.
"""
import asyncio
import json
import os
import socket
import threading
import time

import httpx
import pytest
import websockets

from publisher.auth import sign, signed_headers
from pub_harness import KEYS

pytestmark = pytest.mark.timeout(180)

ORDER = {"product_id": "BTC-USD", "side": "buy", "size": "0.01", "price": "100"}


def _secret(key):
    return next(k["secret"] for k in KEYS if k["key"] == key)


def _applied_seq(anon):
    return anon.get("/time").json()["input_seq"]


def _input_mark(engine):
    """The input ring's cursor now (for _commands_since)."""
    from ringbuf import Ring
    with Ring.attach("rm-%s-in" % engine.shard) as ring:
        return ring.cursor


def _commands_since(engine, mark):
    """Input records after ``mark`` other than the supervisor's own (its CLOCK ticks,
    docs/engine.md M9, take sequences once a second whatever the API does)."""
    import numpy as np
    from ringbuf import Ring
    from ringbuf.records import COMMAND_DTYPE, CommandKind, SUPERVISOR_PRODUCER_ID
    out = []
    with Ring.attach("rm-%s-in" % engine.shard) as ring:
        for seq in range(mark + 1, ring.cursor + 1):
            rec = np.frombuffer(ring.read(seq), dtype=COMMAND_DTYPE)[0]
            if (int(rec["kind"]), int(rec["producer_id"])) != \
                    (int(CommandKind.CLOCK), SUPERVISOR_PRODUCER_ID):
                out.append((seq, int(rec["kind"]), int(rec["producer_id"])))
    return out


def _wait_seq(anon, seq):
    r = anon.get("/products/BTC-USD/book?min_seq=%d" % seq)
    assert r.status_code == 200, r.text


def _ids(client, status="all"):
    r = client.get("/orders?status=%s" % status)
    assert r.status_code == 200, r.text
    return [o["id"] for o in r.json()]


def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def _publisher_pid(engine):
    pid = engine.child_pids().get("publisher") if engine.mode == "run" else engine.publisher.pid
    assert pid, engine.log_text()
    return pid


@pytest.fixture(autouse=True)
def clean_books(alice, bob):
    for c in (alice, bob):
        assert c.delete("/orders").status_code == 200
    yield


# ------------------------------------------------------------------ item 4
def test_4_rejects_create_no_visible_order(engine, alice, anon):
    from engine.client import EngineClient, pack_command
    from ringbuf.records import CommandKind
    # a reject of the matcher for this account's own REST order
    r = alice.order("BTC-USD", "buy", "9000", "100000")
    assert r.status_code == 400 and r.json()["reason"] == "INSUFFICIENT_FUNDS", r.text
    rejected_id = r.json()["id"]
    # a colocated producer's orders for an unknown symbol id, and for an unknown account
    cli = EngineClient.attach(engine.shard, config=engine.config_path)
    try:
        seqs = [cli._send(pack_command(int(CommandKind.NEW_ORDER), 1, 0, 0, 0, 0, symbol_id,
                                       account, cli.producer_id, 0, 100, 1, 0, 0,
                                       time.time_ns(), 0))
                for symbol_id, account in ((999, 101), (40000, 101), (1, 999999))]
    finally:
        cli.close()
    _wait_seq(anon, max(seqs))
    for status in ("all", "done", "open"):
        listed = alice.get("/orders?status=%s" % status).json()
        assert all(isinstance(o["product_id"], str) for o in listed), listed
        ids = [o["id"] for o in listed]
        assert rejected_id not in ids and not set(map(str, seqs)) & set(ids), (status, ids)
    # the REST client can still ask why its order was rejected; the foreign ones are unknown
    got = alice.get("/orders/%s" % rejected_id).json()
    assert got["status"] == "rejected" and got["reject_reason"] == "INSUFFICIENT_FUNDS"
    for seq in seqs[:2]:
        assert alice.get("/orders/%d" % seq).status_code == 404


# ------------------------------------------------------------------ item 5
def test_5_replayed_signed_requests_are_refused(engine, alice, anon):
    body = json.dumps(dict(ORDER, price="101")).encode()
    h = signed_headers("k-alice", "alice-secret", "POST", "/orders", body)
    h["Content-Type"] = "application/json"
    codes = [anon.request("POST", "/orders", raw_body=body, headers=h) for _ in range(3)]
    assert codes[0].status_code == 200, codes[0].text
    for r in codes[1:]:
        assert r.status_code == 401 and "replayed" in r.json()["message"], r.text
    placed = [o for o in alice.get("/orders?status=all").json() if o["price"] == "101"]
    assert len(placed) == 1
    # a withdrawal replayed: one debit
    before = {a["currency"]: a for a in alice.get("/accounts").json()}["USD"]["balance"]
    wbody = json.dumps({"currency": "USD", "amount": "1.00"}).encode()
    h = signed_headers("k-alice", "alice-secret", "POST", "/accounts/withdraw", wbody)
    h["Content-Type"] = "application/json"
    codes = [anon.request("POST", "/accounts/withdraw", raw_body=wbody, headers=h).status_code
             for _ in range(3)]
    assert codes == [200, 401, 401]
    after = {a["currency"]: a for a in alice.get("/accounts").json()}["USD"]["balance"]
    from decimal import Decimal
    assert Decimal(before) - Decimal(after) == Decimal("1.00")
    # a GET replayed too (the signature is what is remembered, not the method)
    h = signed_headers("k-alice", "alice-secret", "GET", "/accounts")
    assert [anon.get("/accounts", headers=h).status_code for _ in range(2)] == [200, 401]


def test_5_replayed_websocket_subscribe_is_refused(engine, alice):
    ts = "%.6f" % time.time()
    msg = json.dumps({"type": "subscribe", "channels": ["user"], "key": "k-alice",
                      "timestamp": ts, "signature": sign("alice-secret", ts, "GET", "/ws")})

    async def answer():
        async with websockets.connect(engine.ws_url) as ws:
            await ws.send(msg)
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    first = asyncio.run(answer())
    assert first["type"] == "subscriptions", first
    assert {"name": "user", "account_id": 101} in first["channels"]
    again = asyncio.run(answer())
    assert again["type"] == "error" and "replayed" in again["message"], again


# ------------------------------------------------------------------ item 6
def test_6_client_oid_retry_returns_the_existing_order(engine, alice, bob):
    # open order: a retry (newly signed, as a client retries after a timeout) returns it
    first = alice.order("BTC-USD", "buy", "0.01", "102", client_oid="6001")
    assert first.status_code == 200, first.text
    again = alice.order("BTC-USD", "buy", "0.01", "102", client_oid="6001")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] and again.json()["existing"] is True
    assert again.json()["status"] == "open"
    # done order (IOC that found nothing): still the same order, never a second one
    first = alice.order("BTC-USD", "buy", "0.01", "103", client_oid="6002", time_in_force="IOC")
    assert first.status_code == 200 and first.json()["status"] == "done", first.text
    again = alice.order("BTC-USD", "buy", "0.01", "103", client_oid="6002", time_in_force="IOC")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text
    mine = [o for o in alice.get("/orders?status=all").json() if o["client_oid"] in ("6001", "6002")]
    assert len(mine) == 2
    # the same coid under another account is another order
    other = bob.order("BTC-USD", "buy", "0.01", "102", client_oid="6001")
    assert other.status_code == 200 and other.json()["id"] != first.json()["id"]
    assert "existing" not in other.json()


def test_6_concurrent_retries_place_one_order(engine, alice, bob, anon):
    """Two POSTs with the same client_oid in flight at once: one order, one fill."""
    assert bob.order("ETH-USD", "sell", "5.0", "2500.0").status_code == 200
    trades_before = len(anon.get("/products/ETH-USD/trades?limit=1000").json())
    body = {"product_id": "ETH-USD", "side": "buy", "type": "market", "size": "0.1",
            "client_oid": "6100"}
    barrier = threading.Barrier(4)
    answers = []

    def post():
        c = engine.client("k-alice")
        try:
            barrier.wait(10)
            answers.append(c.post("/orders", body))
        finally:
            c.close()
    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(1 for r in answers if r.json().get("existing")) == 3
    trades = anon.get("/products/ETH-USD/trades?limit=1000").json()
    assert len(trades) == trades_before + 1
    mine = [o for o in alice.get("/orders?status=all").json() if o["client_oid"] == "6100"]
    assert len(mine) == 1 and mine[0]["filled_size"] == "0.1"


# ------------------------------------------------------------------ item 7
def _raw_post(port, path, headers, total, chunk=1 << 20):
    """Send a POST announcing ``total`` body bytes, stream until the server stops us; answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (path, total)
    head += "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
    s.sendall(head.encode())
    sent = 0
    block = b"7" * chunk
    s.settimeout(2.0)
    try:
        while sent < total:
            s.sendall(block)
            sent += len(block)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    s.settimeout(10.0)
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < 20:
            more = s.recv(65536)
            if not more:
                break
            data += more
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return sent, data


def test_7_unauthenticated_huge_post_is_refused_without_memory(engine, alice):
    pid = _publisher_pid(engine)
    before = _rss_kib(pid)
    total = 256 << 20
    sent, data = _raw_post(engine.port, "/orders", {"Content-Type": "application/json"}, total)
    after = _rss_kib(pid)
    assert after - before < 8 * 1024, "publisher RSS grew %d KiB (sent %d)" % (after - before, sent)
    assert data.startswith(b"HTTP/1.1 401"), data[:200]
    assert sent < total                 # refused before the body was read
    # a signed request announcing a huge body: 413 before the body is read
    h = signed_headers("k-alice", "alice-secret", "POST", "/orders", b"x")
    sent, data = _raw_post(engine.port, "/orders", h, total)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert _rss_kib(pid) - before < 8 * 1024
    assert alice.get("/orders").status_code == 200          # still serving


def test_7_huge_fields_are_short_4xx(engine, alice):
    big = "1" * (5 << 20)
    r = alice.post("/orders", dict(ORDER, client_oid=big))
    assert r.status_code == 413 and len(r.content) < 300, (r.status_code, len(r.content))
    # within the body limit, each field has its own bound; the answer never echoes it
    for field in ("client_oid", "product_id", "price", "size", "expire_time"):
        r = alice.post("/orders", dict(ORDER, **{field: "9" * 10000}))
        assert 400 <= r.status_code < 500 and len(r.content) < 400, (field, r.status_code, r.text)
        assert field in r.json()["message"], r.text
    r = alice.get("/orders/" + "7" * 5000)
    assert 400 <= r.status_code < 500 and len(r.content) < 400, r.text
    r = alice.delete("/orders/client:" + "x" * 5000)
    assert r.status_code == 400 and len(r.content) < 400, r.text


def test_7_chunked_body_over_the_limit_is_413(engine, alice):
    body = json.dumps(dict(ORDER, client_oid="1" * 100000)).encode()
    h = signed_headers("k-alice", "alice-secret", "POST", "/orders", body)
    h["Content-Type"] = "application/json"

    def chunks():
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]
    r = alice.http.post("/orders", content=chunks(), headers=h)
    assert r.status_code == 413, r.text


# ------------------------------------------------------------------ item 8
@pytest.mark.parametrize("field,value", [
    ("size", "\u0661"),                  # Arabic-Indic one
    ("size", "\uff11"),                  # full-width one
    ("price", "1\u0660\u0660"),
    ("size", "1_0"),
    ("price", "1e2"),
    ("price", "NaN"),
    ("price", "inf"),
    ("price", "Infinity"),
    ("size", " 0.01"),
    ("size", "0x10"),
    ("client_oid", "\u0661\u0662"),
    ("client_oid", "1_2"),
    ("client_oid", " 12"),
])
def test_8_numbers_are_ascii_decimal_only(engine, alice, anon, field, value):
    mark = _input_mark(engine)
    r = alice.post("/orders", dict(ORDER, **{field: value}))
    assert r.status_code == 400, r.text
    assert field in r.json()["message"], r.text
    assert _commands_since(engine, mark) == []          # nothing reached the matcher


@pytest.mark.parametrize("body,field", [
    ({"product_id": "BTC-USD", "side": "buy", "size": "0.01"}, "price"),
    (dict(ORDER, price="0"), "price"),
    (dict(ORDER, price="-100"), "price"),
    (dict(ORDER, size="0"), "size"),
    (dict(ORDER, size="-0.01"), "size"),
    ({"product_id": "BTC-USD", "side": "buy", "price": "100"}, "size"),
    ({"product_id": "BTC-USD", "side": "buy", "type": "market", "funds": "0"}, "funds"),
    ({"product_id": "BTC-USD", "side": "buy", "type": "stop_loss", "size": "0.01"}, "stop_price"),
    ({"product_id": "BTC-USD", "side": "buy", "type": "stop_loss", "size": "0.01",
      "stop_price": "-5"}, "stop_price"),
    (dict(ORDER, time_in_force="GTT", expire_time="99999999999999999999"), "expire_time"),
    (dict(ORDER, time_in_force="GTT", expire_time="-5"), "expire_time"),
    (dict(ORDER, time_in_force="GTT", expire_time="\u0661\u0667\u0660\u0660"), "expire_time"),
    (dict(ORDER, post_only="true"), "post_only"),
    (dict(ORDER, side=["buy"]), "side"),
])
def test_8_bad_orders_are_400_at_the_edge(engine, alice, anon, body, field):
    mark = _input_mark(engine)
    r = alice.post("/orders", body)
    assert r.status_code == 400, r.text
    assert field in r.json()["message"], r.text
    assert _commands_since(engine, mark) == []          # no journal sequence used


def test_8_duplicate_json_keys_are_400(engine, alice, anon):
    mark = _input_mark(engine)
    raw = b'{"product_id": "BTC-USD", "side": "buy", "side": "sell", "size": "0.01", "price": "100"}'
    r = alice.request("POST", "/orders", raw_body=raw)
    assert r.status_code == 400 and "side" in r.json()["message"] and \
        "duplicate" in r.json()["message"], r.text
    for raw in (b'{"product_id": "BTC-USD", "side": "buy", "size": NaN}',
                b'{"product_id": "BTC-USD", "side": "buy", "size": Infinity}'):
        r = alice.request("POST", "/orders", raw_body=raw)
        assert r.status_code == 400, r.text
    assert _commands_since(engine, mark) == []
    r = alice.post("/orders", ORDER)                    # the check sees a real command
    assert r.status_code == 200, r.text
    assert [kind for _, kind, _ in _commands_since(engine, mark)] == [1]


@pytest.mark.parametrize("path,field", [
    ("/orders?limit=1_0", "limit"), ("/orders?limit=%EF%BC%91", "limit"),
    ("/orders?min_seq=%D9%A1", "min_seq"), ("/orders?limit=1.0", "limit"),
    ("/orders/%D9%A1%D9%A2", "order id"), ("/orders/1_2", "order id"),
])
def test_8_query_and_path_integers_are_ascii(alice, path, field):
    r = alice.get(path)
    assert r.status_code == 400 and field in r.json()["message"], (path, r.text)


def test_8_public_query_integers_are_ascii(anon):
    for path in ("/products/BTC-USD/book?level=%D9%A2", "/products/BTC-USD/trades?limit=1_0",
                 "/products/BTC-USD/book?level=1&min_seq=99999999999999999999999"):
        r = anon.get(path)
        assert r.status_code == 400, (path, r.text)


def test_8_cancelling_another_accounts_order_is_404(engine, alice):
    oid = alice.order("BTC-USD", "buy", "0.01", "104").json()["id"]
    carol = engine.client("k-carol")      # never deposited: no account in the matcher
    try:
        for r in (carol.delete("/orders/%s" % oid), carol.delete("/orders/999999"),
                  carol.delete("/orders/client:5"), carol.patch("/orders/%s" % oid, {"size": "1"})):
            assert r.status_code == 404, r.text
        r = carol.delete("/orders")
        assert r.status_code == 200 and r.json()["canceled"] == [], r.text
    finally:
        carol.close()
    assert alice.get("/orders/%s" % oid).json()["status"] == "open"


def test_8_percent_encoded_paths_are_signed_as_sent(engine, alice, anon):
    oid = alice.order("BTC-USD", "buy", "0.01", "105", client_oid="8080").json()["id"]
    raw = "/orders/client%3A8080"
    http = httpx.Client(base_url=engine.url, timeout=15.0)
    try:
        # signed over the decoded form, sent encoded: not the request that was signed
        r = http.get(raw, headers=signed_headers("k-alice", "alice-secret", "GET",
                                                 "/orders/client:8080"))
        assert r.status_code == 401, r.text
        r = http.get(raw, headers=signed_headers("k-alice", "alice-secret", "GET", raw))
        assert r.status_code == 200 and r.json()["id"] == oid, r.text
        r = http.delete(raw, headers=signed_headers("k-alice", "alice-secret", "DELETE", raw))
        assert r.status_code == 200 and r.json()["id"] == oid, r.text
    finally:
        http.close()


# ------------------------------------------------------------------ item 9
def test_9_websocket_fills_carry_the_trade_price(engine, alice, bob):
    async def main():
        async with websockets.connect(engine.ws_url) as ws:
            ts = "%.6f" % time.time()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["user"], "key": "k-bob",
                                      "timestamp": ts,
                                      "signature": sign("bob-secret", ts, "GET", "/ws")}))
            while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "subscriptions":
                pass
            assert (await asyncio.to_thread(alice.order, "BTC-USD", "sell", "0.02",
                                            "29980")).status_code == 200
            limit = await asyncio.to_thread(bob.order, "BTC-USD", "buy", "0.01", "30000")
            market = await asyncio.to_thread(bob.post, "/orders", {
                "product_id": "BTC-USD", "side": "buy", "type": "market", "size": "0.01"})
            fills = []
            while len(fills) < 2:
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if m.get("event") == "fill":
                    fills.append(m)
            return limit.json(), market.json(), fills
    limit, market, fills = asyncio.run(main())
    assert limit["fills"][0]["price"] == "29980" and market["fills"][0]["price"] == "29980"
    by_order = {f["order_id"]: f for f in fills}
    assert by_order[limit["id"]]["price"] == "29980"
    assert by_order[limit["id"]]["order_price"] == "30000"
    assert by_order[market["id"]]["price"] == "29980"
    assert by_order[market["id"]]["order_price"] is None


# ------------------------------------------------------------------ item 10
def test_10_products_say_a_halted_symbol_is_halted(engine, anon):
    from engine.client import EngineClient, publish_admin
    from ringbuf.records import CommandKind
    cli = EngineClient.attach(engine.shard, config=engine.config_path)
    try:
        seq = publish_admin(cli.ring_in, CommandKind.HALT, symbol_id=2)
        _wait_seq(anon, seq)
        status = {p["id"]: p["status"] for p in anon.get("/products").json()}
        assert status == {"BTC-USD": "online", "ETH-USD": "halted", "ETH-BTC": "online"}
        one = anon.get("/products/ETH-USD").json()
        assert one["status"] == "halted" and one["trading_disabled"] is True
        seq = publish_admin(cli.ring_in, CommandKind.RESUME, symbol_id=2)
        _wait_seq(anon, seq)
        assert anon.get("/products/ETH-USD").json()["status"] == "online"
    finally:
        cli.close()


# ------------------------------------------------------------------ /health
def _write_health(path, **body):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f)
    os.replace(tmp, path)


def test_health_follows_the_supervisors_file(tmp_path):
    """A bare publisher (no supervisor): no file is 503 unknown; then the file decides."""
    from pub_harness import Engine
    engine = Engine(tmp_path, mode="loop").start()
    try:
        api = engine.client(None)
        r = api.get("/health")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["state"] == "unknown" and "supervisor" in body["reason"]
        assert body["publisher"]["pid"] == engine.publisher.pid
        path = os.path.join(engine.raw["data_dir"], "run", "%s.health.json" % engine.shard)
        children = {"matcher": {"pid": 11, "state": "ready", "restarts": 0, "secret": "s3cr3t"}}
        _write_health(path, shard=engine.shard, state="ready", updated_ns=time.time_ns(),
                      children=children, journal={"durable_seq": 42},
                      api_keys=[{"secret": "alice-secret"}])
        r = api.get("/health")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["state"] == "ready" and body["shard"] == engine.shard
        assert body["children"] == {"matcher": {"pid": 11, "state": "ready", "restarts": 0}}
        assert body["journal"] == {"durable_seq": 42}
        assert "input_seq" in body["publisher"] and "output_seq" in body["publisher"]
        assert "secret" not in r.text
        _write_health(path, shard=engine.shard, state="ready",
                      updated_ns=time.time_ns() - 6 * 10 ** 9, children={}, journal={})
        r = api.get("/health")
        assert r.status_code == 503 and "stale" in r.json()["reason"], r.text
        _write_health(path, shard=engine.shard, state="degraded", updated_ns=time.time_ns(),
                      children={}, journal={})
        r = api.get("/health")
        assert r.status_code == 503 and "degraded" in r.json()["reason"], r.text
        with open(path, "w") as f:
            f.write("{not json")
        r = api.get("/health")
        assert r.status_code == 503 and "unreadable" in r.json()["reason"], r.text
        api.close()
    finally:
        engine.stop()
