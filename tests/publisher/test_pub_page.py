"""The live page in headless Chromium (Debian ``chromium``), driven over the DevTools protocol.

Loads the page, sees the book, places an order through the page's form (signed
REST from the browser) and sees it appear in the ladder and, once it trades, in
the trades list and the candle chart.
"""
import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import httpx
import pytest
import websockets

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                 "(apt-get install chromium)")]


class Browser(object):
    """Headless Chromium with a fresh profile; ``evaluate(js)`` on the one page."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="rm-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--user-data-dir=" + self.profile,
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file) or not open(port_file).read().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        targets = httpx.get("http://127.0.0.1:%d/json" % port).json()
        self.ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.ids = itertools.count(1)
        self.ws = None

    async def connect(self):
        self.ws = await websockets.connect(self.ws_url, max_size=None)

    async def call(self, method, **params):
        i = next(self.ids)
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            m = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if m.get("id") == i:
                if "error" in m:
                    raise RuntimeError(m["error"])
                return m["result"]

    async def evaluate(self, js):
        r = await self.call("Runtime.evaluate", expression=js, returnByValue=True,
                            awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    async def wait_for(self, js, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(js)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("page never satisfied: %s" % js)
            await asyncio.sleep(0.1)

    def close(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)   # renderers and helpers too
            except OSError:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


_CANDLES = "document.querySelectorAll('#candles g.candle').length"


def test_page_shows_book_and_an_order_placed_from_it(engine, alice, bob):
    assert alice.delete("/orders").status_code == 200 and bob.delete("/orders").status_code == 200
    assert alice.order("BTC-USD", "sell", "0.30", "33333").status_code == 200
    browser = Browser()
    try:
        async def main():
            await browser.connect()
            await browser.call("Page.enable")
            await browser.call("Page.navigate", url=engine.url + "/?product=BTC-USD")
            await browser.wait_for("document.querySelector('#conn') && "
                                   "document.querySelector('#conn').textContent === 'live'")
            # the book arrives over the WebSocket
            await browser.wait_for("!!document.querySelector('#asks tr[data-price=\"33333\"]')")
            size = await browser.evaluate(
                "document.querySelector('#asks tr[data-price=\"33333\"]').dataset.size")
            assert size == "0.30"
            # place a bid through the page's form (signed in the browser with WebCrypto)
            await browser.evaluate("""
                document.querySelector('#api-key').value = 'k-bob';
                document.querySelector('#api-secret').value = 'bob-secret';
                document.querySelector('#side').value = 'buy';
                document.querySelector('#type').value = 'limit';
                document.querySelector('#price').value = '32222';
                document.querySelector('#size').value = '0.07';
                document.querySelector('#submit').click(); true""")
            await browser.wait_for("document.querySelector('#order-result').dataset.status === '200'")
            result = await browser.evaluate("document.querySelector('#order-result').textContent")
            assert "open" in result
            await browser.wait_for("!!document.querySelector('#bids tr[data-price=\"32222\"]')")
            # a crossing order from the page trades: the trade shows up in the list
            await browser.evaluate("""
                document.querySelector('#price').value = '33333';
                document.querySelector('#size').value = '0.10';
                document.querySelector('#submit').click(); true""")
            await browser.wait_for("Array.from(document.querySelectorAll('#trades tr'))"
                                   ".some(r => r.textContent.includes('33333'))")
            await browser.wait_for(
                "document.querySelector('#asks tr[data-price=\"33333\"]').dataset.size === '0.20'")
            # the trades make a candle (test_pub_page_trader.py checks its OHLC)
            await browser.wait_for(_CANDLES + " >= 1")
            assert alice.order("BTC-USD", "sell", "0.01", "32222").status_code == 200
            await browser.wait_for("Array.from(document.querySelectorAll('#trades tr'))"
                                   ".some(r => r.textContent.includes('32222'))")
            await browser.wait_for("document.querySelector('#candles g.candle:last-of-type')"
                                   ".dataset.close === '32222'")
            await browser.ws.close()
        asyncio.run(main())
    finally:
        browser.close()
    book = bob.get("/products/BTC-USD/book?level=2").json()
    assert ["32222", "0.06"] in book["bids"] and ["33333", "0.20"] in book["asks"]
