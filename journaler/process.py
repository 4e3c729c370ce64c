"""The journaler process: input ring -> journal segments -> gating sequence.

Theory of operation (numbered; the code refers to them):

1. Start-up: the writer recovers the journal (cuts a torn tail of the last
   segment and logs exactly what it cut); its durable end is ``L``.  Damage
   that is not a torn tail (``JournalCorruptError``) is fatal: one ``fatal``
   line with ``reason=journal_corrupt`` names the file, offset, damage, the
   valid prefix's end and the sequences at stake; no file is changed (exit 3).
   The ring is attached as consumer ``journaler``, whose gating sequence is
   ``G``.
2. ``L == G``: resume.  ``L < G``: the ring says records ``L+1 .. G`` were
   journaled but the journal does not have them -- fatal (exit 3), nothing is
   guessed.  ``L > G``: the previous incarnation made ``G+1 .. L`` durable
   and died before committing; those records are still in the ring (the
   gating sequence protected them), so they are polled, compared byte for
   byte with the journal, and committed.  A difference is a fatal overlap
   (exit 3); a ring whose cursor is behind ``L`` (made anew without
   continuing the journal's sequence) is fatal as well.
3. Loop: poll a batch, append it as one block, commit the gating sequence up
   to ``durable_sequence`` only -- never past what the fsync policy made
   durable, so the matcher (gated on the journaler) never acts on a record
   that could be lost.  An idle ``interval`` policy syncs when due.
   Group commit (``fsync="batch"``; ``journal.group_commit_us`` = ``G``,
   ``journal.group_commit_records`` = ``K``): after a batch that was not
   large (fewer than ``max_batch // 4`` records) the journaler sleeps, *then*
   polls: what arrived meanwhile is one batch, one append, one fsync.  The
   next poll is due when ``K`` more records are expected at the rate the
   last batch came in (its count over the time since the poll before), at
   most ``G`` after this poll: at 10k records/s that is ~3 ms, at 100k/s
   ``K / rate`` = 0.3 ms.  So at moderate load there is one wake-up (the
   sleep's) and one fsync per ~``K`` records instead of a futex wake-up and
   an fsync per one or two (on this VM each wake-up costs ~30 us of CPU, each
   fdatasync ~45-75 us, and the matcher, woken by each commit, pays its own
   wake-up per batch too).  A record after an idle gap (the sleep is over)
   is synced at once; large batches never wait.  Lingering delays the commit
   (the acknowledgement) by at most ``G``; it never reorders, skips or
   commits a record before its fsync.  ``G = 0`` turns it off.
4. A batch that does not continue the journal exactly (gap or overlap) is
   fatal (exit 3).
5. ``JournalIOError`` (disk full, EIO): nothing is committed; the error is
   logged loudly (first failure, then with each doubling of the attempt
   count); the consumer rewinds to its committed sequence and the batch is
   retried after a back-off (10 ms doubling to 1 s) until the disk takes it
   again, which is logged as ``io_recovered``.
6. SIGTERM / SIGINT: the current batch is finished, everything written is
   synced and committed, exit 0.
"""
import signal
import sys
import time

from engine.log import Logger
from journaler.errors import (JournalCorruptError, JournalError, JournalIOError,
                              JournalSequenceError)

__all__ = ["main", "run", "EXIT_OK", "EXIT_FATAL"]

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_FATAL = 3


class Fatal(Exception):
    """A journal/ring inconsistency: logged and the process exits EXIT_FATAL."""


