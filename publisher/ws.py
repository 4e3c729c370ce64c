"""WebSocket feeds: level2, trades, ticker per product; the authenticated user channel.

Theory of operation (numbered rules; the code refers to them):

1. One endpoint, ``/ws``.  A client sends ``{"type": "subscribe", "product_ids":
   [...], "channels": [...]}``; channels are ``level2``, ``trades``, ``ticker``
   and ``user`` (the user channel needs ``key``, ``timestamp`` and
   ``signature`` = the REST signature of ``timestamp + "GET" + "/ws"``); a
   signature is accepted once (auth rule 6): a replayed subscribe is an error.
2. Every market-data message carries ``sequence``: the per-product, per-channel
   message counter of the read model (read_model rule 4).  level2 starts with a
   ``snapshot`` whose sequence is that of the book it shows; each ``l2update``
   then has sequence + 1.  A client that sees any other step has missed data
   and re-subscribes to get a new snapshot.  User reports carry a per-account
   ``sequence`` the same way.
3. Each message is serialized once per batch and handed to every subscriber
   as the same string: the publisher's cost grows with messages, not with
   messages x clients.
4. Each client has a bounded queue and its own writer task; the hub only
   appends (never awaits a client).  When the queue is full the client is
   "resyncing": its queue is emptied, nothing more is queued for it, and its
   writer sends a ``resync`` notice and then fresh level2 snapshots built at
   that moment (so the client never gets stale deltas).  A client whose writer
   has not finished sending that notice and those snapshots ``resync_timeout_s``
   after the overflow is disconnected: a timer checks it (the feed may have
   gone quiet), the close frame gets one second, then the TCP connection is
   aborted (a close frame cannot pass a full send buffer).
5. Conflation (``conflate_ms``, leading-edge throttle): a batch is published at
   once if the previous publication is at least ``conflate_ms`` old; otherwise
   it is merged into one pending set of changes published when that interval
   ends.  Idle feeds have no added latency; under load every product gets at
   most one l2update/trades/ticker message per interval, which is what keeps
   many subscribers cheap.  Level sizes are absolute, so a snapshot taken while
   changes are pending stays consistent with the next l2update.
"""
import asyncio
import json
import time
from collections import deque

from publisher import auth as auth_mod
from publisher.auth import shorten
from publisher.views import book_json, report_json, ticker_json, trade_json

__all__ = ["Hub", "WsClient", "websocket_endpoint"]

CHANNELS = ("level2", "trades", "ticker", "user")
_RESYNC = object()
_CLOSE = object()
_SIDE = {1: "buy", 2: "sell"}


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


