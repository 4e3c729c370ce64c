"""The exchange API: REST (FastAPI) over the read model and the input ring, plus /ws and the page.

Theory of operation (numbered rules; the code refers to them):

1. Decimal strings on the wire; ints (ticks, lots, minor units) inside.  A
   value the integer form cannot hold exactly is a 400 naming the field.
2. Writes (POST/DELETE/PATCH /orders) become one input command each and
   answer when that command's LAST event has been applied to the read model
   (service rule 3): the answer carries the outcome (accepted with the order id
   and its immediate fills, or rejected with the reason name) and ``seq``.
3. Reads answer from the read model and say which input sequence they reflect
   (``RM-Seq`` header and ``input_seq``/``seq`` fields).  A read may ask for
   ``min_seq``: it waits (up to 2 s) until the model reflects it, else 503.
4. Errors are ``{"message": ...}`` with a 4xx status; a bad request never
   becomes a 500.  Rejections add ``reason`` (the ``Reason`` enum name).
   A message quotes at most a few dozen characters of the input (auth.shorten).
5. Private endpoints need a signed request (publisher/auth.py) and act on
   the key's account only; another account's order is "not found" (404),
   also when the matcher says so with UNKNOWN_ACCOUNT (an account without
   state has no orders).
6. Order of checks of a private request: auth headers (auth rule 7), then
   the body size (``Content-Length`` over ``max_body_bytes`` is a 413 before
   anything is read; a body that grows past it while streaming too), then the
   signature over the raw body, then the JSON.  The signed path is the path
   exactly as sent in the request line (percent-encoding untouched) plus
   ``?`` and the query string as sent, never the decoded form.
7. Strict parsing: the body is one JSON object without duplicate keys, NaN or
   Infinity; fields are checked by the request models (strict types, bounded
   lengths); numbers are ASCII decimal strings (products.py); integers in
   paths and queries are ASCII digits only.  What the matcher would reject
   for the request alone (missing, zero or negative price/size/funds/stop
   price, an expiry outside int64 ns) is a 400 here and uses no sequence.
8. Idempotency: an order with a ``client_oid`` that names an order of the
   same account that is open, or done less than ``client_oid_window_s`` ago
   (default 24 h, publisher clock; as long as the read model remembers it),
   is not placed again: the answer is that order (200, ``"existing": true``).
   Requests with the same (account, client_oid) are serialized by a lock, so
   two concurrent retries place one order.  A rejected order binds nothing.
9. Keys and scopes (auth rules 8-10): a private request is signed with the
   Coinbase ``CB-ACCESS-*`` headers or the ``RM-ACCESS-*`` ones; reads need a
   ``view`` or ``trade`` key, writes (place, amend, cancel, deposit,
   withdraw) a ``trade`` key, else 403.  The key file
   ``<data_dir>/api_keys.json`` is found beside the health file.  OpenAPI
   declares both schemes; ``/docs`` signs the requests it sends.
10. ``client_oid`` is a UUID or an integer (publisher/client_oids.py); answers
   show it as the client sent it.
11. Operations: ``/health`` (readiness, ``EngineProbe``), ``/health/live``,
   ``/metrics`` (publisher/metrics.py) and one access-log line per request
   (publisher/access_log.py), never with a credential.
12. ``/docs`` (where a user types a secret) loads nothing from another host:
   Swagger UI's script and stylesheet are the installed ``swagger-ui-bundle-v2``
   package's files, served under ``/docs/assets/`` with SRI ``integrity``
   hashes, and a Content-Security-Policy limits the page to this origin.
   Without the package the page says so (and still signs, rule 9).  OpenAPI's
   timestamp descriptions show the configured window (``auth_window_s``).
"""
import asyncio
import contextlib
import datetime
import json
import os
import re
import time
from typing import Literal, Optional

from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from typing_extensions import Annotated

from ringbuf.records import CommandKind, EventKind, OrderFlags, OrderType, Reason, Side, StpMode, \
    TimeInForce

from publisher import auth as auth_mod
from publisher.access_log import AccessLog
from publisher.auth import SCOPE_TRADE, SCOPE_VIEW, require_scope, shorten
from publisher.client_oids import ClientOidCollision, ClientOids
from publisher.products import ConversionError
from publisher.read_model import reason_name
from publisher.history import GRANULARITIES, page
from publisher.service import OutcomeTimeout, RingFull
from publisher.views import (book_json, candle_json, fill_json, history_fill_json, level3_json,
                             order_json, ticker_json, trade_json)
from publisher.ws import websocket_endpoint

__all__ = ["create_app", "ApiError", "OrderRequest", "AmendRequest", "DepositRequest",
           "parse_json_object", "MAX_BODY_BYTES"]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_MAX_U64 = (1 << 64) - 1
_MAX_I64 = (1 << 63) - 1
MAX_BODY_BYTES = 16 * 1024                    # rule 6 (publisher.max_body_bytes)
HEALTH_FRESH_NS = 5 * 10 ** 9                 # /health: the supervisor writes every second
_DIGITS_RE = re.compile(r"[0-9]{1,20}\Z")
_UNIX_SECONDS_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?\Z")
_RFC3339_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}"
                         r"(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})?\Z")

_SIDES = {"buy": Side.BUY, "sell": Side.SELL}
_TYPES = {"limit": OrderType.LIMIT, "market": OrderType.MARKET,
          "stop_loss": OrderType.STOP_LOSS, "stop_limit": OrderType.STOP_LIMIT,
          "take_profit": OrderType.TAKE_PROFIT, "take_profit_limit": OrderType.TAKE_PROFIT_LIMIT}
_LIMIT_PRICED = frozenset({"limit", "stop_limit", "take_profit_limit"})
_TRIGGERED = frozenset({"stop_loss", "stop_limit", "take_profit", "take_profit_limit"})
_TIFS = {"GTC": TimeInForce.GTC, "GTT": TimeInForce.GTT, "IOC": TimeInForce.IOC,
         "FOK": TimeInForce.FOK}
_STPS = {"dc": StpMode.DECREMENT_AND_CANCEL, "co": StpMode.CANCEL_OLDEST,
         "cn": StpMode.CANCEL_NEWEST, "cb": StpMode.CANCEL_BOTH}
_NOT_FOUND = {int(Reason.ORDER_NOT_FOUND), int(Reason.NOT_ORDER_OWNER),
              int(Reason.UNKNOWN_ACCOUNT)}          # rule 5
_DUPLICATE_COID = int(Reason.DUPLICATE_CLIENT_ORDER_ID)


class ApiError(Exception):
    """An error answer (rule 4)."""

    def __init__(self, http_status, message, **extra):
        Exception.__init__(self, message)
        self.status = http_status
        self.message = message
        self.extra = extra


