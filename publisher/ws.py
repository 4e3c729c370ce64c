"""WebSocket feeds: level2, trades, ticker, heartbeat per product; the authenticated user channel.

Theory of operation (numbered rules; the code refers to them):

1. One endpoint, ``/ws``.  A client sends ``{"type": "subscribe", "product_ids":
   [...], "channels": [...]}`` (or rule 8's object form); channels are
   ``level2``, ``trades``, ``ticker``, ``heartbeat`` (rule 7) and ``user`` (the
   user channel needs ``key``, ``timestamp`` and ``signature`` = the REST
   signature of ``timestamp + "GET" + "/ws"``, or Coinbase Exchange's form:
   ``key``, ``passphrase``, ``timestamp`` and ``signature`` = the CB-ACCESS-SIGN
   of ``timestamp + "GET" + "/users/self/verify"``, auth rule 8; a message with
   ``passphrase`` is judged by that scheme only); both go through
   ``KeyStore.verify`` as REST does, and a signature is accepted once (auth
   rule 6): a replayed subscribe is an error.
2. Every market-data message carries ``sequence``: the per-product, per-channel
   message counter of the read model (read_model rule 4).  level2 starts with a
   ``snapshot`` whose sequence is that of the book it shows; each ``l2update``
   then has sequence + 1.  A client that sees any other step has missed data
   and re-subscribes to get a new snapshot.  User reports carry a per-account
   ``sequence`` the same way.
3. Each message is serialized once per fan-out and handed to every subscriber
   as the same object (``Outgoing``): its JSON text, and its WebSocket frame
   (RFC 6455 server frames are unmasked, so one frame's bytes serve every
   connection) built at most once.  The publisher's encoding cost grows with
   messages, not with messages x clients; per client there is one queue append
   or one ``transport.write`` of shared bytes (rule 6).
4. Each client has a bounded queue and its own writer task; the hub only
   appends (never awaits a client).  When the queue is full (``max_queue``
   messages, or for raw clients of rule 6 ``max_queue_bytes`` of frames) the client is
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
   changes are pending stays consistent with the next l2update.  The interval
   stretches with the fan-out's per-client cost (queue appends and writes, not
   the encoding, which is paid once per message whatever the audience): it is
   at least the last fan-out's delivery CPU time / ``fanout_share`` (default 0.25),
   so however many subscribers there are, delivering takes at most about that
   share of the loop and the rest stays with ingestion (the ring feed's
   batches): more subscribers make updates coarser, never ingestion slower.
   Writer tasks' sends (rule 6's backlog) count in the next interval too; the
   stretch is bounded by ``max_interval_s`` (0.25 s: a fan-out's messages, which the
   transport may copy once per client, stay that size).  ``conflate_ms`` 0 turns both off.
6. Direct writes (the uvicorn ``websockets-sansio`` protocol, ``raw``): a
   client whose queue is empty, whose writer is idle and whose transport is
   not paused (its write-buffer limits are set to 0: nothing left unsent) gets its
   frames written to the transport at once, in the hub's loop step: no task
   switch, no await, and one ``write`` per client per fan-out (the frames of
   one fan-out are joined).  Otherwise frames go to the bounded queue of rule
   4 as references to the shared bytes (a slow client costs pointers, not
   copies; the transport copies at most one fan-out's unsent part per client)
   and the writer task sends them, at most ``WRITE_CHUNK`` bytes a write, when
   the transport has drained.  Frames are
   uncompressed text frames (RSV1 clear), valid with or without
   permessage-deflate (RFC 7692 section 6).  Other WebSocket implementations
   (and the tests' fake sockets) use the writer task and ``send_text`` for
   every message.
7. ``heartbeat`` (as Coinbase Exchange): every ``heartbeat_s`` (1 s) one
   ``{"type": "heartbeat", "last_trade_id", "product_id", "sequence", "time"}``
   per product with heartbeat subscribers, built once per product per tick and
   shared as rule 3's ``Outgoing`` (one write per client per tick, rule 6).
   ``sequence`` is the product's level2 sequence (rule 2, the ``sequence`` of
   ``GET /products/{p}/book``), ``last_trade_id`` its newest trade; conflated
   changes are flushed first, so both are those of messages already sent.  The
   timer runs only while someone subscribes; its delivery time counts in rule
   5's interval as the writer tasks' sends do.
8. Subscriptions (rule 1) take Coinbase's object form too: each entry of
   ``channels`` is a name (for the top-level ``product_ids``) or
   ``{"name": ..., "product_ids": [...]}`` (its own products; without them the
   top-level ones).  A request is checked whole before anything changes; a bad
   one gets ``{"type": "error", "message", "reason"}`` naming the problem, and
   the connection stays.  ``unsubscribe`` of a channel without products removes
   all of that channel's products (Coinbase).  The answer is ``subscriptions``
   with the whole current set.  The user channel's ``product_ids`` are ignored
   (it carries every report of the key's account).
9. A user report's ``client_oid`` is the text the client sent when it was a
   UUID (``hub.client_oids``: the publisher's ``ClientOids``, client_oids rule
   3), else the integer.
10. Revocation: a user subscription remembers the key it was verified with.
   While any exists, a timer (every ``key_check_s``, 0.5 s) lets the key store
   re-read its file (auth rule 10: at most every ``reload_s``, 1 s); only when
   that loaded a new key set are the user subscriptions checked, so a revoked,
   removed or changed key (or a key file that became invalid: fail closed)
   gets ``{"type": "error", "reason": "key revoked", "message": ...}`` and a
   ``subscriptions`` message without ``user``, within about 1-2 s of the
   ``ringmatch keys revoke``; its other channels stay.  The fan-out itself does
   no per-report check.
"""
import asyncio
import datetime
import json
import struct
import time
from collections import deque