class WsClient(object):
    """One connected WebSocket client: subscriptions, bounded queue, writer (rule 4)."""

    def __init__(self, hub, websocket, max_queue):
        self.hub = hub
        self.websocket = websocket
        self.max_queue = max_queue
        self.queue = deque()
        self.wakeup = asyncio.Event()
        self.subs = set()              # (channel, symbol_id)
        self.account_id = None
        self.resyncing = False
        self.dropped = 0
        self.resyncs = 0
        self.sent = 0
        self.user_seq = 0
        self.writer = None
        self.resync_started = 0.0
        self.resync_token = 0          # != 0 while a resync is not completely sent
        self.closing = False

    def disconnect(self):
        """Drop a client that stays stuck (rule 4): stop its writer and close the socket."""
        self.closing = True
        self.hub.disconnects += 1
        # the hub may be iterating a subscriber set right now: leave it on the next step
        asyncio.get_running_loop().call_soon(self.hub.remove, self)
        if self.writer is not None:
            self.writer.cancel()

        async def _close(ws=self.websocket):
            try:
                await asyncio.wait_for(ws.close(code=1008, reason="too slow"), 1.0)
            except Exception:
                pass
            abort = self.hub.abort_connection      # rule 4: a full send buffer keeps
            if abort is not None:                  # the close frame out
                abort(getattr(ws, "scope", None) or {})
        asyncio.ensure_future(_close())

    def _check_stuck(self, token):
        """Timer of rule 4: disconnect if the resync ``token`` is still not sent."""
        if self.resync_token == token and not self.closing:
            self.disconnect()

    def push(self, message):
        """Queue a serialized message (hub side; never blocks)."""
        if self.closing:
            return
        if self.resyncing:
            self.dropped += 1
            if (not self.closing and self.hub.clock() - self.resync_started
                    > self.hub.resync_timeout_s):
                self.disconnect()
            return
        if len(self.queue) >= self.max_queue:
            self.dropped += len(self.queue) + 1
            self.queue.clear()
            self.resyncing = True
            self.resync_started = self.hub.clock()
            self.resyncs += 1
            self.resync_token = self.resyncs
            self.queue.append(_RESYNC)
            try:
                asyncio.get_running_loop().call_later(
                    self.hub.resync_timeout_s, self._check_stuck, self.resync_token)
            except RuntimeError:       # no loop (unit tests drive push by hand)
                pass
        else:
            self.queue.append(message)
        self.wakeup.set()

    def close_soon(self):
        self.queue.clear()
        self.queue.append(_CLOSE)
        self.wakeup.set()

    async def run_writer(self):
        ws = self.websocket
        queue = self.queue
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while queue:
                item = queue.popleft()
                if item is _CLOSE:
                    await ws.close(code=1008)
                    return
                if item is _RESYNC:
                    await self._send_resync()
                    continue
                await ws.send_text(item)
                self.sent += 1

    async def _send_resync(self):
        hub = self.hub
        notice = {"type": "resync", "reason": "slow consumer: queue of %d messages overflowed"
                  % self.max_queue, "dropped": self.dropped,
                  "product_ids": sorted({hub.catalog.by_id[s].name for c, s in self.subs
                                         if s in hub.catalog.by_id})}
        # rule 4: snapshots are built now, and queueing resumes in the same loop step
        snapshots = [hub.snapshot_message(sym) for ch, sym in sorted(self.subs) if ch == "level2"]
        self.resyncing = False
        self.dropped = 0
        token = self.resync_token
        await self.websocket.send_text(_dumps(notice))
        for snap in snapshots:
            await self.websocket.send_text(snap)
        if self.resync_token == token:
            self.resync_token = 0


