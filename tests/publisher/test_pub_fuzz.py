"""Seeded fuzz of the REST edge against a real engine (issue 12, "Done when").

Random requests, good and bad, signed and not: random methods and paths (with
percent-encodings and non-ASCII), auth headers missing, wrong, stale or huge,
bodies that are not JSON, duplicate keys, Unicode digits, huge fields and huge
bodies, replays of earlier requests, and valid orders, cancels, amends, mass
cancels, deposits and withdrawals of three accounts (client_oids from a small
pool, so retries and concurrent-looking reuse happen).

It must end with no 5xx answer (but GET /health's 503 "not ready", a status
report by contract: the supervisor's health file may not be there), no publisher crash or restart, the read
model's open orders equal to the matcher's, and the engine's shutdown snapshot
state equal to a replay of its journal from the first record.

Default run: 4,000 requests (seed 12); ``-m slow``: 100,000.
"""
import collections
import json
import os
import random
import re
import sys
import time

import httpx
import pytest

from publisher.auth import signed_headers
from pub_harness import Engine

ACCOUNTS = (("k-alice", "alice-secret", 101), ("k-bob", "bob-secret", 102),
            ("k-carol", "carol-secret", 103))
PRODUCTS = {"BTC-USD": ("30000", "0.01", 1), "ETH-USD": ("2000.0", "0.1", 1),
            "ETH-BTC": ("0.05000", "0.010", 1)}
NASTY = ["", " ", "0", "-1", "-0.01", "1_0", "1e3", "1E-2", "NaN", "nan", "inf", "-Infinity",
         "\u0661", "\uff11\uff10", "\u0967", "\u00bd", "0x10", "1,5", "1.2.3", "+1", ".5", "5.",
         "99999999999999999999", "9" * 70, "0." + "0" * 60 + "1", "\x00", "\ud800x",
         "1" * 5000, "null", "true", "\u202e1", "\u00a0" + "1", "١٢٣٤٥٦٧٨٩٠"]
NASTY_JSON = [None, True, False, 0, -1, 1.5, 1e308, [], {}, ["buy"], {"$gt": ""}, 10 ** 30]
FIELDS = ("product_id", "side", "type", "price", "size", "funds", "stop_price",
          "time_in_force", "expire_time", "post_only", "post_only_reprice", "stp", "client_oid")
PRIVATE = ("/orders", "/accounts", "/accounts/deposit", "/accounts/withdraw")
METHODS = ("GET", "POST", "DELETE", "PATCH", "PUT", "OPTIONS", "HEAD")
PATHS = ("/orders", "/orders/{id}", "/orders/client:{coid}", "/accounts", "/accounts/deposit",
         "/accounts/withdraw", "/products", "/products/BTC-USD", "/products/{junk}",
         "/products/BTC-USD/book", "/products/ETH-USD/ticker", "/products/ETH-BTC/trades",
         "/products/BTC-USD/stats", "/time", "/health", "/", "/docs", "/openapi.json",
         "/{junk}", "/orders/{junk}", "/static/{junk}", "/orders%2F1", "/%2e%2e/etc/passwd",
         "/orders/%D9%A1", "/orders/client%3A{coid}")


