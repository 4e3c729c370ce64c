"""Products and assets as the API shows them: names, tick/lot sizes, decimal <-> int.

The engine's core speaks int64 ticks, lots and asset minor units; the API
speaks decimal strings.  The conversion happens here, once, by symbol config
(``engine.config.ExchangeConfig``), and refuses any value that the integer
form cannot represent exactly (rule: no rounding at the edge).  A number on the wire is ASCII decimal only:
an optional minus, digits, an optional fraction (``_DECIMAL_RE``); no exponent,
no ``_``, no NaN/Infinity, no other Unicode digits, no blanks.
"""
import re
from decimal import Decimal, InvalidOperation, localcontext

__all__ = ["Product", "Asset", "Catalog", "ConversionError"]

_MAX_I64 = (1 << 63) - 1
_DECIMAL_RE = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)\Z")


class ConversionError(ValueError):
    """A decimal value is malformed, off the tick/lot grid or out of range."""


def _decimal(text, what):
    if isinstance(text, Decimal):
        value = text
    else:
        if not isinstance(text, str):
            raise ConversionError("%s must be a decimal string" % what)
        if len(text) > 64:
            raise ConversionError("%s is too long (at most 64 characters)" % what)
        if not _DECIMAL_RE.match(text):
            raise ConversionError("%s %r is not a decimal number (ASCII digits and one '.')"
                                  % (what, text))
        try:
            value = Decimal(text)
        except (InvalidOperation, ValueError):
            raise ConversionError("%s %r is not a decimal number" % (what, text))
    if not value.is_finite():
        raise ConversionError("%s %r is not a finite number" % (what, text))
    if value and not -40 <= value.adjusted() <= 40:
        raise ConversionError("%s %s is out of range" % (what, text))
    return value


def _to_units(text, unit, what):
    value = _decimal(text, what)
    with localcontext() as ctx:      # exact: no rounding to 28 digits (rule above)
        ctx.prec = 200
        units = value / unit
    if units != units.to_integral_value():
        raise ConversionError("%s %s is not a multiple of %s" % (what, value, _fmt(unit)))
    n = int(units)
    if abs(n) > _MAX_I64:
        raise ConversionError("%s %s is out of range" % (what, value))
    return n


def _fmt(value):
    """Plain decimal string without exponent and without trailing zeros beyond the unit."""
    text = format(value, "f")
    return text


def _places(unit):
    exp = unit.normalize().as_tuple().exponent
    return max(0, -exp)


class Asset(object):
    """One asset: id, name and its minor unit (e.g. 0.00000001 BTC)."""

    def __init__(self, asset_id, name, unit):
        self.asset_id = int(asset_id)
        self.name = name
        self.unit = Decimal(unit)
        self._places = _places(self.unit)

    def to_minor(self, text, what="amount"):
        """Decimal string -> minor units.  Raises ConversionError."""
        return _to_units(text, self.unit, what)

    def fmt(self, minor):
        """Minor units -> decimal string with the asset's places."""
        if minor is None:
            return None
        return _fmt((Decimal(int(minor)) * self.unit).quantize(Decimal(1).scaleb(-self._places)))


