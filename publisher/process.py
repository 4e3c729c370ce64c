"""The publisher process: output ring -> read model -> REST/WebSocket; REST writes -> input ring.

``python -m publisher.process --config FILE --shard S`` (docs/interfaces.md).

Theory of operation (numbered rules; the code refers to them):

1. Start: attach both rings, rebuild the read model (publisher/rebuild.py),
   then serve.  The model is built only from events.
2. A consumer thread polls the output ring in batches (``max_batch``), copies
   each batch out of shared memory, commits it, and hands the copy to the
   asyncio loop with ``call_soon_threadsafe`` (service rule 1).  At most
   ``max_inflight`` batches wait on the loop: when the loop is behind, the
   thread stops polling, and the ring's gating pushes back on the matcher
   instead of the publisher's memory growing without bound.
   A batch is copied out as one ``publisher.columnar.EventBatch`` (one bytes copy,
   a numpy structured view) for the columnar read model (the default;
   ``publisher.read_model: "object"`` selects the reference object model, fed event
   tuples by ``publisher.event_decoder.decode_batch``).
   The thread starts BEFORE the rebuild (rule 1) with ``skip_upto`` = the
   journal's durable end J the rebuild replays to: ring events with
   ``seq <= J`` are derived by the rebuild, so they are dropped and
   committed at once (a long rebuild does not gate the matcher on them);
   later events are held (at most ``max_inflight`` batches) until
   ``go_live(loop)``, then handed over in order.
   While the last batch handed to the loop has not started running yet, newly
   polled events are appended to it (up to ``max_batch`` events in all) instead
   of taking a permit and scheduling another callback: when the loop is
   behind, it then applies fewer, larger batches (one ``on_events``, one
   fan-out, one self-pipe wake-up each) and the per-event cost goes down
   exactly when the publisher is the bottleneck.  Order is unchanged (only
   the newest scheduled batch grows), and so is the bound (each batch on the
   loop holds at most ``max_batch`` events).
   After a small batch (fewer than ``max_batch // 16`` events) the thread waits
   ``linger_s`` (``publisher.feed_linger_ms``, default 20 ms) before it polls
   again: at moderate load the matcher publishes a few events at a time, and
   small batches cost the columnar model ~11 us per event (its per-event path)
   against ~1-3 us per event once a batch holds a few hundred; lingering makes
   the next batch hold what arrived meanwhile, and the thread wakes once per
   linger instead of once per matcher batch (measured at 10k commands/s:
   publisher CPU 42 -> 26 us per command with 4 ms, 2 ms: 32; 10 ms: 7-8.7
   against 11-12 with 4 ms, 20 ms: 4.3-5.3 against 7-8 with 10 ms,
   perf/results/e2e_2026-12-04_waits_variants*.md).  WebSocket updates and the
   REST view lag by up to the linger more.  The batch just polled
   is handed over at once (no delay for it); later events wait at most
   ``linger_s`` more.  It does not pause while a REST request waits for an
   outcome or an applied sequence (``urgent``: the service's waiters), so
   REST order latency does not pay for it (a request that arrives during a
   pause waits for the rest of it).  The publisher is not on the colocated
   clients' report path (they read the output ring themselves), and its
   WebSocket fan-out is throttled by ``ws_conflate_ms`` anyway.  0 disables it.
3. REST writes are commands written to the input ring by this process's
   producer (``publisher.producer_id``, default 1) from the loop thread.
5. The listening socket has a bounded send buffer (``publisher.socket_sndbuf``,
   default 128 KiB; accepted sockets inherit it), so a client that stops
   reading fills its kernel buffer quickly and the hub's per-client queue
   rule (ws rule 4) takes over instead of megabytes of stale data queueing
   in the kernel.
4. SIGTERM/SIGINT: uvicorn stops accepting and closes connections; then the
   consumer thread is stopped and joined, the producer leaves the producer
   table and both rings are closed (never unlinked: the supervisor owns them).
"""
import asyncio
import os
import signal
import sys
import threading
import time


