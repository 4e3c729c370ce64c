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
6. Replays: a correctly signed request is accepted once.  Its (key,
   signature) is remembered until its timestamp leaves the window
   (``ReplayCache``); the same signature again in that time is a 401
   ("replayed request").  The cache only holds requests that passed the
   signature check and the rate limit, so its size is bounded by the keys'
   rates times the window (two windows: the timestamp may be ahead too).
   A client that sends two identical requests must give them different
   timestamps (``signed_headers`` uses microseconds).
7. Order of checks: the headers (present, short, a known key, an ASCII
   decimal timestamp inside the window) are checked BEFORE the body is read
   (``KeyStore.check_headers``); the HMAC, the replay cache and the rate
   limit after (``KeyStore.verify_signed``).  Error messages never echo more
   than a few dozen characters of the input.
"""
import base64
import hashlib
import heapq
import hmac
import re
import time

__all__ = ["ApiKey", "KeyStore", "TokenBucket", "ReplayCache", "AuthError", "sign",
           "signed_headers", "demo_keys", "shorten"]

HEADER_KEY = "RM-ACCESS-KEY"
HEADER_SIGN = "RM-ACCESS-SIGN"
HEADER_TIMESTAMP = "RM-ACCESS-TIMESTAMP"
MAX_KEY_CHARS = 128
MAX_SIGNATURE_CHARS = 128
#: unix seconds, ASCII digits, optional fraction (rule 7)
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?\Z")


def shorten(value, limit=40):
    """``repr`` of ``value`` cut to about ``limit`` characters (rule 7: never echo unbounded input).

    >>> shorten("x" * 100, 10)
    "'xxxxxxxxx...(100 chars)"
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    return "%s...(%d chars)" % (repr(text[:limit - 1])[:-1], len(text))


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
    if isinstance(path, str):
        path = path.encode()
    message = str(timestamp).encode() + method.upper().encode() + path + (body or b"")
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signed_headers(key, secret, method, path, body=b"", timestamp=None):
    """The three auth headers for one request (a client helper)."""
    ts = "%.6f" % (time.time() if timestamp is None else timestamp)   # rule 6: unique
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


class ReplayCache(object):
    """Signatures accepted within the window (rule 6).

    ``check_and_add`` is O(log n); entries leave when their timestamp has left
    the window, so memory is bounded by the signed requests accepted in two windows.

    >>> cache = ReplayCache()
    >>> cache.check_and_add("k:sig", 100.0, 99.0), cache.check_and_add("k:sig", 100.0, 99.5)
    (False, True)
    >>> cache.check_and_add("k:sig", 100.0, 101.0)
    False
    """

    def __init__(self):
        self.expires = {}               # token -> wall-clock second it may be forgotten
        self.heap = []                  # (expires, token)

    def __len__(self):
        return len(self.expires)

    def prune(self, now):
        heap, expires = self.heap, self.expires
        while heap and heap[0][0] < now:
            at, token = heapq.heappop(heap)
            if expires.get(token) == at:
                del expires[token]

    def check_and_add(self, token, expires_at, now):
        """True if ``token`` was seen and has not expired; else remember it until ``expires_at``."""
        self.prune(now)
        if token in self.expires:
            return True
        self.expires[token] = expires_at
        heapq.heappush(self.heap, (expires_at, token))
        return False


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
        self.replays = ReplayCache()                                   # rule 6
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

    def check_headers(self, key, timestamp, signature):
        """Rule 7, before the body is read: return (ApiKey, timestamp seconds); raise AuthError."""
        if not key or not timestamp or not signature:
            raise AuthError(401, "missing authentication headers (%s, %s, %s)"
                            % (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGN))
        if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
            raise AuthError(401, "invalid API key")
        api_key = self.keys.get(key)
        if api_key is None:
            raise AuthError(401, "invalid API key")
        if not isinstance(timestamp, str) or not _TIMESTAMP_RE.match(timestamp):
            raise AuthError(401, "invalid timestamp %s (unix seconds, ASCII digits)"
                            % shorten(timestamp))
        ts = float(timestamp)
        if abs(self.clock() - ts) > self.window_s:                     # rule 2
            raise AuthError(401, "request timestamp outside the %g s window" % self.window_s)
        if not isinstance(signature, str) or len(signature) > MAX_SIGNATURE_CHARS:
            raise AuthError(401, "invalid signature")
        return api_key, ts

    def verify_signed(self, api_key, ts, timestamp, signature, method, path, body):
        """Rules 1, 6, 4 after ``check_headers``: HMAC, replay, rate limit; return the ApiKey."""
        expected = sign(api_key.secret, timestamp, method, path, body)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise AuthError(401, "invalid signature")
        token = api_key.key + ":" + expected
        # never later than the end of this request's window: check_headers accepted it at
        # a time <= ts + window, so a remembered twin is still in the cache here
        now = min(self.clock(), ts + self.window_s)
        if token in self.replays.expires and self.replays.expires[token] >= now:   # rule 6
            raise AuthError(401, "replayed request: this signature was already used "
                                 "(sign every request with a new timestamp)")
        wait = api_key.bucket.take(self.monotonic())                   # rule 4
        if wait:
            raise AuthError(429, "rate limit exceeded for key %s" % shorten(api_key.key),
                            retry_after=wait)
        self.replays.check_and_add(token, ts + self.window_s, now)
        return api_key

    def verify(self, key, timestamp, signature, method, path, body):
        """Return the ApiKey of a correctly signed, timely, new request; raise AuthError."""
        api_key, ts = self.check_headers(key, timestamp, signature)
        return self.verify_signed(api_key, ts, timestamp, signature, method, path, body)
