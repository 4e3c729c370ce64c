"""Reference data: assets, symbols, fees, and the Decimal <-> integer edge.

The matcher's core works in integers only:

* prices in **ticks** (``price = ticks * tick_size``, quote asset per base unit),
* quantities in **lots** (``qty = lots * lot_size``, base units),
* balances in **minor units** of an asset (``amount = minor / 10**decimals``).

Two derived integers per symbol connect them and are what the hot path uses:

* ``base_per_lot``  = ``lot_size * 10**base.decimals``  (base minor units in one lot)
* ``quote_per_tick_lot`` = ``tick_size * lot_size * 10**quote.decimals`` (quote minor
  units of one tick times one lot), so ``notional = price_ticks * qty_lots * quote_per_tick_lot``.

Both must be integers; :class:`ExchangeConfig` refuses a symbol where they are not
(fail fast at construction).  Decimal conversion helpers (``price_to_ticks`` ...)
are for the edges (clients, tools, tests) and are never called by the matcher.

Fees are in basis points of the quote notional and always charged in the quote
asset.  ``taker_fee_bps`` is in [0, 1000]; ``maker_fee_bps`` may be negative (a
rebate) but ``|maker| <= taker`` so that the fee account can never go negative.

Example::

    >>> from engine.config import DEFAULT_CONFIG
    >>> spec = DEFAULT_CONFIG.symbol("BTC-USD")
    >>> DEFAULT_CONFIG.price_to_ticks(spec, Decimal("65000"))
    65000
"""
from decimal import Decimal

__all__ = ["Asset", "SymbolSpec", "ExchangeConfig", "ConfigError", "DEFAULT_CONFIG",
           "TRADING", "HALTED"]

#: SymbolSpec.status values
TRADING = "trading"
HALTED = "halted"


class ConfigError(ValueError):
    """The exchange configuration is inconsistent; the message names the item."""


def _dec(value):
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _integral(value):
    return value == value.to_integral_value()


class Asset(object):
    """An asset (currency): ``asset_id`` (1..65535), ``name``, ``decimals`` of its minor unit."""

    __slots__ = ("asset_id", "name", "decimals")

    def __init__(self, asset_id, name, decimals):
        if not isinstance(asset_id, int) or not 0 < asset_id < 65536:
            raise ConfigError("asset %r: id must be 1..65535" % (name,))
        if not isinstance(decimals, int) or not 0 <= decimals <= 18:
            raise ConfigError("asset %r: decimals must be 0..18" % (name,))
        self.asset_id = asset_id
        self.name = name
        self.decimals = decimals

    @property
    def id(self):
        return self.asset_id

    def to_dict(self):
        return {"id": self.asset_id, "name": self.name, "decimals": self.decimals}

    def __repr__(self):
        return "Asset(%d, %r, %d)" % (self.asset_id, self.name, self.decimals)


class SymbolSpec(object):
    """A tradable symbol.

    ``min_qty``/``max_qty`` are in lots; fees in bps of the quote notional;
    ``price_band_bps`` (0 = none): limit prices further than this from the last
    trade are rejected with ``PRICE_OUT_OF_BAND``.
    """

    __slots__ = ("symbol_id", "name", "base_asset", "quote_asset", "tick_size", "lot_size",
                 "min_qty", "max_qty", "maker_fee_bps", "taker_fee_bps", "price_band_bps",
                 "status", "base_per_lot", "quote_per_tick_lot")

    def __init__(self, symbol_id, name, base_asset, quote_asset, tick_size, lot_size,
                 min_qty=1, max_qty=10 ** 12, maker_fee_bps=0, taker_fee_bps=0,
                 price_band_bps=0, status=TRADING):
        if not isinstance(symbol_id, int) or not 0 < symbol_id < 65536:
            raise ConfigError("symbol %r: id must be 1..65535" % (name,))
        self.symbol_id = symbol_id
        self.name = name
        self.base_asset = int(base_asset)
        self.quote_asset = int(quote_asset)
        self.tick_size = _dec(tick_size)
        self.lot_size = _dec(lot_size)
        self.min_qty = int(min_qty)
        self.max_qty = int(max_qty)
        self.maker_fee_bps = int(maker_fee_bps)
        self.taker_fee_bps = int(taker_fee_bps)
        self.price_band_bps = int(price_band_bps)
        self.status = status
        self.base_per_lot = 0
        self.quote_per_tick_lot = 0
        if self.tick_size <= 0 or self.lot_size <= 0:
            raise ConfigError("symbol %r: tick_size and lot_size must be positive" % (name,))
        if not 1 <= self.min_qty <= self.max_qty <= (1 << 62):
            raise ConfigError("symbol %r: need 1 <= min_qty <= max_qty <= 2**62" % (name,))
        if not 0 <= self.taker_fee_bps <= 1000:
            raise ConfigError("symbol %r: taker_fee_bps must be 0..1000" % (name,))
        if abs(self.maker_fee_bps) > self.taker_fee_bps:
            raise ConfigError("symbol %r: |maker_fee_bps| must not exceed taker_fee_bps "
                              "(the fee account would go negative)" % (name,))
        if not 0 <= self.price_band_bps <= 10000 * 100:
            raise ConfigError("symbol %r: price_band_bps out of range" % (name,))
        if status not in (TRADING, HALTED):
            raise ConfigError("symbol %r: status must be %r or %r" % (name, TRADING, HALTED))

    def to_dict(self):
        return {"id": self.symbol_id, "name": self.name, "base": self.base_asset,
                "quote": self.quote_asset, "tick_size": str(self.tick_size),
                "lot_size": str(self.lot_size), "min_qty": self.min_qty, "max_qty": self.max_qty,
                "maker_fee_bps": self.maker_fee_bps, "taker_fee_bps": self.taker_fee_bps,
                "price_band_bps": self.price_band_bps, "status": self.status}

    def __repr__(self):
        return "SymbolSpec(%d, %r)" % (self.symbol_id, self.name)