class Fuzzer(object):
    """Builds one random request at a time (deterministic in ``seed``)."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.sent = []          # (method, path, headers, body) of earlier requests: replays
        self.order_ids = []     # ids the engine gave out
        self.coids = [str(n) for n in range(1, 40)]

    def junk(self):
        rng = self.rng
        return rng.choice(["x", "%00", "%ff", "\u00e9", "..", "%2e%2e", "a" * rng.randint(1, 3000),
                           "%D9%A1%D9%A2", "client:", "-1", "0", str(rng.getrandbits(70)),
                           "orders?x=1", "%20", "%"])

    def number(self, good):
        rng = self.rng
        return good if rng.random() < 0.8 else rng.choice(NASTY)

    def good_order(self):
        rng = self.rng
        product = rng.choice(list(PRODUCTS))
        mid, lot, _ = PRODUCTS[product]
        from decimal import Decimal
        side = rng.choice(("buy", "sell"))
        step = Decimal(mid) / 100
        price = (Decimal(mid) + step * rng.randint(-5, 5)).quantize(Decimal(mid))
        size = Decimal(lot) * rng.randint(1, 20)
        kind = rng.random()
        body = {"product_id": product, "side": side}
        if kind < 0.6:
            body.update(price=str(price), size=str(size))
            tif = rng.choice(("GTC", "GTC", "IOC", "FOK", "GTT"))
            body["time_in_force"] = tif
            if tif == "GTT":
                body["expire_time"] = rng.choice([str(int(time.time()) + 3600),
                                                  "2099-01-01T00:00:00Z", str(int(time.time()) - 5),
                                                  rng.choice(NASTY)])
            if tif == "GTC" and rng.random() < 0.2:
                body["post_only"] = True
        elif kind < 0.75:
            body.update(type="market", size=str(size))
        elif kind < 0.8:
            body.update(type="market", side="buy", funds=rng.choice(["10.00", "100", "0.00001"]))
        else:
            body.update(type=rng.choice(("stop_loss", "stop_limit", "take_profit",
                                         "take_profit_limit")), size=str(size),
                        stop_price=str(price))
            if body["type"].endswith("_limit"):
                body["price"] = str(price)
        if rng.random() < 0.4:
            body["client_oid"] = rng.choice(self.coids)
        if rng.random() < 0.05:
            body["stp"] = rng.choice(("dc", "co", "cn", "cb"))
        return body

    def mutate(self, body):
        rng = self.rng
        body = dict(body)
        for _ in range(rng.randint(1, 3)):
            field = rng.choice(FIELDS + ("extra_%d" % rng.randint(0, 3),))
            r = rng.random()
            if r < 0.5:
                body[field] = rng.choice(NASTY)
            elif r < 0.75:
                body[field] = rng.choice(NASTY_JSON)
            else:
                body.pop(field, None)
        return body

    def body_bytes(self, obj):
        rng = self.rng
        r = rng.random()
        if r < 0.04:
            text = json.dumps(obj)
            if text.startswith("{") and len(text) > 2:   # duplicate key: "side" once more
                return ('{"side": "sell", ' + text[1:]).encode()
        if r < 0.06:
            return rng.choice([b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b"{}" * 3,
                               b'{"size": NaN}', b'{"a": Infinity}', b"1" * 5000,
                               b'{"a":' * 500 + b"1" + b"}" * 500])
        if r < 0.07:
            return json.dumps(dict(obj, client_oid="9" * rng.randint(10000, 200000))).encode()
        if r < 0.075:
            return b"x" * rng.randint(16 * 1024, 1 << 20)
        return json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")

    def request(self):
        """(method, path, headers, body) of the next request, and whether it is a replay."""
        rng = self.rng
        if self.sent and rng.random() < 0.05:
            return self.sent[rng.randrange(len(self.sent))], True              # a replay
        key, secret, _acct = rng.choice(ACCOUNTS)
        r = rng.random()
        body = b""
        if r < 0.35:
            method, path = "POST", "/orders"
            obj = self.good_order()
            if rng.random() < 0.4:
                obj = self.mutate(obj)
            body = self.body_bytes(obj)
        elif r < 0.45:
            method = "DELETE"
            if self.order_ids and rng.random() < 0.8:
                path = "/orders/%s" % rng.choice(self.order_ids)
            else:
                path = rng.choice(["/orders/client:%s" % rng.choice(self.coids),
                                   "/orders/%s" % self.junk(), "/orders",
                                   "/orders?product_id=%s" % rng.choice(list(PRODUCTS) + ["X"])])
        elif r < 0.5:
            method = "PATCH"
            target = rng.choice(self.order_ids) if self.order_ids else "1"
            path = "/orders/%s" % target
            obj = {"price": self.number(rng.choice(["30001", "2001.0", "0.05001"])),
                   "size": self.number(rng.choice(["0.02", "0.2", "0.020"]))}
            if rng.random() < 0.3:
                obj = self.mutate(obj)
            body = self.body_bytes(obj)
        elif r < 0.55:
            method = "POST"
            path = rng.choice(["/accounts/deposit", "/accounts/withdraw"])
            obj = {"currency": rng.choice(["USD", "BTC", "ETH", "XYZ", "usd", "\u0661"]),
                   "amount": self.number(rng.choice(["1", "0.5", "100"]))}
            body = self.body_bytes(obj)
        elif r < 0.75:
            method = "GET"
            path = rng.choice(["/orders", "/orders?status=%s" % rng.choice(["all", "done", "x"]),
                               "/accounts", "/orders/%s" % (rng.choice(self.order_ids)
                                                            if self.order_ids else "1"),
                               "/products/BTC-USD/book?level=%s" % rng.choice(["1", "2", "3",
                                                                                "\u0661", "1_0"]),
                               "/orders?limit=%s" % rng.choice(["1", "0", "-5", "1_0", "%D9%A1",
                                                               "99999999999999999999999"])])
        else:
            method = rng.choice(METHODS)
            path = rng.choice(PATHS).format(id=rng.choice(self.order_ids or ["1"]),
                                            coid=rng.choice(self.coids), junk=self.junk())
            if method in ("POST", "PATCH", "PUT") or rng.random() < 0.1:
                body = self.body_bytes(self.mutate(self.good_order()))
        headers = {}
        if body and rng.random() < 0.95:
            headers["Content-Type"] = rng.choice(["application/json"] * 9 + ["text/plain"])
        a = rng.random()
        if a < 0.8:                                       # signed as the server expects
            headers.update(signed_headers(key, secret, method, path, body))
        elif a < 0.85:
            headers.update(signed_headers(key, "wrong", method, path, body))
        elif a < 0.9:
            h = signed_headers(key, secret, method, path, body,
                               timestamp=time.time() + rng.choice([-120, 120, 1e12]))
            headers.update(h)
        elif a < 0.95:
            h = signed_headers(key, secret, method, path, body)
            field = rng.choice(list(h))
            h[field] = rng.choice(["", "x" * rng.randint(1, 8000), "\u0661\u0667", "1e9",
                                   "nan", "-1", "1700000000" * 5])
            headers.update(h)
        # else: unsigned
        req = (method, path, headers, body)
        if len(self.sent) > 500:                   # replays stay well inside the 30 s window
            del self.sent[:100]
        self.sent.append(req)
        return req, False


_ASCII_DECIMAL = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)\Z")
_ASCII_INT = re.compile(r"[0-9]+\Z")


def _order_violations(body):
    """Why an accepted POST /orders body should not have been accepted (empty: fine)."""
    out = []
    pairs = []
    try:
        obj = json.loads(body.decode("utf-8"), object_pairs_hook=lambda kv: pairs.extend(kv) or dict(kv))
    except ValueError:
        return ["accepted a body that is not JSON"]
    keys = [k for k, _v in pairs]
    if len(keys) != len(set(keys)):
        out.append("accepted duplicate keys %s" % keys)
    for field in ("price", "size", "funds", "stop_price"):
        v = obj.get(field)
        if v is not None and not (isinstance(v, str) and _ASCII_DECIMAL.match(v)):
            out.append("accepted %s=%r" % (field, v[:40] if isinstance(v, str) else v))
        elif v is not None and v.lstrip("-").strip("0.") == "" or (v or "").startswith("-"):
            out.append("accepted non-positive %s=%r" % (field, v))
    v = obj.get("client_oid")
    if v is not None and not (isinstance(v, str) and _ASCII_INT.match(v)):
        out.append("accepted client_oid=%r" % (v[:40] if isinstance(v, str) else v))
    return out


def _send(http, req):
    method, path, headers, body = req
    try:
        safe = {k: v for k, v in headers.items()}
        for k, v in safe.items():
            v.encode("ascii")
        return http.request(method, path, headers=safe, content=body or None)
    except UnicodeEncodeError:
        return None                      # the HTTP client itself refuses such a header
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        return "closed"                  # the server closed the connection (a refused body)


def _replay_hash(engine):
    """State hash of a scratch replay of the journal, and of the engine's shutdown snapshot."""
    from engine.events import ListSink
    from engine.matcher import Matcher
    from engine.runtime import RuntimeConfig
    from journaler.recovery import journal_records, restore_latest
    runtime = RuntimeConfig.load(engine.config_path)
    replayed = Matcher(runtime.exchange(), ListSink())
    count = 0
    for seq, record in journal_records(runtime.data_dir, engine.shard):
        replayed.process(seq, record)
        replayed.sink.events.clear()
        count += 1
    live, snap_seq = restore_latest(runtime.exchange(), runtime.data_dir, engine.shard)
    return replayed, live, snap_seq, count


