"""API keys, request signatures and per-key rate limits.

Theory of operation (numbered rules; the code refers to them):

1. Every private request carries three headers (Coinbase Exchange style):
   ``RM-ACCESS-KEY`` (the key), ``RM-ACCESS-TIMESTAMP`` (unix seconds, may
   have a fraction) and ``RM-ACCESS-SIGN``: base64 of
   HMAC-SHA256(secret, timestamp + METHOD + path_with_query + body).
2. The timestamp must be within ``window_s`` (default 30 s) of the server's
   clock, either way: a captured request cannot be replayed later.
3. A key belongs to exactly one account; every private endpoint acts on that
   account only (another account's order is "not found").
4. Each key has a token bucket (``per_second``, ``burst``); an empty bucket
   answers 429 with ``Retry-After``.  Public market-data endpoints are not
   keyed and not limited here.
5. Keys come from the runtime configuration ``publisher.api_keys``
   (``[{"key", "secret", "account_id"}]``).  Without it, the local demo keys
   ``demo-<n>`` / secret ``demo-secret-<n>`` for accounts 1..``demo_accounts``
   are used (loopback demo only; documented in docs/publisher.md).
"""
import base64
import hashlib
import hmac
import time

__all__ = ["ApiKey", "KeyStore", "TokenBucket", "AuthError", "sign", "signed_headers",
           "demo_keys"]

HEADER_KEY = "RM-ACCESS-KEY"
HEADER_SIGN = "RM-ACCESS-SIGN"
HEADER_TIMESTAMP = "RM-ACCESS-TIMESTAMP"


class AuthError(Exception):
    """Authentication failed; ``status`` is the HTTP status to answer."""

    def __init__(self, status, message, retry_after=None):
        Exception.__init__(self, message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def sign(secret, timestamp, method, path, body=b""):
    """Return the base64 HMAC-SHA256 signature of one request (rule 1).

    >>> sign("s", "1700000000", "GET", "/accounts")
    'YRpauhntXiuABUz6HmjmxpFKSRgaud4gdBgcKn9hWBI='
    """
    if isinstance(body, str):
        body = body.encode()
    message = str(timestamp).encode() + method.upper().encode() + path.encode() + (body or b"")
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signed_headers(key, secret, method, path, body=b"", timestamp=None):
    """The three auth headers for one request (a client helper)."""
    ts = "%.3f" % (time.time() if timestamp is None else timestamp)
    return {HEADER_KEY: key, HEADER_TIMESTAMP: ts,
            HEADER_SIGN: sign(secret, ts, method, path, body)}


class TokenBucket(object):
    """Token bucket: ``rate`` tokens per second up to ``burst``.  O(1) per take."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self, now):
        """Take one token; return 0 on success, else seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else 60.0


class ApiKey(object):
    __slots__ = ("key", "secret", "account_id", "bucket")

    def __init__(self, key, secret, account_id, bucket):
        self.key = key
        self.secret = secret
        self.account_id = int(account_id)
        self.bucket = bucket


def demo_keys(accounts):
    """The local demo keys for accounts 1..accounts (rule 5)."""
    return [{"key": "demo-%d" % n, "secret": "demo-secret-%d" % n, "account_id": n}
            for n in range(1, accounts + 1)]


class KeyStore(object):
    """Look up and verify keys (rules 1-4)."""

    def __init__(self, keys, per_second=50.0, burst=100.0, window_s=30.0, clock=time.time,
                 monotonic=time.monotonic):
        self.window_s = float(window_s)
        self.clock = clock
        self.monotonic = monotonic
        self.keys = {}
        for k in keys:
            rate = k.get("per_second", per_second)
            b = k.get("burst", burst)
            self.keys[k["key"]] = ApiKey(k["key"], k["secret"], k["account_id"],
                                         TokenBucket(rate, b, monotonic))

    @classmethod
    def from_config(cls, publisher_cfg):
        cfg = publisher_cfg or {}
        keys = cfg.get("api_keys") or demo_keys(int(cfg.get("demo_accounts", 10)))
        limit = cfg.get("rate_limit") or {}
        return cls(keys, per_second=limit.get("per_second", 50.0),
                   burst=limit.get("burst", 100.0), window_s=cfg.get("auth_window_s", 30.0))

    def verify(self, key, timestamp, signature, method, path, body):
        """Return the ApiKey of a correctly signed, timely request; raise AuthError."""
        if not key or not timestamp or not signature:
            raise AuthError(401, "missing authentication headers (%s, %s, %s)"
                            % (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGN))
        api_key = self.keys.get(key)
        if api_key is None:
            raise AuthError(401, "invalid API key")
        try:
            ts = float(timestamp)
        except ValueError:
            raise AuthError(401, "invalid timestamp %r (unix seconds)" % (timestamp,))
        if not ts == ts or abs(self.clock() - ts) > self.window_s:   # rule 2 (NaN fails too)
            raise AuthError(401, "request timestamp outside the %g s window" % self.window_s)
        expected = sign(api_key.secret, timestamp, method, path, body)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise AuthError(401, "invalid signature")
        wait = api_key.bucket.take(self.monotonic())                   # rule 4
        if wait:
            raise AuthError(429, "rate limit exceeded for key %s" % key, retry_after=wait)
        return api_key
