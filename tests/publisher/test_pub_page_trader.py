"""The live page as a trader uses it, in headless Chromium against the real engine.

After crossing orders placed over REST the page's 1-minute candles (DOM data
attributes) equal the OHLCV this test computes from its own fills, the depth
chart's best bid/ask equal REST's book, the spread has the tick's decimals; with
a key entered the page shows the account's balances and open orders as REST
does, follows a fill over the user channel, and its cancel button cancels (REST
shows the order done); at 420 px nothing scrolls sideways and the charts shrink;
screenshots are saved and are not blank; nothing is loaded from another host.  Then
the same page with GET /candles and GET /fills answered 404 (DevTools Fetch): candles
built from trades, fills from the user channel, signed with a Coinbase-scheme key.
"""
import asyncio
import base64
import calendar
import json
import struct
import time
import urllib.parse
import zlib
from decimal import Decimal

import pytest

from test_coinbase_auth import cb_client, create_key, wait_accepted
from test_pub_page import CHROMIUM, Browser

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                 "(apt-get install chromium)")]

PRODUCT = "ETH-USD"


class RecordingBrowser(Browser):
    """Browser that keeps the DevTools events (``Network.requestWillBeSent``...)."""

    events = None

    async def call(self, method, **params):
        if self.events is None:
            self.events = []
        i = next(self.ids)
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            m = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if m.get("id") == i:
                if "error" in m:
                    raise RuntimeError(m["error"])
                return m["result"]
            if "method" in m:
                self.events.append(m)
                if m["method"] == "Fetch.requestPaused":       # the server "lacks" this route
                    await self.ws.send(json.dumps({
                        "id": next(self.ids), "method": "Fetch.fulfillRequest",
                        "params": {"requestId": m["params"]["requestId"], "responseCode": 404,
                                   "responseHeaders": [{"name": "Content-Type",
                                                        "value": "application/json"}],
                                   "body": base64.b64encode(b'{"message": "Not Found"}').decode()}}))

    async def screenshot(self, path, whole=False):
        r = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=whole)
        data = base64.b64decode(r["data"])
        with open(path, "wb") as f:
            f.write(data)
        return data


