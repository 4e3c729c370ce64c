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
5. Private endpoints need a signed request (publisher/auth.py) and act on
   the key's account only; another account's order is "not found".
"""
import datetime
import json
import os
from decimal import Decimal
from typing import List, Literal, Optional

from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ringbuf.records import (CommandKind, EventFlags, EventKind, OrderFlags, OrderType, Reason,
                             Side, StpMode, TimeInForce)

from publisher import auth as auth_mod
from publisher.products import ConversionError
from publisher.read_model import reason_name
from publisher.service import OutcomeTimeout, RingFull
from publisher.views import book_json, fill_json, order_json, ticker_json, trade_json
from publisher.ws import websocket_endpoint

__all__ = ["create_app", "ApiError", "OrderRequest", "AmendRequest", "DepositRequest"]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_MAX_U64 = (1 << 64) - 1

_SIDES = {"buy": Side.BUY, "sell": Side.SELL}
_TYPES = {"limit": OrderType.LIMIT, "market": OrderType.MARKET,
          "stop_loss": OrderType.STOP_LOSS, "stop_limit": OrderType.STOP_LIMIT,
          "take_profit": OrderType.TAKE_PROFIT, "take_profit_limit": OrderType.TAKE_PROFIT_LIMIT}
_TIFS = {"GTC": TimeInForce.GTC, "GTT": TimeInForce.GTT, "IOC": TimeInForce.IOC,
         "FOK": TimeInForce.FOK}
_STPS = {"dc": StpMode.DECREMENT_AND_CANCEL, "co": StpMode.CANCEL_OLDEST,
         "cn": StpMode.CANCEL_NEWEST, "cb": StpMode.CANCEL_BOTH}
_NOT_FOUND = {int(Reason.ORDER_NOT_FOUND), int(Reason.NOT_ORDER_OWNER)}


class ApiError(Exception):
    """An error answer (rule 4)."""

    def __init__(self, http_status, message, **extra):
        Exception.__init__(self, message)
        self.status = http_status
        self.message = message
        self.extra = extra


# ---------------------------------------------------------------- request models
class OrderRequest(BaseModel):
    """POST /orders.  Sizes and prices are decimal strings."""
    model_config = ConfigDict(extra="forbid")
    product_id: str = Field(description="symbol, e.g. BTC-USD")
    side: Literal["buy", "sell"]
    type: Literal["limit", "market", "stop_loss", "stop_limit", "take_profit",
                  "take_profit_limit"] = "limit"
    price: Optional[str] = Field(None, description="limit price (quote per base)")
    size: Optional[str] = Field(None, description="quantity in base units")
    funds: Optional[str] = Field(None, description="market buy: quote amount to spend")
    stop_price: Optional[str] = Field(None, description="trigger price of stop/take-profit orders")
    time_in_force: Literal["GTC", "GTT", "IOC", "FOK"] = "GTC"
    expire_time: Optional[str] = Field(
        None, description="GTT: expiry as unix seconds or RFC 3339 (stream time)")
    post_only: bool = False
    post_only_reprice: bool = Field(False, description="with post_only: re-price instead of reject")
    stp: Literal["dc", "co", "cn", "cb"] = Field("dc", description="self-trade prevention")
    client_oid: Optional[str] = Field(None, description="client order id: integer 1..2^64-1")


class AmendRequest(BaseModel):
    """PATCH /orders/{id}: new price and/or new total size (omitted = keep)."""
    model_config = ConfigDict(extra="forbid")
    price: Optional[str] = None
    size: Optional[str] = None


class DepositRequest(BaseModel):
    """POST /accounts/deposit and /accounts/withdraw (local demo faucet)."""
    model_config = ConfigDict(extra="forbid")
    currency: str
    amount: str


def _client_oid(text):
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ApiError(400, "client_oid %r is not an integer (1..2^64-1)" % (text,))
    if not 0 < value <= _MAX_U64:
        raise ApiError(400, "client_oid %r is out of range (1..2^64-1)" % (text,))
    return value


def _expire_ns(text):
    text = str(text).strip()
    try:
        return int(Decimal(text) * 10 ** 9)
    except Exception:
        pass
    try:
        dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "expire_time %r is neither unix seconds nor RFC 3339" % (text,))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp()) * 10 ** 9 + dt.microsecond * 1000


def _conv(fn, value, what):
    try:
        return fn(value, what)
    except ConversionError as exc:
        raise ApiError(400, str(exc))


def create_app(service, keystore, allow_deposits=True, title="ringmatch exchange API"):
    """Build the FastAPI app over a PublisherService (injectable: tests pass their own)."""
    app = FastAPI(title=title, version="1",
                  description="REST and WebSocket API of a ringmatch engine shard. "
                              "See docs/publisher.md for auth and the WebSocket protocol.")
    catalog = service.catalog
    model = service.model
    app.state.service = service
    app.state.keystore = keystore

    # ---------------------------------------------------------------- errors (rule 4)
    @app.exception_handler(ApiError)
    async def _api_error(request, exc):
        body = {"message": exc.message}
        body.update(exc.extra)
        return JSONResponse(body, status_code=exc.status, headers=_seq_header())

    @app.exception_handler(auth_mod.AuthError)
    async def _auth_error(request, exc):
        headers = _seq_header()
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        return JSONResponse({"message": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append("%s: %s" % (loc or "request", err.get("msg")))
        return JSONResponse({"message": "invalid request: " + "; ".join(parts)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"message": exc.detail}, status_code=exc.status_code)

    def _seq_header():
        return {"RM-Seq": str(model.applied_seq)}

    def _ok(body, status=200):
        return JSONResponse(body, status_code=status, headers=_seq_header())

    async def _auth(request):
        body = await request.body()
        path = request.url.path
        if request.url.query:
            path += "?" + request.url.query
        h = request.headers
        return keystore.verify(h.get(auth_mod.HEADER_KEY), h.get(auth_mod.HEADER_TIMESTAMP),
                               h.get(auth_mod.HEADER_SIGN), request.method, path, body)

    async def _min_seq(min_seq):
        if min_seq and not await service.wait_applied(min_seq):
            raise ApiError(503, "the read model has not reached seq %d yet (at %d)"
                           % (min_seq, model.applied_seq))

    def _product(name):
        try:
            return catalog.product(name)
        except KeyError:
            raise ApiError(404, "unknown product %r" % (name,))

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

    def _order_ref(order_id, account_id):
        """Parse ``123`` or ``client:456`` -> (order_id, client_oid)."""
        text = str(order_id)
        if text.startswith("client:"):
            return 0, _client_oid(text[7:])
        try:
            value = int(text)
        except ValueError:
            raise ApiError(400, "order id %r is not an integer (or client:<client_oid>)" % text)
        if not 0 < value < (1 << 63):
            raise ApiError(404, "order %s not found" % text)
        return value, 0

    def _find_order(order_id, account_id):
        oid, coid = _order_ref(order_id, account_id)
        order = model.order(oid) if oid else model.order_by_client_id(account_id, coid)
        if order is None or order.account_id != account_id:
            raise ApiError(404, "order %s not found" % order_id)
        return order

    # ---------------------------------------------------------------- orders
    @app.post("/orders", tags=["orders"], summary="Place an order")
    async def place_order(req: OrderRequest, request: Request):
        key = await _auth(request)
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
                  "account_id": key.account_id}
        if req.price is not None:
            fields["price"] = _conv(product.price_to_ticks, req.price, "price")
        if req.size is not None:
            fields["qty"] = _conv(product.qty_to_lots, req.size, "size")
        if req.stop_price is not None:
            fields["stop_price"] = _conv(product.price_to_ticks, req.stop_price, "stop_price")
        if req.funds is not None:
            if req.size is not None:
                raise ApiError(400, "give size or funds, not both")
            flags |= int(OrderFlags.BY_FUNDS)
            fields["funds"] = _conv(product.quote.to_minor, req.funds, "funds")
        if req.expire_time is not None:
            if req.time_in_force != "GTT":
                raise ApiError(400, "expire_time needs time_in_force GTT")
            fields["funds"] = _expire_ns(req.expire_time)
        elif req.time_in_force == "GTT":
            raise ApiError(400, "time_in_force GTT needs expire_time")
        if req.client_oid is not None:
            fields["client_order_id"] = _client_oid(req.client_oid)
        fields["flags"] = flags
        seq, events = await _submit(fields)
        outcome = _outcome(events, seq)
        if outcome is None or outcome.kind == int(EventKind.REJECTED):
            reason = reason_name(outcome.reason) if outcome is not None else "NO_OUTCOME"
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

    @app.delete("/orders/{order_id}", tags=["orders"],
                summary="Cancel an order (id or client:<client_oid>)")
    async def cancel_order(order_id: str, request: Request):
        key = await _auth(request)
        oid, coid = _order_ref(order_id, key.account_id)
        fields = {"kind": int(CommandKind.CANCEL), "account_id": key.account_id,
                  "order_id": oid}
        if coid:
            fields["flags"] = int(OrderFlags.BY_CLIENT_ID)
            fields["client_order_id"] = coid
        if oid:
            known = model.order(oid)
            if known is not None:
                fields["symbol_id"] = known.symbol_id
        fields["funds"] = oid     # the union slot: order_id
        seq, events = await _submit(fields)
        outcome = _outcome(events, seq)
        cancelled = [e for e in events if e.kind == int(EventKind.CANCELLED)]
        if outcome is not None and outcome.kind == int(EventKind.REJECTED):
            status = 404 if outcome.reason in _NOT_FOUND else 400
            reason = reason_name(outcome.reason)
            msg = ("order %s not found" % order_id) if status == 404 else \
                "cancel rejected: %s" % reason
            raise ApiError(status, msg, reason=reason, seq=seq)
        target = cancelled[0].order_id if cancelled else oid
        return _ok({"id": str(target), "status": "canceled", "seq": seq})

    @app.delete("/orders", tags=["orders"], summary="Cancel all open orders (optionally one product)")
    async def cancel_all(request: Request, product_id: Optional[str] = None):
        key = await _auth(request)
        symbol_id = _product(product_id).symbol_id if product_id else 0
        seq, events = await _submit({"kind": int(CommandKind.MASS_CANCEL),
                                     "account_id": key.account_id, "symbol_id": symbol_id})
        outcome = _outcome(events, seq)
        if outcome is not None and outcome.kind == int(EventKind.REJECTED):
            reason = reason_name(outcome.reason)
            raise ApiError(400, "mass cancel rejected: %s" % reason, reason=reason, seq=seq)
        return _ok({"canceled": [str(e.order_id) for e in events
                                 if e.kind == int(EventKind.CANCELLED)], "seq": seq})

    @app.patch("/orders/{order_id}", tags=["orders"], summary="Amend price and/or size")
    async def amend_order(order_id: str, req: AmendRequest, request: Request):
        key = await _auth(request)
        order = _find_order(order_id, key.account_id)
        product = catalog.by_id[order.symbol_id]
        if req.price is None and req.size is None:
            raise ApiError(400, "give price and/or size")
        fields = {"kind": int(CommandKind.AMEND), "account_id": key.account_id,
                  "symbol_id": order.symbol_id, "funds": order.order_id}
        if req.price is not None:
            fields["price"] = _conv(product.price_to_ticks, req.price, "price")
        if req.size is not None:
            fields["qty"] = _conv(product.qty_to_lots, req.size, "size")
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
    async def get_order(order_id: str, request: Request, min_seq: int = 0):
        key = await _auth(request)
        await _min_seq(min_seq)
        order = _find_order(order_id, key.account_id)
        return _ok(order_json(order, catalog.by_id.get(order.symbol_id)))

    @app.get("/orders", tags=["orders"], summary="List orders (status open|done|all)")
    async def list_orders(request: Request, status: Literal["open", "done", "all"] = "open",
                          product_id: Optional[str] = None, min_seq: int = 0,
                          limit: int = Query(1000, ge=1, le=100000)):
        key = await _auth(request)
        await _min_seq(min_seq)
        symbol_id = _product(product_id).symbol_id if product_id else None
        if status == "open":
            orders = model.open_orders(key.account_id, symbol_id)
        else:
            orders = model.account_orders(key.account_id, symbol_id)
            if status == "done":
                orders = [o for o in orders if not o.is_open]
        orders = orders[-limit:]
        return _ok([order_json(o, catalog.by_id.get(o.symbol_id)) for o in orders])

    # ---------------------------------------------------------------- accounts
    @app.get("/accounts", tags=["accounts"], summary="Own balances (available and held)")
    async def accounts(request: Request, min_seq: int = 0):
        key = await _auth(request)
        await _min_seq(min_seq)
        out = []
        balances = model.account_balances(key.account_id)
        for asset in catalog.assets:
            available, held = balances.get(asset.asset_id, (0, 0))
            out.append({"currency": asset.name, "balance": asset.fmt(available + held),
                        "available": asset.fmt(available), "hold": asset.fmt(held),
                        "account_id": key.account_id})
        return _ok(out)

    async def _transfer(kind, req, request):
        key = await _auth(request)
        if not allow_deposits:
            raise ApiError(403, "deposits and withdrawals are disabled (publisher.allow_deposits)")
        asset = catalog.asset_by_name.get(req.currency)
        if asset is None:
            raise ApiError(404, "unknown currency %r" % (req.currency,))
        amount = _conv(asset.to_minor, req.amount, "amount")
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
              summary="Demo faucet: credit own account (publisher.allow_deposits)")
    async def deposit(req: DepositRequest, request: Request):
        return await _transfer(CommandKind.DEPOSIT, req, request)

    @app.post("/accounts/withdraw", tags=["accounts"], summary="Debit own account")
    async def withdraw(req: DepositRequest, request: Request):
        return await _transfer(CommandKind.WITHDRAW, req, request)

    # ---------------------------------------------------------------- market data
    @app.get("/products", tags=["market data"], summary="Tradable products")
    async def products():
        return _ok([p.to_json() for p in catalog.products])

    @app.get("/products/{product_id}", tags=["market data"], summary="One product")
    async def product(product_id: str):
        p = _product(product_id)
        body = p.to_json()
        body["halted"] = model.symbol(p.symbol_id).halted
        return _ok(body)

    @app.get("/products/{product_id}/book", tags=["market data"],
             summary="Order book: level 1 (best bid/ask) or 2 (every price level)")
    async def book(product_id: str, level: int = 1, min_seq: int = 0):
        p = _product(product_id)
        if level not in (1, 2):
            raise ApiError(400, "level must be 1 or 2")
        await _min_seq(min_seq)
        return _ok(book_json(model.symbol(p.symbol_id), p, level, model.applied_seq))

    @app.get("/products/{product_id}/ticker", tags=["market data"],
             summary="Best bid/ask, last trade, 24h stats")
    async def ticker(product_id: str, min_seq: int = 0):
        p = _product(product_id)
        await _min_seq(min_seq)
        return _ok(ticker_json(model.symbol(p.symbol_id), p, model.applied_seq))

    @app.get("/products/{product_id}/trades", tags=["market data"], summary="Recent trades, newest first")
    async def trades(product_id: str, limit: int = Query(100, ge=1, le=1000), min_seq: int = 0):
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
        import time as _time
        now = _time.time()
        return _ok({"epoch": now, "input_seq": model.applied_seq,
                    "events_applied": model.events_applied, "pid": os.getpid()})

    # ---------------------------------------------------------------- ws + page
    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket_endpoint(websocket, service.hub, keystore)

    if os.path.isdir(STATIC_DIR):
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def index():
            return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    _ = (json, List, EventFlags)
    return app