from publisher import auth as auth_mod
from publisher.auth import shorten
from publisher.views import SIDE_NAMES, book_json, report_json, ticker_json

__all__ = ["Hub", "WsClient", "Outgoing", "text_frame", "websocket_endpoint"]

CHANNELS = ("level2", "trades", "ticker", "heartbeat", "user")
#: what Coinbase Exchange's WebSocket subscribe signs (rule 1): timestamp + "GET" + this
COINBASE_VERIFY_PATH = "/users/self/verify"
_RESYNC = object()
# rule 5 measures the fan-out's own CPU time (thread time), not wall time: on a busy
# machine a preempted fan-out must not look expensive and stretch the interval
_cpu_clock = getattr(time, "thread_time", time.perf_counter)
WRITE_CHUNK = 64 * 1024        # rule 6: bytes a writer task joins into one write, at most
_CLOSE = object()
_SIDE = {1: "buy", 2: "sell"}


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


_HEAD16 = struct.Struct("!BBH").pack
_HEAD64 = struct.Struct("!BBQ").pack


def text_frame(payload):
    """One unmasked, unfragmented RFC 6455 text frame (server to client) around ``payload``.

    O(len(payload)) (one copy).

    >>> text_frame(b"hi")
    b'\\x81\\x02hi'
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _HEAD16(0x81, 126, n) + payload
    return _HEAD64(0x81, 127, n) + payload


class Outgoing(object):
    """A serialized message for many clients: its text and its frame, built once (rule 3)."""
    __slots__ = ("text", "_frame")

    def __init__(self, text):
        self.text = text
        self._frame = None

    @property
    def frame(self):
        f = self._frame
        if f is None:
            f = self._frame = text_frame(self.text.encode())
        return f


def _frame_of(item):
    if isinstance(item, Outgoing):
        return item.frame
    return text_frame(item.encode())


class Formats(object):
    """A product's price/size strings and trade times, memoized (rule 3's encoding cost).

    The same strings as ``Product.fmt_price`` / ``fmt_qty`` and ``views.iso_time``
    (~2 and ~10 us each through Decimal and datetime); prices and sizes repeat
    from one fan-out to the next, and a second's prefix serves all its trades.
    Each memo is dropped when it holds ``limit`` entries.  O(1) per value.
    """
    __slots__ = ("product", "prices", "sizes", "seconds", "limit")

    def __init__(self, product, limit=1 << 16):
        self.product = product
        self.prices, self.sizes, self.seconds = {}, {}, {}
        self.limit = limit

    def price(self, ticks):
        s = self.prices.get(ticks)
        if s is None:
            if len(self.prices) >= self.limit:
                self.prices.clear()
            s = self.prices[ticks] = self.product.fmt_price(ticks)
        return s

    def size(self, lots):
        s = self.sizes.get(lots)
        if s is None:
            if len(self.sizes) >= self.limit:
                self.sizes.clear()
            s = self.sizes[lots] = self.product.fmt_qty(lots)
        return s

    def time(self, ns):
        if not ns:
            return None
        sec, rem = divmod(int(ns), 10 ** 9)
        prefix = self.seconds.get(sec)
        if prefix is None:
            if len(self.seconds) >= 4096:
                self.seconds.clear()
            prefix = self.seconds[sec] = datetime.datetime.fromtimestamp(
                sec, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        return prefix + ".%06dZ" % (rem // 1000)

    def trades(self, trades):
        """``views.trade_json`` of each trade."""
        price, size, when = self.price, self.size, self.time
        sides = SIDE_NAMES
        return [{"trade_id": t.trade_id, "price": price(t.price), "size": size(t.qty),
                 "side": sides.get(t.taker_side), "time": when(t.timestamp_ns), "seq": t.seq}
                for t in trades]

    def trades_json(self, trades):
        """The JSON array of ``trades()`` (compact separators), built by formatting.

        The strings are ASCII digits, dots and names (nothing to escape), so the
        text equals ``json.dumps(self.trades(trades), separators=(",", ":"))``.
        Columnar ``TradeList``s are read column-wise, without Trade objects.
        O(trades), ~1 us each.
        """
        cols = _trade_columns(trades)
        if cols is not None:
            rows = zip(*[cols[name].tolist() for name in
                         ("trade_id", "price", "qty", "taker_side", "timestamp_ns", "seq")])
        else:
            rows = ((t.trade_id, t.price, t.qty, t.taker_side, t.timestamp_ns, t.seq)
                    for t in trades)
        price_of, size_of, sec_of = self.prices.get, self.sizes.get, self.seconds.get
        sides = _SIDE_JSON
        out = []
        append = out.append
        for trade_id, p, q, side, ts, seq in rows:
            ps = price_of(p) or self.price(p)
            qs = size_of(q) or self.size(q)
            if ts:
                sec, rem = divmod(ts, 1000000000)
                prefix = sec_of(sec) or self.time(ts)[:-8]
                append('{"trade_id":%d,"price":"%s","size":"%s","side":%s,'
                       '"time":"%s.%06dZ","seq":%d}' % (trade_id, ps, qs, sides.get(side, "null"),
                                                        prefix, rem // 1000, seq))
            else:
                append('{"trade_id":%d,"price":"%s","size":"%s","side":%s,"time":null,'
                       '"seq":%d}' % (trade_id, ps, qs, sides.get(side, "null"), seq))
        return "[" + ",".join(out) + "]"

    def levels_json(self, levels):
        """JSON of ``[[side, price, size], ...]`` for {(side, price): size} (as json.dumps)."""
        price_of, size_of = self.prices.get, self.sizes.get
        price, size = self.price, self.size
        sides = _SIDE_JSON
        return "[" + ",".join(['[%s,"%s","%s"]' % (sides.get(side, "null"),
                                                   price_of(p) or price(p), size_of(q) or size(q))
                               for (side, p), q in levels.items()]) + "]"


def _trade_columns(trades):
    """The TRADE_DTYPE array of a columnar ``TradeList`` whose objects are not built, else
    None (a list of Trade objects: the object model)."""
    parts = _column_parts(trades)
    if parts is None:
        return None
    if len(parts) == 1:
        return parts[0]
    import numpy as np
    return np.concatenate(parts)


def _column_parts(trades):
    """A TradeList's parts when all are TRADE_DTYPE arrays and no objects were built."""
    parts = getattr(trades, "parts", None)
    if parts is None or getattr(trades, "_list", 1) is not None or not parts:
        return None
    for part in parts:
        names = getattr(getattr(part, "dtype", None), "names", None)
        if not names or "timestamp_ns" not in names:
            return None
    return parts


