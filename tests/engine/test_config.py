"""ExchangeConfig validation and the Decimal <-> integer edge; Command/Event records."""
from decimal import Decimal

import pytest

from engine.commands import Command
from engine.config import DEFAULT_CONFIG, Asset, ConfigError, ExchangeConfig, SymbolSpec
from engine.events import BytesSink, Event, ListSink

pytestmark = pytest.mark.pypy

ASSETS = [Asset(1, "USD", 2), Asset(2, "BTC", 8)]


def test_default_config_integral_units():
    for spec in DEFAULT_CONFIG.symbols.values():
        assert spec.quote_per_tick_lot >= 1 and spec.base_per_lot >= 1
    assert [s.name for s in DEFAULT_CONFIG.symbols.values()] == ["BTC-USD", "ETH-USD", "ETH-BTC"]


def test_tick_times_lot_must_be_whole_quote_units():
    with pytest.raises(ConfigError, match="tick x one lot"):
        ExchangeConfig(ASSETS, [SymbolSpec(1, "BTC-USD", 2, 1, "0.1", "0.0001")])
    with pytest.raises(ConfigError, match="one lot"):
        ExchangeConfig(ASSETS, [SymbolSpec(1, "BTC-USD", 2, 1, "1", "0.000000001")])


def test_fee_rules():
    with pytest.raises(ConfigError, match="maker"):
        SymbolSpec(1, "X", 2, 1, "1", "0.01", maker_fee_bps=-6, taker_fee_bps=5)
    with pytest.raises(ConfigError):
        SymbolSpec(1, "X", 2, 1, "1", "0.01", taker_fee_bps=-1)
    SymbolSpec(1, "X", 2, 1, "1", "0.01", maker_fee_bps=-5, taker_fee_bps=5)


def test_unknown_asset_and_duplicates():
    with pytest.raises(ConfigError):
        ExchangeConfig(ASSETS, [SymbolSpec(1, "X", 9, 1, "1", "0.01")])
    with pytest.raises(ConfigError):
        ExchangeConfig(ASSETS + [Asset(1, "EUR", 2)], [])


def test_conversions():
    spec = DEFAULT_CONFIG.symbol("BTC-USD")
    assert DEFAULT_CONFIG.price_to_ticks(spec, Decimal("65000")) == 65000
    assert DEFAULT_CONFIG.qty_to_lots("BTC-USD", Decimal("1.25")) == 125
    assert DEFAULT_CONFIG.amount_to_minor(1, Decimal("12.34")) == 1234
    assert DEFAULT_CONFIG.minor_to_amount(1, 1234) == Decimal("12.34")
    with pytest.raises(ValueError):
        DEFAULT_CONFIG.qty_to_lots(spec, Decimal("0.001"))
    with pytest.raises(ValueError):
        DEFAULT_CONFIG.amount_to_minor(1, Decimal("0.001"))


def test_from_dict_round_trip():
    again = ExchangeConfig.from_dict(DEFAULT_CONFIG.to_dict())
    assert again.fingerprint() == DEFAULT_CONFIG.fingerprint()
    with pytest.raises(ConfigError, match="missing"):
        ExchangeConfig.from_dict({"assets": []})


def test_command_pack_unpack():
    c = Command.limit(7, 1, 1, 100, 5, tif=2, expire_ns=99, client_order_id=3)
    d = Command.unpack(c.pack())
    assert d.expire_ns == 99 and d.funds == 99 and d.order_id == 99
    d.funds = d.order_id = 0
    assert d == c


def test_sinks_agree():
    lst, byt = ListSink(), BytesSink()
    fields = (1, 1, 1, 1, 0) + tuple(range(6, 26))
    for s in (lst, byt):
        s.emit_event(*fields)
        s.emit_event(*fields)
        s.mark_last()
    data = byt.take()
    assert Event.unpack_all(data) == lst.events
    assert lst.events[1].flags & 4 and not lst.events[0].flags & 4
    assert Event.unpack(lst.events[0].pack()) == lst.events[0]