def _ascii_int(value):
    """Query/path integers: ASCII digits with an optional minus, at most 20 digits (rule 7)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value if isinstance(value, str) else ""
    if not re.match(r"-?[0-9]{1,20}\Z", text):
        raise ValueError("must be an integer in ASCII digits")
    return int(text)


#: a query integer parsed by rule 7 (pydantic's own int accepts "1_0", " 1", "1.0")
AsciiInt = Annotated[int, BeforeValidator(_ascii_int)]


# ---------------------------------------------------------------- request models
_STRICT = ConfigDict(extra="forbid", strict=True)
_Decimal = Field(None, max_length=64)


class OrderRequest(BaseModel):
    """POST /orders.  Sizes and prices are decimal strings."""
    model_config = _STRICT
    product_id: str = Field(description="symbol, e.g. BTC-USD", max_length=32)
    side: Literal["buy", "sell"]
    type: Literal["limit", "market", "stop_loss", "stop_limit", "take_profit",
                  "take_profit_limit"] = "limit"
    price: Optional[str] = Field(None, max_length=64, description="limit price (quote per base)")
    size: Optional[str] = Field(None, max_length=64, description="quantity in base units")
    funds: Optional[str] = Field(None, max_length=64,
                                 description="market buy: quote amount to spend")
    stop_price: Optional[str] = Field(None, max_length=64,
                                      description="trigger price of stop/take-profit orders")
    time_in_force: Literal["GTC", "GTT", "IOC", "FOK"] = "GTC"
    expire_time: Optional[str] = Field(
        None, max_length=40, description="GTT: expiry as unix seconds or RFC 3339 (stream time)")
    post_only: bool = False
    post_only_reprice: bool = Field(False, description="with post_only: re-price instead of reject")
    stp: Literal["dc", "co", "cn", "cb"] = Field("dc", description="self-trade prevention")
    client_oid: Optional[str] = Field(None, max_length=36,
                                      description="client order id: a UUID (as Coinbase) or "
                                                  "an integer 1..2^64-1")


class AmendRequest(BaseModel):
    """PATCH /orders/{id}: new price and/or new total size (omitted = keep)."""
    model_config = _STRICT
    price: Optional[str] = Field(None, max_length=64)
    size: Optional[str] = Field(None, max_length=64)


class DepositRequest(BaseModel):
    """POST /accounts/deposit and /accounts/withdraw (local demo faucet)."""
    model_config = _STRICT
    currency: str = Field(max_length=16)
    amount: str = Field(max_length=64)


def _body_doc(model):
    """OpenAPI request body of a handler that parses its body itself (rule 6)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ApiError(400, "duplicate key %s in the JSON body" % shorten(k))
        seen[k] = v
    return seen


def _no_constant(name):
    raise ApiError(400, "%s is not a JSON number" % name)


def parse_json_object(body):
    """The request body as a dict (rule 7); raise ApiError 400.

    >>> parse_json_object(b'{"a": "1"}')
    {'a': '1'}
    >>> try:
    ...     parse_json_object(b'{"a": 1, "a": 2}')
    ... except ApiError as exc:
    ...     print(exc.status, exc.message)
    400 duplicate key 'a' in the JSON body
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except ValueError as exc:
        raise ApiError(400, "the body is not valid JSON: %s" % shorten(str(exc), 80))
    if not isinstance(obj, dict):
        raise ApiError(400, "the body must be a JSON object")
    return obj


def _validate(model, body):
    try:
        return model.model_validate(parse_json_object(body))
    except ValidationError as exc:
        raise ApiError(400, "invalid request: " + _errors_text(exc.errors()))


def _errors_text(errors):
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append("%s: %s" % (shorten(loc, 40).strip("'") or "request",
                                 shorten(str(err.get("msg")), 120).strip("'")))
    return "; ".join(parts)


def _client_oid(text):
    """A client_oid (UUID or integer, publisher/client_oids.py) -> the record's u64."""
    try:
        return ClientOids.parse(text)[0]
    except ValueError as exc:
        raise ApiError(400, "client_oid %s is %s" % (shorten(text), exc))


def _expire_ns(text):
    """GTT expiry: unix seconds or RFC 3339 -> ns in 1..2^63-1 (rule 7)."""
    text = text.strip()
    if _UNIX_SECONDS_RE.match(text):
        whole, _, frac = text.partition(".")
        ns = int(whole) * 10 ** 9 + int((frac + "000000000")[:9])
    elif _RFC3339_RE.match(text):
        try:
            dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, "expire_time %s is not a valid RFC 3339 time" % shorten(text))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=datetime.timezone.utc)
        ns = int(dt.timestamp()) * 10 ** 9 + dt.microsecond * 1000
    else:
        raise ApiError(400, "expire_time %s is neither unix seconds nor RFC 3339 (ASCII digits)"
                       % shorten(text))
    if not 0 < ns <= _MAX_I64:
        raise ApiError(400, "expire_time %s is out of range" % shorten(text))
    return ns


MAX_CANDLES = 300


def _time_s(text, what):
    """A candles ``start``/``end``: ISO 8601 (UTC when no offset) or unix seconds -> int s."""
    if text is None or text == "":
        return None
    if re.match(r"[0-9]{1,12}(\.[0-9]{1,9})?\Z", text):
        return int(text.split(".")[0])
    try:
        dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError):
        raise ApiError(400, "%s must be an ISO 8601 time or unix seconds, not %s"
                       % (what, shorten(text)))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp() // 1)


def _conv(fn, value, what, positive=False):
    try:
        n = fn(value, what)
    except ConversionError as exc:
        raise ApiError(400, str(exc))
    if positive and n <= 0:
        raise ApiError(400, "%s must be greater than zero" % what)
    return n


class KeyedLocks(object):
    """One asyncio.Lock per key, dropped when nobody holds or waits for it (rule 8).

    O(1) per ``hold``; memory: one entry per key in use.
    """

    def __init__(self):
        self.locks = {}

    def __len__(self):
        return len(self.locks)

    @contextlib.asynccontextmanager
    async def hold(self, key):
        entry = self.locks.get(key)
        if entry is None:
            entry = self.locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self.locks[key]


