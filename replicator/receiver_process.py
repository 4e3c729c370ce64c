"""The standby's receiver process: ``python -m replicator.receiver_process --config F --shard S``.

Started by the standby supervisor (replicator/standby.py) in place of the
publisher.  It is the only producer on the standby's ``rm-S-in`` and listens on
``replication.listen: {host, port}`` for the primary (receiver.py has the rules).

Signals: SIGUSR1 = promote (end the session, persist epoch + 1 as primary, keep
listening only to fence an old primary); SIGTERM/SIGINT = stop.
Exit codes: 0 stopped; 2 configuration error; 3 the standby ring does not
continue the primary's sequence (RingSinkError), or holds records reaped
from a receiver that died mid-write (ring_io rule 5): re-seed the standby.

A status file ``<data>/run/<S>.receiver.json`` is rewritten twice a second and
at exit (next_seq, durable, epoch, promoted, the ReceiverStats counters, and
the in-band state-hash comparison: ``hash_matched``, ``hash_last_matched_seq``,
``hash_divergences``).
"""
import os
import signal
import sys
import time


__all__ = ["main", "status_path"]


def status_path(data_dir, shard):
    return os.path.join(data_dir, "run", "%s.receiver.json" % shard)


def _status(receiver, sink, store):
    monitor = receiver.monitor
    fields = dict(receiver.stats.as_dict(), next_seq=sink.next_sequence(),
                  durable=sink.durable_sequence(), epoch=store.load().epoch,
                  promoted=receiver.promoted, primary_cursor=receiver.primary_cursor,
                  hash_matched=monitor.matched, hash_last_matched_seq=monitor.last_matched_seq,
                  hash_divergences=len(monitor.divergences), pid=os.getpid(),
                  updated=time.time())
    return fields


def main(argv=None):
    from engine.runtime import process_args
    from ringbuf import Ring
    from replicator.epoch import EpochStore
    from replicator.receiver import Receiver
    from replicator.ring_io import RingSink, RingSinkError

    args, runtime, shard, log = process_args("receiver", "replicator.receiver_process", argv)
    listen = (runtime.replication or {}).get("listen") or {}
    if "port" not in listen:
        log.error("config_error", detail="replication.listen: {host, port} is required")
        return 2
    stop = []
    promote = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    signal.signal(signal.SIGINT, lambda s, f: stop.append(s))
    signal.signal(signal.SIGUSR1, lambda s, f: promote.append(s))

    ring_in = Ring.attach(shard.input_ring)
    ring_out = Ring.attach(shard.output_ring)
    sink = RingSink(ring_in, ring_out)
    reaped = sink.reaped_tail(runtime.data_dir, shard.name)          # ring_io rule 5
    if reaped:
        log.error("standby_ring_reaped", first=reaped[0], last=reaped[-1], count=len(reaped),
                  detail="a receiver died between claim and publish and the ring reaper "
                         "filled the primary's sequences with NOPs: this standby is not a "
                         "copy; re-seed it (fresh data dir)")
        sink.producer.close()
        ring_in.close()
        ring_out.close()
        return 3
    failed = []

    def write(first_seq, payload, _write=sink.write):
        try:
            _write(first_seq, payload)
        except RingSinkError as exc:
            failed.append(exc)
            raise OSError(str(exc))
    sink.write = write
    store = EpochStore(runtime.data_dir, shard.name)
    # the primary's shard name (two engines on one host need different ring names)
    expect = (runtime.replication or {}).get("primary_shard") or shard.name
    receiver = Receiver(sink, (listen.get("host", "127.0.0.1"), int(listen["port"])),
                        expect, store, log=log).start()
    log.event("ready", listen="%s:%d" % receiver.address, next_seq=sink.next_sequence(),
              durable=sink.durable_sequence(), epoch=store.load().epoch)
    from replicator.process import write_status
    spath = status_path(runtime.data_dir, shard.name)
    last_status = 0.0
    code = 0
    try:
        while not stop:
            time.sleep(0.05)
            now = time.monotonic()
            if now - last_status >= 0.5:
                last_status = now
                write_status(spath, _status(receiver, sink, store))
            if promote and not receiver.promoted:
                receiver.promote()
            if failed:
                log.error("ring_sequence_mismatch", detail=str(failed[0]))
                code = 3
                break
    finally:
        receiver.stop()
        write_status(spath, _status(receiver, sink, store))
        log.event("stopped", next_seq=sink.next_sequence(), durable=sink.durable_sequence(),
                  **receiver.stats.as_dict())
        ring_in.close()
        ring_out.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