def run_fuzz(tmp_path, n, seed=12):
    engine = Engine(tmp_path, publisher_extra={"rate_limit": {"per_second": 100000,
                                                              "burst": 100000}}).start()
    started = time.monotonic()
    statuses = collections.Counter()
    try:
        pid = engine.child_pids()["publisher"]
        setup = [engine.client(k) for k, _s, _a in ACCOUNTS]
        for c in setup:
            for cur, amount in (("USD", "10000000"), ("BTC", "1000"), ("ETH", "10000")):
                c.deposit(cur, amount)
        fuzz = Fuzzer(seed)
        http = httpx.Client(base_url=engine.url, timeout=30.0)
        bad = []
        for i in range(n):
            req, replay = fuzz.request()
            r = _send(http, req)
            if r is None or r == "closed":
                statuses[r or "client-refused"] += 1
                if r == "closed":
                    http.close()
                    http = httpx.Client(base_url=engine.url, timeout=30.0)
                continue
            statuses[r.status_code] += 1
            if r.status_code >= 500 and not (r.status_code == 503 and req[1] == "/health"):
                bad.append((req[0], req[1][:200], r.status_code, r.text[:300]))
            elif r.status_code == 200 and req[0] == "POST" and req[1] == "/orders":
                fuzz.order_ids.append(r.json()["id"])
                bad.extend(_order_violations(req[3]))
            if replay and req[1] in PRIVATE and req[0] in ("GET", "POST", "DELETE", "PATCH") \
                    and r.status_code == 200:
                bad.append(("replay accepted", req[0], req[1][:200]))
        http.close()
        elapsed = time.monotonic() - started
        report = "fuzz n=%d seed=%d %.1fs statuses=%s" % (
            n, seed, elapsed, dict(sorted(statuses.items(), key=lambda kv: str(kv[0]))))
        print(report)
        sys.stderr.write(report + "\n")
        assert not bad, bad[:10]
        # no crash: the same publisher process answered everything
        assert engine.child_pids()["publisher"] == pid
        died = [line for line in engine.log_lines() if "event=child_died" in line]
        assert not died, "\n".join(died + [engine.log_text()])
        # the read model agrees with the matcher: open orders of each account
        applied = setup[0].get("/time").json()["input_seq"]
        open_ids = {a: sorted(int(o["id"]) for o in c.get("/orders?status=open&limit=100000").json())
                    for c, (_k, _s, a) in zip(setup, ACCOUNTS)}
        for c in setup:
            c.close()
        code = engine.shutdown()
        assert code == 0, "supervisor exit %s: %s" % (code, engine.log_text())
        replayed, live, snap_seq, count = _replay_hash(engine)
        assert count >= applied and snap_seq == count
        assert live.state_hash() == replayed.state_hash()
        replayed._check()
        # open orders at the last applied seq: replay again up to it
        from engine.events import ListSink
        from engine.matcher import Matcher
        from engine.runtime import RuntimeConfig
        from journaler.recovery import journal_records
        runtime = RuntimeConfig.load(engine.config_path)
        upto = Matcher(runtime.exchange(), ListSink())
        for seq, record in journal_records(runtime.data_dir, engine.shard, last=applied):
            upto.process(seq, record)
            upto.sink.events.clear()
        for account, ids in open_ids.items():
            assert ids == sorted(oid for oid, o in upto.orders.items() if o.account_id == account)
        return statuses, elapsed
    finally:
        engine.stop()


@pytest.mark.timeout(300)
def test_rest_fuzz_no_5xx_and_matcher_equals_journal_replay(tmp_path):
    statuses, _elapsed = run_fuzz(tmp_path, 4000)
    assert statuses[200] > 500 and statuses[401] > 100 and statuses[400] > 100, statuses


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rest_fuzz_100k(tmp_path):
    statuses, _elapsed = run_fuzz(tmp_path, 100_000, seed=1212)
    assert statuses[200] > 10000, statuses
