"""Rebuild the read model when the publisher (re)starts.

Theory of operation (numbered rules; the code refers to them):

1. The read model is derived state: after any restart it is rebuilt from a
   valid matcher snapshot (``journaler.recovery.restore_latest``) or from the
   journal's first record, plus the events of the later journaled commands,
   which the publisher re-derives by replaying those commands through its own
   in-process ``engine.matcher.Matcher`` (the matcher is deterministic: the
   replayed events are byte-for-byte those the engine's matcher published).
   Nothing is guessed: no snapshot and no journal means an empty model at
   sequence 0.
2. The replay runs to the journal's durable end ``J`` at the moment of the
   rebuild.  The engine's matcher only processes journaled commands, so every
   event a previous publisher consumed from the ring has ``seq <= J``; the
   service then skips ring events with ``seq <= J`` (service rule 2) and
   applies the rest.
3. History.  A snapshot holds the state (books, live orders, balances, last
   prices) but no history: no trade tape, no 24h window, no done orders, no
   executed value of live orders.  So the rebuild starts from the OLDEST
   usable point whose replay is at most ``history_commands`` long (default
   200,000: about 3 s of CPU at ~65k cmd/s on CPython; publisher.rebuild_history_commands): the journal's first record
   when the journal is complete (nothing pruned), else the oldest retained
   valid snapshot whose tail the journal still holds; when even the newest
   point is longer, the newest one.  With an unpruned journal (or a start point
   older than 24 h of stream time and ``trades_keep`` trades) the rebuilt model
   equals the one before the restart in every view; otherwise what happened
   before the start point shows only through the snapshot's state.
4. The replayed events are all the model needs: a stop's ACCEPTED carries its
   stop price and every hold change of an order is in an event (docs/records.md),
   so nothing is taken from the replayed commands themselves.
5. A segment pruned under the replay (the matcher snapshotted meanwhile) makes
   the rebuild start over once from the newest snapshot.
"""
import os

__all__ = ["rebuild", "choose_start", "DEFAULT_HISTORY_COMMANDS"]

_BATCH = 1024               # commands per read-model batch
DEFAULT_HISTORY_COMMANDS = 200_000


def choose_start(data_dir, shard, durable, history_commands=DEFAULT_HISTORY_COMMANDS):
    """The sequence to start the replay from (rule 3): 0 (the journal's beginning)
    or a snapshot's sequence; None when only the newest valid snapshot will do.

    Candidates are 0 when the journal starts at sequence 1, and every snapshot
    sequence ``s <= durable`` whose tail ``s + 1`` the journal still holds.
    O(snapshots + segments).
    """
    from journaler.segment import list_segments
    from journaler.snapshot import list_snapshots
    segments = list_segments(data_dir, shard)
    first = segments[0][0] if segments else None
    candidates = []
    if first == 1:
        candidates.append(0)
    for seq, _path in list_snapshots(data_dir, shard):
        if seq <= durable and first is not None and first <= seq + 1:
            candidates.append(seq)
    for start in sorted(candidates):
        if durable - start <= history_commands:
            return start
    return None


def _reset(service):
    model = service.model
    if hasattr(model, "reset"):                     # the columnar model
        model.reset()
        service.last_seq, service.last_index = 0, -1
        return
    model.__init__(list(model.symbols), trades_keep=next(iter(model.symbols.values())).trades.maxlen
                   if model.symbols else 1000, done_orders_keep=model.done_orders_keep,
                   specs=model.specs)
    service.last_seq, service.last_index = 0, -1


def _replay(service, exchange, data_dir, shard, durable, start):
    """Rules 1, 2 and 4 from ``start`` (None: newest snapshot); returns the info dict."""
    from engine.events import BytesSink
    from journaler import recovery
    sink = BytesSink()          # packed records through the decoder the ring feed uses
    max_seq = durable if start is None else start
    matcher, snap_seq = recovery.restore_latest(exchange, data_dir, shard, sink, max_seq=max_seq)
    sink.take()
    model = service.model
    if snap_seq:
        model.seed_from_matcher(matcher, snap_seq)
        service.last_seq, service.last_index = snap_seq, 1 << 62
    last = snap_seq
    replayed = 0
    process = matcher.process
    for seq, record in recovery.journal_records(data_dir, shard, after=snap_seq, last=durable):
        process(seq, record)
        last = seq
        replayed += 1
        if not replayed % _BATCH:
            _flush(service, sink)
    _flush(service, sink)
    return {"mode": "snapshot+journal" if snap_seq else "journal", "snapshot_seq": snap_seq,
            "replayed": replayed, "seq": last}


def _flush(service, sink):
    data = sink.take()
    decode_bytes = getattr(service, "decode_bytes", None)           # the columnar service
    if decode_bytes is not None:
        if data:
            service.on_events(decode_bytes(data))
    else:
        from publisher.event_decoder import decode_chunk
        events = []
        decode_chunk(data, events)
        if events:
            service.on_events(events)


def rebuild(service, runtime, shard, exchange, output_seq=0, log=None, durable=None):
    """Rebuild ``service.model`` (rules 1-5); return a dict describing what was done.

    ``durable``: the journal's durable end if the caller already knows it.
    """
    data_dir = runtime.data_dir
    pub = getattr(runtime, "publisher", None) or {}
    history = int(pub.get("rebuild_history_commands", DEFAULT_HISTORY_COMMANDS))
    try:
        from journaler import recovery
        if durable is None:
            durable = recovery.durable_sequence(data_dir, shard.name)
    except Exception as exc:   # no journal directory, or no journaler in this build
        if log is not None:
            log.event("rebuild_skipped", reason=repr(exc)[:200])
        return {"mode": "empty", "seq": 0}
    if not durable:
        return {"mode": "empty", "seq": 0}
    start = choose_start(data_dir, shard.name, durable, history)
    try:
        info = _replay(service, exchange, data_dir, shard.name, durable, start)
    except (OSError, recovery.JournalGapError) as exc:              # rule 5
        if log is not None:
            log.warning("rebuild_restart", reason=repr(exc)[:200])
        _reset(service)
        start = None
        info = _replay(service, exchange, data_dir, shard.name, durable, None)
    last = info["seq"]
    if last > service.last_seq or (last == service.last_seq and service.last_index < (1 << 62)):
        service.last_seq = last                                      # rule 2
        service.last_index = 1 << 62
    service.model.applied_seq = max(service.model.applied_seq, last)
    info.update(start="journal" if start == 0 else ("snapshot" if start else "newest"),
                durable=durable, data_dir=os.path.abspath(data_dir))
    return info
