"""Start-up recovery: newest valid snapshot + journal tail -> the matcher as it was.

Theory of operation:

1. The journal's durable end ``J`` is the last record of its valid prefix
   (``reader`` rule 4); recovery only reads, it never cuts (the journaler
   owns the files and cuts its own tail when it starts).
2. The newest valid snapshot at or before ``J`` is restored; its restored
   ``state_hash()`` must equal the one in its header, otherwise the previous
   snapshot is tried (``snapshot`` rule 4).  No valid snapshot: a fresh matcher
   at sequence 0.
3. The journal records ``(S, J]`` are replayed through ``matcher.process``.
   The journal must hold ``S + 1`` (no gap between snapshot and journal,
   e.g. after over-eager pruning): otherwise JournalGapError.
4. The result is the matcher's state at ``J``: the same state hash as any
   process that processed commands ``1..J`` uninterrupted (determinism).
"""
import sys
import time

from journaler.errors import JournalGapError
from journaler.reader import JournalReader, last_sequence
from journaler.segment import list_segments
from journaler import snapshot as snapshots

__all__ = ["durable_sequence", "restore_latest", "journal_records", "recover", "NullSink"]


class NullSink(object):
    """An event sink that drops every event (replay where only the state matters)."""

    def emit_event(self, *args, **kwargs):
        pass

    def mark_last(self):
        pass


def _schema():
    from ringbuf import records
    return records.COMMAND_SIZE, records.SCHEMA_HASH


def durable_sequence(data_dir, shard):
    """Last sequence of the journal's valid prefix (0: empty).  O(journal) with CRCs.

    A torn tail of the last segment is not counted (the journaler cuts it when
    it starts).  Raises JournalCorruptError for any other damage (reader rule
    5a): the prefix's end would be a wrong durable end, and a ring built from
    it would reuse sequences.

    >>> durable_sequence("/nonexistent", "shard0")
    0
    """
    size, schema = _schema()
    return last_sequence(data_dir, shard, size, schema)


def restore_latest(config, data_dir, shard, sink=None, max_seq=None, log=None, matcher_class=None):
    """(matcher, snapshot seq) from the newest valid snapshot at or before ``max_seq`` (rule 2).

    ``max_seq`` defaults to the journal's durable end.  Falls back to older
    snapshots past invalid ones; (fresh Matcher, 0) when none is valid.
    ``matcher_class`` (default engine.matcher.Matcher) needs ``(config, sink)``,
    ``restore(config, data, sink)``, ``process``, ``state_hash``.
    """
    if matcher_class is None:
        from engine.matcher import Matcher
    else:
        Matcher = matcher_class
    sink = NullSink() if sink is None else sink
    if max_seq is None:
        max_seq = durable_sequence(data_dir, shard)
    snap, matcher, rejected = snapshots.load_latest(
        data_dir, shard, restore=lambda payload: Matcher.restore(config, payload, sink),
        max_seq=max_seq, log=log)
    if snap is None:
        return Matcher(config, sink), 0
    return matcher, snap.seq


def journal_records(data_dir, shard, after=0, last=None, check_crc=True):
    """Yield (seq, record) of the journal's valid prefix after ``after`` (rule 3).

    Raises JournalGapError when the journal does not hold ``after + 1`` but
    holds later records.  O(records).
    """
    segments = list_segments(data_dir, shard)
    if segments and segments[0][0] > after + 1:
        raise JournalGapError(
            "journal starts at %d but replay needs %d (snapshot at %d): the segments in "
            "between were deleted" % (segments[0][0], after + 1, after),
            expected=after + 1, got=segments[0][0])
    reader = JournalReader(data_dir, shard, check_crc=check_crc)
    return reader.records(after=after, last=last)


def _progress(done, total, started, stream):
    elapsed = time.monotonic() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    width = 30
    filled = int(width * done / total) if total else width
    stream.write("\rreplay [%s%s] %d/%d  %.0f cmd/s" % (
        "#" * filled, "." * (width - filled), done, total, rate))
    stream.flush()


def replay(matcher, data_dir, shard, after=0, last=None, progress=False, stream=None):
    """Process the journal records (after, last] through ``matcher``.  Returns (last seq, count).

    ``progress`` draws a bar on ``stream`` (stderr) about twice a second.
    """
    stream = sys.stderr if stream is None else stream
    total = None
    if progress:
        end = durable_sequence(data_dir, shard) if last is None else last
        total = max(0, end - after)
    process = matcher.process
    seq = after
    count = 0
    started = time.monotonic()
    next_draw = started + 0.5
    for seq, record in journal_records(data_dir, shard, after=after, last=last):
        process(seq, record)
        count += 1
        if progress and not count & 0x3FFF:
            now = time.monotonic()
            if now >= next_draw:
                _progress(count, total, started, stream)
                next_draw = now + 0.5
    if progress:
        _progress(count, total, started, stream)
        stream.write("\n")
    return seq, count


def recover(config, data_dir, shard, sink=None, log=None, matcher_class=None):
    """Rebuild the matcher: newest valid snapshot + journal tail (rules 1-4).  O(tail).

    Returns (matcher, last_seq) where last_seq is the journal's durable end.
    """
    started = time.monotonic()
    end = durable_sequence(data_dir, shard)
    matcher, snap_seq = restore_latest(config, data_dir, shard, sink, max_seq=end, log=log,
                                       matcher_class=matcher_class)
    last_seq, count = replay(matcher, data_dir, shard, after=snap_seq)
    if log is not None:
        log.event("recovered", snapshot_seq=snap_seq, replayed=count, seq=last_seq,
                  state_hash="%016x" % (matcher.state_hash() & 0xFFFFFFFFFFFFFFFF),
                  ms=int((time.monotonic() - started) * 1000))
    return matcher, last_seq