def last_trade_ns(trades):
    """``trades[-1].timestamp_ns`` without building a columnar TradeList's objects."""
    parts = _column_parts(trades)
    if parts is not None:
        for part in reversed(parts):
            if len(part):
                return int(part["timestamp_ns"][-1])
    return trades[-1].timestamp_ns


_SIDE_JSON = {1: '"buy"', 2: '"sell"'}


def sansio_protocol():
    """The uvicorn ``websockets-sansio`` protocol serving the current task, or None (rule 6).

    uvicorn runs the ASGI app of a connection in a task whose coroutine is the
    protocol's ``run_asgi``; its ``self`` is the protocol (transport, writable
    event).  Anything else (another implementation, a test) gives None.
    """
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
        task = asyncio.current_task()
        frame = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
        proto = frame.f_locals.get("self") if frame is not None else None
    except Exception:
        return None
    if isinstance(proto, WebSocketsSansIOProtocol) and getattr(proto, "transport", None):
        return proto
    return None


class WsClient(object):
    """One connected WebSocket client: subscriptions, bounded queue, writer (rules 4, 6).

    ``raw``: the uvicorn sansio protocol of the connection (``sansio_protocol()``)
    for direct writes of shared frames (rule 6), or None (``send_text`` per message).
    """

    def __init__(self, hub, websocket, max_queue, raw=None):
        self.hub = hub
        self.websocket = websocket
        self.max_queue = max_queue
        self.raw = raw
        self.queue = deque()
        self.queued_bytes = 0          # frame bytes in the queue (raw clients, rule 4)
        self.outbox = []               # frames of the fan-out in progress (rule 6)
        self.writing = False           # the writer task holds the socket (rule 6)
        self.wakeup = asyncio.Event()
        self.subs = set()              # (channel, symbol_id)
        self.account_id = None
        self.resyncing = False
        self.dropped = 0
        self.resyncs = 0
        self.sent = 0                  # messages handed to the socket
        self.bytes_sent = 0            # frame bytes written (raw clients)
        self.writes = 0                # transport writes (raw clients)
        self.user_seq = 0
        self.user_key = None           # the ApiKey the user channel was verified with (rule 10)
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
        """Queue or write a message (``Outgoing`` or text; hub side; never blocks).  O(1)."""
        if self.closing:
            return
        if self.resyncing:
            self.dropped += 1
            self.hub.dropped_total += 1
            if (not self.closing and self.hub.clock() - self.resync_started
                    > self.hub.resync_timeout_s):
                self.disconnect()
            return
        queue = self.queue
        raw = self.raw
        if raw is not None and not queue and not self.writing and raw.writable.is_set():
            data = message.frame if isinstance(message, Outgoing) else _frame_of(message)
            touched = self.hub._touched                 # rule 6: one write per fan-out
            if touched is not None:
                if not self.outbox:
                    touched.append(self)
                self.outbox.append(data)
            else:
                self._write(data, 1)
            return
        frame = None
        if raw is not None:
            frame = message.frame if isinstance(message, Outgoing) else _frame_of(message)
        if len(queue) >= self.max_queue or (
                frame is not None and self.queued_bytes + len(frame) > self.hub.max_queue_bytes
                and queue):
            self.dropped += len(queue) + 1
            self.hub.dropped_total += len(queue) + 1
            queue.clear()
            self.queued_bytes = 0
            self.resyncing = True
            self.resync_started = self.hub.clock()
            self.resyncs += 1
            self.hub.resyncs_total += 1
            self.resync_token = self.resyncs
            queue.append(_RESYNC)
            try:
                asyncio.get_running_loop().call_later(
                    self.hub.resync_timeout_s, self._check_stuck, self.resync_token)
            except RuntimeError:       # no loop (unit tests drive push by hand)
                pass
        elif frame is not None:
            queue.append(frame)                 # shared: the queue holds references
            self.queued_bytes += len(frame)
        else:
            queue.append(message.text if isinstance(message, Outgoing) else message)
        self.wakeup.set()

    def flush_outbox(self):
        """Write the frames this fan-out gave the client, joined (rule 6)."""
        out = self.outbox
        if out:
            self.outbox = []
            if len(out) == 1:
                self._write(out[0], 1)
            elif sum(map(len, out)) <= WRITE_CHUNK:
                self._write(b"".join(out), len(out))
            else:                      # large: no joined copy, and once the transport
                transport = self.raw.transport      # holds an unsent part, the rest
                for i, data in enumerate(out):      # waits in the queue as shared frames
                    if i and transport.get_write_buffer_size():
                        rest = out[i:]
                        self.queue.extend(rest)
                        self.queued_bytes += sum(map(len, rest))
                        self.wakeup.set()
                        break
                    self._write(data, 1)

    def _write(self, data, messages):
        raw = self.raw
        if raw.disconnected or raw.close_sent or raw.transport.is_closing():
            return                     # gone: the endpoint's receive sees the disconnect
        raw.transport.write(data)
        self.sent += messages
        self.bytes_sent += len(data)
        self.writes += 1

    def close_soon(self):
        self.queue.clear()
        self.queued_bytes = 0
        self.queue.append(_CLOSE)
        self.wakeup.set()

    async def run_writer(self):
        if self.raw is not None:
            return await self._run_raw_writer()
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

    async def _run_raw_writer(self):
        """Rule 6's slow path: send queued frames once the transport takes them again."""
        raw = self.raw
        queue = self.queue
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while queue:
                if not raw.writable.is_set():
                    self.writing = True
                    try:
                        await raw.writable.wait()
                    finally:
                        self.writing = False
                    if raw.disconnected:
                        return
                    continue               # the queue may have been replaced meanwhile
                item = queue.popleft()
                if item is _CLOSE:
                    await self.websocket.close(code=1008)
                    return
                if item is _RESYNC:
                    self.writing = True
                    try:
                        await self._send_resync()
                    finally:
                        self.writing = False
                    continue
                # shared frames, joined up to WRITE_CHUNK bytes: the transport copies what it
                # cannot send at once, so a backlog is never copied whole per client
                t0 = _cpu_clock()
                parts = [item if isinstance(item, bytes) else _frame_of(item)]
                size = len(parts[0])
                while queue and size < WRITE_CHUNK and queue[0] is not _RESYNC \
                        and queue[0] is not _CLOSE:
                    nxt = queue.popleft()
                    nxt = nxt if isinstance(nxt, bytes) else _frame_of(nxt)
                    parts.append(nxt)
                    size += len(nxt)
                self.queued_bytes = max(0, self.queued_bytes - size)
                self._write(parts[0] if len(parts) == 1 else b"".join(parts), len(parts))
                self.hub.writer_s += _cpu_clock() - t0

    async def _send_text(self, text):
        raw = self.raw
        if raw is None:
            await self.websocket.send_text(text)
            return
        await raw.writable.wait()        # as uvicorn's own send: wait for the buffer to drain
        self._write(text_frame(text.encode()), 1)

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
        await self._send_text(_dumps(notice))
        for snap in snapshots:
            await self._send_text(snap)
        if self.raw is not None:
            await self.raw.writable.wait()   # taken by the client (below the high-water mark)
        if self.resync_token == token:
            self.resync_token = 0


