"""/docs serves Swagger UI from this server (the installed swagger-ui-bundle-v2 files, with
SRI hashes), nothing from another host, and OpenAPI names the configured timestamp window
(app rule 12).  Against a running engine whose ``publisher.auth_window_s`` is 45."""
import asyncio
import base64
import hashlib
import re

import httpx
import pytest

from pub_harness import Engine

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def engine45(tmp_path_factory):
    e = Engine(tmp_path_factory.mktemp("docs"), publisher_extra={"auth_window_s": 45})
    e.start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def web(engine45):
    with httpx.Client(base_url=engine45.url, timeout=15.0) as c:
        yield c


def test_openapi_timestamps_name_the_configured_window(web):
    schemes = web.get("/openapi.json").json()["components"]["securitySchemes"]
    stamps = {name: s["description"] for name, s in schemes.items()
              if s["name"] in ("CB-ACCESS-TIMESTAMP", "RM-ACCESS-TIMESTAMP")}
    assert len(stamps) == 2, schemes
    for text in stamps.values():
        assert "within 45 s" in text and "30" not in text, text


def test_docs_loads_swagger_ui_from_this_server_with_integrity(web):
    page = web.get("/docs")
    assert page.status_code == 200
    html = page.text
    assert "cdn" not in html.lower() and "://" not in html, "the page names another host"
    assert "Content-Security-Policy" in html
    refs = re.findall(r'(?:src|href)="([^"]+)" integrity="([^"]+)"', html)
    assert sorted(u for u, _ in refs) == ["/docs/assets/swagger-ui-bundle.js",
                                          "/docs/assets/swagger-ui.css"], refs
    for url, sri in refs:
        r = web.get(url)
        assert r.status_code == 200, url
        assert len(r.content) > 10000, url
        assert sri == "sha384-" + base64.b64encode(hashlib.sha384(r.content).digest()).decode()
    assert web.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith(
        "text/javascript")
    for bad in ("/docs/assets/index.html", "/docs/assets/..%2F..%2Fpyvenv.cfg",
                "/docs/assets/swagger-ui.js"):
        assert web.get(bad).status_code == 404, bad


def test_docs_renders_swagger_ui_in_a_browser_without_other_hosts(engine45):
    from test_pub_page import CHROMIUM, Browser
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    browser = Browser()
    try:
        async def main():
            await browser.connect()
            await browser.call("Page.enable")
            await browser.call("Page.navigate", url=engine45.url + "/docs")
            await browser.wait_for("document.querySelectorAll('.opblock').length > 10 && "
                                   "typeof rmSign === 'function'", timeout=30)
            origins = await browser.evaluate(
                "performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)")
            title = await browser.evaluate("document.querySelector('.info .title') && "
                                           "document.querySelector('.info .title').textContent")
            return origins, title
        origins, title = asyncio.run(main())
    finally:
        browser.close()
    assert origins and set(origins) == {engine45.url}, origins
    assert "ringmatch" in title, title
