"""The WebSocket hub in-process: slow-consumer rule, conflation and sequences (no network)."""
import asyncio
import json

import pytest

from engine.commands import Command
from engine.config import DEFAULT_CONFIG
from engine.events import ListSink
from engine.matcher import Matcher
from publisher.products import Catalog
from publisher.read_model import ReadModel
from publisher.ws import Hub, WsClient

pytestmark = pytest.mark.timeout(60)


class FakeSocket(object):
    """A WebSocket whose sends block while ``gate`` is clear (a client that stops reading)."""

    def __init__(self):
        self.sent = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed = None

    async def send_text(self, text):
        await self.gate.wait()
        self.sent.append(json.loads(text))

    async def close(self, code=1000, reason=""):
        self.closed = code


def _setup(conflate_ms=0.0, max_queue=4, clock=None):
    cat = Catalog.from_exchange(DEFAULT_CONFIG)
    model = ReadModel([1, 2, 3], specs={s: DEFAULT_CONFIG.symbol_by_id(s) for s in (1, 2, 3)})
    hub = Hub(cat, model, max_queue=max_queue, conflate_ms=conflate_ms, clock=clock)
    sink = ListSink()
    matcher = Matcher(DEFAULT_CONFIG, sink)
    state = {"seq": 0}

    def run(*cmds):
        for cmd in cmds:
            state["seq"] += 1
            matcher.process(state["seq"], cmd)
        hub.publish(model.apply(sink.take()))
    run(Command.deposit(1, 1, 10 ** 12), Command.deposit(1, 2, 10 ** 12))
    return hub, model, run


def test_slow_client_overflow_sends_resync_then_fresh_snapshot():
    async def main():
        hub, model, run = _setup(max_queue=4)
        slow_ws, fast_ws = FakeSocket(), FakeSocket()
        slow, fast = WsClient(hub, slow_ws, 4), WsClient(hub, fast_ws, 1000)
        for c in (slow, fast):
            hub.add(c)
            hub.subscribe(c, "level2", 1)
            c.writer = asyncio.ensure_future(c.run_writer())
        slow_ws.gate.clear()                       # the slow client stops reading
        for i in range(20):
            run(Command.limit(1, 1, 1, 1000 + i, 1))
            await asyncio.sleep(0)
        assert slow.resyncing and slow.resyncs == 1 and len(slow.queue) == 1
        await asyncio.sleep(0.01)
        assert [m["sequence"] for m in fast_ws.sent] == list(range(1, 21))   # unaffected
        run(Command.limit(1, 1, 1, 2000, 1))       # while resyncing: nothing queued
        assert len(slow.queue) == 1
        slow_ws.gate.set()
        await asyncio.sleep(0.01)
        types = [m["type"] for m in slow_ws.sent]
        assert "resync" in types
        snap = slow_ws.sent[types.index("resync") + 1]
        assert snap["type"] == "snapshot" and snap["sequence"] == model.symbol(1).level2_seq
        assert len(snap["bids"]) == 21             # current, not stale
        run(Command.limit(1, 1, 1, 2001, 1))
        await asyncio.sleep(0.01)
        assert slow_ws.sent[-1]["type"] == "l2update"
        assert slow_ws.sent[-1]["sequence"] == snap["sequence"] + 1
        for c in (slow, fast):
            c.writer.cancel()
    asyncio.run(main())


def test_stuck_client_is_disconnected_after_timeout():
    async def main():
        now = [0.0]
        hub, model, run = _setup(max_queue=2, clock=lambda: now[0])
        hub.resync_timeout_s = 5.0
        ws = FakeSocket()
        ws.gate.clear()
        c = WsClient(hub, ws, 2)
        hub.add(c)
        hub.subscribe(c, "level2", 1)
        c.writer = asyncio.ensure_future(c.run_writer())
        for i in range(5):
            run(Command.limit(1, 1, 1, 1000 + i, 1))
            await asyncio.sleep(0)
        assert c.resyncing
        now[0] += 6.0
        run(Command.limit(1, 1, 1, 999, 1))
        await asyncio.sleep(0.01)
        assert c.closing and c not in hub.clients and hub.disconnects == 1
        assert ws.closed == 1008
    asyncio.run(main())


