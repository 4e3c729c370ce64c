"""Rebuild the read model when the publisher (re)starts.

Theory of operation (numbered rules; the code refers to them):

1. The read model is derived state: after any restart it is rebuilt from the
   newest valid matcher snapshot (``journaler.recovery.restore_latest``) plus
   the events of the later journaled commands, which the publisher re-derives
   by replaying those commands through its own in-process
   ``engine.matcher.Matcher`` (the matcher is deterministic: the replayed
   events are byte-for-byte those the engine's matcher published).  Nothing
   is guessed: no snapshot and no journal means an empty model at sequence 0.
2. The replay runs to the journal's durable end ``J`` at the moment of the
   rebuild.  The engine's matcher only processes journaled commands, so every
   event a previous publisher consumed from the ring has ``seq <= J``; the
   service then skips ring events with ``seq <= J`` (service rule 2) and
   applies the rest.
3. A snapshot holds no trade tape: recent trades and 24h statistics restart at
   the snapshot (what replayed commands traded after it is shown).
"""
import os

__all__ = ["rebuild"]

_BATCH = 4096


def rebuild(service, runtime, shard, exchange, output_seq=0, log=None):
    """Rebuild ``service.model`` (rules 1-3); return a dict describing what was done."""
    data_dir = runtime.data_dir
    try:
        from journaler import recovery
        durable = recovery.durable_sequence(data_dir, shard.name)
    except Exception as exc:   # no journal directory, or no journaler in this build
        if log is not None:
            log.event("rebuild_skipped", reason=repr(exc)[:200])
        return {"mode": "empty", "seq": 0}
    if not durable:
        return {"mode": "empty", "seq": 0}
    from engine.events import ListSink
    sink = ListSink()
    matcher, snap_seq = recovery.restore_latest(exchange, data_dir, shard.name, sink)
    sink.clear()
    model = service.model
    if snap_seq:
        model.seed_from_matcher(matcher, snap_seq)
    last = snap_seq
    replayed = 0
    process = matcher.process
    for seq, record in recovery.journal_records(data_dir, shard.name, after=snap_seq):
        process(seq, record)
        last = seq
        replayed += 1
        if len(sink.events) >= _BATCH:
            service.on_events(sink.take())
    if sink.events:
        service.on_events(sink.take())
    if last > service.last_seq or (last == service.last_seq and service.last_index < (1 << 62)):
        service.last_seq = last                                      # rule 2
        service.last_index = 1 << 62
    model.applied_seq = max(model.applied_seq, last)
    return {"mode": "snapshot+journal" if snap_seq else "journal", "snapshot_seq": snap_seq,
            "replayed": replayed, "seq": last, "data_dir": os.path.abspath(data_dir)}