class Hub(object):
    """Subscriptions and fan-out of read-model changes (rules 2-6).

    Counters (tests, benchmarks): ``published`` batches given to ``publish``,
    ``fanouts`` (publications after conflation), ``encoded`` {(channel,
    symbol_id): messages serialized}, ``messages`` (deliveries to clients),
    ``fanout_s`` (duration of the last fan-out) and ``fanout_seconds`` (total);
    ``dropped_total``, ``resyncs_total`` and ``disconnects`` (rule 4, monotonic: /metrics).
    """

    def __init__(self, catalog, model, max_queue=1000, resync_timeout_s=10.0, clock=None,
                 conflate_ms=0.0, fanout_share=0.25, max_queue_bytes=4 << 20,
                 max_interval_s=0.25):
        self.catalog = catalog
        self.model = model
        self.max_queue = max_queue
        self.resync_timeout_s = resync_timeout_s
        self.clients = set()
        self.subs = {}                 # (channel, symbol_id) -> set of clients
        self.user_subs = {}            # account -> set of clients
        self.messages = 0
        self.disconnects = 0            # rule 4: clients disconnected as too slow (ever)
        # rule 4, for /metrics: what every client ever dropped and overflow resyncs, kept
        # here as a client's ``dropped`` restarts at 0 with each resync notice and a
        # disconnected client takes its own counts with it; both only ever grow
        self.dropped_total = 0
        self.resyncs_total = 0
        self.clock = time.monotonic if clock is None else clock
        self.conflate_s = conflate_ms / 1000.0
        self.pending = None             # conflated Changes waiting for flush (rule 5)
        self.abort_connection = None    # hook(scope): abort the TCP connection (rule 4)
        self.last_flush = 0.0
        self.fanout_share = fanout_share    # rule 5: fan-out's share of the loop, at most
        self.max_interval_s = max_interval_s    # rule 5: the stretched interval's bound
        self.max_queue_bytes = max_queue_bytes  # rule 4: a raw client's queue, in bytes
        self.fanout_s = 0.0             # per-client part of the last fan-out (rule 5)
        self.fanout_seconds = 0.0
        self._delivery_s = 0.0
        self.writer_s = 0.0             # writer tasks' write time since the last fan-out
        self._snapshot = (None, None)   # ((symbol, level2_seq, applied_seq), text)
        self.published = 0
        self.fanouts = 0
        self.encoded = {}
        self._touched = None            # clients written to by the fan-out in progress (rule 6)
        self.formats = {}               # symbol_id -> Formats
        self.heartbeat_s = 1.0          # rule 7
        self.heartbeats = 0             # heartbeat ticks that sent something
        self._hb_handle = None
        self._hb_next = 0.0
        self.client_oids = None         # rule 9: publisher.client_oids.ClientOids, or None
        self.keystore = None            # rule 10: the KeyStore the user channel verifies with
        self.key_check_s = 0.5          # rule 10: how often the key store is looked at
        self.key_checks = 0             # rule 10: user subscriptions re-checked (reloads seen)
        self.key_drops = 0              # rule 10: user subscriptions dropped
        self._key_handle = None
        self._keys_seen = None

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
        if channel == "heartbeat" and self._hb_handle is None:
            self._start_heartbeat()

    # -------------------------------------------------------------- heartbeat (rule 7)
    def _start_heartbeat(self):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:            # no loop (unit tests driving the hub by hand)
            return
        self._hb_next = loop.time() + self.heartbeat_s
        self._hb_handle = loop.call_at(self._hb_next, self.heartbeat_tick)

    def heartbeat_tick(self):
        """Send one heartbeat per product with heartbeat subscribers; re-arm the timer
        while there are any.  O(products + deliveries)."""
        self._hb_handle = None
        syms = sorted(sym for (ch, sym), clients in self.subs.items()
                      if ch == "heartbeat" and clients)
        if not syms:
            return                      # stopped; the next heartbeat subscribe restarts it
        self.flush()                    # conflated changes first: sequence as sent
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        d0 = self._delivery_s
        touched = self._touched = []
        t1 = 0.0
        try:
            for sym in syms:
                clients = self.subs.get(("heartbeat", sym))
                product = self.catalog.by_id.get(sym)
                if not clients or product is None:
                    continue
                view = self.model.symbol(sym)
                self._deliver(clients, _dumps({
                    "type": "heartbeat", "last_trade_id": int(view.last_trade_id or 0),
                    "product_id": product.name, "sequence": view.level2_seq, "time": now}),
                    ("heartbeat", sym))
        finally:
            self._touched = None
            t0 = _cpu_clock()
            for client in touched:
                client.flush_outbox()
            t1 = _cpu_clock() - t0
        self.writer_s += self._delivery_s - d0 + t1       # rule 5 counts it next time
        self._delivery_s = d0
        self.heartbeats += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        now_t = loop.time()
        self._hb_next += self.heartbeat_s
        if self._hb_next <= now_t:      # a late tick: the next one a full interval later
            self._hb_next = now_t + self.heartbeat_s
        self._hb_handle = loop.call_at(self._hb_next, self.heartbeat_tick)

    def unsubscribe(self, client, channel, symbol_id):
        client.subs.discard((channel, symbol_id))
        s = self.subs.get((channel, symbol_id))
        if s is not None:
            s.discard(client)

    def subscribe_user(self, client, account_id, api_key=None):
        """Subscribe ``client`` to ``account_id``'s reports, verified with ``api_key``
        (rule 10 re-checks it while the subscription lasts)."""
        if client.account_id is not None and client.account_id != account_id:
            self.unsubscribe_user(client)       # one account per connection: the latest key
        client.account_id = account_id
        client.user_key = api_key
        self.user_subs.setdefault(account_id, set()).add(client)
        if api_key is not None and self._key_handle is None:
            self._start_key_check()

    def unsubscribe_user(self, client):
        s = self.user_subs.get(client.account_id)
        if s is not None:
            s.discard(client)
            if not s:
                del self.user_subs[client.account_id]

    # -------------------------------------------------------------- key revocation (rule 10)
    def _start_key_check(self):
        if self.keystore is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:            # no loop (unit tests driving the hub by hand)
            return
        self._keys_seen = getattr(self.keystore, "keys", None)
        self._key_handle = loop.call_later(self.key_check_s, self.key_check_tick)

    def key_check_tick(self):
        """Rule 10's timer: let the key store re-read its file (at most every ``reload_s``);
        when it did, re-check every user subscription.  Re-arms while there are any.
        O(1) between reloads, O(user subscriptions) on one."""
        self._key_handle = None
        if not any(self.user_subs.values()):
            self._keys_seen = None
            return                      # stopped; the next user subscribe restarts it
        self.check_user_keys()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._key_handle = loop.call_later(self.key_check_s, self.key_check_tick)

    def check_user_keys(self):
        """Refresh the key store; if it loaded a new key set, drop the user subscriptions
        whose key is gone, revoked or changed (rule 10).  Returns the clients dropped."""
        store = self.keystore
        if store is None:
            return []
        refresh = getattr(store, "refresh", None)
        if refresh is not None:
            try:
                refresh()
            except Exception:           # never let the timer die: the check runs next tick
                pass
        keys = getattr(store, "keys", None)
        if keys is self._keys_seen:
            return []                   # no reload since the last check
        self._keys_seen = keys
        self.key_checks += 1
        dropped = []
        for account, clients in list(self.user_subs.items()):
            for c in list(clients):
                old = c.user_key
                if old is None:
                    continue
                new = keys.get(old.key) if keys is not None else None
                if new is not None and new.account_id == old.account_id and \
                        new.secret == old.secret:
                    c.user_key = new
                    continue
                if old.key in getattr(store, "revoked", ()):
                    why = "API key %s has been revoked" % shorten(old.key)
                else:
                    why = "API key %s is no longer valid" % shorten(old.key)
                self.unsubscribe_user(c)
                c.user_key = None
                self.key_drops += 1
                dropped.append(c)
                body = {"type": "error", "reason": "key revoked",
                        "message": "user channel: %s; unsubscribed from the user channel "
                                   "(subscribe again with a valid key)" % why}
                c.queue.append(_dumps(body))       # as _error: past the resync gate
                c.queue.append(_dumps({"type": "subscriptions",
                                       "channels": _listing(c, self)}))
                c.wakeup.set()
        return dropped

    # -------------------------------------------------------------- messages
    def snapshot_message(self, symbol_id):
        """The level2 snapshot of ``symbol_id`` now (text); one build serves every client
        that asks before the book or the applied sequence moves (many subscribing or
        resyncing at once).  O(levels), O(1) when cached."""
        product = self.catalog.by_id[symbol_id]
        view = self.model.symbol(symbol_id)
        applied = self.model.applied_seq
        key = (symbol_id, view.level2_seq, applied)
        cached_key, text = self._snapshot
        if cached_key == key:
            return text
        msg = book_json(view, product, 2, applied)
        msg["type"] = "snapshot"
        msg["channel"] = "level2"
        text = _dumps(msg)
        self._snapshot = (key, text)
        return text

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
        self.published += 1
        if self.pending is not None:
            self.pending.merge(changes)
            return
        now = self.clock()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:            # no loop yet (the rebuild at start): nothing to defer to
            loop = None
        interval = self.conflate_s
        if interval > 0 and self.fanout_share > 0:      # rule 5: fan-out's own cost
            interval = max(interval, min(self.max_interval_s,
                                         self.fanout_s / self.fanout_share))
        if loop is None or self.conflate_s <= 0 or now - self.last_flush >= interval:
            self.last_flush = now
            self._publish_now(changes)
            return
        self.pending = changes
        loop.call_later(interval - (now - self.last_flush), self.flush)

    def flush(self):
        """Publish conflated changes now (also before answering a ping: ordering)."""
        changes, self.pending = self.pending, None
        if changes is not None:
            self.last_flush = self.clock()
            self._publish_now(changes)

    def _publish_now(self, changes):
        """Fan one set of changes out to subscribers (rules 2, 3, 6).  O(messages + deliveries)."""
        perf_counter = _cpu_clock
        self.fanouts += 1
        self._delivery_s, self.writer_s = self.writer_s, 0.0   # writer tasks' sends count too
        touched = self._touched = []
        try:
            self._fan_out(changes)
        finally:
            self._touched = None
            t0 = perf_counter()
            for client in touched:
                client.flush_outbox()
            self.fanout_s = self._delivery_s + perf_counter() - t0
            self.fanout_seconds += self.fanout_s

    def _fan_out(self, changes):
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
            head = _dumps({"type": "l2update", "channel": "level2", "product_id": product.name,
                           "sequence": view.level2_seq, "input_seq": applied,
                           "ts_ns": changes.ts_ns})
            text = head[:-1] + ',"changes":' + self._formats(sym, product).levels_json(levels) + "}"
            self._deliver(clients, text, ("level2", sym))
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
            head = _dumps({"type": "trades", "channel": "trades", "product_id": product.name,
                           "sequence": seq, "input_seq": applied,
                           "ts_ns": last_trade_ns(trades)})
            text = head[:-1] + ',"trades":' + self._formats(sym, product).trades_json(trades) + "}"
            self._deliver(clients, text, ("trades", sym))
        for sym in changes.ticker:
            clients = subs.get(("ticker", sym))
            if clients:
                self._deliver(clients, self.ticker_message(sym), ("ticker", sym))
        if changes.user and self.user_subs:
            for account, reports in changes.user.items():
                clients = self.user_subs.get(account)
                if not clients:
                    continue
                oids = self.client_oids
                for event, order in reports:
                    product = catalog.by_id.get(event.symbol_id) if event.kind != 10 else None
                    body = report_json(event, order, product, catalog)
                    if oids is not None and order is not None and order.client_order_id:
                        body["client_oid"] = oids.text(order.account_id,         # rule 9
                                                       order.client_order_id)
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
            text = Outgoing(_dumps({"type": "status", "product_id": product.name,
                                    "halted": self.model.symbol(event.symbol_id).halted,
                                    "input_seq": event.seq}))
            for ch in ("level2", "ticker", "trades"):
                clients = subs.get((ch, event.symbol_id))
                if clients:
                    self._deliver(clients, text, ("status", event.symbol_id))

    def _formats(self, sym, product):
        fmt = self.formats.get(sym)
        if fmt is None or fmt.product is not product:
            fmt = self.formats[sym] = Formats(product)
        return fmt

    def _deliver(self, clients, text, key):
        """Hand one message to ``clients`` (rule 3: one ``Outgoing`` shared by all)."""
        message = text if isinstance(text, Outgoing) else Outgoing(text)
        encoded = self.encoded
        encoded[key] = encoded.get(key, 0) + 1
        t0 = _cpu_clock()
        for c in clients:
            c.push(message)
        self._delivery_s += _cpu_clock() - t0
        self.messages += len(clients)


