"""Render read-model objects as the JSON the API and the WebSocket send (decimal strings)."""
import datetime

from ringbuf.records import EventKind, Reason

from publisher.read_model import SIDE_NAMES, TIF_NAMES, TYPE_NAMES, reason_name

__all__ = ["iso_time", "order_json", "trade_json", "ticker_json", "book_json", "report_json"]

_STP_NAMES = {0: "dc", 1: "co", 2: "cn", 3: "cb"}
_REPORT_NAMES = {int(EventKind.ACCEPTED): "accepted", int(EventKind.REJECTED): "rejected",
                 int(EventKind.FILL): "fill", int(EventKind.CANCELLED): "canceled",
                 int(EventKind.EXPIRED): "expired", int(EventKind.TRIGGERED): "triggered",
                 int(EventKind.AMENDED): "amended", int(EventKind.BALANCE): "balance"}


def iso_time(ns):
    """Stream time in ns -> RFC 3339 with microseconds (UTC)."""
    if not ns:
        return None
    sec, rem = divmod(int(ns), 10 ** 9)
    dt = datetime.datetime.fromtimestamp(sec, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + ".%06dZ" % (rem // 1000)


def order_json(order, product):
    """One order as the API shows it (Coinbase Exchange-like field names)."""
    return {
        "id": str(order.order_id),
        "client_oid": str(order.client_order_id) if order.client_order_id else None,
        "product_id": product.name if product else order.symbol_id,
        "side": SIDE_NAMES.get(order.side, str(order.side)),
        "type": TYPE_NAMES.get(order.order_type, str(order.order_type)),
        "time_in_force": TIF_NAMES.get(order.tif, str(order.tif)),
        "price": product.fmt_price(order.price) if product and order.price else None,
        "size": product.fmt_qty(order.qty) if product and order.qty else None,
        "funds": product.fmt_quote(order.funds) if product and order.funds else None,
        "stop_price": product.fmt_price(order.stop_price) if product and order.stop_price else None,
        "filled_size": product.fmt_qty(order.filled) if product else order.filled,
        "remaining_size": product.fmt_qty(order.remaining) if product else order.remaining,
        "executed_value": product.fmt_quote(order.executed_value) if product else order.executed_value,
        "fill_fees": _fee_asset(order.side, product).fmt(order.fees) if product else order.fees,
        "status": order.status,
        "done_reason": order.done_reason,
        "reject_reason": order.done_reason if order.status == "rejected" else None,
        "created_at": iso_time(order.created_ns),
        "done_at": iso_time(order.done_ns),
        "seq": order.last_seq,
    }


def _fee_asset(side, product):
    """Fees are in the quote asset (engine/config.py: bps of the quote notional)."""
    return product.quote


def fill_json(event, product):
    """One FILL event of an order (its own side)."""
    return {"trade_id": event.trade_id, "order_id": str(event.order_id),
            "price": product.fmt_price(event.price), "size": product.fmt_qty(event.qty),
            "fee": _fee_asset(event.side, product).fmt(event.fee),
            "fee_currency": _fee_asset(event.side, product).name, "liquidity": "M" if event.flags & 1 else "T",
            "counter_order_id": str(event.counter_order_id),
            "created_at": iso_time(event.timestamp_ns)}


def trade_json(trade, product):
    return {"trade_id": trade.trade_id, "price": product.fmt_price(trade.price),
            "size": product.fmt_qty(trade.qty), "side": SIDE_NAMES.get(trade.taker_side),
            "time": iso_time(trade.timestamp_ns), "seq": trade.seq}


def ticker_json(view, product, applied_seq):
    bb, ba = view.best_bid(), view.best_ask()
    stats = view.stats()
    last = view.trades[-1] if view.trades else None
    return {
        "product_id": product.name,
        "price": product.fmt_price(view.last_price),
        "last_size": product.fmt_qty(view.last_qty),
        "trade_id": view.last_trade_id or None,
        "best_bid": product.fmt_price(bb[0]) if bb else None,
        "best_bid_size": product.fmt_qty(bb[1]) if bb else None,
        "best_ask": product.fmt_price(ba[0]) if ba else None,
        "best_ask_size": product.fmt_qty(ba[1]) if ba else None,
        "open_24h": product.fmt_price(stats["open"]),
        "high_24h": product.fmt_price(stats["high"]),
        "low_24h": product.fmt_price(stats["low"]),
        "volume_24h": product.fmt_qty(stats["volume"]),
        "time": iso_time(last.timestamp_ns) if last else None,
        "halted": view.halted,
        "input_seq": applied_seq,
    }


def book_json(view, product, level, applied_seq):
    levels = 1 if level == 1 else None
    bids, asks = view.depth(levels)
    fp, fq = product.fmt_price, product.fmt_qty
    return {"product_id": product.name, "sequence": view.level2_seq, "input_seq": applied_seq,
            "bids": [[fp(p), fq(q)] for p, q in bids],
            "asks": [[fp(p), fq(q)] for p, q in asks]}


def report_json(event, order, product, catalog):
    """One execution report for the user channel.

    ``price`` of a ``fill`` is the trade price (``fill_json``); ``order_price``
    is the order's limit price (None for market orders) on every report.
    """
    kind = _REPORT_NAMES.get(event.kind, str(event.kind))
    out = {"event": kind, "input_seq": event.seq, "order_id": str(event.order_id),
           "time": iso_time(event.timestamp_ns)}
    if event.kind == int(EventKind.BALANCE):
        asset = catalog.asset_by_id.get(event.symbol_id)
        out["currency"] = asset.name if asset else event.symbol_id
        out["available"] = asset.fmt(event.amount) if asset else str(event.amount)
        return out
    if product is not None:
        out["product_id"] = product.name
        if event.kind == int(EventKind.FILL):
            out.update(fill_json(event, product))
            out["remaining_size"] = product.fmt_qty(event.remaining)
            out["filled_size"] = product.fmt_qty(event.filled)
    if event.reason:
        out["reason"] = reason_name(event.reason)
    if order is not None:
        out["status"] = order.status
        out["client_oid"] = str(order.client_order_id) if order.client_order_id else None
        if product is not None:
            out["side"] = SIDE_NAMES.get(order.side)
            limit = product.fmt_price(order.price) if order.price else None
            out["order_price"] = limit
            if event.kind != int(EventKind.FILL):     # a fill's price and sizes are its own
                out["price"] = limit
                out["remaining_size"] = product.fmt_qty(order.remaining)
    return out


_ = (Reason, _STP_NAMES)


def history_fill_json(fill, product):
    """One kept fill (publisher/history.py rule 2) as Coinbase Exchange's ``GET /fills``."""
    _cursor, trade_id, _sym, order_id, price, qty, fee, side, flags, ts = fill
    return {"trade_id": trade_id, "product_id": product.name, "order_id": str(order_id),
            "price": product.fmt_price(price), "size": product.fmt_qty(qty),
            "fee": product.quote.fmt(fee), "side": SIDE_NAMES.get(side, str(side)),
            "liquidity": "M" if flags & 1 else "T", "created_at": iso_time(ts),
            "settled": True}


def candle_json(row, product):
    """(start_s, low, high, open, close, volume) -> Coinbase's
    ``[time, low, high, open, close, volume]`` (JSON numbers from the exact decimals)."""
    t, lo, hi, op, cl, v = row
    fp = product.fmt_price
    return [t, float(fp(lo)), float(fp(hi)), float(fp(op)), float(fp(cl)),
            float(product.fmt_qty(v))]


def level3_json(view, product, bids, asks, applied_seq):
    """Level 3 book: every resting order ``[price, size, order_id]``, best price first."""
    fp, fq = product.fmt_price, product.fmt_qty
    return {"product_id": product.name, "sequence": view.level2_seq, "input_seq": applied_seq,
            "bids": [[fp(p), fq(q), str(o)] for p, q, o in bids],
            "asks": [[fp(p), fq(q), str(o)] for p, q, o in asks]}