def create_app(service, keystore, allow_deposits=True, title="ringmatch exchange API",
               max_body_bytes=MAX_BODY_BYTES, client_oid_window_s=86400.0, health_path=None,
               clock_ns=time.time_ns, key_file=None, access_log=True, shard=None):
    """Build the FastAPI app over a PublisherService (injectable: tests pass their own).

    ``health_path``: the supervisor's ``<data_dir>/run/<shard>.health.json``
    (None: no supervisor, ``GET /health`` answers 503 "unknown").  It also
    locates the data dir and the shard when ``key_file`` / ``shard`` are not
    given: the key store ``<data_dir>/api_keys.json`` (auth rule 10) and the
    rings ``rm-<shard>-in|out`` (``/metrics``, ``/health``).
    ``access_log``: one line per request on ``service.log`` (publisher/access_log.py).
    """
    app = FastAPI(title=title, version="1", docs_url=None,
                  description="REST and WebSocket API of a ringmatch engine shard. Private "
                              "endpoints take Coinbase Exchange signatures (CB-ACCESS-KEY, "
                              "CB-ACCESS-SIGN, CB-ACCESS-TIMESTAMP, CB-ACCESS-PASSPHRASE) or "
                              "RM-ACCESS-* ones; this page signs for you once you give a key "
                              "under Sign requests. See docs/api.md.")
    catalog = service.catalog
    model = service.model
    started_at = time.monotonic()
    app.state.service = service
    app.state.keystore = keystore
    client_oid_locks = KeyedLocks()
    app.state.client_oid_locks = client_oid_locks
    window_ns = int(client_oid_window_s * 10 ** 9)
    data_dir = None
    if health_path is not None:
        data_dir = os.path.dirname(os.path.dirname(os.path.abspath(health_path)))
        base = os.path.basename(health_path)
        if shard is None and base.endswith(".health.json"):
            shard = base[:-len(".health.json")]
    if key_file is None and data_dir is not None:
        from publisher.key_file import key_file_path
        key_file = key_file_path(data_dir)
    if key_file is not None and getattr(keystore, "key_file", None) is None and \
            hasattr(keystore, "attach_key_file"):
        keystore.attach_key_file(key_file)                              # auth rule 10
    client_oids = ClientOids(path=os.path.join(data_dir, "run", "%s.client_oids" % shard)
                             if data_dir and shard else None)
    app.state.client_oids = client_oids
    service.client_oids = client_oids          # for other views of orders (the user channel)
    probe = EngineProbe(shard, health_path, data_dir)
    app.state.probe = probe
    from publisher import metrics as metrics_mod
    rejects = metrics_mod.RejectCounter(reason_name)
    previous_hook = getattr(service, "on_batch", None)

    def _count_batch(events, changes):
        rejects.add(events)
        if previous_hook is not None:
            previous_hook(events, changes)
    service.on_batch = _count_batch
    registry = metrics_mod.build_registry(metrics_mod.ShardCollector(
        service, shard=shard, health_path=health_path, rejects=rejects,
        replication_path=probe.replication_path))
    http_metrics = metrics_mod.HttpMetrics(registry)
    app.state.metrics_registry = registry
    app.add_middleware(AccessLog, log=getattr(service, "log", None) if access_log else None,
                       metrics=http_metrics, routes=lambda: app.router.routes)

    # ---------------------------------------------------------------- errors (rule 4)
    def _close_if_unread(request, headers):
        """Rule 6: an answer given before the body was read closes the connection (else the
        server would go on reading, and discarding, whatever the client still sends)."""
        if not request.scope.get("rm.body_read") and (
                request.headers.get("content-length", "0") != "0"
                or "transfer-encoding" in request.headers):
            headers["Connection"] = "close"
        return headers

    @app.exception_handler(ApiError)
    async def _api_error(request, exc):
        body = {"message": exc.message}
        body.update(exc.extra)
        return JSONResponse(body, status_code=exc.status,
                            headers=_close_if_unread(request, _seq_header()))

    @app.exception_handler(auth_mod.AuthError)
    async def _auth_error(request, exc):
        headers = _close_if_unread(request, _seq_header())
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        return JSONResponse({"message": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return JSONResponse({"message": "invalid request: " + _errors_text(exc.errors())},
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"message": shorten(str(exc.detail), 200).strip("'")},
                            status_code=exc.status_code)

    def _seq_header():
        return {"RM-Seq": str(model.applied_seq)}

    def _ok(body, status=200):
        return JSONResponse(body, status_code=status, headers=_seq_header())

    async def _read_body(request):
        """The raw body, at most ``max_body_bytes`` (rule 6); 413 beyond."""
        length = request.headers.get("content-length")
        if length is not None:
            if not re.match(r"[0-9]{1,19}\Z", length):
                raise ApiError(400, "invalid Content-Length")
            if int(length) > max_body_bytes:
                raise ApiError(413, "request body over %d bytes" % max_body_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise ApiError(413, "request body over %d bytes" % max_body_bytes)
            chunks.append(chunk)
        request.scope["rm.body_read"] = True
        return b"".join(chunks)

    def _signed_path(request):
        """Rule 6: the path as sent (percent-encoding untouched) + ``?query`` as sent."""
        scope = request.scope
        path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string") or b""
        return path + b"?" + query if query else path

    async def _auth(request, scope=SCOPE_VIEW, action=None):
        """Rule 6: (ApiKey, raw body) of a correctly signed request whose key may do
        ``action`` (auth rule 9: ``scope``); raise AuthError/ApiError."""
        cred = keystore.check_request(request.headers)
        body = await _read_body(request)
        key = keystore.verify_credentials(cred, request.method, _signed_path(request), body)
        request.scope["rm.key"] = key.key                # access log (never the credentials)
        request.scope["rm.auth"] = cred.scheme
        if action is not None:
            require_scope(key, scope, action)
        return key, body

    async def _min_seq(min_seq):
        if min_seq and not await service.wait_applied(min_seq):
            raise ApiError(503, "the read model has not reached seq %d yet (at %d)"
                           % (min_seq, model.applied_seq))

    def _product(name):
        try:
            return catalog.product(name)
        except (KeyError, TypeError):
            raise ApiError(404, "unknown product %s" % shorten(name))

    async def _submit(fields):
        try:
            return await service.submit(fields)
        except RingFull as exc:
            raise ApiError(503, str(exc))
        except OutcomeTimeout as exc:
            raise ApiError(504, str(exc))

    def _outcome(events, seq):
        for e in events:
            if e.seq == seq and e.kind in (int(EventKind.ACCEPTED), int(EventKind.REJECTED)):
                return e
        return None

    def _order_ref(order_id):
        """Parse ``123`` or ``client:456`` -> (order_id, client_oid) (rule 7)."""
        text = str(order_id)
        if text.startswith("client:"):
            return 0, _client_oid(text[7:])
        if not _DIGITS_RE.match(text):
            raise ApiError(400, "order id %s is not an integer (or client:<client_oid>)"
                           % shorten(text))
        value = int(text)
        if not 0 < value <= _MAX_I64:
            raise ApiError(404, "order %s not found" % shorten(text))
        return value, 0

    def _find_order(order_id, account_id):
        oid, coid = _order_ref(order_id)
        order = model.order(oid) if oid else model.order_by_client_id(account_id, coid)
        if order is None or order.account_id != account_id:
            raise ApiError(404, "order %s not found" % shorten(order_id))
        return order

    def _bound_order(account_id, coid):
        """Rule 8: the order ``coid`` names for this account, or None when it binds nothing."""
        order = model.order_by_client_id(account_id, coid)
        if order is None or order.account_id != account_id or order.status == "rejected":
            return None
        if not order.is_open and order.done_ns and clock_ns() - order.done_ns > window_ns:
            return None
        return order

    def _order_json(order, product):
        """views.order_json with the client_oid as the client sent it (client_oids rule 3)."""
        body = order_json(order, product)
        if order.client_order_id:
            body["client_oid"] = client_oids.text(order.account_id, order.client_order_id)
        return body

    def _existing_answer(order):
        product = catalog.by_id.get(order.symbol_id)
        body = _order_json(order, product)
        body["fills"] = []
        body["existing"] = True
        return _ok(body)

    # ---------------------------------------------------------------- orders
    def _order_fields(req, account_id):
        """Rule 7: the NEW_ORDER fields of a valid request; ApiError for what it lacks."""
        product = _product(req.product_id)
        flags = 0
        if req.post_only:
            flags |= int(OrderFlags.POST_ONLY)
            if req.post_only_reprice:
                flags |= int(OrderFlags.POST_ONLY_REPRICE)
        elif req.post_only_reprice:
            raise ApiError(400, "post_only_reprice needs post_only")
        fields = {"kind": int(CommandKind.NEW_ORDER), "side": int(_SIDES[req.side]),
                  "order_type": int(_TYPES[req.type]), "tif": int(_TIFS[req.time_in_force]),
                  "stp": int(_STPS[req.stp]), "symbol_id": product.symbol_id,
                  "account_id": account_id}
        if req.type in _LIMIT_PRICED:
            if req.price is None:
                raise ApiError(400, "price is required for %s orders" % req.type)
            fields["price"] = _conv(product.price_to_ticks, req.price, "price", positive=True)
        elif req.price is not None:
            raise ApiError(400, "price is not used by %s orders" % req.type)
        if req.type in _TRIGGERED:
            if req.stop_price is None:
                raise ApiError(400, "stop_price is required for %s orders" % req.type)
            fields["stop_price"] = _conv(product.price_to_ticks, req.stop_price, "stop_price",
                                         positive=True)
        elif req.stop_price is not None:
            raise ApiError(400, "stop_price is not used by %s orders" % req.type)
        if req.funds is not None:
            if req.size is not None:
                raise ApiError(400, "give size or funds, not both")
            flags |= int(OrderFlags.BY_FUNDS)
            fields["funds"] = _conv(product.quote.to_minor, req.funds, "funds", positive=True)
        elif req.size is None:
            raise ApiError(400, "size is required (or funds for a market buy)")
        else:
            fields["qty"] = _conv(product.qty_to_lots, req.size, "size", positive=True)
        if req.expire_time is not None:
            if req.time_in_force != "GTT":
                raise ApiError(400, "expire_time needs time_in_force GTT")
            fields["funds"] = _expire_ns(req.expire_time)
        elif req.time_in_force == "GTT":
            raise ApiError(400, "time_in_force GTT needs expire_time")
        if req.client_oid is not None:
            try:
                fields["client_order_id"] = client_oids.bind(account_id, req.client_oid)
            except ClientOidCollision as exc:
                raise ApiError(409, str(exc))
            except ValueError as exc:
                raise ApiError(400, "client_oid %s is %s" % (shorten(req.client_oid), exc))
        fields["flags"] = flags
        return product, fields

    async def _place(fields, product):
        seq, events = await _submit(fields)
        outcome = _outcome(events, seq)
        if outcome is None or outcome.kind == int(EventKind.REJECTED):
            reason = reason_name(outcome.reason) if outcome is not None else "NO_OUTCOME"
            coid = fields.get("client_order_id")
            if coid and outcome is not None and outcome.reason == _DUPLICATE_COID:
                existing = _bound_order(fields["account_id"], coid)     # rule 8: another
                if existing is not None:                                # producer's order
                    return _existing_answer(existing)
            raise ApiError(400, "order rejected: %s" % reason, reason=reason, id=str(seq),
                           status="rejected", seq=seq)
        order = model.order(seq)
        body = _order_json(order, product) if order is not None else {"id": str(seq)}
        body["fills"] = [fill_json(e, product) for e in events
                         if e.kind == int(EventKind.FILL) and e.order_id == seq]
        body["seq"] = seq
        return _ok(body)

    @app.post("/orders", tags=["orders"], summary="Place an order",
              openapi_extra=_body_doc(OrderRequest))
    async def place_order(request: Request):
        key, body = await _auth(request, SCOPE_TRADE, "placing an order")
        req = _validate(OrderRequest, body)
        product, fields = _order_fields(req, key.account_id)
        coid = fields.get("client_order_id")
        if not coid:
            return await _place(fields, product)
        async with client_oid_locks.hold((key.account_id, coid)):         # rule 8
            existing = _bound_order(key.account_id, coid)
            if existing is not None:
                return _existing_answer(existing)
            return await _place(fields, product)

    @app.delete("/orders/{order_id}", tags=["orders"],
                summary="Cancel an order (id or client:<client_oid>)")
    async def cancel_order(order_id: str, request: Request):
        key, _body = await _auth(request, SCOPE_TRADE, "cancelling an order")
        oid, coid = _order_ref(order_id)
        fields = {"kind": int(CommandKind.CANCEL), "account_id": key.account_id,
                  "order_id": oid}
        if coid:
            fields["flags"] = int(OrderFlags.BY_CLIENT_ID)
            fields["client_order_id"] = coid
        if oid:
            known = model.order(oid)
            if known is not None:
                if known.account_id != key.account_id:                 # rule 5
                    raise ApiError(404, "order %s not found" % shorten(order_id))
                fields["symbol_id"] = known.symbol_id
        fields["funds"] = oid     # the union slot: order_id
        seq, events = await _submit(fields)
        outcome = _outcome(events, seq)
        cancelled = [e for e in events if e.kind == int(EventKind.CANCELLED)]
        if outcome is not None and outcome.kind == int(EventKind.REJECTED):
            status = 404 if outcome.reason in _NOT_FOUND else 400
            reason = reason_name(outcome.reason)
            msg = ("order %s not found" % shorten(order_id)) if status == 404 else \
                "cancel rejected: %s" % reason
            raise ApiError(status, msg, reason=reason, seq=seq)
        target = cancelled[0].order_id if cancelled else oid
        return _ok({"id": str(target), "status": "canceled", "seq": seq})

    @app.delete("/orders", tags=["orders"], summary="Cancel all open orders (optionally one product)")
    async def cancel_all(request: Request, product_id: Optional[str] = Query(None, max_length=32)):
        key, _body = await _auth(request, SCOPE_TRADE, "cancelling orders")
        symbol_id = _product(product_id).symbol_id if product_id else 0
        seq, events = await _submit({"kind": int(CommandKind.MASS_CANCEL),
                                     "account_id": key.account_id, "symbol_id": symbol_id})
        outcome = _outcome(events, seq)
        if outcome is not None and outcome.kind == int(EventKind.REJECTED):
            if outcome.reason == int(Reason.UNKNOWN_ACCOUNT):          # rule 5: no orders
                return _ok({"canceled": [], "seq": seq})
            reason = reason_name(outcome.reason)
            raise ApiError(400, "mass cancel rejected: %s" % reason, reason=reason, seq=seq)
        return _ok({"canceled": [str(e.order_id) for e in events
                                 if e.kind == int(EventKind.CANCELLED)], "seq": seq})

    @app.patch("/orders/{order_id}", tags=["orders"], summary="Amend price and/or size",
               openapi_extra=_body_doc(AmendRequest))
    async def amend_order(order_id: str, request: Request):
        key, body = await _auth(request, SCOPE_TRADE, "amending an order")
        req = _validate(AmendRequest, body)
        order = _find_order(order_id, key.account_id)
        product = catalog.by_id.get(order.symbol_id)
        if product is None:
            raise ApiError(404, "order %s not found" % shorten(order_id))
        if req.price is None and req.size is None:
            raise ApiError(400, "give price and/or size")
        fields = {"kind": int(CommandKind.AMEND), "account_id": key.account_id,
                  "symbol_id": order.symbol_id, "funds": order.order_id}
        if req.price is not None:
            fields["price"] = _conv(product.price_to_ticks, req.price, "price", positive=True)
        if req.size is not None:
            fields["qty"] = _conv(product.qty_to_lots, req.size, "size", positive=True)
        seq, events = await _submit(fields)
        outcome = _outcome(events, seq)
        if outcome is not None and outcome.kind == int(EventKind.REJECTED):
            reason = reason_name(outcome.reason)
            status = 404 if outcome.reason in _NOT_FOUND else 400
            raise ApiError(status, "amend rejected: %s" % reason, reason=reason, seq=seq)
        body = _order_json(model.order(order.order_id) or order, product)
        body["seq"] = seq
        return _ok(body)

    @app.get("/orders/{order_id}", tags=["orders"], summary="One order's status")
    async def get_order(order_id: str, request: Request, min_seq: AsciiInt = 0):
        key, _body = await _auth(request)
        await _min_seq(min_seq)
        order = _find_order(order_id, key.account_id)
        product = catalog.by_id.get(order.symbol_id)
        if product is None:                       # not this shard's product (issue 12 item 4)
            raise ApiError(404, "order %s not found" % shorten(order_id))
        return _ok(_order_json(order, product))

    def _cursor_page(items, key, before, after, limit):
        """Coinbase cursor pagination (publisher/history.py ``page``): (page, headers)."""
        if before is not None and after is not None:
            raise ApiError(400, "give before or after, not both")
        sel, newest, oldest = page(items, key, before, after, limit)
        headers = _seq_header()
        if newest is not None:
            headers["CB-BEFORE"] = str(newest)
            headers["CB-AFTER"] = str(oldest)
        return sel, headers

    @app.get("/orders", tags=["orders"],
             summary="List orders (status open|done|all), newest first, cursor pagination")
    async def list_orders(request: Request, status: Literal["open", "done", "all"] = "open",
                          product_id: Optional[str] = Query(None, max_length=32),
                          min_seq: AsciiInt = 0,
                          before: Optional[AsciiInt] = None, after: Optional[AsciiInt] = None,
                          limit: Annotated[AsciiInt, Query(ge=1, le=100000)] = 100):
        key, _body = await _auth(request)
        await _min_seq(min_seq)
        symbol_id = _product(product_id).symbol_id if product_id else None
        if status == "open":
            orders = model.open_orders(key.account_id, symbol_id)
        else:
            orders = model.account_orders(key.account_id, symbol_id)
            if status == "done":
                orders = [o for o in orders if not o.is_open]
        by_id = catalog.by_id
        orders = [o for o in orders if o.symbol_id in by_id]
        sel, headers = _cursor_page(orders, lambda o: o.order_id, before, after, limit)
        return JSONResponse([_order_json(o, by_id[o.symbol_id]) for o in sel], headers=headers)

    @app.get("/fills", tags=["fills"],
             summary="Own fills of an order or a product, newest first, cursor pagination")
    async def list_fills(request: Request, order_id: Optional[str] = Query(None, max_length=64),
                         product_id: Optional[str] = Query(None, max_length=32),
                         min_seq: AsciiInt = 0,
                         before: Optional[AsciiInt] = None, after: Optional[AsciiInt] = None,
                         limit: Annotated[AsciiInt, Query(ge=1, le=1000)] = 100):
        key, _body = await _auth(request)
        if order_id is None and product_id is None:
            raise ApiError(400, "order_id or product_id is required")
        await _min_seq(min_seq)
        symbol_id = _product(product_id).symbol_id if product_id is not None else None
        oid = None
        if order_id is not None:
            if not re.match(r"[0-9]{1,19}\Z", order_id):
                raise ApiError(400, "order_id must be an order id (digits), not %s"
                               % shorten(order_id))
            oid = int(order_id)
        by_id = catalog.by_id
        fills = [f for f in model.history.account_fills(key.account_id, oid, symbol_id)
                 if f[2] in by_id]
        sel, headers = _cursor_page(fills, lambda f: f[0], before, after, limit)
        return JSONResponse([history_fill_json(f, by_id[f[2]]) for f in sel], headers=headers)

    # ---------------------------------------------------------------- accounts
    @app.get("/accounts", tags=["accounts"], summary="Own balances (available and held)")
    async def accounts(request: Request, min_seq: AsciiInt = 0):
        key, _body = await _auth(request)
        await _min_seq(min_seq)
        out = []
        balances = model.account_balances(key.account_id)
        for asset in catalog.assets:
            available, held = balances.get(asset.asset_id, (0, 0))
            out.append({"currency": asset.name, "balance": asset.fmt(available + held),
                        "available": asset.fmt(available), "hold": asset.fmt(held),
                        "account_id": key.account_id})
        return _ok(out)

    async def _transfer(kind, request):
        key, body = await _auth(request, SCOPE_TRADE, "a %s" % kind.name.lower())
        req = _validate(DepositRequest, body)
        if not allow_deposits:
            raise ApiError(403, "deposits and withdrawals are disabled (publisher.allow_deposits)")
        asset = catalog.asset_by_name.get(req.currency)
        if asset is None:
            raise ApiError(404, "unknown currency %s" % shorten(req.currency))
        amount = _conv(asset.to_minor, req.amount, "amount", positive=True)
        seq, events = await _submit({"kind": int(kind), "account_id": key.account_id,
                                     "symbol_id": asset.asset_id, "qty": amount})
        outcome = _outcome(events, seq)
        if outcome is not None and outcome.kind == int(EventKind.REJECTED):
            reason = reason_name(outcome.reason)
            raise ApiError(400, "%s rejected: %s" % (kind.name.lower(), reason), reason=reason,
                           seq=seq)
        available, held = model.account_balances(key.account_id).get(asset.asset_id, (0, 0))
        return _ok({"currency": asset.name, "available": asset.fmt(available),
                    "hold": asset.fmt(held), "seq": seq})

    @app.post("/accounts/deposit", tags=["accounts"],
              summary="Demo faucet: credit own account (publisher.allow_deposits)",
              openapi_extra=_body_doc(DepositRequest))
    async def deposit(request: Request):
        return await _transfer(CommandKind.DEPOSIT, request)

    @app.post("/accounts/withdraw", tags=["accounts"], summary="Debit own account",
              openapi_extra=_body_doc(DepositRequest))
    async def withdraw(request: Request):
        return await _transfer(CommandKind.WITHDRAW, request)

    # ---------------------------------------------------------------- market data
    def _product_json(p):
        body = p.to_json(halted=model.symbol(p.symbol_id).halted)
        return body

    @app.get("/products", tags=["market data"], summary="Tradable products")
    async def products():
        return _ok([_product_json(p) for p in catalog.products])

    @app.get("/products/{product_id}", tags=["market data"], summary="One product")
    async def product(product_id: str):
        return _ok(_product_json(_product(product_id)))

    @app.get("/products/{product_id}/book", tags=["market data"],
             summary="Order book: level 1 (best bid/ask), 2 (every price level) or 3 (every order)")
    async def book(product_id: str, level: AsciiInt = 1, min_seq: AsciiInt = 0):
        p = _product(product_id)
        if level not in (1, 2, 3):
            raise ApiError(400, "level must be 1, 2 or 3")
        await _min_seq(min_seq)
        if level == 3:
            bids, asks = model.level3(p.symbol_id)
            return _ok(level3_json(model.symbol(p.symbol_id), p, bids, asks, model.applied_seq))
        return _ok(book_json(model.symbol(p.symbol_id), p, level, model.applied_seq))

    @app.get("/products/{product_id}/ticker", tags=["market data"],
             summary="Best bid/ask, last trade, 24h stats")
    async def ticker(product_id: str, min_seq: AsciiInt = 0):
        p = _product(product_id)
        await _min_seq(min_seq)
        return _ok(ticker_json(model.symbol(p.symbol_id), p, model.applied_seq))

    @app.get("/products/{product_id}/trades", tags=["market data"], summary="Recent trades, newest first")
    async def trades(product_id: str, limit: Annotated[AsciiInt, Query(ge=1, le=1000)] = 100,
                     min_seq: AsciiInt = 0):
        p = _product(product_id)
        await _min_seq(min_seq)
        view = model.symbol(p.symbol_id)
        recent = list(view.trades)[-limit:]
        recent.reverse()
        return _ok([trade_json(t, p) for t in recent])

    @app.get("/products/{product_id}/stats", tags=["market data"], summary="24h statistics (stream time)")
    async def stats(product_id: str, min_seq: AsciiInt = 0):
        p = _product(product_id)
        await _min_seq(min_seq)
        view = model.symbol(p.symbol_id)
        s = view.stats()
        last = view.trades[-1].timestamp_ns // 10 ** 9 if view.trades else None
        vol30 = 0
        if last is not None:                      # whole minutes, 30 days to the newest trade
            minute = last - last % 60
            vol30 = model.history.volume_since(p.symbol_id, minute - 30 * 86400 + 60)
        return _ok({"open": p.fmt_price(s["open"]), "high": p.fmt_price(s["high"]),
                    "low": p.fmt_price(s["low"]), "last": p.fmt_price(s["last"]),
                    "volume": p.fmt_qty(s["volume"]), "volume_30day": p.fmt_qty(vol30),
                    "input_seq": model.applied_seq})

    @app.get("/products/{product_id}/candles", tags=["market data"],
             summary="OHLCV buckets [time, low, high, open, close, volume], newest first")
    async def candles(product_id: str, granularity: AsciiInt = 60,
                      start: Optional[str] = Query(None, max_length=40),
                      end: Optional[str] = Query(None, max_length=40), min_seq: AsciiInt = 0):
        p = _product(product_id)
        g = granularity
        if g not in GRANULARITIES:
            raise ApiError(400, "granularity must be one of %s (seconds), not %d"
                           % (", ".join(map(str, GRANULARITIES)), g))
        await _min_seq(min_seq)
        start_s = _time_s(start, "start")
        end_s = _time_s(end, "end")
        if end_s is None:
            if start_s is not None:
                end_s = start_s + (MAX_CANDLES - 1) * g
            else:
                now_ns = model.last_timestamp_ns or time.time_ns()
                end_s = now_ns // 10 ** 9
        if start_s is None:
            start_s = end_s - end_s % g - (MAX_CANDLES - 1) * g
        if start_s > end_s:
            raise ApiError(400, "start is after end")
        count = (end_s - end_s % g - (start_s - start_s % g)) // g + 1
        if count > MAX_CANDLES:
            raise ApiError(400, "start..end spans %d candles of %d s; at most %d per request"
                           % (count, g, MAX_CANDLES))
        rows = model.history.candle_rows(p.symbol_id, g, start_s, end_s)
        return _ok([candle_json(r, p) for r in rows])

    @app.get("/time", tags=["market data"], summary="Server time and the input seq reflected")
    async def server_time():
        now = time.time()
        return _ok({"epoch": now, "input_seq": model.applied_seq,
                    "events_applied": model.events_applied, "pid": os.getpid()})

    @app.get("/health", tags=["operations"],
             summary="Readiness: engine ready, matcher running, journal durable and advancing "
                     "or idle, standby (if configured) ready: 200, else 503 with a reason")
    async def health():
        status, body = health_report(health_path, service, clock_ns(), probe=probe)
        return JSONResponse(body, status_code=status, headers=_seq_header())

    @app.get("/health/ready", tags=["operations"], summary="Readiness (the same as /health)")
    async def health_ready():
        return await health()

    @app.get("/health/live", tags=["operations"],
             summary="Liveness: this publisher process answers (always 200 while it does)")
    async def health_live():
        return JSONResponse({"status": "alive", "pid": os.getpid(),
                             "uptime_s": round(time.monotonic() - started_at, 3),
                             "input_seq": model.applied_seq}, headers=_seq_header())

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text format)",
             response_class=Response)
    async def metrics():
        return Response(metrics_mod.render(registry), media_type=metrics_mod.CONTENT_TYPE)

    # ---------------------------------------------------------------- OpenAPI + /docs
    _declare_security(app, getattr(keystore, "window_s", 30.0))
    docs_assets = swagger_assets()

    @app.get("/docs", include_in_schema=False)
    async def docs_page():
        return HTMLResponse(_docs_html(app.title, docs_assets),
                            headers={"Cache-Control": "no-store"})

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        # rule 12: only the two files the page names, from the installed package
        if docs_assets is None or name not in _SWAGGER_FILES:
            return JSONResponse({"message": "not found"}, status_code=404)
        return FileResponse(os.path.join(docs_assets.directory, name),
                            media_type=_SWAGGER_FILES[name],
                            headers={"Cache-Control": "public, max-age=86400"})

    # ---------------------------------------------------------------- ws + page
    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket_endpoint(websocket, service.hub, keystore, client_oids=client_oids)

    if os.path.isdir(STATIC_DIR):
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def index():
            return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    return app


