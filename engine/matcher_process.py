"""The matcher process: input ring -> Matcher -> output ring.

Theory of operation:

1. Start-up is recovery: the newest valid snapshot (sequence S) is restored and
   the journal tail (S, J] is replayed *with* its events written to the output
   ring, J being the journal's durable end.  Consumers of the output ring
   deduplicate by (seq, event_index), so events that a previous incarnation
   already published are harmless, and a fresh publisher rebuilds its read
   model from snapshot S plus these events.
   The replay stops at the lowest sequence the matcher's ring dependencies
   have passed (journaler, and replicator when a standby is configured), if
   that is below J: the matcher never acts on a record a synchronous standby
   has not acknowledged, not even in recovery.  Records above it are still in
   the ring (producers are gated on the matcher) and are consumed from there.
2. The matcher's gating sequence on the input ring is then set to J (or that
   lower bound) and the loop consumes the rest from the ring.  It is >= the
   old gating sequence, because the matcher is gated on its dependencies.
3. Per input batch: every record is processed into one event buffer; the
   buffer is published to the output ring; only then is the input batch
   committed.  A crash between the two re-processes the batch (rule 1 dedup).
4. A SNAPSHOT command makes the process write the matcher's state to
   ``<data>/snapshots`` after the command is processed (in-band, so every
   replica snapshots at the same sequence).  The events of the batch up to
   and including the SNAPSHOT are published to the output ring *before* the
   file is written: a snapshot at S is only ever on disk once every outcome
   up to S is on the output ring, so a crash right after the write cannot
   leave commands at or before S applied (restored from the snapshot) with no
   outcome published (recovery replays only after S).
5. SIGTERM: finish the current batch, then exit 0.
"""
import os
import signal
import sys
import time


__all__ = ["main", "RingEventWriter"]


class RingEventWriter(object):
    """Copy packed 128-byte event records into the output ring, batch by batch.

    The matcher writes into a BytesSink; ``flush()`` claims the slots for the
    whole buffer at once and copies through raw byte views.
    """

    def __init__(self, producer, record_size, max_chunk):
        self.producer = producer
        self.record_size = record_size
        self.max_chunk = max_chunk
        self.published = 0

    def flush(self, buf):
        total = len(buf) // self.record_size
        if total:
            self.producer.write_batch(buf, self.max_chunk)
            self.published += total
        return total


def _emit_tail(matcher, sink, writer, records, last_seq, max_batch):
    """Replay journal records (seq, record) through the matcher, publishing events."""
    count = 0
    for seq, record in records:
        matcher.process(seq, record)
        last_seq = seq
        count += 1
        if count % max_batch == 0:
            writer.flush(sink.take_view())
    writer.flush(sink.take_view())
    return last_seq, count


def main(argv=None):
    from engine.runtime import process_args
    from engine.events import BytesSink
    from ringbuf import Ring
    from ringbuf.records import CommandKind, EVENT_SIZE
    from journaler import recovery, snapshot as snapshots

    args, runtime, shard, log = process_args("matcher", "engine.matcher_process", argv, 1024)
    interpreter = "pypy" if hasattr(sys, "pypy_version_info") else "cpython"
    stop = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    ring_in = Ring.attach(shard.input_ring)
    ring_out = Ring.attach(shard.output_ring)
    consumer = ring_in.consumer("matcher")
    producer = ring_out.producer(producer_id=0)
    sink = BytesSink()
    writer = RingEventWriter(producer, EVENT_SIZE, max(1, ring_out.capacity // 4))
    exchange = runtime.exchange()

    # rule 1
    started = time.monotonic()
    matcher, snap_seq = recovery.restore_latest(exchange, runtime.data_dir, shard.name, sink)
    sink.take()  # restore emits nothing by contract; drop anything defensively
    gate = min(ring_in.consumer_sequence(d) for d in ring_in.consumer_dependencies("matcher"))
    last_seq, replayed = _emit_tail(
        matcher, sink, writer,
        recovery.journal_records(runtime.data_dir, shard.name, after=snap_seq,
                                 last=max(gate, snap_seq)),
        snap_seq, args.max_batch)
    # rule 2
    if last_seq > consumer.sequence:
        consumer.seek(last_seq)
        consumer.commit(last_seq)
    elif last_seq < consumer.sequence:
        log.error("journal_behind_matcher", journal=last_seq, matcher=consumer.sequence)
        return 4
    log.event("ready", interpreter=interpreter, snapshot_seq=snap_seq, replayed=replayed,
              seq=last_seq, state_hash="%016x" % matcher.state_hash(),
              recovery_ms=int((time.monotonic() - started) * 1000))

    snapshot_kind = int(CommandKind.SNAPSHOT)
    process = matcher.process
    poll = consumer.poll
    record_at = consumer.record
    commit = consumer.commit
    max_batch = args.max_batch
    data_dir = runtime.data_dir
    keep = runtime.snapshot.get("keep", 3)
    while not stop:
        batch = poll(max_batch, timeout=1.0)    # idle: one wake-up a second (and the CLOCK tick)
        if batch is None:
            continue
        seq = batch.first_seq
        end = seq + batch.count
        while seq < end:
            record = record_at(seq)
            process(seq, record)
            if record.kind == snapshot_kind and matcher.snapshot_seq == seq:   # rule 4 (accepted)
                writer.flush(sink.take_view())     # rule 4: publish, then snapshot
                t0 = time.monotonic()
                path = snapshots.write_snapshot(
                    data_dir, shard.name, seq, matcher, keep=keep,
                    binding=snapshots.binding_from_chunks(batch.chunks, seq))
                log.event("snapshot_written", seq=seq, path=path,
                          ms=int((time.monotonic() - t0) * 1000))
            seq += 1
        writer.flush(sink.take_view())     # rule 3 (zero-copy: consumed before the next write)
        commit(end - 1)
    log.event("stopped", seq=consumer.sequence, events=writer.published)
    ring_in.close()
    ring_out.close()
    return 0


def _main_profiled(path):
    """``RM_VMPROF=PATH``: run under vmprof (if installed), writing ``PATH.<pid>``."""
    import vmprof
    with open("%s.%d" % (path, os.getpid()), "w+b") as f:
        vmprof.enable(f.fileno(), period=0.001)
        try:
            return main()
        finally:
            vmprof.disable()


if __name__ == "__main__":
    sys.exit(_main_profiled(os.environ["RM_VMPROF"]) if os.environ.get("RM_VMPROF") else main())