class ExchangeConfig(object):
    """Assets, symbols and the fee account; validated at construction.

    Raises :class:`ConfigError` if an id repeats, a symbol names an unknown asset,
    or one tick x one lot is not an integral number of quote minor units (or one
    lot not an integral number of base minor units).  O(assets + symbols).
    """

    def __init__(self, assets, symbols, fee_account_id=0):
        self.assets = {}
        self.symbols = {}
        self._assets_by_name = {}
        self._symbols_by_name = {}
        for asset in assets:
            if asset.asset_id in self.assets or asset.name in self._assets_by_name:
                raise ConfigError("asset %r repeats" % (asset.name,))
            self.assets[asset.asset_id] = asset
            self._assets_by_name[asset.name] = asset
        for spec in symbols:
            if spec.symbol_id in self.symbols or spec.name in self._symbols_by_name:
                raise ConfigError("symbol %r repeats" % (spec.name,))
            for aid in (spec.base_asset, spec.quote_asset):
                if aid not in self.assets:
                    raise ConfigError("symbol %r: unknown asset id %r" % (spec.name, aid))
            if spec.base_asset == spec.quote_asset:
                raise ConfigError("symbol %r: base and quote are the same asset" % (spec.name,))
            base = self.assets[spec.base_asset]
            quote = self.assets[spec.quote_asset]
            bpl = spec.lot_size.scaleb(base.decimals)
            qptl = (spec.tick_size * spec.lot_size).scaleb(quote.decimals)
            if not _integral(bpl):
                raise ConfigError("symbol %r: one lot (%s) is not a whole number of %s minor "
                                  "units" % (spec.name, spec.lot_size, base.name))
            if not _integral(qptl):
                raise ConfigError("symbol %r: one tick x one lot (%s) is not a whole number of "
                                  "%s minor units" % (spec.name, spec.tick_size * spec.lot_size,
                                                      quote.name))
            spec.base_per_lot = int(bpl)
            spec.quote_per_tick_lot = int(qptl)
            self.symbols[spec.symbol_id] = spec
            self._symbols_by_name[spec.name] = spec
        if not isinstance(fee_account_id, int) or not 0 <= fee_account_id < (1 << 32):
            raise ConfigError("fee_account_id must be a u32")
        self.fee_account_id = fee_account_id

    # -- lookup ------------------------------------------------------------
    def symbol(self, name):
        """SymbolSpec by name; raises KeyError."""
        return self._symbols_by_name[name]

    def symbol_by_id(self, symbol_id):
        """SymbolSpec by id; raises KeyError."""
        return self.symbols[symbol_id]

    def asset(self, name):
        """Asset by name; raises KeyError."""
        return self._assets_by_name[name]

    def asset_by_id(self, asset_id):
        """Asset by id; raises KeyError."""
        return self.assets[asset_id]

    def _spec(self, spec):
        if isinstance(spec, SymbolSpec):
            return spec
        if isinstance(spec, int):
            return self.symbols[spec]
        return self._symbols_by_name[spec]

    # -- Decimal <-> integer (edges only) ---------------------------------
    def price_to_ticks(self, spec, price):
        """Decimal price -> integer ticks; ValueError if not on the tick grid."""
        spec = self._spec(spec)
        ticks = _dec(price) / spec.tick_size
        if not _integral(ticks):
            raise ValueError("price %s is not a multiple of tick %s" % (price, spec.tick_size))
        return int(ticks)

    def ticks_to_price(self, spec, ticks):
        return self._spec(spec).tick_size * ticks

    def qty_to_lots(self, spec, qty):
        """Decimal quantity (base units) -> integer lots; ValueError if off the lot grid."""
        spec = self._spec(spec)
        lots = _dec(qty) / spec.lot_size
        if not _integral(lots):
            raise ValueError("qty %s is not a multiple of lot %s" % (qty, spec.lot_size))
        return int(lots)

    def lots_to_qty(self, spec, lots):
        return self._spec(spec).lot_size * lots

    def amount_to_minor(self, asset_id, amount):
        """Decimal amount of an asset -> integer minor units; ValueError if finer."""
        asset = self.assets[asset_id] if isinstance(asset_id, int) else self._assets_by_name[asset_id]
        minor = _dec(amount).scaleb(asset.decimals)
        if not _integral(minor):
            raise ValueError("amount %s has more than %d decimals" % (amount, asset.decimals))
        return int(minor)

    def minor_to_amount(self, asset_id, minor):
        asset = self.assets[asset_id] if isinstance(asset_id, int) else self._assets_by_name[asset_id]
        return Decimal(minor).scaleb(-asset.decimals)

    # -- (de)serialisation -------------------------------------------------
    def to_dict(self):
        return {"fee_account_id": self.fee_account_id,
                "assets": [a.to_dict() for a in self.assets.values()],
                "symbols": [s.to_dict() for s in self.symbols.values()]}

    @classmethod
    def from_dict(cls, data):
        """Build from ``{"assets": [{id,name,decimals}], "symbols": [{id,name,base,quote,
        tick_size,lot_size,...}], "fee_account_id": 0}``; base/quote by id or name."""
        try:
            assets = [Asset(int(a["id"]), a["name"], int(a["decimals"])) for a in data["assets"]]
            by_name = dict((a.name, a.asset_id) for a in assets)

            def aid(v):
                return by_name[v] if isinstance(v, str) else int(v)

            symbols = []
            for s in data["symbols"]:
                symbols.append(SymbolSpec(
                    int(s["id"]), s["name"], aid(s["base"]), aid(s["quote"]),
                    _dec(s["tick_size"]), _dec(s["lot_size"]),
                    min_qty=s.get("min_qty", 1), max_qty=s.get("max_qty", 10 ** 12),
                    maker_fee_bps=s.get("maker_fee_bps", 0),
                    taker_fee_bps=s.get("taker_fee_bps", 0),
                    price_band_bps=s.get("price_band_bps", 0),
                    status=s.get("status", TRADING)))
        except KeyError as exc:
            raise ConfigError("exchange config: missing key %s" % (exc,))
        return cls(assets, symbols, fee_account_id=int(data.get("fee_account_id", 0)))

    def fingerprint(self):
        """Canonical bytes of everything the matcher's arithmetic depends on."""
        parts = ["fee=%d" % self.fee_account_id]
        for a in sorted(self.assets.values(), key=lambda a: a.asset_id):
            parts.append("A%d:%s:%d" % (a.asset_id, a.name, a.decimals))
        for s in sorted(self.symbols.values(), key=lambda s: s.symbol_id):
            parts.append("S%d:%s:%d:%d:%d:%d:%d:%d:%d:%d:%d" % (
                s.symbol_id, s.name, s.base_asset, s.quote_asset, s.base_per_lot,
                s.quote_per_tick_lot, s.min_qty, s.max_qty, s.maker_fee_bps, s.taker_fee_bps,
                s.price_band_bps))
        return ";".join(parts).encode()