# ---------------------------------------------------------------- OpenAPI security, /docs
_PRIVATE_TAGS = frozenset({"orders", "accounts", "fills"})


def security_schemes(window_s=30.0):
    """OpenAPI's security schemes; the timestamps' window is the configured one
    (``publisher.auth_window_s``, auth rule 2)."""
    within = "unix seconds (a fraction allowed), within %g s of the server clock" % window_s
    out = {}
    for name, spec in SECURITY_SCHEMES.items():
        spec = dict(spec)
        if name.endswith("Timestamp"):
            spec["description"] = within
        out[name] = spec
    return out


SECURITY_SCHEMES = {
    "CbAccessKey": {"type": "apiKey", "in": "header", "name": auth_mod.CB_HEADER_KEY,
                    "description": "Coinbase Exchange scheme: the API key"},
    "CbAccessSign": {"type": "apiKey", "in": "header", "name": auth_mod.CB_HEADER_SIGN,
                     "description": "base64(HMAC-SHA256(base64decode(secret), timestamp + "
                                    "METHOD + requestPath + body))"},
    "CbAccessTimestamp": {"type": "apiKey", "in": "header", "name": auth_mod.CB_HEADER_TIMESTAMP,
                          "description": "unix seconds (a fraction allowed)"},
    "CbAccessPassphrase": {"type": "apiKey", "in": "header",
                           "name": auth_mod.CB_HEADER_PASSPHRASE,
                           "description": "the key's passphrase"},
    "RmAccessKey": {"type": "apiKey", "in": "header", "name": auth_mod.HEADER_KEY,
                    "description": "ringmatch scheme: the API key"},
    "RmAccessSign": {"type": "apiKey", "in": "header", "name": auth_mod.HEADER_SIGN,
                     "description": "base64(HMAC-SHA256(secret as UTF-8, timestamp + METHOD + "
                                    "path_with_query + body))"},
    "RmAccessTimestamp": {"type": "apiKey", "in": "header", "name": auth_mod.HEADER_TIMESTAMP,
                          "description": "unix seconds (a fraction allowed)"},
}
#: either the four Coinbase headers or the three RM ones
SECURITY = [{"CbAccessKey": [], "CbAccessSign": [], "CbAccessTimestamp": [],
             "CbAccessPassphrase": []},
            {"RmAccessKey": [], "RmAccessSign": [], "RmAccessTimestamp": []}]


