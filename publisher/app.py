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
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from typing_extensions import Annotated

from ringbuf.records import CommandKind, EventKind, OrderFlags, OrderType, Reason, Side, StpMode, \
    TimeInForce

from publisher import auth as auth_mod
from publisher.auth import shorten
from publisher.products import ConversionError
from publisher.read_model import reason_name
from publisher.service import OutcomeTimeout, RingFull
from publisher.views import book_json, fill_json, order_json, ticker_json, trade_json
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
    client_oid: Optional[str] = Field(None, max_length=20,
                                      description="client order id: integer 1..2^64-1")


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
    if not isinstance(text, str) or not _DIGITS_RE.match(text):
        raise ApiError(400, "client_oid %s is not an integer (1..2^64-1, ASCII digits)"
                       % shorten(text))
    value = int(text)
    if not 0 < value <= _MAX_U64:
        raise ApiError(400, "client_oid %s is out of range (1..2^64-1)" % shorten(text))
    return value


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
               clock_ns=time.time_ns):
    """Build the FastAPI app over a PublisherService (injectable: tests pass their own).

    ``health_path``: the supervisor's ``<data_dir>/run/<shard>.health.json``
    (None: no supervisor, ``GET /health`` answers 503 "unknown").
    """
    app = FastAPI(title=title, version="1",
                  description="REST and WebSocket API of a ringmatch engine shard. "
                              "See docs/publisher.md for auth and the WebSocket protocol.")
    catalog = service.catalog
    model = service.model
    app.state.service = service
    app.state.keystore = keystore
    client_oid_locks = KeyedLocks()
    app.state.client_oid_locks = client_oid_locks
    window_ns = int(client_oid_window_s * 10 ** 9)

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

    async def _auth(request):
        """Rule 6: (ApiKey, raw body) of a correctly signed request; raise AuthError/ApiError."""
        h = request.headers
        timestamp, signature = h.get(auth_mod.HEADER_TIMESTAMP), h.get(auth_mod.HEADER_SIGN)
        api_key, ts = keystore.check_headers(h.get(auth_mod.HEADER_KEY), timestamp, signature)
        body = await _read_body(request)
        key = keystore.verify_signed(api_key, ts, timestamp, signature, request.method,
                                     _signed_path(request), body)
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

    def _existing_answer(order):
        product = catalog.by_id.get(order.symbol_id)
        body = order_json(order, product)
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
            fields["client_order_id"] = _client_oid(req.client_oid)
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
        if order is not None and not order.stop_price and fields.get("stop_price"):
            order.stop_price = fields["stop_price"]       # not in the events (read model rule 5)
        body = order_json(order, product) if order is not None else {"id": str(seq)}
        body["fills"] = [fill_json(e, product) for e in events
                         if e.kind == int(EventKind.FILL) and e.order_id == seq]
        body["seq"] = seq
        return _ok(body)

    @app.post("/orders", tags=["orders"], summary="Place an order",
              openapi_extra=_body_doc(OrderRequest))
    async def place_order(request: Request):
        key, body = await _auth(request)
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
        key, _body = await _auth(request)
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
        key, _body = await _auth(request)
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
        key, body = await _auth(request)
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
        body = order_json(model.order(order.order_id) or order, product)
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
        return _ok(order_json(order, product))

    @app.get("/orders", tags=["orders"], summary="List orders (status open|done|all)")
    async def list_orders(request: Request, status: Literal["open", "done", "all"] = "open",
                          product_id: Optional[str] = Query(None, max_length=32),
                          min_seq: AsciiInt = 0,
                          limit: Annotated[AsciiInt, Query(ge=1, le=100000)] = 1000):
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
        orders = [o for o in orders if o.symbol_id in by_id][-limit:]
        return _ok([order_json(o, by_id[o.symbol_id]) for o in orders])

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
        key, body = await _auth(request)
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
             summary="Order book: level 1 (best bid/ask) or 2 (every price level)")
    async def book(product_id: str, level: AsciiInt = 1, min_seq: AsciiInt = 0):
        p = _product(product_id)
        if level not in (1, 2):
            raise ApiError(400, "level must be 1 or 2")
        await _min_seq(min_seq)
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
    async def stats(product_id: str):
        p = _product(product_id)
        s = model.symbol(p.symbol_id).stats()
        return _ok({"open": p.fmt_price(s["open"]), "high": p.fmt_price(s["high"]),
                    "low": p.fmt_price(s["low"]), "last": p.fmt_price(s["last"]),
                    "volume": p.fmt_qty(s["volume"]), "input_seq": model.applied_seq})

    @app.get("/time", tags=["market data"], summary="Server time and the input seq reflected")
    async def server_time():
        now = time.time()
        return _ok({"epoch": now, "input_seq": model.applied_seq,
                    "events_applied": model.events_applied, "pid": os.getpid()})

    @app.get("/health", tags=["operations"],
             summary="Engine health from the supervisor (200 ready and fresh, else 503)")
    async def health():
        status, body = health_report(health_path, service, clock_ns())
        return JSONResponse(body, status_code=status, headers=_seq_header())

    # ---------------------------------------------------------------- ws + page
    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket_endpoint(websocket, service.hub, keystore)

    if os.path.isdir(STATIC_DIR):
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def index():
            return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    return app


_HEALTH_STATES = ("starting", "ready", "degraded", "stopping")
_CHILD_STATES = ("starting", "ready", "stalled", "restarting", "dead")
_HEALTH_MAX_BYTES = 1 << 20


def _int_or_none(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def health_report(path, service, now_ns):
    """(HTTP status, body) of GET /health.

    The body has the supervisor's file (``shard``, ``state``, ``updated_ns``,
    ``children`` {name: {pid, state, restarts}}, ``journal`` {durable_seq}),
    copied field by field (nothing else from the file: no secret can pass),
    plus ``publisher`` (this process: pid, input_seq, output_seq) and
    ``reason`` when not healthy.  200 only when the state is ``ready`` and the
    file was updated less than 5 s ago.  O(children).
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
    if body["state"] != "ready":
        body["reason"] = "engine state is %s" % body["state"]
        return 503, body
    if age_ns is None or age_ns > HEALTH_FRESH_NS:
        body["reason"] = ("health file is stale (updated %s s ago; the supervisor writes it "
                          "every second)" % body["age_s"])
        return 503, body
    return 200, body
