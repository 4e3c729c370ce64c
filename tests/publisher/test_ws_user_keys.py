"""The WebSocket user channel against a running engine: Coinbase Exchange's signed subscribe,
and an open user subscription dropped once its key is revoked with ``ringmatch keys revoke``
(ws rules 1 and 10, auth rules 8 and 10).

Keys are made with the CLI on the engine's data dir while it runs (as a user makes them);
the Coinbase subscribe is built as Coinbase's documentation builds it (HMAC-SHA256 keyed
with the base64-decoded secret over timestamp + "GET" + "/users/self/verify"), not with the
server's helpers.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest
import websockets

from pub_wsmsg import recv as _recv, sync as _sync, until as _until

from test_coinbase_auth import cb_client, create_key, keys_cli, wait_accepted

pytestmark = pytest.mark.timeout(180)


def coinbase_subscribe(key, secret, passphrase, timestamp=None, path="/users/self/verify"):
    """Coinbase Exchange's authenticated subscribe message, as its documentation writes it."""
    timestamp = str(time.time()) if timestamp is None else timestamp
    message = timestamp + "GET" + path
    hmac_key = base64.b64decode(secret)
    signature = hmac.new(hmac_key, message.encode("utf-8"), hashlib.sha256)
    signature_b64 = base64.b64encode(signature.digest()).decode("utf-8")
    return {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["user"],
            "signature": signature_b64, "key": key, "passphrase": passphrase,
            "timestamp": timestamp}


def rm_subscribe(key, secret):
    """The RM form (ws rule 1): the RM signature of timestamp + "GET" + "/ws"."""
    ts = "%.6f" % time.time()
    sig = base64.b64encode(hmac.new(secret.encode(), (ts + "GET/ws").encode(),
                                    hashlib.sha256).digest()).decode()
    return {"type": "subscribe", "channels": ["user"], "key": key, "timestamp": ts,
            "signature": sig}


def _funded(engine, account):
    key = create_key(engine, account, "trade")
    c = cb_client(engine, key)
    assert wait_accepted(c).status_code == 200
    r = c.post("/accounts/deposit", json={"currency": "USD", "amount": "100000"})
    assert r.status_code == 200, r.text
    return key, c


def _order(c, price):
    r = c.post("/orders", json={"product_id": "BTC-USD", "side": "buy", "price": price,
                                "size": "0.01"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _reports_of(messages, order_id):
    return [m for m in messages if m.get("type") == "report" and
            str(m.get("order_id", m.get("id"))) == str(order_id)]


def test_a_coinbase_signed_ws_subscribe_gets_the_accounts_reports(engine):
    key, c = _funded(engine, 411)
    try:
        async def main():
            async with websockets.connect(engine.ws_url) as ws:
                # wrong passphrase, a signature over the RM path, then the right one
                await ws.send(json.dumps(coinbase_subscribe(key["key"], key["secret"],
                                                            key["passphrase"] + "x")))
                m = await _recv(ws)
                assert m["type"] == "error" and "invalid passphrase" in m["reason"], m
                await ws.send(json.dumps(coinbase_subscribe(key["key"], key["secret"],
                                                            key["passphrase"], path="/ws")))
                m = await _recv(ws)
                assert m["type"] == "error" and "invalid signature" in m["reason"], m
                good = coinbase_subscribe(key["key"], key["secret"], key["passphrase"])
                await ws.send(json.dumps(good))
                subs, _ = await _until(ws, lambda m: m["type"] in ("subscriptions", "error"))
                assert subs["type"] == "subscriptions", subs
                assert {"name": "user", "account_id": 411} in subs["channels"]
                await ws.send(json.dumps(good))                          # auth rule 6
                m, _ = await _until(ws, lambda m: m["type"] == "error")
                assert "replayed" in m["reason"], m
                oid = await asyncio.to_thread(_order, c, "1001")
                rep, _ = await _until(ws, lambda m: m["type"] == "report" and
                                      bool(_reports_of([m], oid)))
                assert rep["channel"] == "user"
        asyncio.run(main())
    finally:
        c.close()


def test_a_revoked_key_loses_its_open_user_subscription(engine):
    """Connection A subscribes with key A (Coinbase form), connection B with key B (RM form),
    both of one account.  After ``ringmatch keys revoke A``, A gets the error within a few
    seconds and no report of the next order; B (the control) still gets it."""
    key_a = create_key(engine, 412, "view")
    key_b, c = _funded(engine, 412)
    try:
        with cb_client(engine, key_a) as ca:
            assert wait_accepted(ca).status_code == 200

        async def main():
            async with websockets.connect(engine.ws_url) as wa, \
                    websockets.connect(engine.ws_url) as wb:
                await wa.send(json.dumps(coinbase_subscribe(key_a["key"], key_a["secret"],
                                                            key_a["passphrase"])))
                await wa.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"],
                                          "channels": ["ticker"]}))
                await wb.send(json.dumps(rm_subscribe(key_b["key"], key_b["secret"])))
                for ws in (wa, wb):
                    subs, _ = await _until(ws, lambda m: m["type"] in ("subscriptions",
                                                                       "error"))
                    assert subs["type"] == "subscriptions", subs
                    assert {"name": "user", "account_id": 412} in subs["channels"]
                first = await asyncio.to_thread(_order, c, "1002")
                for ws in (wa, wb):
                    await _until(ws, lambda m: bool(_reports_of([m], first)))
                proc = await asyncio.to_thread(keys_cli, engine, "revoke", key_a["key"])
                assert proc.returncode == 0, proc.stderr
                revoked_at = time.monotonic()
                err, _ = await _until(wa, lambda m: m["type"] == "error", timeout=10)
                waited = time.monotonic() - revoked_at
                assert err["reason"] == "key revoked", err
                assert "revoked" in err["message"], err
                # ws rule 10: about reload_s (1 s) + key_check_s (0.5 s); 4 s for a loaded host
                assert waited < 4.0, waited
                subs, _ = await _until(wa, lambda m: m["type"] == "subscriptions")
                assert [ch["name"] for ch in subs["channels"]] == ["ticker"], subs
                after = await asyncio.to_thread(_order, c, "1003")
                await _until(wb, lambda m: bool(_reports_of([m], after)))   # B: still there
                await asyncio.sleep(0.3)
                rest = await _sync(wa)
                assert not [m for m in rest if m.get("type") == "report"], rest
                # the revoked key cannot subscribe again
                await wa.send(json.dumps(coinbase_subscribe(key_a["key"], key_a["secret"],
                                                            key_a["passphrase"])))
                m, _ = await _until(wa, lambda m: m["type"] == "error")
                assert "revoked" in m["reason"], m
        asyncio.run(main())
    finally:
        c.close()
