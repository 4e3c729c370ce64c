"""Coinbase Exchange authentication, scoped keys, UUID client_oids and the access log.

Against the real engine (pub_harness.Engine: ``ringmatch run``) over loopback.  The keys
are made as a user makes them, with ``ringmatch keys create`` on the engine's data dir
while it runs; the requests are signed by ``CoinbaseExchangeAuth`` below, written the
way Coinbase's own documentation writes it (an auth hook computing
base64(HMAC-SHA256(base64decode(secret), timestamp + method + requestPath + body))),
not with the server's helpers.
"""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import uuid

import httpx
import pytest

from pub_harness import RINGMATCH, ROOT

pytestmark = pytest.mark.timeout(180)


class CoinbaseExchangeAuth(httpx.Auth):
    """Coinbase Exchange's documented request signing, as an httpx auth hook."""

    def __init__(self, api_key, secret_key, passphrase, clock=time.time):
        self.api_key = api_key
        self.secret_key = secret_key
        self.passphrase = passphrase
        self.clock = clock

    def auth_flow(self, request):
        timestamp = str(self.clock())
        path_url = request.url.raw_path.decode("ascii")          # path and query as sent
        message = timestamp + request.method + path_url + (request.content or b"").decode()
        hmac_key = base64.b64decode(self.secret_key)
        signature = hmac.new(hmac_key, message.encode("utf-8"), hashlib.sha256)
        signature_b64 = base64.b64encode(signature.digest()).decode("utf-8")
        request.headers.update({"CB-ACCESS-SIGN": signature_b64,
                                "CB-ACCESS-TIMESTAMP": timestamp,
                                "CB-ACCESS-KEY": self.api_key,
                                "CB-ACCESS-PASSPHRASE": self.passphrase,
                                "Content-Type": "application/json"})
        yield request