def _declare_security(app, window_s=30.0):
    """OpenAPI: the security schemes (``security_schemes(window_s)``), and on each private
    operation its requirement and the scope it needs (``x-required-scope``, auth rule 9)."""
    schemes = security_schemes(window_s)
    from fastapi.openapi.utils import get_openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = schemes
        for ops in schema.get("paths", {}).values():
            for method, op in ops.items():
                if not isinstance(op, dict) or not set(op.get("tags", ())) & _PRIVATE_TAGS:
                    continue
                scope = SCOPE_VIEW if method == "get" else SCOPE_TRADE
                op["security"] = SECURITY
                op["x-required-scope"] = scope
                op["description"] = ((op.get("description") or "") +
                                     "\n\nSigned request; needs a key with the %s scope." % scope).strip()
                responses = op.setdefault("responses", {})
                responses.setdefault("401", {"description": "missing, stale or wrong signature"})
                if scope == SCOPE_TRADE:
                    responses.setdefault("403", {"description": "the key has the view scope"})
        app.openapi_schema = schema
        return schema
    app.openapi = openapi


_SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
                  "swagger-ui.css": "text/css; charset=utf-8"}


class SwaggerAssets(object):
    """Swagger UI's files from the installed ``swagger-ui-bundle-v2`` package (rule 12):
    their directory, version and SRI hashes (sha384 of the bytes served)."""
    __slots__ = ("directory", "version", "integrity")

    def __init__(self, directory):
        import base64
        import hashlib
        self.directory = str(directory)
        self.version = os.path.basename(self.directory).rpartition("-")[2]
        self.integrity = {}
        for name in _SWAGGER_FILES:
            with open(os.path.join(self.directory, name), "rb") as f:
                digest = hashlib.sha384(f.read()).digest()
            self.integrity[name] = "sha384-" + base64.b64encode(digest).decode()