class Hub(object):
    """Subscriptions and fan-out of read-model changes (rules 2-4)."""

    def __init__(self, catalog, model, max_queue=1000, resync_timeout_s=10.0, clock=None,
                 conflate_ms=0.0):
        self.catalog = catalog
        self.model = model
        self.max_queue = max_queue
        self.resync_timeout_s = resync_timeout_s
        self.clients = set()
        self.subs = {}                 # (channel, symbol_id) -> set of clients
        self.user_subs = {}            # account -> set of clients
        self.messages = 0
        self.disconnects = 0
        self.clock = time.monotonic if clock is None else clock
        self.conflate_s = conflate_ms / 1000.0
        self.pending = None             # conflated Changes waiting for flush (rule 5)
        self.abort_connection = None    # hook(scope): abort the TCP connection (rule 4)
        self.last_flush = 0.0

    # -------------------------------------------------------------- registry
    def add(self, client):
        self.clients.add(client)

    def remove(self, client):
        self.clients.discard(client)
        for key in list(client.subs):
            s = self.subs.get(key)
            if s is not None:
                s.discard(client)
        if client.account_id is not None:
            s = self.user_subs.get(client.account_id)
            if s is not None:
                s.discard(client)
        client.subs.clear()

    def subscribe(self, client, channel, symbol_id):
        client.subs.add((channel, symbol_id))
        self.subs.setdefault((channel, symbol_id), set()).add(client)

    def unsubscribe(self, client, channel, symbol_id):
        client.subs.discard((channel, symbol_id))
        s = self.subs.get((channel, symbol_id))
        if s is not None:
            s.discard(client)

    def subscribe_user(self, client, account_id):
        client.account_id = account_id
        self.user_subs.setdefault(account_id, set()).add(client)

    # -------------------------------------------------------------- messages
    def snapshot_message(self, symbol_id):
        product = self.catalog.by_id[symbol_id]
        view = self.model.symbol(symbol_id)
        msg = book_json(view, product, 2, self.model.applied_seq)
        msg["type"] = "snapshot"
        msg["channel"] = "level2"
        return _dumps(msg)

    def ticker_message(self, symbol_id):
        product = self.catalog.by_id[symbol_id]
        view = self.model.symbol(symbol_id)
        msg = ticker_json(view, product, self.model.applied_seq)
        msg["type"] = "ticker"
        msg["channel"] = "ticker"
        msg["sequence"] = view.ticker_seq
        return _dumps(msg)

    def publish(self, changes):
        """Take one batch of changes (rule 5: now, or conflated into the next flush)."""
        if changes is None:
            return
        if self.pending is not None:
            self.pending.merge(changes)
            return
        now = self.clock()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:            # no loop yet (the rebuild at start): nothing to defer to
            loop = None
        if loop is None or self.conflate_s <= 0 or now - self.last_flush >= self.conflate_s:
            self.last_flush = now
            self._publish_now(changes)
            return
        self.pending = changes
        loop.call_later(self.conflate_s - (now - self.last_flush), self.flush)

    def flush(self):
        """Publish conflated changes now (also before answering a ping: ordering)."""
        changes, self.pending = self.pending, None
        if changes is not None:
            self.last_flush = self.clock()
            self._publish_now(changes)

    def _publish_now(self, changes):
        """Fan one set of changes out to subscribers (rules 2, 3).  O(messages + deliveries)."""
        catalog = self.catalog
        subs = self.subs
        model = self.model
        applied = model.applied_seq
        for sym, levels in changes.level2.items():
            view = model.symbol(sym)
            view.level2_seq += 1                       # rule 2: every message, subscribed or not
            clients = subs.get(("level2", sym))
            if not clients:
                continue
            product = catalog.by_id[sym]
            fp, fq = product.fmt_price, product.fmt_qty
            text = _dumps({"type": "l2update", "channel": "level2", "product_id": product.name,
                           "sequence": view.level2_seq, "input_seq": applied,
                           "ts_ns": changes.ts_ns,
                           "changes": [[_SIDE.get(side), fp(p), fq(q)]
                                       for (side, p), q in levels.items()]})
            self._deliver(clients, text)
        for sym in changes.ticker:
            model.symbol(sym).ticker_seq += 1
        for sym, trades in changes.trades.items():
            view = model.symbol(sym)
            view.trades_seq += 1
            seq = view.trades_seq
            clients = subs.get(("trades", sym))
            if not clients:
                continue
            product = catalog.by_id[sym]
            text = _dumps({"type": "trades", "channel": "trades", "product_id": product.name,
                           "sequence": seq, "input_seq": applied,
                           "ts_ns": trades[-1].timestamp_ns,
                           "trades": [trade_json(t, product) for t in trades]})
            self._deliver(clients, text)
        for sym in changes.ticker:
            clients = subs.get(("ticker", sym))
            if clients:
                self._deliver(clients, self.ticker_message(sym))
        if changes.user and self.user_subs:
            for account, reports in changes.user.items():
                clients = self.user_subs.get(account)
                if not clients:
                    continue
                for event, order in reports:
                    product = catalog.by_id.get(event.symbol_id) if event.kind != 10 else None
                    body = report_json(event, order, product, catalog)
                    for c in list(clients):
                        c.user_seq += 1
                        body["type"] = "report"
                        body["channel"] = "user"
                        body["sequence"] = c.user_seq
                        c.push(_dumps(body))
                        self.messages += 1
        for event in changes.status:
            product = catalog.by_id.get(event.symbol_id)
            if product is None:
                continue
            text = _dumps({"type": "status", "product_id": product.name,
                           "halted": self.model.symbol(event.symbol_id).halted,
                           "input_seq": event.seq})
            for ch in ("level2", "ticker", "trades"):
                clients = subs.get((ch, event.symbol_id))
                if clients:
                    self._deliver(clients, text)

    def _deliver(self, clients, text):
        for c in clients:
            c.push(text)
        self.messages += len(clients)