async def websocket_endpoint(websocket, hub, keystore, clock=None, client_oids=None):
    """Serve one WebSocket connection (rules 1, 8).  ``client_oids``: rule 9's mapping."""
    from starlette.websockets import WebSocketDisconnect
    if client_oids is not None:
        hub.client_oids = client_oids
    if keystore is not None:
        hub.keystore = keystore                     # rule 10
    await websocket.accept()
    raw = sansio_protocol()
    if raw is not None:
        # rule 6: "writable" = nothing left in the transport's buffer, so a direct write
        # copies at most one fan-out's unsent bytes per client; the rest wait as shared
        # frames in the queue
        raw.transport.set_write_buffer_limits(high=0, low=0)
    client = WsClient(hub, websocket, hub.max_queue, raw=raw)
    hub.add(client)
    client.writer = asyncio.ensure_future(client.run_writer())
    try:
        while True:
            message = await websocket.receive()
            if message.get("type") == "websocket.disconnect":
                break
            text = message.get("text")
            try:
                if text is None:                    # a binary frame: UTF-8 JSON is accepted
                    text = (message.get("bytes") or b"").decode("utf-8")
                msg = json.loads(text)
                if not isinstance(msg, dict):
                    raise ValueError("a message is a JSON object")
            except ValueError as exc:
                _error(client, "bad message", shorten(str(exc), 80))
                continue
            try:
                _handle(client, hub, keystore, msg)
            except Exception as exc:                # rule 8: an answer, never a silent drop
                _error(client, "bad message", "could not handle it (%s)"
                       % shorten(type(exc).__name__))
    except WebSocketDisconnect:
        pass
    except RuntimeError:
        pass  # socket closed while receiving
    finally:
        hub.remove(client)
        if client.writer is not None:
            client.writer.cancel()