USD, BTC, ETH = 1, 2, 3
BTC_USD, ETH_USD, ETH_BTC = 1, 2, 3

#: assets USD (cents), BTC (satoshi), ETH (gwei); fee account 0.
DEFAULT_CONFIG = ExchangeConfig(
    assets=[Asset(USD, "USD", 2), Asset(BTC, "BTC", 8), Asset(ETH, "ETH", 9)],
    symbols=[
        # BTC-USD: tick 1 USD, lot 0.01 BTC -> one tick x lot = 0.01 USD = 1 cent;
        # maker rebate 1 bps, taker 5 bps
        SymbolSpec(BTC_USD, "BTC-USD", BTC, USD, Decimal("1"), Decimal("0.01"),
                   min_qty=1, max_qty=1000000, maker_fee_bps=-1, taker_fee_bps=5,
                   price_band_bps=0),
        # ETH-USD: tick 0.1 USD, lot 0.1 ETH -> 1 cent per tick-lot
        SymbolSpec(ETH_USD, "ETH-USD", ETH, USD, Decimal("0.1"), Decimal("0.1"),
                   min_qty=1, max_qty=1000000, maker_fee_bps=2, taker_fee_bps=5),
        # ETH-BTC: tick 0.00001 BTC, lot 0.001 ETH -> 1e-8 BTC = 1 satoshi per tick-lot
        SymbolSpec(ETH_BTC, "ETH-BTC", ETH, BTC, Decimal("0.00001"), Decimal("0.001"),
                   min_qty=1, max_qty=10000000, maker_fee_bps=0, taker_fee_bps=10),
    ],
    fee_account_id=0,
)