def keys_cli(engine, *args):
    proc = subprocess.run([RINGMATCH, "keys"] + list(args) + ["--data-dir", engine.raw["data_dir"]],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    return proc


def create_key(engine, account, scope):
    proc = keys_cli(engine, "create", "--account", str(account), "--scope", scope, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def cb_client(engine, key, **kw):
    return httpx.Client(base_url=engine.url, timeout=15.0,
                        auth=CoinbaseExchangeAuth(key["key"], key["secret"], key["passphrase"], **kw))


def wait_accepted(client, path="/accounts", timeout=5.0):
    """A key made by the CLI is picked up by the running publisher within ~1 s (auth rule 10)."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(path)
        if r.status_code != 401 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


@pytest.fixture(scope="module")
def trader(engine):
    key = create_key(engine, 301, "trade")
    with cb_client(engine, key) as c:
        assert wait_accepted(c).status_code == 200
        for currency, amount in (("USD", "1000000"), ("BTC", "100")):
            r = c.post("/accounts/deposit", json={"currency": currency, "amount": amount})
            assert r.status_code == 200, r.text
        yield key, c


def test_a_coinbase_signed_request_places_reads_and_cancels(trader):
    key, c = trader
    oid = str(uuid.uuid4())
    r = c.post("/orders", json={"product_id": "BTC-USD", "side": "buy", "price": "1000",
                                "size": "0.5", "client_oid": oid})
    assert r.status_code == 200, r.text
    order = r.json()
    assert order["status"] == "open" and order["client_oid"] == oid
    got = c.get("/orders/%s" % order["id"]).json()
    assert got["client_oid"] == oid and got["price"] == "1000"
    by_coid = c.get("/orders/client:%s" % oid)
    assert by_coid.status_code == 200 and by_coid.json()["id"] == order["id"]
    listed = c.get("/orders", params={"status": "open", "product_id": "BTC-USD"}).json()
    assert [o["client_oid"] for o in listed if o["id"] == order["id"]] == [oid]
    usd = [a for a in c.get("/accounts").json() if a["currency"] == "USD"][0]
    assert usd["hold"] == "500.00" and usd["account_id"] == 301
    r = c.delete("/orders/client:%s" % oid)
    assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    assert c.get("/orders/%s" % order["id"]).json()["status"] == "done"


def test_a_uuid_client_oid_is_idempotent_and_answers_with_the_uuid_sent(trader):
    _key, c = trader
    oid = str(uuid.uuid4()).upper()
    body = {"product_id": "BTC-USD", "side": "buy", "price": "900", "size": "0.01",
            "client_oid": oid}
    first = c.post("/orders", json=body)
    assert first.status_code == 200 and first.json()["client_oid"] == oid, first.text
    again = c.post("/orders", json=dict(body, client_oid=oid.lower()))   # the same UUID
    assert again.status_code == 200, again.text
    assert again.json()["existing"] is True and again.json()["id"] == first.json()["id"]
    assert again.json()["client_oid"] == oid
    other = c.post("/orders", json=dict(body, client_oid=str(uuid.uuid4())))
    assert other.status_code == 200 and other.json()["id"] != first.json()["id"]
    bad = c.post("/orders", json=dict(body, client_oid="not-a-uuid-and-not-digits"))
    assert bad.status_code == 400 and "neither a UUID nor an integer" in bad.json()["message"]


@pytest.mark.parametrize("change", ["passphrase", "secret", "body", "path"])
def test_a_wrong_coinbase_credential_is_401(engine, trader, change):
    key, _c = trader
    secret, passphrase = key["secret"], key["passphrase"]
    if change == "passphrase":
        passphrase = passphrase + "x"
    elif change == "secret":
        secret = base64.b64encode(os.urandom(64)).decode()
    with httpx.Client(base_url=engine.url, timeout=15.0) as raw:
        ts = str(time.time())
        body = b'{"currency": "USD", "amount": "1"}'
        signed_body = body + b" " if change == "body" else body
        path = "/accounts/withdraw" if change != "path" else "/accounts/deposit"
        msg = (ts + "POST" + path).encode() + signed_body
        sig = base64.b64encode(hmac.new(base64.b64decode(secret), msg, hashlib.sha256).digest())
        r = raw.post("/accounts/withdraw", content=body, headers={
            "CB-ACCESS-KEY": key["key"], "CB-ACCESS-SIGN": sig.decode(),
            "CB-ACCESS-TIMESTAMP": ts, "CB-ACCESS-PASSPHRASE": passphrase,
            "Content-Type": "application/json"})
    assert r.status_code == 401, r.text
    expected = "invalid passphrase" if change == "passphrase" else "invalid signature"
    assert r.json()["message"] == expected


@pytest.mark.parametrize("skew, word", [(-45.0, "behind"), (45.0, "ahead of")])
def test_a_stale_or_future_timestamp_is_401_saying_so(engine, trader, skew, word):
    key, _c = trader
    with cb_client(engine, key, clock=lambda: time.time() + skew) as c:
        r = c.get("/accounts")
    assert r.status_code == 401
    message = r.json()["message"]
    assert "outside the 30 s window" in message and word in message, message


def test_missing_passphrase_is_401_naming_the_header(engine, trader):
    key, _c = trader
    with httpx.Client(base_url=engine.url, timeout=15.0) as raw:
        ts = str(time.time())
        sig = base64.b64encode(hmac.new(base64.b64decode(key["secret"]),
                                        (ts + "GET/accounts").encode(), hashlib.sha256).digest())
        r = raw.get("/accounts", headers={"CB-ACCESS-KEY": key["key"], "CB-ACCESS-SIGN": sig.decode(),
                                           "CB-ACCESS-TIMESTAMP": ts})
    assert r.status_code == 401 and "CB-ACCESS-PASSPHRASE" in r.json()["message"], r.text


def test_a_view_key_reads_but_cannot_trade(engine, trader):
    _key, trade_client = trader
    placed = trade_client.post("/orders", json={"product_id": "BTC-USD", "side": "buy",
                                                "price": "800", "size": "0.01"}).json()
    view = create_key(engine, 301, "view")
    with cb_client(engine, view) as c:
        assert wait_accepted(c).status_code == 200
        assert c.get("/orders/%s" % placed["id"]).status_code == 200
        assert any(o["id"] == placed["id"] for o in c.get("/orders").json())
        attempts = [c.post("/orders", json={"product_id": "BTC-USD", "side": "buy",
                                            "price": "800", "size": "0.01"}),
                    c.delete("/orders/%s" % placed["id"]),
                    c.delete("/orders"),
                    c.patch("/orders/%s" % placed["id"], json={"size": "0.02"}),
                    c.post("/accounts/withdraw", json={"currency": "USD", "amount": "1"})]
    for r in attempts:
        assert r.status_code == 403, r.text
        assert "view scope" in r.json()["message"] and "trade scope" in r.json()["message"]
    assert trade_client.get("/orders/%s" % placed["id"]).json()["status"] == "open"


def test_the_rm_scheme_still_works_with_a_cli_key(engine):
    from publisher.auth import signed_headers
    key = create_key(engine, 302, "view")
    with httpx.Client(base_url=engine.url, timeout=15.0) as raw:
        deadline = time.monotonic() + 5
        while True:
            r = raw.get("/accounts", headers=signed_headers(key["key"], key["secret"], "GET",
                                                            "/accounts"))
            if r.status_code != 401 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert r.status_code == 200, r.text
    assert all(a["account_id"] == 302 for a in r.json())


def test_a_revoked_key_stops_working_within_three_seconds(engine):
    key = create_key(engine, 303, "trade")
    with cb_client(engine, key) as c:
        assert wait_accepted(c).status_code == 200
        proc = keys_cli(engine, "revoke", key["key"])
        assert proc.returncode == 0, proc.stderr
        revoked_at = time.monotonic()
        while True:
            r = c.get("/accounts")
            if r.status_code == 401:
                break
            assert r.status_code == 200
            # auth rule 10: re-read within ~1 s; 3 s leaves room for a loaded host
            assert time.monotonic() - revoked_at < 3.0, "revoked key still accepted after 3 s"
            time.sleep(0.05)
    assert "revoked" in r.json()["message"]


def test_openapi_declares_the_security_schemes_and_docs_sign(engine, anon):
    schema = anon.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    headers = {s["name"] for s in schemes.values() if s["type"] == "apiKey" and s["in"] == "header"}
    assert {"CB-ACCESS-KEY", "CB-ACCESS-SIGN", "CB-ACCESS-TIMESTAMP",
            "CB-ACCESS-PASSPHRASE", "RM-ACCESS-KEY"} <= headers
    post = schema["paths"]["/orders"]["post"]
    assert post["x-required-scope"] == "trade"
    assert {"CbAccessKey", "CbAccessSign", "CbAccessTimestamp", "CbAccessPassphrase"} \
        in [set(req) for req in post["security"]]
    assert schema["paths"]["/accounts"]["get"]["x-required-scope"] == "view"
    assert "security" not in schema["paths"]["/products"]["get"]
    page = anon.get("/docs")
    assert page.status_code == 200
    assert "requestInterceptor" in page.text and "CB-ACCESS-SIGN" in page.text


def test_the_access_log_has_a_line_per_request_and_no_credentials(engine, trader):
    key, c = trader
    from publisher.auth import signed_headers
    marker = "/products/BTC-USD/book"
    for _ in range(3):
        assert c.get(marker + "?level=2").status_code == 200
    assert c.get("/accounts").status_code == 200
    rm = signed_headers("k-alice", "alice-secret", "GET", "/accounts")
    with httpx.Client(base_url=engine.url, timeout=15.0) as raw:
        assert raw.get("/accounts", headers=rm).status_code == 200
        # a secret pasted into the key header: refused, and its value never logged
        assert raw.get("/accounts", headers=dict(rm, **{"RM-ACCESS-KEY": "pasted-" + key["secret"][:30]})
                       ).status_code == 401
    deadline = time.monotonic() + 5
    while True:            # the supervisor passes the publisher's stderr on: it may lag a little
        lines = [line for line in engine.log_lines() if "event=http" in line]
        book = [line for line in lines if "route=/products/{product_id}/book" in line]
        if (len(book) >= 3 and any("key=k-alice" in line for line in lines)) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any("key=%s" % key["key"] in line and "auth=coinbase" in line and
               "path=/accounts " in line and "status=200" in line for line in lines)
    assert any("key=k-alice" in line and "auth=rm" in line for line in lines)
    assert any("status=401" in line and "key=-" in line for line in lines)
    assert len(book) >= 3 and all("level=2" not in line for line in book)   # no query string
    log = "\n".join(engine.log_lines())
    for secret in (key["secret"], key["passphrase"], key["secret"][:30], rm["RM-ACCESS-SIGN"],
                   "alice-secret"):
        assert secret not in log
    assert "CB-ACCESS-SIGN" not in log and "RM-ACCESS-SIGN" not in log


def test_a_damaged_key_file_disables_its_keys_not_the_configured_ones(tmp_path):
    """Auth rule 10 without a server: fail closed on a key file that does not parse."""
    from publisher import key_file
    from publisher.auth import AuthError, KeyStore, coinbase_headers, signed_headers

    class Clock(object):
        t = 100.0

        def __call__(self):
            return self.t
    mono = Clock()
    rec, secret, passphrase = key_file.create(str(tmp_path), 11, "trade")
    path = key_file.key_file_path(str(tmp_path))
    store = KeyStore([{"key": "cfg", "secret": "cfg-secret", "account_id": 12}],
                     key_file=path, monotonic=mono)

    def cb():
        h = coinbase_headers(rec["key"], secret, passphrase, "GET", "/accounts")
        return store.verify(h["CB-ACCESS-KEY"], h["CB-ACCESS-TIMESTAMP"], h["CB-ACCESS-SIGN"],
                            "GET", "/accounts", b"", passphrase=h["CB-ACCESS-PASSPHRASE"],
                            scheme="coinbase")

    def rm():
        h = signed_headers("cfg", "cfg-secret", "GET", "/accounts")
        return store.verify(h["RM-ACCESS-KEY"], h["RM-ACCESS-TIMESTAMP"], h["RM-ACCESS-SIGN"],
                            "GET", "/accounts", b"")
    assert cb().account_id == 11 and rm().account_id == 12
    with open(path, "w") as f:
        f.write('{"version": 1, "keys": [')                  # torn by hand
    mono.t += 0.5
    assert cb().account_id == 11                              # not looked at again yet
    mono.t += 0.6
    with pytest.raises(AuthError) as info:
        cb()
    assert info.value.status == 401 and store.file_error
    assert rm().account_id == 12


def test_the_docs_page_signs_private_requests_in_the_browser(engine, trader):
    """/docs's request interceptor (rmSign) signs with WebCrypto: CB-ACCESS-* with a
    passphrase, RM-ACCESS-* without; the server accepts both, and refuses a view key's
    order with 403 (so the body was signed right: the signature passed).  rmSign is the
    page's own code (Swagger UI itself: test_docs_assets)."""
    import asyncio
    from test_pub_page import CHROMIUM, Browser
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    key, _c = trader
    view = create_key(engine, 301, "view")
    with cb_client(engine, view) as c:
        assert wait_accepted(c).status_code == 200
    order = json.dumps({"product_id": "BTC-USD", "side": "buy", "price": "600", "size": "0.01"})
    browser = Browser()
    try:
        async def signed(key_id, secret, passphrase, method, url, body=None):
            js = """(async () => {
                document.getElementById('rm-key').value = %s;
                document.getElementById('rm-secret').value = %s;
                document.getElementById('rm-passphrase').value = %s;
                const req = await rmSign({url: %s, method: %s, body: %s,
                                          headers: {"Content-Type": "application/json"}});
                const r = await fetch(req.url, {method: req.method, headers: req.headers,
                                                body: req.body || undefined});
                return [r.status, await r.text(), Object.keys(req.headers).sort().join(",")];
            })()""" % tuple(json.dumps(v) for v in (key_id, secret, passphrase, url, method, body))
            return await browser.evaluate(js)

        async def main():
            await browser.connect()
            await browser.call("Page.enable")
            await browser.call("Page.navigate", url=engine.url + "/docs")
            await browser.wait_for("typeof rmSign === 'function' && "
                                   "!!document.getElementById('rm-key')", timeout=30)
            cb = await signed(key["key"], key["secret"], key["passphrase"], "get",
                              "/orders?status=all")
            rm = await signed("k-alice", "alice-secret", "", "get", "/accounts")
            placed = await signed(key["key"], key["secret"], key["passphrase"], "post",
                                  "/orders", order)
            refused = await signed(view["key"], view["secret"], view["passphrase"], "post",
                                   "/orders", order)
            return cb, rm, placed, refused
        cb, rm, placed, refused = asyncio.run(main())
    finally:
        browser.close()
    assert cb[0] == 200 and "CB-ACCESS-SIGN" in cb[2], cb
    assert rm[0] == 200 and "RM-ACCESS-SIGN" in rm[2] and '"account_id":101' in rm[1], rm
    assert placed[0] == 200 and json.loads(placed[1])["status"] == "open", placed
    assert refused[0] == 403 and "view scope" in refused[1], refused


def test_uuids_survive_a_publisher_restart(engine, trader):
    """Last in this module: the publisher is killed (-9) and restarted by the supervisor."""
    import signal
    key, c = trader
    oid = str(uuid.uuid4())
    placed = c.post("/orders", json={"product_id": "BTC-USD", "side": "buy", "price": "700",
                                     "size": "0.01", "client_oid": oid}).json()
    old_pid = c.get("/time").json()["pid"]
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            r = c.get("/time")
            if r.status_code == 200 and r.json()["pid"] != old_pid:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, engine.log_text()
        time.sleep(0.2)
    with cb_client(engine, key) as fresh:          # the new publisher's key store
        got = wait_accepted(fresh, "/orders/%s" % placed["id"])
        assert got.status_code == 200, got.text
        assert got.json()["client_oid"] == oid
        assert fresh.get("/orders/client:%s" % oid).json()["id"] == placed["id"]
        again = fresh.post("/orders", json={"product_id": "BTC-USD", "side": "buy",
                                            "price": "700", "size": "0.01", "client_oid": oid})
        assert again.json()["existing"] is True and again.json()["client_oid"] == oid