def _catch_up(consumer, writer, ring, log):
    """Rule 2 for L > G: poll G+1..L, check against the journal, commit L."""
    from journaler.reader import JournalReader
    durable = writer.durable_sequence
    gating = consumer.sequence
    if ring.cursor < durable:
        raise Fatal("journal ends at %d but the ring's cursor is %d: the ring does not continue "
                    "the journal's sequence (overlap of %d records)"
                    % (durable, ring.cursor, durable - ring.cursor))
    reader = JournalReader(writer.data_dir, writer.shard, check_crc=False)
    journal = bytearray()
    for _first, _count, view in reader.blocks(after=gating, last=durable):
        journal += view
    ring_bytes = bytearray()
    while consumer.polled < durable:
        batch = consumer.poll(durable - consumer.polled, timeout=5.0)
        if batch is None:
            raise Fatal("ring cursor %d but records up to %d not readable" % (ring.cursor, durable))
        for _seq, view in batch.chunks:
            ring_bytes += view
    if bytes(journal) != bytes(ring_bytes):
        size = writer.record_size
        first_diff = next(i for i in range(min(len(journal), len(ring_bytes)) + 1)
                          if i == min(len(journal), len(ring_bytes)) or journal[i] != ring_bytes[i])
        raise Fatal("overlap: journal records %d..%d differ from the ring's at seq %d"
                    % (gating + 1, durable, gating + 1 + first_diff // size))
    consumer.commit(durable)
    log.event("caught_up", from_seq=gating, to_seq=durable, records=durable - gating)


GROUP_COMMIT_US = 3000      # rule 3: the longest group-commit pause
GROUP_COMMIT_RECORDS = 32   # rule 3: records a pause aims to gather


def run(ring, data_dir, shard, fsync="batch", fsync_interval_ms=5, segment_bytes=64 << 20,
        max_batch=4096, log=None, stop=None, idle_timeout=1.0, group_commit_us=GROUP_COMMIT_US,
        group_commit_records=GROUP_COMMIT_RECORDS):
    """Journal ``ring`` (consumer ``journaler``) into ``data_dir`` until ``stop`` is non-empty.

    Returns an exit code (EXIT_OK, EXIT_FATAL).  ``stop`` is a list that a
    signal handler appends to.
    """
    from journaler.writer import JournalWriter
    log = log or Logger("journaler", shard)
    stop = [] if stop is None else stop
    consumer = ring.consumer("journaler")
    gating = consumer.sequence
    try:
        writer = JournalWriter(data_dir, shard, fsync=fsync, fsync_interval_ms=fsync_interval_ms,
                               segment_bytes=segment_bytes, log=log)
    except JournalCorruptError as exc:                       # rule 1
        log.error("fatal", reason="journal_corrupt", error=str(exc), **exc.fields())
        return EXIT_FATAL
    except JournalError as exc:
        log.error("fatal", reason="journal_unreadable", error=str(exc))
        return EXIT_FATAL
    if writer.next_sequence is None:          # empty journal: it starts where the ring is
        writer.close()
        if gating > 0:
            log.error("fatal", reason="journal_ring_mismatch",
                      error="gap: the journal is empty but the ring's journaler gating sequence "
                            "is %d: records 1..%d were acknowledged and are not in the journal"
                            % (gating, gating))
            return EXIT_FATAL
        writer = JournalWriter(data_dir, shard, fsync=fsync, fsync_interval_ms=fsync_interval_ms,
                               segment_bytes=segment_bytes, log=log, start_seq=gating + 1)
    report = writer.recovery
    log.event("journal_recovered", first_seq=report.first_seq or -1,
              durable_seq=writer.durable_sequence, segments=len(report.segments),
              cuts=len(report.cuts), gating_seq=gating)
    try:
        durable = writer.durable_sequence
        if durable < gating:     # rule 2
            raise Fatal("gap: the ring's journaler gating sequence is %d but the journal ends at "
                        "%d: records %d..%d were acknowledged and are not in the journal"
                        % (gating, durable, durable + 1, gating))
        if durable > gating:
            _catch_up(consumer, writer, ring, log)
    except Fatal as exc:
        log.error("fatal", reason="journal_ring_mismatch", error=str(exc))
        writer.close()
        return EXIT_FATAL
    log.event("ready", fsync=fsync, seq=writer.durable_sequence, ring=ring.name,
              group_commit_us=group_commit_us, group_commit_records=group_commit_records)

    poll = consumer.poll
    commit = consumer.commit
    append = writer.append
    committed = consumer.sequence
    failures = 0
    backoff = 0.01
    first_failure = None
    records = 0
    code = EXIT_OK
    # rule 3, group commit: after a small batch, poll again when ~aim records are expected
    group = group_commit_us / 1e6 if fsync == "batch" else 0.0
    aim = float(max(1, group_commit_records))
    small = max(1, max_batch // 4)
    clock = time.monotonic
    sleep = time.sleep
    next_sync = 0.0
    last_poll = clock()
    lingers = 0
    linger = False
    try:
        while not stop:
            if linger:                                       # rule 3: group commit
                linger = False
                wait = next_sync - clock()
                if wait > 0:
                    sleep(wait)
                    lingers += 1
            timeout = idle_timeout
            if fsync == "interval":
                due = writer.seconds_until_sync()
                if due is not None:
                    timeout = min(timeout, due)
            batch = poll(max_batch, timeout=timeout)
            try:
                if batch is None:
                    writer.sync_if_due()
                else:
                    if group:
                        polled_at, last_poll = last_poll, clock()
                    chunks = [view for _seq, view in batch.chunks]
                    append(batch.first_seq, chunks)          # rules 3, 4
                    records += batch.count
                    if group and batch.count < small:   # due when ~aim more records came in
                        pause = aim * (last_poll - polled_at) / batch.count
                        next_sync = last_poll + (pause if pause < group else group)
                        linger = True
            except JournalIOError as exc:                     # rule 5
                failures += 1
                if first_failure is None:
                    first_failure = time.monotonic()
                if failures & (failures - 1) == 0:
                    log.error("io_error", op=exc.op, errno=exc.errno, file=exc.path,
                              error=str(exc), attempt=failures, durable_seq=writer.durable_sequence,
                              retry_in_ms=int(backoff * 1000))
                consumer.rewind()
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if failures:
                log.event("io_recovered", attempts=failures,
                          stalled_ms=int((time.monotonic() - first_failure) * 1000),
                          durable_seq=writer.durable_sequence)
                failures, backoff, first_failure = 0, 0.01, None
            durable = writer.durable_sequence
            if durable > committed:
                commit(durable)
                committed = durable
    except JournalSequenceError as exc:
        log.error("fatal", reason="sequence", error=str(exc), expected=exc.expected, got=exc.got)
        code = EXIT_FATAL
    finally:
        try:
            writer.close()                                  # rule 6: sync what was written
            if code == EXIT_OK and writer.durable_sequence > committed:
                commit(writer.durable_sequence)
                committed = writer.durable_sequence
        except JournalError as exc:
            log.error("close_failed", error=str(exc))
    log.event("stopped", seq=committed, records=records, syncs=writer.syncs, lingers=lingers)
    return code


def main(argv=None):
    from engine.runtime import ConfigError, process_args
    try:
        args, runtime, shard, log = process_args("journaler", "journaler.process", argv, 4096)
    except ConfigError as exc:
        Logger("journaler", "-").error("bad_config", error=str(exc))
        return EXIT_CONFIG
    stop = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    signal.signal(signal.SIGINT, lambda s, f: stop.append(s))
    from ringbuf import Ring
    ring = Ring.attach(shard.input_ring)
    conf = runtime.journal
    try:
        return run(ring, runtime.data_dir, shard.name, fsync=conf.get("fsync", "batch"),
                   fsync_interval_ms=conf.get("fsync_interval_ms", 5),
                   segment_bytes=conf.get("segment_bytes", 64 << 20),
                   max_batch=args.max_batch, log=log, stop=stop,
                   group_commit_us=float(conf.get("group_commit_us", GROUP_COMMIT_US)),
                   group_commit_records=int(conf.get("group_commit_records",
                                                     GROUP_COMMIT_RECORDS)))
    finally:
        ring.close()


if __name__ == "__main__":
    sys.exit(main())