class Product(object):
    """One symbol: ``BASE-QUOTE``, tick (price step) and lot (size step).

    ``price ticks * tick`` is the price in quote per base; ``qty lots * lot``
    the size in base.  A fill's quote amount is in quote minor units.
    """

    def __init__(self, symbol_id, name, base, quote, tick, lot, min_qty=None, max_qty=None):
        self.symbol_id = int(symbol_id)
        self.name = name
        self.base = base            # Asset
        self.quote = quote          # Asset
        self.tick = Decimal(tick)
        self.lot = Decimal(lot)
        self.min_qty = min_qty
        self.max_qty = max_qty
        self._pq = Decimal(1).scaleb(-_places(self.tick))
        self._qq = Decimal(1).scaleb(-_places(self.lot))

    def price_to_ticks(self, text, what="price"):
        return _to_units(text, self.tick, what)

    def qty_to_lots(self, text, what="size"):
        return _to_units(text, self.lot, what)

    def fmt_price(self, ticks):
        if ticks is None:
            return None
        return _fmt((Decimal(int(ticks)) * self.tick).quantize(self._pq))

    def fmt_qty(self, lots):
        if lots is None:
            return None
        return _fmt((Decimal(int(lots)) * self.lot).quantize(self._qq))

    def fmt_quote(self, minor):
        return self.quote.fmt(minor)

    def to_json(self, halted=False):
        """The product as GET /products shows it; ``halted``: the read model's view."""
        return {"id": self.name, "base_currency": self.base.name,
                "quote_currency": self.quote.name,
                "quote_increment": _fmt(self.tick), "base_increment": _fmt(self.lot),
                "base_min_size": self.fmt_qty(self.min_qty) if self.min_qty else None,
                "base_max_size": self.fmt_qty(self.max_qty) if self.max_qty else None,
                "status": "halted" if halted else "online", "trading_disabled": bool(halted),
                "halted": bool(halted), "symbol_id": self.symbol_id}


class Catalog(object):
    """Products and assets by name and by id.

    >>> usd = Asset(2, "USD", "0.01"); btc = Asset(1, "BTC", "0.00000001")
    >>> cat = Catalog([Product(1, "BTC-USD", btc, usd, "0.01", "0.0001")], [btc, usd])
    >>> cat.product("BTC-USD").price_to_ticks("100.25")
    10025
    """

    def __init__(self, products, assets):
        self.products = list(products)
        self.assets = list(assets)
        self.by_name = {p.name: p for p in self.products}
        self.by_id = {p.symbol_id: p for p in self.products}
        self.asset_by_name = {a.name: a for a in self.assets}
        self.asset_by_id = {a.asset_id: a for a in self.assets}

    def product(self, name):
        """Product by name (case-insensitive); KeyError when unknown."""
        p = self.by_name.get(name) or self.by_name.get(str(name).upper())
        if p is None:
            raise KeyError(name)
        return p

    @classmethod
    def from_exchange(cls, exchange, symbols=None):
        """Build from an ``engine.config.ExchangeConfig`` (optionally only ``symbols``)."""
        assets = []
        for spec in _iter(exchange, "assets"):
            assets.append(Asset(_get(spec, "asset_id", "id"), _get(spec, "name", "code"),
                                _unit(spec)))
        by_id = {a.asset_id: a for a in assets}
        by_name = {a.name: a for a in assets}
        products = []
        for spec in _iter(exchange, "symbols"):
            name = _get(spec, "name", "symbol")
            if symbols and name not in symbols:
                continue
            base = _asset_ref(_get(spec, "base_asset", "base"), by_id, by_name)
            quote = _asset_ref(_get(spec, "quote_asset", "quote"), by_id, by_name)
            products.append(Product(_get(spec, "symbol_id", "id"), name, base, quote,
                                    _get(spec, "tick_size", "tick"), _get(spec, "lot_size", "lot"),
                                    _get(spec, "min_qty", default=None),
                                    _get(spec, "max_qty", default=None)))
        return cls(products, assets)


_MISSING = object()


def _get(spec, *names, **kw):
    for n in names:
        if isinstance(spec, dict):
            if n in spec:
                return spec[n]
        elif hasattr(spec, n):
            return getattr(spec, n)
    if "default" in kw:
        return kw["default"]
    raise AttributeError("exchange config entry %r has none of %s" % (spec, names))


def _iter(exchange, attr):
    items = getattr(exchange, attr)
    if callable(items):
        items = items()
    if isinstance(items, dict):
        items = items.values()
    return list(items)


def _unit(spec):
    unit = _get(spec, "unit", "minor_unit", default=None)
    if unit is not None:
        return Decimal(str(unit))
    decimals = _get(spec, "decimals", "scale", "places")
    return Decimal(1).scaleb(-int(decimals))


def _asset_ref(ref, by_id, by_name):
    if isinstance(ref, int):
        return by_id[ref]
    if isinstance(ref, str):
        return by_name[ref]
    return by_id[int(_get(ref, "asset_id", "id"))]
