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
   are used (loopback demo only; documented in docs/publisher.md), until the
   key file of rule 10 holds a key (or cannot be read; from then on, for the
   process's life, even if the file goes away): an operator who manages
   keys with ``ringmatch keys`` must not keep ten trade keys whose secrets are
   in the documentation.
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
8. Coinbase Exchange scheme (``CB-ACCESS-KEY``, ``CB-ACCESS-SIGN``,
   ``CB-ACCESS-TIMESTAMP``, ``CB-ACCESS-PASSPHRASE``): the same message
   (timestamp + METHOD + requestPath with query + body) signed with the
   base64-DECODED secret, as Coinbase documents it, so Coinbase clients work
   unchanged.  It needs a key with a base64 secret and a passphrase (what
   ``ringmatch keys create`` makes; a configured key may give ``passphrase``);
   the passphrase is checked with the headers, before the body is read.
   Rules 2, 6, 7 and 4 are the same for both schemes.  A request with
   ``CB-ACCESS-KEY`` is judged by this scheme only.
9. Scopes: a key is ``view`` (read its orders, fills, accounts) or ``trade``
   (also place, amend, cancel, deposit, withdraw); a key without a scope is
   ``trade``.  A view key asking for a trade action is a 403 naming both
   (``require_scope``), after the signature was verified.
10. Keys from the key file (``publisher/key_file.py``, ``ringmatch keys``)
   are added to the configured ones.  The file is checked at most once per
   ``reload_s`` (1 s) when a request arrives: when its (inode, mtime, size)
   changed it is read again, so a revoked key stops working within about
   ``reload_s``.  An unreadable or invalid file disables every key from it
   (fail closed: a revocation must never be missed) until it is valid again;
   the configured keys go on working.
"""
import base64
import hashlib
import heapq
import hmac
import os
import re
import time

from publisher import key_file as key_file_mod

__all__ = ["ApiKey", "KeyStore", "TokenBucket", "ReplayCache", "AuthError", "Credentials",
           "sign", "sign_coinbase", "signed_headers", "coinbase_headers", "demo_keys", "shorten",
           "SCHEME_RM", "SCHEME_COINBASE", "SCOPE_VIEW", "SCOPE_TRADE", "require_scope"]

HEADER_KEY = "RM-ACCESS-KEY"
HEADER_SIGN = "RM-ACCESS-SIGN"
HEADER_TIMESTAMP = "RM-ACCESS-TIMESTAMP"
CB_HEADER_KEY = "CB-ACCESS-KEY"
CB_HEADER_SIGN = "CB-ACCESS-SIGN"
CB_HEADER_TIMESTAMP = "CB-ACCESS-TIMESTAMP"
CB_HEADER_PASSPHRASE = "CB-ACCESS-PASSPHRASE"
SCHEME_RM = "rm"
SCHEME_COINBASE = "coinbase"
SCOPE_VIEW = "view"
SCOPE_TRADE = "trade"
MAX_PASSPHRASE_CHARS = 128
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
    digest = hmac.new(secret.encode(), _message(timestamp, method, path, body),
                      hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signed_headers(key, secret, method, path, body=b"", timestamp=None):
    """The three auth headers for one request (a client helper)."""
    ts = "%.6f" % (time.time() if timestamp is None else timestamp)   # rule 6: unique
    return {HEADER_KEY: key, HEADER_TIMESTAMP: ts,
            HEADER_SIGN: sign(secret, ts, method, path, body)}


def _message(timestamp, method, path, body):
    if isinstance(body, str):
        body = body.encode()
    if isinstance(path, str):
        path = path.encode()
    return str(timestamp).encode() + method.upper().encode() + path + (body or b"")


def sign_coinbase(secret_b64, timestamp, method, path, body=b""):
    """The Coinbase Exchange signature (rule 8): base64 HMAC-SHA256 keyed with the
    base64-decoded secret over timestamp + METHOD + requestPath + body.

    >>> sign_coinbase("c2VjcmV0", "1700000000", "GET", "/accounts")   # base64("secret")
    'p4Xa5K4NJ1AtiEBmUbme6DmXWbRF8pYDmPmpNMdWvvc='
    """
    key = secret_b64 if isinstance(secret_b64, bytes) else base64.b64decode(secret_b64)
    digest = hmac.new(key, _message(timestamp, method, path, body), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def coinbase_headers(key, secret_b64, passphrase, method, path, body=b"", timestamp=None):
    """The four CB-ACCESS-* headers of one request (a client helper, rule 8)."""
    ts = "%.6f" % (time.time() if timestamp is None else timestamp)   # rule 6: unique
    return {CB_HEADER_KEY: key, CB_HEADER_TIMESTAMP: ts, CB_HEADER_PASSPHRASE: passphrase,
            CB_HEADER_SIGN: sign_coinbase(secret_b64, ts, method, path, body)}


class Credentials(object):
    """What the headers of one request claim, checked except for the signature (rule 7)."""
    __slots__ = ("api_key", "ts", "timestamp", "signature", "scheme")

    def __init__(self, api_key, ts, timestamp, signature, scheme):
        self.api_key = api_key
        self.ts = ts
        self.timestamp = timestamp
        self.signature = signature
        self.scheme = scheme


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
    """One key: its account, scope (rule 9), bucket (rule 4) and scheme material (rules 1, 8)."""
    __slots__ = ("key", "secret", "account_id", "bucket", "scope", "passphrase_hash",
                 "coinbase_key", "source")

    def __init__(self, key, secret, account_id, bucket, scope=SCOPE_TRADE, passphrase_hash=None,
                 source="config"):
        self.key = key
        self.secret = secret
        self.account_id = int(account_id)
        self.bucket = bucket
        if scope not in (SCOPE_VIEW, SCOPE_TRADE):
            raise ValueError("API key %s: scope must be view or trade, not %s"
                             % (shorten(key), shorten(scope)))
        self.scope = scope
        self.passphrase_hash = passphrase_hash
        self.source = source
        try:                                                           # rule 8
            self.coinbase_key = base64.b64decode(secret, validate=True) if secret else None
        except (ValueError, TypeError):
            self.coinbase_key = None

    def allows(self, scope):
        """Rule 9: a trade key may do everything, a view key only view."""
        return self.scope == SCOPE_TRADE or scope == SCOPE_VIEW


def demo_keys(accounts):
    """The local demo keys for accounts 1..accounts (rule 5)."""
    return [{"key": "demo-%d" % n, "secret": "demo-secret-%d" % n, "account_id": n}
            for n in range(1, accounts + 1)]


def _passphrase_hash(spec):
    if spec.get("passphrase_hash"):
        return spec["passphrase_hash"]
    if spec.get("passphrase") is not None:
        return key_file_mod.hash_passphrase(str(spec["passphrase"]))
    return None


class KeyStore(object):
    """Look up and verify keys (rules 1-4, 8-10).

    ``key_file``: the key store of ``ringmatch keys`` (rule 10); None: configured keys only.
    """

    def __init__(self, keys, per_second=50.0, burst=100.0, window_s=30.0, clock=time.time,
                 monotonic=time.monotonic, key_file=None, reload_s=1.0, demo=False):
        self.window_s = float(window_s)
        self.clock = clock
        self.monotonic = monotonic
        self.per_second = per_second
        self.burst = burst
        self.replays = ReplayCache()                                   # rule 6
        self.config_keys = {}
        for k in keys:
            self.config_keys[k["key"]] = self._api_key(k, "config")
        self.keys = dict(self.config_keys)
        self.demo = bool(demo)              # rule 5: config_keys are the demo keys
        self.demo_off = False
        self.revoked = set()
        self.key_file = key_file
        self.reload_s = float(reload_s)
        self.file_identity = None
        self.file_error = None
        self.file_checked = None
        self.reloads = 0
        if key_file is not None:
            self.refresh(force=True)

    def _api_key(self, spec, source, old=None):
        rate = spec.get("per_second", self.per_second)
        b = spec.get("burst", self.burst)
        bucket = old.bucket if old is not None else TokenBucket(rate, b, self.monotonic)
        return ApiKey(spec["key"], spec["secret"], spec["account_id"], bucket,
                      scope=spec.get("scope") or SCOPE_TRADE,
                      passphrase_hash=_passphrase_hash(spec), source=source)

    @classmethod
    def from_config(cls, publisher_cfg, key_file=None):
        cfg = publisher_cfg or {}
        keys = cfg.get("api_keys")
        demo = not keys
        if demo:
            keys = demo_keys(int(cfg.get("demo_accounts", 10)))
        limit = cfg.get("rate_limit") or {}
        return cls(keys, per_second=limit.get("per_second", 50.0),
                   burst=limit.get("burst", 100.0), window_s=cfg.get("auth_window_s", 30.0),
                   key_file=key_file, demo=demo)

    # ------------------------------------------------------------ rule 10
    def attach_key_file(self, path):
        """Add the keys of ``path`` (rule 10) to a store built without one."""
        self.key_file = path
        self.refresh(force=True)

    def refresh(self, force=False):
        """Rule 10: re-read the key file if it changed (checked at most every ``reload_s``)."""
        if self.key_file is None:
            return
        now = self.monotonic()
        if not force and self.file_checked is not None and now - self.file_checked < self.reload_s:
            return
        self.file_checked = now
        try:
            st = os.stat(self.key_file)
            identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            identity = None
        except OSError as exc:
            identity = ("error", str(exc))
        if identity == self.file_identity and not force:
            return
        self.file_identity = identity
        self.reloads += 1
        file_keys, revoked, error, records = {}, set(), None, 0
        if identity is not None:
            try:
                data = key_file_mod.load(self.key_file)
                records = len(data["keys"])
                for rec in data["keys"]:
                    if rec["key"] in self.config_keys:
                        continue                  # the configuration's key wins
                    if rec.get("revoked_ns") is not None:
                        revoked.add(rec["key"])
                        continue
                    file_keys[rec["key"]] = self._api_key(rec, "file", self.keys.get(rec["key"]))
            except (key_file_mod.KeyFileError, KeyError, TypeError, ValueError) as exc:
                file_keys, revoked, error = {}, set(), str(exc)[:200]     # fail closed
        # rule 5; for the rest of the process: a store deleted later does not bring them back
        self.demo_off = self.demo_off or (self.demo and (records > 0 or error is not None))
        merged = {} if self.demo_off else dict(self.config_keys)
        merged.update(file_keys)
        self.keys = merged
        self.revoked = revoked
        self.file_error = error

    # ------------------------------------------------------------ rule 7
    def check_headers(self, key, timestamp, signature, passphrase=None, scheme=SCHEME_RM):
        """Rule 7, before the body is read: return (ApiKey, timestamp seconds); raise AuthError."""
        self.refresh()                                                 # rule 10
        if scheme == SCHEME_COINBASE:
            names = (CB_HEADER_KEY, CB_HEADER_TIMESTAMP, CB_HEADER_SIGN, CB_HEADER_PASSPHRASE)
            given = (key, timestamp, signature, passphrase)
        else:
            names = (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGN)
            given = (key, timestamp, signature)
        if not all(given):
            missing = [n for n, v in zip(names, given) if not v]
            raise AuthError(401, "missing authentication headers: %s (sign with %s)"
                            % (", ".join(missing), ", ".join(names)))
        if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
            raise AuthError(401, "invalid API key")
        api_key = self.keys.get(key)
        if api_key is None:
            if key in self.revoked:
                raise AuthError(401, "API key %s has been revoked" % shorten(key))
            if self.demo_off and key in self.config_keys:                # rule 5
                raise AuthError(401, "API key %s: the demo keys are off once the key store "
                                     "has keys (ringmatch keys)" % shorten(key))
            raise AuthError(401, "invalid API key")
        if not isinstance(timestamp, str) or not _TIMESTAMP_RE.match(timestamp):
            raise AuthError(401, "invalid timestamp %s (unix seconds, ASCII digits)"
                            % shorten(timestamp))
        ts = float(timestamp)
        skew = ts - self.clock()
        if abs(skew) > self.window_s:                                  # rule 2
            raise AuthError(401, "request timestamp outside the %g s window: it is %.0f s %s "
                                 "the server clock (sign with the current time; check the "
                                 "client's clock)" % (self.window_s, abs(skew),
                                                      "ahead of" if skew > 0 else "behind"))
        if not isinstance(signature, str) or len(signature) > MAX_SIGNATURE_CHARS:
            raise AuthError(401, "invalid signature")
        if scheme == SCHEME_COINBASE:                                  # rule 8
            if api_key.coinbase_key is None or api_key.passphrase_hash is None:
                raise AuthError(401, "API key %s cannot sign with CB-ACCESS-* (it needs a base64 "
                                     "secret and a passphrase: ringmatch keys create); use "
                                     "RM-ACCESS-* headers" % shorten(key))
            if not isinstance(passphrase, str) or len(passphrase) > MAX_PASSPHRASE_CHARS or \
                    not key_file_mod.passphrase_matches(api_key.passphrase_hash, passphrase):
                raise AuthError(401, "invalid passphrase")
        return api_key, ts

    def check_request(self, headers):
        """Rule 7 for either scheme from a request's headers (case-insensitive mapping):
        return Credentials; raise AuthError.  ``CB-ACCESS-KEY`` selects rule 8."""
        get = headers.get
        if get(CB_HEADER_KEY) is not None:
            timestamp, signature = get(CB_HEADER_TIMESTAMP), get(CB_HEADER_SIGN)
            api_key, ts = self.check_headers(get(CB_HEADER_KEY), timestamp, signature,
                                             passphrase=get(CB_HEADER_PASSPHRASE),
                                             scheme=SCHEME_COINBASE)
            return Credentials(api_key, ts, timestamp, signature, SCHEME_COINBASE)
        if get(HEADER_KEY) is None and get(HEADER_SIGN) is None and get(HEADER_TIMESTAMP) is None:
            raise AuthError(401, "missing authentication headers: sign with %s, %s, %s, %s "
                                 "(Coinbase Exchange) or %s, %s, %s"
                            % (CB_HEADER_KEY, CB_HEADER_SIGN, CB_HEADER_TIMESTAMP,
                               CB_HEADER_PASSPHRASE, HEADER_KEY, HEADER_SIGN, HEADER_TIMESTAMP))
        timestamp, signature = get(HEADER_TIMESTAMP), get(HEADER_SIGN)
        api_key, ts = self.check_headers(get(HEADER_KEY), timestamp, signature)
        return Credentials(api_key, ts, timestamp, signature, SCHEME_RM)

    def verify_signed(self, api_key, ts, timestamp, signature, method, path, body,
                      scheme=SCHEME_RM):
        """Rules 1/8, 6, 4 after ``check_headers``: HMAC, replay, rate limit; return the ApiKey."""
        if scheme == SCHEME_COINBASE:
            expected = sign_coinbase(api_key.coinbase_key, timestamp, method, path, body)
        else:
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

    def verify_credentials(self, cred, method, path, body):
        """``verify_signed`` of what ``check_request`` returned."""
        return self.verify_signed(cred.api_key, cred.ts, cred.timestamp, cred.signature, method,
                                  path, body, scheme=cred.scheme)

    def verify(self, key, timestamp, signature, method, path, body, passphrase=None,
               scheme=SCHEME_RM):
        """Return the ApiKey of a correctly signed, timely, new request; raise AuthError."""
        api_key, ts = self.check_headers(key, timestamp, signature, passphrase=passphrase,
                                         scheme=scheme)
        return self.verify_signed(api_key, ts, timestamp, signature, method, path, body,
                                  scheme=scheme)


def require_scope(api_key, scope, action):
    """Rule 9: raise AuthError 403 unless ``api_key`` may do ``action`` (needs ``scope``)."""
    if not api_key.allows(scope):
        raise AuthError(403, "API key %s has the %s scope: %s needs a key with the %s scope "
                             "(ringmatch keys create --scope %s)"
                        % (shorten(api_key.key), api_key.scope, action, scope, scope))