async def websocket_endpoint(websocket, hub, keystore, clock=None):
    """Serve one WebSocket connection (rule 1)."""
    from starlette.websockets import WebSocketDisconnect
    await websocket.accept()
    client = WsClient(hub, websocket, hub.max_queue)
    hub.add(client)
    client.writer = asyncio.ensure_future(client.run_writer())
    try:
        while True:
            text = await websocket.receive_text()
            try:
                msg = json.loads(text)
                if not isinstance(msg, dict):
                    raise ValueError("a message is a JSON object")
            except ValueError as exc:
                client.push(_dumps({"type": "error",
                                    "message": "bad message: %s" % shorten(str(exc), 80)}))
                continue
            _handle(client, hub, keystore, msg)
    except WebSocketDisconnect:
        pass
    except RuntimeError:
        pass  # socket closed while receiving
    finally:
        hub.remove(client)
        if client.writer is not None:
            client.writer.cancel()


def _error(client, message):
    # errors bypass the resync gate: they answer the client's own request
    client.queue.append(_dumps({"type": "error", "message": message}))
    client.wakeup.set()


def _handle(client, hub, keystore, msg):
    kind = msg.get("type")
    hub.flush()       # rule 5: whatever was applied before this message is sent before the reply
    if kind == "ping":
        client.queue.append(_dumps({"type": "pong", "input_seq": hub.model.applied_seq}))
        client.wakeup.set()
        return
    if kind not in ("subscribe", "unsubscribe"):
        _error(client, "unknown message type %s (subscribe, unsubscribe, ping)" % shorten(kind))
        return
    channels = msg.get("channels") or []
    product_names = msg.get("product_ids") or []
    if not isinstance(channels, list) or not isinstance(product_names, list):
        _error(client, "channels and product_ids must be lists")
        return
    bad = [c for c in channels if c not in CHANNELS]
    if bad or not channels:
        _error(client, "unknown channel(s) %s (one of %s)" % (shorten(bad, 80), ", ".join(CHANNELS)))
        return
    products = []
    for name in product_names:
        try:
            products.append(hub.catalog.product(name))
        except (KeyError, TypeError, AttributeError):
            _error(client, "unknown product %s" % shorten(name))
            return
    if any(c != "user" for c in channels) and not products:
        _error(client, "product_ids is required for %s" % ", ".join(c for c in channels if c != "user"))
        return
    if kind == "unsubscribe":
        for ch in channels:
            if ch == "user":
                s = hub.user_subs.get(client.account_id)
                if s is not None:
                    s.discard(client)
                continue
            for p in products:
                hub.unsubscribe(client, ch, p.symbol_id)
        client.queue.append(_dumps({"type": "subscriptions", "channels": _listing(client, hub)}))
        client.wakeup.set()
        return
    if "user" in channels:
        try:
            # auth rule 6: a replayed subscribe (same signature again) is refused
            key = keystore.verify(msg.get("key"), str(msg.get("timestamp") or ""),
                                  msg.get("signature"), "GET", "/ws", b"")
        except auth_mod.AuthError as exc:
            _error(client, "user channel: %s" % exc.message)
            return
        hub.subscribe_user(client, key.account_id)
    replies = []
    for ch in channels:
        if ch == "user":
            continue
        for p in products:
            hub.subscribe(client, ch, p.symbol_id)
    replies.append(_dumps({"type": "subscriptions", "channels": _listing(client, hub)}))
    # rule 2: the snapshot goes into the queue in the same loop step as the
    # subscription, so the next l2update is exactly sequence + 1
    for ch in channels:
        for p in products:
            if ch == "level2":
                replies.append(hub.snapshot_message(p.symbol_id))
            elif ch == "ticker":
                replies.append(hub.ticker_message(p.symbol_id))
    if client.resyncing:
        return   # the writer sends snapshots of every subscription after the notice
    client.queue.extend(replies)
    client.wakeup.set()


def _listing(client, hub):
    by_channel = {}
    for ch, sym in sorted(client.subs):
        by_channel.setdefault(ch, []).append(hub.catalog.by_id[sym].name)
    out = [{"name": ch, "product_ids": names} for ch, names in sorted(by_channel.items())]
    if client.account_id is not None and client in hub.user_subs.get(client.account_id, ()):
        out.append({"name": "user", "account_id": client.account_id})
    return out