__all__ = ["main", "RingFeed", "build_service", "app_options"]

FEED_LINGER_MS = 20      # rule 2


class RingFeed(object):
    """The consumer thread of rule 2."""

    def __init__(self, consumer, loop, on_events, max_batch=4096, max_inflight=8,
                 poll_timeout=0.5, log=None, skip_upto=0, decode=None, linger_s=0.0,
                 urgent=None):
        self.consumer = consumer
        self.decode = decode                  # Batch -> events; default: columnar copy-out
        self.loop = loop                      # None until go_live()
        self.on_events = on_events
        self.max_batch = max_batch
        self.inflight = threading.BoundedSemaphore(max_inflight)
        self.poll_timeout = poll_timeout
        self.linger_s = linger_s              # rule 2: pause after a small batch
        self.urgent = urgent                  # rule 2: () -> True: someone waits, no pause
        self.log = log
        self.skip_upto = skip_upto
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.held = []                        # batches waiting for go_live()
        self.open_batch = None                # scheduled, not yet running: may grow (rule 2)
        self.merged = 0                       # polled batches appended to an open batch
        self.thread = None
        self.events = 0
        self.dropped = 0
        self.error = None

    def start(self):
        self.thread = threading.Thread(target=self._run, name="ring-feed", daemon=True)
        self.thread.start()

    def go_live(self, loop):
        """From now on hand batches to ``loop`` (held ones first, in order)."""
        with self.lock:
            self.loop = loop

    def stop(self, timeout=5.0):
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def _deliver(self, events):
        with self.lock:                       # from now on the feed must not extend it
            if self.open_batch is events:
                self.open_batch = None
        try:
            self.on_events(events)
        finally:
            self.inflight.release()

    def _hand_over(self, events=None):
        """Schedule held batches (and ``events``) on the loop, or hold them; False when closed."""
        with self.lock:
            loop = self.loop
            if loop is None:
                if events is not None:
                    self.held.append(events)
                return True
            pending, self.held = self.held, []
            if events is not None:
                pending.append(events)
            if pending:
                self.open_batch = pending[-1]
            try:
                for batch in pending:
                    loop.call_soon_threadsafe(self._deliver, batch)
            except RuntimeError:                     # loop closed: shutting down
                return False
        return True

    def _merge(self, events):
        """Append ``events`` to the scheduled, not yet running batch if it has room (rule 2)."""
        with self.lock:
            batch = self.open_batch
            if batch is None or self.held or len(batch) + len(events) > self.max_batch:
                return False
            batch.extend(events)
            self.merged += 1
            return True

    def _run(self):
        consumer = self.consumer
        decode = self.decode
        if decode is None:
            from publisher.columnar import EventBatch
            decode = EventBatch.copy_of
        linger, small = self.linger_s, max(1, self.max_batch // 16)
        urgent = self.urgent
        sleep = time.sleep
        pause = False
        try:
            while not self.stopping.is_set():
                if pause:                              # rule 2: after a small batch
                    pause = False
                    if urgent is None or not urgent():
                        sleep(linger)
                if self.held and self.loop is not None and not self._hand_over():
                    return
                batch = consumer.poll(max_batch=self.max_batch, timeout=self.poll_timeout)
                if batch is None:
                    continue
                events = decode(batch)                 # copy out before commit
                consumer.commit(batch.last_seq)
                pause = linger > 0 and batch.count < small
                skip = self.skip_upto
                if skip and self.loop is None and events and events[0].seq <= skip:
                    n = len(events)
                    events = (events.filter_after(skip) if hasattr(events, "filter_after")
                              else [e for e in events if e.seq > skip])
                    self.dropped += n - len(events)
                    if not events:
                        continue
                self.events += len(events)
                if self.open_batch is not None and self._merge(events):
                    continue
                while not self.inflight.acquire(timeout=0.1):
                    if self.stopping.is_set():
                        return
                    # held batches own every permit: once live, hand them over here
                    if self.held and self.loop is not None and not self._hand_over():
                        return
                if not self._hand_over(events):
                    return
        except Exception as exc:  # a bug: log it and let the process die for a restart
            self.error = exc
            if self.log is not None:
                self.log.error("feed_failed", error=repr(exc))
            if self.loop is not None:
                self.loop.call_soon_threadsafe(_exit_loop_hard)


def _exit_loop_hard():
    raise SystemExit(5)


def build_service(runtime, shard, exchange, sender=None, log=None, read_model=None):
    """Catalog + read model + hub + service for one shard (no rings, no server).

    ``read_model`` (or ``publisher.read_model`` in the runtime): ``"columnar"`` (the
    default: ``publisher.columnar``, fed ``EventBatch``es) or ``"object"`` (the reference
    ``publisher.read_model``, fed lists of event tuples).
    """
    from publisher.products import Catalog
    from publisher.ws import Hub
    pub = runtime.publisher if hasattr(runtime, "publisher") else (runtime or {})
    kind = read_model or pub.get("read_model", "columnar")
    if kind == "object":
        from publisher.read_model import ReadModel
        from publisher.service import PublisherService
    elif kind == "columnar":
        from publisher.columnar import ColumnarReadModel as ReadModel
        from publisher.columnar_service import ColumnarService as PublisherService
    else:
        raise ValueError("publisher.read_model must be 'columnar' or 'object', not %r" % (kind,))
    catalog = Catalog.from_exchange(exchange, symbols=shard.symbols or None)
    model = ReadModel([p.symbol_id for p in catalog.products],
                      trades_keep=int(pub.get("trades_keep", 1000)),
                      specs={p.symbol_id: exchange.symbol_by_id(p.symbol_id)
                             for p in catalog.products})
    if pub.get("fills_per_account") is not None:    # REST history (publisher/history.py)
        model.history_fills_keep = int(pub["fills_per_account"])
    hub = Hub(catalog, model, max_queue=int(pub.get("ws_queue", 1000)),
              resync_timeout_s=float(pub.get("ws_resync_timeout_s", 10.0)),
              conflate_ms=float(pub.get("ws_conflate_ms", 5.0)),
              max_queue_bytes=int(pub.get("ws_max_queue_bytes", 4 << 20)),
              max_interval_s=float(pub.get("ws_max_interval_s", 0.25)))
    return PublisherService(catalog, model, hub, sender=sender, log=log)


def app_options(pub):
    """``create_app``'s keyword arguments from the ``publisher`` config section."""
    return {"allow_deposits": bool(pub.get("allow_deposits", True)),
            "max_body_bytes": int(pub.get("max_body_bytes", 16 * 1024)),
            "client_oid_window_s": float(pub.get("client_oid_window_s", 86400)),
            "access_log": bool(pub.get("access_log", True))}


def _listen(host, port, sndbuf):
    """The listening socket (rule 5): accepted connections inherit its send buffer size."""
    import socket
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets (else
    # Nagle + delayed ACK add ~40 ms to every response); set it on the listener too
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if sndbuf > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _abort_connection(server, scope):
    """Abort the TCP connection of the ASGI ``scope`` (ws rule 4: a client stuck behind a
    full send buffer never lets a close frame through).  uvicorn keeps its protocol
    instances in ``server_state.connections``; each knows its peer address and transport."""
    peer = scope.get("client")
    if not peer:
        return False
    peer = tuple(peer)
    for proto in list(server.server_state.connections):
        if getattr(proto, "client", None) == peer and getattr(proto, "transport", None):
            proto.transport.abort()
            return True
    return False


def _durable(runtime, shard, log):
    """The journal's durable end (0 without a journal): what the rebuild replays to."""
    try:
        from journaler.recovery import durable_sequence
        return durable_sequence(runtime.data_dir, shard.name)
    except Exception as exc:   # no journal directory, or no journaler in this build
        log.event("no_journal", reason=repr(exc)[:200])
        return 0


def main(argv=None):
    import uvicorn
    from engine.runtime import process_args
    from ringbuf import Ring
    from publisher.app import create_app
    from publisher.auth import KeyStore
    from publisher.rebuild import rebuild
    from publisher.service import CommandSender

    args, runtime, shard, log = process_args("publisher", "publisher.process", argv, 4096)
    pub = runtime.publisher
    exchange = runtime.exchange()

    ring_in = Ring.attach(shard.input_ring)
    ring_out = Ring.attach(shard.output_ring)
    producer_id = int(pub.get("producer_id", 1))
    producer = ring_in.producer(producer_id=producer_id)
    consumer = ring_out.consumer("publisher")
    service = build_service(runtime, shard, exchange, CommandSender(producer, producer_id), log)
    log.event("attached", input=shard.input_ring, output=shard.output_ring,
              output_seq=consumer.sequence, producer_id=producer_id)

    started = time.monotonic()
    durable = _durable(runtime, shard, log)
    decode = None                                   # columnar: EventBatch copies
    if not hasattr(service, "decode_bytes"):        # the object model: event tuples
        from publisher.event_decoder import decode_batch as decode
    feed = RingFeed(consumer, None, service.on_events, max_batch=args.max_batch, log=log,
                    skip_upto=durable, decode=decode,
                    linger_s=float(pub.get("feed_linger_ms", FEED_LINGER_MS)) / 1000.0,
                    urgent=lambda: bool(service.waiters or service.seq_waiters))
    feed.start()                                                              # rule 2
    try:
        info = rebuild(service, runtime, shard, exchange, consumer.sequence, log,
                       durable=durable)                                       # rule 1
    except BaseException:
        feed.stop()
        producer.close()
        ring_in.close()
        ring_out.close()
        raise
    log.event("rebuilt", seconds="%.3f" % (time.monotonic() - started),
              dropped_during=feed.dropped, held=len(feed.held), **info)

    keystore = KeyStore.from_config(pub)
    service.consumer_sequence = lambda: consumer.sequence                     # GET /health
    health_path = os.path.join(runtime.data_dir, "run", "%s.health.json" % shard.name)
    app = create_app(service, keystore, health_path=health_path, **app_options(pub))
    config = uvicorn.Config(app, host=pub.get("host", "127.0.0.1"), port=int(pub.get("port", 8080)),
                            ws=pub.get("ws_impl", "websockets-sansio"), log_level=pub.get("log_level", "warning"),
                            lifespan="off", access_log=False, ws_ping_interval=20,
                            ws_max_queue=64, ws_max_size=int(pub.get("ws_max_size", 64 * 1024)))
    server = uvicorn.Server(config)
    service.hub.abort_connection = lambda scope: _abort_connection(server, scope)
    feed_box = [feed]
    listener = _listen(config.host, config.port, int(pub.get("socket_sndbuf", 128 * 1024)))

    async def serve():
        if feed.error is not None:
            raise SystemExit(5)
        feed.go_live(asyncio.get_running_loop())                              # rule 2
        log.event("serving", host=config.host, port=config.port)
        await server.serve(sockets=[listener])

    # uvicorn captures SIGINT/SIGTERM during serve() (graceful shutdown) and then
    # re-raises the signal to the handlers that were installed before: these
    # note it, so that rule 4's cleanup runs and the process exits 0
    stop_signals = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, f: stop_signals.append(s))
    code = 0
    try:
        asyncio.run(serve())
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 5
    finally:
        for feed in feed_box:                                                 # rule 4
            feed.stop()
        try:
            producer.close()
        finally:
            ring_in.close()
            ring_out.close()
        log.event("stopped", signal=stop_signals[0] if stop_signals else "-",
                  events=sum(f.events for f in feed_box),
                  input_seq=service.model.applied_seq, exit_code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
