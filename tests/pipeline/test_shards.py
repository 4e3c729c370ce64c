"""Several shards from one configuration; the client routes by symbol."""
import os

import pytest

from ringbuf.records import EventKind, Reason


@pytest.mark.timeout(240)
def test_two_shards_route_by_symbol(engine_factory):
    run = engine_factory()
    import json
    with open(run.config) as f:
        raw = json.load(f)
    a, b = run.shard + "a", run.shard + "b"
    raw["shards"] = [
        {"name": a, "symbols": ["BTC-USD"], "input_capacity": 1 << 12, "output_capacity": 1 << 14},
        {"name": b, "symbols": ["ETH-USD", "ETH-BTC"], "input_capacity": 1 << 12,
         "output_capacity": 1 << 14, "publisher_port": run.port + 1},
    ]
    with open(run.config, "w") as f:
        json.dump(raw, f)
    run.shard = run.shard  # segments() matches both rm-<shard>a-* and rm-<shard>b-*
    run.start()
    run.wait_for(r"proc=supervisor shard=%s .*event=ready .*symbols=ETH-USD,ETH-BTC" % b, timeout=60)
    from engine.client import EngineClient, ShardedClient
    with ShardedClient.attach(data_dir=run.data_dir, account=5) as client:
        assert client.shard_of_symbol == {"BTC-USD": a, "ETH-USD": b, "ETH-BTC": b}
        for symbol, asset in (("BTC-USD", "USD"), ("ETH-USD", "USD")):
            seq = client.deposit(asset, "100000", symbol=symbol)
            assert client.client(symbol).wait_outcome(seq, timeout=30).kind == EventKind.ACCEPTED
        btc = client.place_order("BTC-USD", "buy", qty="0.5", price="30000")
        eth = client.place_order("ETH-USD", "buy", qty="1", price="2000.0")
        assert client.client("BTC-USD").wait_outcome(btc, timeout=30).kind == EventKind.ACCEPTED
        assert client.client("ETH-USD").wait_outcome(eth, timeout=30).kind == EventKind.ACCEPTED
        with pytest.raises(KeyError, match="no shard trades"):
            client.place_order("DOGE-USD", "buy", qty="1", price="1")
    # a shard's matcher knows only its own symbols: a misrouted order is rejected, not traded
    with EngineClient.attach(shard=b, data_dir=run.data_dir, account=5) as direct:
        spec_id = 1  # BTC-USD's symbol id in the default exchange config
        from ringbuf.records import CommandKind
        from engine.client import pack_command
        seq = direct.producer.write(pack_command(int(CommandKind.NEW_ORDER), side=1, order_type=1,
                                                 tif=1, symbol_id=spec_id, account_id=5,
                                                 producer_id=direct.producer_id, price=30000, qty=1))
        ev = direct.wait_outcome(seq, timeout=30)
        assert (ev.kind, ev.reason) == (EventKind.REJECTED, Reason.UNKNOWN_SYMBOL)
    assert run.stop() == 0
    assert not [n for n in os.listdir("/dev/shm") if n.startswith("rm-%s" % run.shard)]
    journals = sorted(os.listdir(os.path.join(run.data_dir, "journal")))
    assert any(j.startswith(a + "-") for j in journals) and any(j.startswith(b + "-") for j in journals)