def test_conflation_merges_batches_and_keeps_sequences_consecutive():
    async def main():
        now = [100.0]
        hub, model, run = _setup(conflate_ms=10.0, clock=lambda: now[0])
        ws = FakeSocket()
        c = WsClient(hub, ws, 100)
        hub.add(c)
        hub.subscribe(c, "level2", 1)
        c.writer = asyncio.ensure_future(c.run_writer())
        now[0] += 1.0
        run(Command.limit(1, 1, 1, 1000, 1))         # leading edge: published at once
        run(Command.limit(1, 1, 1, 1001, 1))         # within 10 ms: pending
        run(Command.limit(1, 1, 1, 1000, 2))         # same level again: merged
        await asyncio.sleep(0)
        assert len(c.queue) + len(ws.sent) == 1
        now[0] += 0.02
        await asyncio.sleep(0.03)                     # the timer flushes
        await asyncio.sleep(0.01)
        seqs = [m["sequence"] for m in ws.sent]
        assert seqs == [1, 2]
        assert sorted(ws.sent[1]["changes"]) == [["buy", "1000", "0.03"], ["buy", "1001", "0.01"]]
        c.writer.cancel()
    asyncio.run(main())


def _ws_metrics(hub, model):
    """``GET /metrics``'s WebSocket families for this hub, parsed as Prometheus does."""
    import types
    from prometheus_client.parser import text_string_to_metric_families
    from publisher.metrics import ShardCollector, build_registry, render
    text = render(build_registry(ShardCollector(types.SimpleNamespace(model=model, hub=hub))))
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name.startswith("ringmatch_ws_"):
            out[family.name] = family.type
            for s in family.samples:
                out[s.name] = s.value
    return out


def test_metrics_drop_counters_survive_resyncs_and_disconnects():
    """The per-client ``dropped`` restarts at 0 with each resync notice and leaves with a
    disconnected client; the hub's ``*_total`` counters add up every drop exactly."""
    async def main():
        now = [0.0]
        hub, model, run = _setup(max_queue=4, clock=lambda: now[0])
        hub.resync_timeout_s = 5.0
        ws = FakeSocket()
        c = WsClient(hub, ws, 4)
        hub.add(c)
        hub.subscribe(c, "level2", 1)
        c.writer = asyncio.ensure_future(c.run_writer())
        await asyncio.sleep(0)
        before = _ws_metrics(hub, model)
        assert before["ringmatch_ws_messages_dropped"] == "counter"
        assert before["ringmatch_ws_queue_overflows"] == "counter"
        assert before["ringmatch_ws_messages_dropped_total"] == 0.0
        price = [1000]

        async def overflow(n):
            ws.gate.clear()                        # the client stops reading
            for _ in range(n):
                price[0] += 1
                run(Command.limit(1, 1, 1, price[0], 1))
                await asyncio.sleep(0)
            assert c.resyncing
            ws.gate.set()
            await asyncio.sleep(0.01)              # resync notice + snapshot sent
            notice = [m for m in ws.sent if m["type"] == "resync"][-1]
            assert not c.resyncing and c.dropped == 0           # the client's own count reset
            return notice["dropped"]

        first = await overflow(20)
        got = [m for m in ws.sent if m["type"] == "l2update"]
        assert first == 20 - len(got) > 0          # what the client did not get
        m = _ws_metrics(hub, model)
        assert m["ringmatch_ws_messages_dropped_total"] == first
        assert m["ringmatch_ws_queue_overflows_total"] == 1
        assert m["ringmatch_ws_dropped_messages"] == 0          # the gauge forgot them

        second = await overflow(12)
        m = _ws_metrics(hub, model)
        assert m["ringmatch_ws_messages_dropped_total"] == first + second
        assert m["ringmatch_ws_queue_overflows_total"] == 2

        ws.gate.clear()                            # a third overflow, then stuck: disconnected
        for _ in range(10):
            price[0] += 1
            run(Command.limit(1, 1, 1, price[0], 1))
            await asyncio.sleep(0)
        third = c.dropped
        now[0] += 6.0
        price[0] += 1
        run(Command.limit(1, 1, 1, price[0], 1))   # dropped too, then the disconnect
        await asyncio.sleep(0.01)
        assert c not in hub.clients and ws.closed == 1008
        m = _ws_metrics(hub, model)
        assert m["ringmatch_ws_clients"] == 0
        assert m["ringmatch_ws_messages_dropped_total"] == first + second + third + 1
        assert m["ringmatch_ws_queue_overflows_total"] == 3
        assert m["ringmatch_ws_slow_disconnects_total"] == 1
        c.writer.cancel()
    asyncio.run(asyncio.wait_for(main(), 30))
