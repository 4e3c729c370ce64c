"""The replicator process (primary side): ``python -m replicator.process --config F --shard S``.

Started by ``ringmatch run`` (engine/supervisor.py) when ``standby: {host, port}``
is configured.  It is consumer ``replicator`` of ``rm-S-in`` and streams to the
standby (replicator/sender.py has the rules: sync/async gating, stall or
degrade, reconnect and catch-up from ring or journal, fencing).

Also, every ``replication.state_hash_every_s`` seconds (default 1; 0 = off) it
publishes a STATE_HASH command into the input ring, so both matchers report
their state hash at the same sequence and the standby can compare.

Exit codes: 0 stopped by SIGTERM/SIGINT; 2 configuration error; 5 fenced (this
node was superseded by a promoted standby and must not act as primary; the
supervisor's restarts then fail the same way and it gives up).

``replication.wait_strategy`` (default: the ring's, backoff) is the wait
strategy of its ring consumer; ``blocking`` sleeps on the futex at once and
spends less CPU on an idle or lightly loaded ring.

A status file ``<data>/run/<S>.replication.json`` is rewritten twice a second
(acked, sent, committed, cursor, connected, degraded, fenced, counters).
"""
import json
import os
import signal
import sys
import time


__all__ = ["main", "EXIT_FENCED", "status_path"]

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_FENCED = 5


def status_path(data_dir, shard):
    return os.path.join(data_dir, "run", "%s.replication.json" % shard)


def write_status(path, fields):
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(fields, f, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def main(argv=None):
    from engine.runtime import process_args
    from engine.client import pack_command
    from ringbuf import Ring
    from ringbuf.records import CommandKind
    from replicator.epoch import EpochStore, FencedError
    from replicator.ring_io import RingSource
    from replicator.sender import Sender

    args, runtime, shard, log = process_args("replicator", "replicator.process", argv, 4096)
    stop = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    signal.signal(signal.SIGINT, lambda s, f: stop.append(s))
    standby = runtime.standby
    conf = runtime.replication or {}
    if not standby or "host" not in standby or "port" not in standby:
        log.error("config_error", detail="standby: {host, port} is required")
        return EXIT_CONFIG
    store = EpochStore(runtime.data_dir, shard.name)
    try:
        state = store.check_may_be_primary()
    except FencedError as exc:
        log.error("fenced", detail=str(exc))
        return EXIT_FENCED

    ring_in = Ring.attach(shard.input_ring)
    ring_out = Ring.attach(shard.output_ring)
    source = RingSource(ring_in, runtime.data_dir, shard.name, ring_out,
                        wait_strategy=conf.get("wait_strategy"))
    try:
        sender = Sender(source, (standby["host"], int(standby["port"])), shard.name,
                        epoch_store=store, epoch=state.epoch, mode=conf.get("mode", "sync"),
                        on_unreachable=conf.get("on_unreachable", "stall"),
                        degrade_after_s=conf.get("degrade_after_s", 5.0),
                        max_batch=args.max_batch, log=log)
    except ValueError as exc:
        log.error("config_error", detail=str(exc))
        return EXIT_CONFIG
    log.event("ready", standby="%s:%s" % (standby["host"], standby["port"]), epoch=state.epoch,
              mode=sender.mode, on_unreachable=sender.on_unreachable,
              gate=source.committed(), cursor=source.cursor())
    sender.start()
    hash_every = float(conf.get("state_hash_every_s", 1.0) or 0)
    producer = ring_in.producer(producer_id=0x7FFD, privileged=True) if hash_every > 0 else None
    spath = status_path(runtime.data_dir, shard.name)
    last_hash = time.monotonic()
    last_status = 0.0
    try:
        while not stop and not sender.fenced and sender._thread.is_alive():
            time.sleep(0.05)
            now = time.monotonic()
            if producer is not None and now - last_hash >= hash_every and sender.connected:
                last_hash = now
                producer.write(pack_command(int(CommandKind.STATE_HASH), producer_id=0x7FFD,
                                            timestamp_ns=time.time_ns()), timeout=0.01)
            if now - last_status >= 0.5:
                last_status = now
                fields = dict(sender.stats.as_dict(), acked=sender.acked, sent=sender.sent,
                              committed=source.committed(), cursor=source.cursor(),
                              connected=sender.connected, degraded=sender.degraded,
                              fenced=sender.fenced, epoch=sender.epoch, mode=sender.mode,
                              journal_reads=source.journal_reads, pid=os.getpid(),
                              updated=time.time())
                write_status(spath, fields)
    finally:
        sender.stop()
        log.event("stopped", acked=sender.acked, sent=sender.sent, fenced=sender.fenced)
        if producer is not None:
            producer.close()
        ring_in.close()
        ring_out.close()
    return EXIT_FENCED if sender.fenced else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