def _error(client, message, reason=None):
    """Coinbase's error form (rule 8): ``message`` says what failed, ``reason`` why;
    ``message`` repeats the reason so older clients reading only it see it too."""
    # errors bypass the resync gate: they answer the client's own request
    body = {"type": "error", "message": message if reason is None else
            "%s: %s" % (message, reason)}
    if reason is not None:
        body["reason"] = reason
    client.queue.append(_dumps(body))
    client.wakeup.set()


class _BadRequest(Exception):
    def __init__(self, reason):
        Exception.__init__(self, reason)
        self.reason = reason


def _product_list(hub, names, where):
    """Products named in ``names`` (a list, deduplicated), None for none given (absent or
    empty: rule 8); _BadRequest naming the bad one.  O(len(names))."""
    if names is None or names == []:
        return None
    if not isinstance(names, list):
        raise _BadRequest("%s must be a list of product ids" % where)
    out = []
    for name in names:
        try:
            p = hub.catalog.product(name) if isinstance(name, str) else None
        except (KeyError, TypeError, AttributeError, ValueError):
            p = None
        if p is None:
            raise _BadRequest("unknown product %s in %s" % (shorten(name), where))
        if p not in out:
            out.append(p)
    return out


def _parse_subscription(hub, msg):
    """Rule 8: a subscribe/unsubscribe message -> [(channel, [Product] or None)], in order
    (None: no product given).  Raises _BadRequest naming the problem.  O(entries)."""
    channels = msg.get("channels")
    top = _product_list(hub, msg.get("product_ids"), "product_ids")
    if not isinstance(channels, list) or not channels:
        raise _BadRequest("channels must be a non-empty list of names or "
                          "{\"name\": ..., \"product_ids\": [...]} objects (channels: %s)"
                          % ", ".join(CHANNELS))
    out = []
    for i, entry in enumerate(channels):
        if isinstance(entry, dict):
            name = entry.get("name")
            where = "channels[%d].product_ids" % i
            products = _product_list(hub, entry.get("product_ids"), where)
            if products is None:
                products = top
        else:
            name, products = entry, top
        if not isinstance(name, str) or name not in CHANNELS:
            raise _BadRequest("unknown channel(s) %s (one of %s)"
                              % (shorten([name] if isinstance(entry, dict) else [entry], 80),
                                 ", ".join(CHANNELS)))
        out.append((name, products))
    if msg.get("type") == "subscribe":
        missing = [ch for ch, products in out if ch != "user" and not products]
        if missing:
            raise _BadRequest("product_ids is required for %s" % ", ".join(missing))
    return out