def swagger_assets():
    """The installed Swagger UI assets, or None (the package is missing or incomplete:
    /docs then says so and loads nothing from elsewhere)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
        return SwaggerAssets(swagger_ui_path)
    except (ImportError, OSError, AttributeError):
        return None


_DOCS_MISSING = """<p id="rm-missing" style="font:14px sans-serif;padding:16px">Swagger UI is not
installed on this server (the Python package swagger-ui-bundle-v2); /openapi.json has the API
description, and the form above still signs requests made with rmSign().</p>"""
_DOCS_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>%(title)s - docs</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'">
%(css)s
<style>#rm-sign{font:13px sans-serif;padding:8px 16px;background:#f4f6f8;border-bottom:1px solid #ccd}
#rm-sign input{margin-right:10px}</style></head>
<body>
<form id="rm-sign" onsubmit="return false" autocomplete="off"><b>Sign requests</b> (kept in this
page only): key <input id="rm-key" size="20"> secret <input id="rm-secret" type="password" size="24">
passphrase <input id="rm-passphrase" type="password" size="14"> <span id="rm-scheme">(with a
passphrase: CB-ACCESS-*, the secret base64; without: RM-ACCESS-*)</span></form>
<div id="swagger-ui"></div>
<script>
async function rmHmac(keyBytes, message) {
  const key = await crypto.subtle.importKey("raw", keyBytes, {name: "HMAC", hash: "SHA-256"},
                                            false, ["sign"]);
  const sig = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(message)));
  let bin = ""; sig.forEach((b) => { bin += String.fromCharCode(b); });
  return btoa(bin);
}
async function rmSign(req) {
  const key = document.getElementById("rm-key").value;
  const secret = document.getElementById("rm-secret").value;
  const passphrase = document.getElementById("rm-passphrase").value;
  const url = new URL(req.url, location.href);
  if (!key || !secret || url.origin !== location.origin || url.pathname === "/openapi.json") return req;
  const body = req.body == null ? "" : (typeof req.body === "string" ? req.body : JSON.stringify(req.body));
  if (body) req.body = body;
  const ts = (Date.now() / 1000).toFixed(6);
  const message = ts + req.method.toUpperCase() + url.pathname + url.search + body;
  if (passphrase) {
    const raw = Uint8Array.from(atob(secret), (c) => c.charCodeAt(0));
    req.headers["CB-ACCESS-KEY"] = key; req.headers["CB-ACCESS-TIMESTAMP"] = ts;
    req.headers["CB-ACCESS-PASSPHRASE"] = passphrase;
    req.headers["CB-ACCESS-SIGN"] = await rmHmac(raw, message);
  } else {
    req.headers["RM-ACCESS-KEY"] = key; req.headers["RM-ACCESS-TIMESTAMP"] = ts;
    req.headers["RM-ACCESS-SIGN"] = await rmHmac(new TextEncoder().encode(secret), message);
  }
  return req;
}
</script>
%(ui)s</body></html>
"""
_DOCS_UI = """<script src="/docs/assets/swagger-ui-bundle.js" integrity="%(js_sri)s"></script>
<script>
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout", requestInterceptor: rmSign});
</script>
"""