def png_colors(data):
    """Distinct RGB colours of an 8-bit, non-interlaced RGB/RGBA PNG (no Pillow here)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colors = set()
    for row in range(height):
        ftype = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for i in range(0, stride, bpp * 7):          # a sample of the pixels is enough
            colors.add(bytes(line[i:i + 3]))
        prev = line
    return colors, width, height


def _epoch(iso):
    return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S"))


def candles_from_fills(fills):
    """{minute start: (open, high, low, close, volume)} from fills, in trade_id order."""
    out = {}
    for f in sorted(fills, key=lambda f: f["trade_id"]):
        start = _epoch(f["created_at"]) // 60 * 60
        p, q = Decimal(f["price"]), Decimal(f["size"])
        if start not in out:
            out[start] = [p, p, p, p, q]
        else:
            c = out[start]
            c[1], c[2], c[3], c[4] = max(c[1], p), min(c[2], p), p, c[4] + q
    return {k: tuple(v) for k, v in out.items()}


_CANDLES_JS = ("JSON.stringify(Array.from(document.querySelectorAll('#candles g.candle'))"
               ".map(g => [Number(g.dataset.start), g.dataset.open, g.dataset.high,"
               " g.dataset.low, g.dataset.close, g.dataset.volume]))")


async def page_candles(browser):
    rows = json.loads(await browser.evaluate(_CANDLES_JS))
    return {r[0]: tuple(Decimal(x) for x in r[1:]) for r in rows}


async def wait_candles(browser, expected, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        got = await page_candles(browser)
        if all(got.get(k) == v for k, v in expected.items()):
            return got
        if time.monotonic() > deadline:
            raise AssertionError("candles on the page %r, computed from the fills %r" % (got, expected))
        await asyncio.sleep(0.1)


def rest_balances(client):
    r = client.get("/accounts")
    assert r.status_code == 200, r.text
    return sorted((a["currency"], a["balance"], a["available"], a["hold"]) for a in r.json())


_BALANCES_JS = ("JSON.stringify(Array.from(document.querySelectorAll('#balances tr.balance'))"
                ".map(r => [r.dataset.currency, r.dataset.balance, r.dataset.available, r.dataset.hold]).sort())")
_ORDERS_JS = ("JSON.stringify(Array.from(document.querySelectorAll('#open-orders tr.open-order'))"
              ".map(r => [r.dataset.id, r.dataset.price, r.dataset.size, r.dataset.filled]).sort())")


def rest_open_orders(client):
    r = client.get("/orders?status=open")
    assert r.status_code == 200, r.text
    return sorted([o["id"], o["price"], o["size"], o["filled_size"]] for o in r.json())


async def wait_equal(browser, js, want_fn, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        want = want_fn()
        got = json.loads(await browser.evaluate(js))
        if got == want:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("%s: page %r, REST %r" % (what, got, want))
        await asyncio.sleep(0.1)


def test_trader_page(engine, alice, bob, tmp_path):
    for c in (alice, bob):
        assert c.delete("/orders").status_code == 200
    products = {p["id"]: p for p in bob.get("/products").json()}
    tick = products[PRODUCT]["quote_increment"]
    decimals = len(tick.split(".")[1]) if "." in tick else 0
    assert decimals >= 1, tick
    # crossing orders: alice rests three asks, bob's buy takes all of them
    fills = []
    for price, size in (("2001.5", "0.3"), ("2003.2", "0.2"), ("2002", "0.1")):
        assert alice.order(PRODUCT, "sell", size, price).status_code == 200
    r = bob.order(PRODUCT, "buy", "0.6", "2003.2")
    assert r.status_code == 200, r.text
    fills += r.json()["fills"]
    assert len(fills) == 3
    # what stays in the book: a bid of bob's and an ask of alice's
    rb = bob.order(PRODUCT, "buy", "0.5", "1990.7")
    ra = alice.order(PRODUCT, "sell", "0.4", "2010.5")
    assert rb.status_code == 200 and ra.status_code == 200
    bob_bid = rb.json()["id"]
    bob_other = bob.order(PRODUCT, "buy", "0.1", "1980").json()["id"]
    # the fills' times are the trades' times (the page builds candles from trades)
    trade_times = {t["trade_id"]: t["time"] for t in bob.get("/products/%s/trades" % PRODUCT).json()}
    for f in fills:
        assert trade_times[f["trade_id"]][:19] == f["created_at"][:19]

    browser = RecordingBrowser()
    try:
        async def main():
            await browser.connect()
            await browser.call("Page.enable")
            await browser.call("Network.enable")
            await browser.call("Runtime.enable")
            await browser.call("Log.enable")
            await browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=1000,
                               deviceScaleFactor=1, mobile=False)
            await browser.call("Page.navigate", url=engine.url + "/?product=" + PRODUCT)
            await browser.wait_for("document.querySelector('#conn') && "
                                   "document.querySelector('#conn').textContent === 'live'")
            # candles: >= 1, OHLCV equal to the fills' own
            expected = candles_from_fills(fills)
            await browser.wait_for("document.querySelectorAll('#candles g.candle').length >= 1")
            await wait_candles(browser, expected)
            labels = await browser.evaluate(
                "Array.from(document.querySelectorAll('#candles text.time-label')).map(t => t.textContent)")
            assert labels and all(len(x) == 5 and x[2] == ":" for x in labels), labels
            # depth chart and spread against REST's book
            book = bob.get("/products/%s/book?level=2" % PRODUCT).json()
            best_bid, best_ask = book["bids"][0][0], book["asks"][0][0]
            await browser.wait_for(
                "document.querySelector('#depth').dataset.bestBid === %s && "
                "document.querySelector('#depth').dataset.bestAsk === %s"
                % (json.dumps(best_bid), json.dumps(best_ask)))
            assert await browser.evaluate("document.querySelectorAll('#depth path').length") == 2
            spread = await browser.evaluate("document.querySelector('#spread-cell').textContent")
            want = Decimal(best_ask) - Decimal(best_bid)
            assert spread == "spread " + str(want.quantize(Decimal(tick))), (spread, tick)
            assert len(spread.split(".")[1]) == decimals
            # a key: balances and open orders as REST shows them
            await browser.evaluate("""
                document.querySelector('#api-key').value = 'k-bob';
                document.querySelector('#api-secret').value = 'bob-secret';
                document.querySelector('#key-use').click(); true""")
            await browser.wait_for("document.querySelector('#account-state').dataset.state === 'ok'")
            await wait_equal(browser, _BALANCES_JS, lambda: [list(b) for b in rest_balances(bob)],
                             "balances")
            await wait_equal(browser, _ORDERS_JS, lambda: rest_open_orders(bob), "open orders")
            # a live trade: alice sells into bob's bid; the user channel brings the fill,
            # the candle moves, orders and balances follow REST
            r = alice.order(PRODUCT, "sell", "0.2", "1990.7")
            assert r.status_code == 200, r.text
            fills.extend(r.json()["fills"])
            await wait_candles(browser, candles_from_fills(fills))
            trade_id = r.json()["fills"][0]["trade_id"]
            await browser.wait_for("!!document.querySelector('#fills tr.fill[data-trade-id=\"%d\"]')"
                                   % trade_id)
            await wait_equal(browser, _ORDERS_JS, lambda: rest_open_orders(bob), "open orders")
            await wait_equal(browser, _BALANCES_JS, lambda: [list(b) for b in rest_balances(bob)],
                             "balances")
            shot = tmp_path / "page-1280.png"
            colors, w, _h = png_colors(await browser.screenshot(str(shot)))
            assert w == 1280 and len(colors) > 20, len(colors)
            # cancel from the page: REST shows the order done
            await browser.evaluate("document.querySelector('#open-orders button.cancel[data-id=\"%s\"]')"
                                   ".click(); true" % bob_bid)
            deadline = time.monotonic() + 15
            while bob.get("/orders/%s" % bob_bid).json()["status"] != "done":
                assert time.monotonic() < deadline, bob.get("/orders/%s" % bob_bid).json()
                await asyncio.sleep(0.1)
            await browser.wait_for("!document.querySelector('#open-orders tr[data-id=\"%s\"]')" % bob_bid)
            await wait_equal(browser, _ORDERS_JS, lambda: rest_open_orders(bob), "open orders")
            await wait_equal(browser, _BALANCES_JS, lambda: [list(b) for b in rest_balances(bob)],
                             "balances")
            assert [o[0] for o in rest_open_orders(bob)] == [bob_other]
            # 420 px wide: no sideways scrolling, the charts shrink to fit
            await browser.call("Emulation.setDeviceMetricsOverride", width=420, height=900,
                               deviceScaleFactor=1, mobile=True)
            await browser.wait_for("Number(document.querySelector('#candles').getAttribute('width')) <= 420 &&"
                                   " Number(document.querySelector('#depth').getAttribute('width')) <= 420")
            assert await browser.evaluate("document.documentElement.scrollWidth") <= 420
            assert await browser.evaluate("document.documentElement.clientWidth") == 420
            assert await browser.evaluate(
                "document.querySelector('#candles').getBoundingClientRect().right") <= 420
            await wait_candles(browser, candles_from_fills(fills))   # redrawn, same data
            shot = tmp_path / "page-420.png"
            colors, w, _h = png_colors(await browser.screenshot(str(shot), whole=True))
            assert w == 420 and len(colors) > 20, len(colors)
            # a server without GET /candles and GET /fills (answered 404 by DevTools): the
            # page builds the candles from /trades and the trades channel, the fills from
            # the user channel
            # ... and signed in with a Coinbase-scheme key of bob's account (made by the CLI)
            cb_key = create_key(engine, 102, "trade")
            with cb_client(engine, cb_key) as c:
                assert wait_accepted(c).status_code == 200
            await browser.call("Fetch.enable", patterns=[{"urlPattern": "*/candles*"},
                                                         {"urlPattern": "*/fills*"}])
            await browser.call("Page.navigate", url=engine.url + "/?product=" + PRODUCT)
            await browser.wait_for("!!document.querySelector('#candle-source') && "
                                   "document.querySelector('#conn').textContent === 'live' && "
                                   "document.querySelector('#candle-source').textContent === "
                                   "'built from trades'")
            await wait_candles(browser, candles_from_fills(fills))
            await browser.evaluate("""
                document.querySelector('#api-key').value = %s;
                document.querySelector('#api-secret').value = %s;
                document.querySelector('#api-passphrase').value = %s;
                document.querySelector('#key-use').click(); true""" % (
                json.dumps(cb_key["key"]), json.dumps(cb_key["secret"]), json.dumps(cb_key["passphrase"])))
            await browser.wait_for("document.querySelector('#account-state').dataset.state === 'ok'"
                                   " && document.querySelector('#fills-source').textContent"
                                   ".includes('no GET /fills')")
            r = alice.order(PRODUCT, "sell", "0.1", "1980")
            assert r.status_code == 200 and r.json()["fills"], r.text
            fills.extend(r.json()["fills"])
            await wait_candles(browser, candles_from_fills(fills))
            await browser.wait_for("!!document.querySelector('#fills tr.fill[data-trade-id=\"%d\"]')"
                                   % r.json()["fills"][0]["trade_id"])
            await wait_equal(browser, _ORDERS_JS, lambda: rest_open_orders(bob), "open orders")
            assert rest_open_orders(bob) == []
            await wait_equal(browser, _BALANCES_JS, lambda: [list(b) for b in rest_balances(bob)],
                             "balances")
            assert await browser.evaluate("document.documentElement.scrollWidth") <= 420
            await browser.ws.close()
        asyncio.run(main())
    finally:
        browser.close()
    # no script error, no CSP violation (the 404s the test made are expected)
    exceptions = [e["params"] for e in browser.events if e["method"] == "Runtime.exceptionThrown"]
    assert exceptions == []
    errors = [e["params"]["entry"] for e in browser.events if e["method"] == "Log.entryAdded"
              and e["params"]["entry"]["level"] == "error"]
    errors = [e for e in errors if not (e.get("source") == "network" and
                                        ("/candles" in e.get("url", "") or "/fills" in e.get("url", "")))]
    assert errors == [], [(e["text"], e.get("url")) for e in errors]
    # nothing came from another host
    origin = urllib.parse.urlsplit(engine.url)
    urls = [e["params"]["request"]["url"] for e in browser.events
            if e["method"] == "Network.requestWillBeSent"]
    sockets = [e["params"]["url"] for e in browser.events if e["method"] == "Network.webSocketCreated"]
    assert any(u.endswith("/static/app.js") for u in urls) and sockets, (urls, sockets)
    urls += sockets
    for u in urls:
        parts = urllib.parse.urlsplit(u)
        assert parts.scheme in ("http", "ws", "data") and parts.netloc in (origin.netloc, ""), u