def _handle(client, hub, keystore, msg):
    kind = msg.get("type")
    hub.flush()       # rule 5: whatever was applied before this message is sent before the reply
    if kind == "ping":
        client.queue.append(_dumps({"type": "pong", "input_seq": hub.model.applied_seq}))
        client.wakeup.set()
        return
    if kind not in ("subscribe", "unsubscribe"):
        _error(client, "bad message", "unknown message type %s (subscribe, unsubscribe, ping)"
               % shorten(kind))
        return
    failed = "Failed to %s" % kind
    try:
        wanted = _parse_subscription(hub, msg)
    except _BadRequest as exc:
        _error(client, failed, exc.reason)
        return
    if kind == "unsubscribe":
        for ch, products in wanted:
            if ch == "user":
                hub.unsubscribe_user(client)
                client.user_key = None
                continue
            if not products:          # rule 8: the whole channel
                syms = [sym for c, sym in client.subs if c == ch]
            else:
                syms = [p.symbol_id for p in products]
            for sym in syms:
                hub.unsubscribe(client, ch, sym)
        client.queue.append(_dumps({"type": "subscriptions", "channels": _listing(client, hub)}))
        client.wakeup.set()
        return
    if any(ch == "user" for ch, _p in wanted):
        try:
            key = _verify_user(keystore, msg)
        except auth_mod.AuthError as exc:
            _error(client, failed, "user channel: %s" % exc.message)
            return
        hub.subscribe_user(client, key.account_id, key)
    replies = []
    for ch, products in wanted:
        if ch == "user":
            continue
        for p in products:
            hub.subscribe(client, ch, p.symbol_id)
    replies.append(_dumps({"type": "subscriptions", "channels": _listing(client, hub)}))
    # rule 2: the snapshot goes into the queue in the same loop step as the
    # subscription, so the next l2update is exactly sequence + 1
    for ch, products in wanted:
        for p in products or ():
            if ch == "level2":
                replies.append(hub.snapshot_message(p.symbol_id))
            elif ch == "ticker":
                replies.append(hub.ticker_message(p.symbol_id))
    if client.resyncing:
        return   # the writer sends snapshots of every subscription after the notice
    client.queue.extend(replies)
    client.wakeup.set()