def _docs_html(title, assets):
    """Rule 12: Swagger UI from this server only (the installed package's files, each with
    its SRI hash), never from a CDN: the page is where a user types a secret."""
    import html
    if assets is None:
        return _DOCS_HTML % {"title": html.escape(title), "css": "", "ui": _DOCS_MISSING}
    css = '<link rel="stylesheet" href="/docs/assets/swagger-ui.css" integrity="%s">' \
        % assets.integrity["swagger-ui.css"]
    return _DOCS_HTML % {"title": html.escape(title), "css": css,
                         "ui": _DOCS_UI % {"js_sri": assets.integrity["swagger-ui-bundle.js"]}}


_HEALTH_STATES = ("starting", "ready", "degraded", "stopping")
_CHILD_STATES = ("starting", "ready", "stalled", "restarting", "dead")
_HEALTH_MAX_BYTES = 1 << 20


def _int_or_none(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class EngineProbe(object):
    """What ``GET /health`` adds to the supervisor's file (O(consumers) per call).

    * the journal's progress: the journaler's sequence on the input ring (its
      durable end) against the ring's cursor: ``idle`` (caught up),
      ``advancing`` (moved within ``stuck_after_s``), ``stuck`` (behind and
      not moved for ``stuck_after_s``: not ready), ``none`` (no journaler on
      the ring, nor in the file: a bare publisher);
    * the standby, when one is configured (a ``replicator`` child): its
      state and ``run/<shard>.replication.json`` (acknowledged sequence).
    """

    def __init__(self, shard, health_path, data_dir, stuck_after_s=5.0, clock=time.monotonic):
        self.shard = shard
        self.health_path = health_path
        self.replication_path = (os.path.join(data_dir, "run", "%s.replication.json" % shard)
                                 if data_dir and shard else None)
        self.stuck_after_s = stuck_after_s
        self.clock = clock
        self.last_durable = None
        self.changed_at = None

    def journal(self, children, file_durable):
        from publisher.metrics import ring_view
        view = ring_view("rm-%s-in" % self.shard) if self.shard else None
        child = children.get("journaler")
        out = {"durable_seq": file_durable, "input_cursor": None, "lag": None,
               "journaler": child["state"] if child else None}
        durable = view["consumers"].get("journaler") if view else None
        if durable is None:
            if child is None:
                out.update(progress="none", ok=True)
            else:
                out.update(progress="unknown", ok=child["state"] == "ready")
            return out
        now = self.clock()
        if durable != self.last_durable:
            self.last_durable, self.changed_at = durable, now
        lag = view["cursor"] - durable
        out.update(durable_seq=durable, input_cursor=view["cursor"], lag=lag)
        if lag <= 0:
            out.update(progress="idle", ok=True)
        elif now - self.changed_at < self.stuck_after_s:
            out.update(progress="advancing", ok=True)
        else:
            out.update(progress="stuck", ok=False,
                       stuck_s=round(now - self.changed_at, 1))
        return out

    def standby(self, children, cursor):
        child = children.get("replicator")
        if child is None:
            return {"configured": False, "ok": True}
        out = {"configured": True, "state": child["state"], "ok": child["state"] == "ready",
               "acked_seq": None, "lag": None}
        if self.replication_path:
            from publisher.metrics import _read_json
            repl = _read_json(self.replication_path) or {}
            acked = _int_or_none(repl.get("acked"))
            out["acked_seq"] = acked
            if acked is not None and cursor is not None:
                out["lag"] = cursor - acked
        return out


def health_report(path, service, now_ns, probe=None):
    """(HTTP status, body) of GET /health.

    The body has the supervisor's file (``shard``, ``state``, ``updated_ns``,
    ``children`` {name: {pid, state, restarts}}, ``journal`` {durable_seq}),
    copied field by field (nothing else from the file: no secret can pass),
    plus ``publisher`` (this process: pid, input_seq, output_seq) and
    ``reason`` when not healthy.  200 only when the state is ``ready``, the
    file was updated less than 5 s ago and (with a ``probe``) every check of
    ``checks`` holds: ``matcher`` (its child is ready), ``journal``
    (EngineProbe.journal: idle or advancing), ``standby`` (ready when
    configured).  O(children).
    """
    own = {"pid": os.getpid(), "input_seq": service.model.applied_seq,
           "events_applied": service.model.events_applied,
           "output_seq": service.last_seq}
    position = getattr(service, "consumer_sequence", None)
    if position is not None:
        try:
            own["output_seq"] = int(position())
        except Exception:
            pass
    body = {"state": "unknown", "publisher": own}
    if path is None:
        body["reason"] = "no supervisor health file configured (publisher without a supervisor)"
        return 503, body
    try:
        with open(path, "rb") as f:
            raw = f.read(_HEALTH_MAX_BYTES + 1)
        if len(raw) > _HEALTH_MAX_BYTES:
            raise ValueError("over %d bytes" % _HEALTH_MAX_BYTES)
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        body["reason"] = ("no health file %s: the publisher runs without a supervisor, or the "
                          "supervisor has not written it yet" % os.path.basename(path))
        return 503, body
    except (OSError, ValueError) as exc:
        body["reason"] = "unreadable health file %s: %s" % (os.path.basename(path),
                                                            shorten(str(exc), 80))
        return 503, body
    state = data.get("state")
    body["shard"] = data.get("shard") if isinstance(data.get("shard"), str) else None
    body["state"] = state if state in _HEALTH_STATES else "unknown"
    updated = _int_or_none(data.get("updated_ns"))
    body["updated_ns"] = updated
    children = {}
    raw_children = data.get("children")
    if isinstance(raw_children, dict):
        for name, child in sorted(raw_children.items())[:32]:
            if not isinstance(child, dict):
                continue
            cstate = child.get("state")
            children[str(name)[:32]] = {"pid": _int_or_none(child.get("pid")),
                                        "state": cstate if cstate in _CHILD_STATES else "unknown",
                                        "restarts": _int_or_none(child.get("restarts"))}
    body["children"] = children
    journal = data.get("journal")
    body["journal"] = {"durable_seq": _int_or_none(journal.get("durable_seq"))
                       if isinstance(journal, dict) else None}
    age_ns = None if updated is None else now_ns - updated
    body["age_s"] = None if age_ns is None else round(age_ns / 1e9, 3)
    failed = None
    if probe is not None:
        matcher = children.get("matcher")
        checks = {"matcher": {"ok": bool(matcher and matcher["state"] == "ready"),
                              "state": matcher["state"] if matcher else None,
                              "pid": matcher["pid"] if matcher else None}}
        checks["journal"] = probe.journal(children, body["journal"]["durable_seq"])
        checks["standby"] = probe.standby(children, checks["journal"].get("input_cursor"))
        body["checks"] = checks
        if not checks["matcher"]["ok"]:
            failed = ("the matcher is not running (%s)" % checks["matcher"]["state"]
                      if matcher else "the health file names no matcher")
        elif not checks["journal"]["ok"]:
            j = checks["journal"]
            failed = ("the journal is stuck: durable seq %s, input cursor %s, not moved for %s s"
                      % (j["durable_seq"], j["input_cursor"], j.get("stuck_s"))
                      if j["progress"] == "stuck" else "the journaler is %s" % j["journaler"])
        elif not checks["standby"]["ok"]:
            failed = "the standby's replicator is %s" % checks["standby"]["state"]
    if body["state"] != "ready":
        body["reason"] = "engine state is %s" % body["state"]
        return 503, body
    if age_ns is None or age_ns > HEALTH_FRESH_NS:
        body["reason"] = ("health file is stale (updated %s s ago; the supervisor writes it "
                          "every second)" % body["age_s"])
        return 503, body
    if failed is not None:
        body["reason"] = failed
        return 503, body
    return 200, body
