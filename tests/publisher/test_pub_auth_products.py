"""Auth (HMAC signature, replay window, rate limit) and the decimal edge."""
import pytest

from engine.config import DEFAULT_CONFIG
from publisher.auth import AuthError, KeyStore, TokenBucket, sign, signed_headers
from publisher.products import Catalog, ConversionError


class Clock(object):
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def _store(**kw):
    clock = Clock()
    mono = Clock(100.0)
    keys = [{"key": "k1", "secret": "s1", "account_id": 7},
            {"key": "k2", "secret": "s2", "account_id": 8, "per_second": 1, "burst": 2}]
    return KeyStore(keys, clock=clock, monotonic=mono, **kw), clock, mono


def test_signature_verifies_and_names_the_account():
    store, clock, _ = _store()
    h = signed_headers("k1", "s1", "POST", "/orders", b'{"a":1}', timestamp=clock())
    key = store.verify(h["RM-ACCESS-KEY"], h["RM-ACCESS-TIMESTAMP"], h["RM-ACCESS-SIGN"],
                       "POST", "/orders", b'{"a":1}')
    assert key.account_id == 7


@pytest.mark.parametrize("change", ["body", "path", "method", "secret", "key", "missing"])
def test_tampered_request_is_401(change):
    store, clock, _ = _store()
    ts = "%.3f" % clock()
    args = dict(key="k1", ts=ts, sig=sign("s1", ts, "POST", "/orders", b"{}"),
                method="POST", path="/orders", body=b"{}")
    if change == "body":
        args["body"] = b'{"x":1}'
    elif change == "path":
        args["path"] = "/orders/1"
    elif change == "method":
        args["method"] = "DELETE"
    elif change == "secret":
        args["sig"] = sign("s2", ts, "POST", "/orders", b"{}")
    elif change == "key":
        args["key"] = "nope"
    elif change == "missing":
        args["sig"] = None
    with pytest.raises(AuthError) as info:
        store.verify(args["key"], args["ts"], args["sig"], args["method"], args["path"], args["body"])
    assert info.value.status == 401


@pytest.mark.parametrize("skew", [-31.0, 31.0, float("nan")])
def test_timestamp_outside_window_is_401(skew):
    store, clock, _ = _store()
    ts = repr(clock() + skew)
    with pytest.raises(AuthError) as info:
        store.verify("k1", ts, sign("s1", ts, "GET", "/accounts"), "GET", "/accounts", b"")
    assert info.value.status == 401


def test_rate_limit_is_per_key_and_refills():
    store, clock, mono = _store()
    def call(key, secret):
        clock.t += 0.001                  # a new timestamp each time: no replay (auth rule 6)
        ts = "%.3f" % clock()
        return store.verify(key, ts, sign(secret, ts, "GET", "/a"), "GET", "/a", b"")
    call("k2", "s2")
    call("k2", "s2")
    with pytest.raises(AuthError) as info:
        call("k2", "s2")
    assert info.value.status == 429 and info.value.retry_after > 0
    call("k1", "s1")                      # another key is not affected
    mono.t += 1.0                         # one token per second
    call("k2", "s2")
    with pytest.raises(AuthError):
        call("k2", "s2")


def test_token_bucket_burst():
    b = TokenBucket(10, 3, clock=lambda: 0.0)
    assert [b.take(0.0) == 0 for _ in range(4)] == [True, True, True, False]
    assert b.take(0.1) == 0


def test_catalog_from_default_exchange():
    cat = Catalog.from_exchange(DEFAULT_CONFIG)
    assert [p.name for p in cat.products] == ["BTC-USD", "ETH-USD", "ETH-BTC"]
    btc = cat.product("BTC-USD")
    assert btc.price_to_ticks("65000") == 65000
    assert btc.qty_to_lots("0.25") == 25
    assert btc.fmt_price(65000) == "65000"
    assert btc.fmt_qty(25) == "0.25"
    eth_btc = cat.product("ETH-BTC")
    assert eth_btc.price_to_ticks("0.05123") == 5123
    assert eth_btc.fmt_price(5123) == "0.05123"
    assert cat.asset_by_name["USD"].fmt(12345) == "123.45"
    assert cat.asset_by_name["USD"].to_minor("1.5") == 150
    only = Catalog.from_exchange(DEFAULT_CONFIG, symbols=["ETH-USD"])
    assert [p.name for p in only.products] == ["ETH-USD"]


@pytest.mark.parametrize("value", ["0.001", "abc", "1e400000", "NaN", "Infinity", "", "9" * 30,
                                   "1e-400000", "0.01000000000000000000000000000001", "1" * 70])
def test_unrepresentable_sizes_are_refused(value):
    btc = Catalog.from_exchange(DEFAULT_CONFIG).product("BTC-USD")
    with pytest.raises(ConversionError):
        btc.qty_to_lots(value)


def test_replayed_signature_is_401_until_the_window_ends_and_the_cache_empties():
    store, clock, mono = _store()
    ts = "%.3f" % clock()
    args = ("k1", ts, sign("s1", ts, "GET", "/a"), "GET", "/a", b"")
    assert store.verify(*args).account_id == 7
    clock.t += 29.0
    with pytest.raises(AuthError) as info:
        store.verify(*args)
    assert info.value.status == 401 and "replayed" in info.value.message
    clock.t += 2.0                          # the timestamp left the window: refused as stale
    with pytest.raises(AuthError) as info:
        store.verify(*args)
    assert "window" in info.value.message
    for i in range(100):                    # new requests, each once: the cache stays bounded
        clock.t += 1.0
        mono.t += 1.0
        t = "%.3f" % clock()
        store.verify("k1", t, sign("s1", t, "GET", "/a"), "GET", "/a", b"")
    assert len(store.replays) <= 31


@pytest.mark.parametrize("value", ["\u0661", "1_0", "1e2", " 1", "1\u00a0", "\uff11", "+1", "0x1"])
def test_non_ascii_decimal_numbers_are_refused(value):
    btc = Catalog.from_exchange(DEFAULT_CONFIG).product("BTC-USD")
    with pytest.raises(ConversionError):
        btc.price_to_ticks(value)