def _verify_user(keystore, msg):
    """Rule 1's user-channel credentials, either scheme (auth rules 1, 8), through
    ``KeyStore.verify`` as REST: with ``passphrase`` Coinbase Exchange's (base64-decoded
    secret over timestamp + "GET" + "/users/self/verify"), else the RM signature over
    timestamp + "GET" + "/ws".  A replayed subscribe is refused (auth rule 6)."""
    ts = msg.get("timestamp")
    ts = "" if ts is None else (ts if isinstance(ts, str) else _number_text(ts))
    if msg.get("passphrase") is not None:
        return keystore.verify(msg.get("key"), ts, msg.get("signature"), "GET",
                               COINBASE_VERIFY_PATH, b"", passphrase=msg.get("passphrase"),
                               scheme=auth_mod.SCHEME_COINBASE)
    return keystore.verify(msg.get("key"), ts, msg.get("signature"), "GET", "/ws", b"")


def _number_text(value):
    """A JSON number timestamp as the text a client signed (``str`` of an int or float)."""
    if isinstance(value, bool):
        return ""
    return str(value) if isinstance(value, (int, float)) else ""


def _listing(client, hub):
    by_channel = {}
    for ch, sym in sorted(client.subs):
        by_channel.setdefault(ch, []).append(hub.catalog.by_id[sym].name)
    out = [{"name": ch, "product_ids": names} for ch, names in sorted(by_channel.items())]
    if client.account_id is not None and client in hub.user_subs.get(client.account_id, ()):
        out.append({"name": "user", "account_id": client.account_id})
    return out
