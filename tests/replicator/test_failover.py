"""Fail-over with two whole engines on one host (``ringmatch run`` + ``ringmatch standby``).

Per seeded trial: a primary in sync mode replicating to a hot standby
(separate data dirs and shard names), two load producers placing crossing
orders, kill -9 of the primary's whole process group at a random moment,
``promote`` of the standby, then checks of what a user can see:

* every command a producer saw acknowledged is in the standby's journal, with
  the same bytes as in the primary's journal;
* the promoted standby's matcher reports the same state hash as a replay of
  its own journal;
* every fill the primary published is among the fills of the standby's
  journal replay, and no trade id repeats (no fill lost or duplicated).
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PY = sys.executable

pytestmark = [pytest.mark.timeout(240)]


def _engine_ready():
    """``ringmatch run`` creates the input ring continuing the journal (initial_sequence)."""
    import inspect
    from ringbuf import Ring
    return "initial_sequence" in inspect.signature(Ring.create).parameters


requires_engine = pytest.mark.skipif(
    not _engine_ready(), reason="ringmatch run needs Ring.create(initial_sequence=...), "
    "which the ring does not offer yet (engine/supervisor.py calls it)")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


def unlink_rings(*shards):
    import posix_ipc
    for shard in shards:
        for suffix in ("in", "out"):
            try:
                posix_ipc.unlink_shared_memory("/rm-%s-%s" % (shard, suffix))
            except Exception:
                pass
            try:
                posix_ipc.unlink_shared_memory("rm-%s-%s" % (shard, suffix))
            except Exception:
                pass
        try:        # the host-wide owner lock file a killed supervisor leaves behind
            os.unlink("/dev/shm/rm-%s.owner" % shard)
        except OSError:
            pass


def kill_group(proc, sig=signal.SIGKILL):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def read_out_events(shard):
    from ringbuf import Ring, records
    ring = Ring.attach("rm-%s-out" % shard)
    try:
        cap = ring.capacity
        cursor = ring.cursor
        first = max(1, cursor - cap + 1)
        data = ring._data_ro
        out = []
        seq = first
        while seq <= cursor:
            start = seq & (cap - 1)
            n = min(cursor - seq + 1, cap - start)
            out.append(np.frombuffer(data[start * 128:(start + n) * 128],
                                     dtype=records.EVENT_DTYPE).copy())
            seq += n
        return np.concatenate(out) if out else np.zeros(0, records.EVENT_DTYPE)
    finally:
        ring.close()


def write_configs(tmp, pshard, sshard, port, mode="sync", input_capacity=1 << 14,
                  wait_strategy=None):
    base = {"shards": [], "matcher": {"interpreter": "cpython"},
            "snapshot": {"every_commands": 0, "every_seconds": 0, "keep": 2},
            "journal": {"fsync": "batch"}}
    pconf = dict(base, data_dir=str(tmp / "primary"),
                 shards=[{"name": pshard, "symbols": ["BTC-USD"],
                          "input_capacity": input_capacity, "output_capacity": 1 << 16}],
                 publisher={"host": "127.0.0.1", "port": free_port()},
                 standby={"host": "127.0.0.1", "port": port},
                 replication={"mode": mode, "on_unreachable": "stall",
                              "state_hash_every_s": 0.2, "wait_strategy": wait_strategy})
    sconf = dict(base, data_dir=str(tmp / "standby"),
                 shards=[{"name": sshard, "symbols": ["BTC-USD"], "input_capacity": 1 << 14,
                          "output_capacity": 1 << 16}],
                 publisher={"host": "127.0.0.1", "port": free_port()})
    for name, conf in (("p.json", pconf), ("s.json", sconf)):
        with open(str(tmp / name), "w") as f:
            json.dump(conf, f)
    return pconf, sconf


def start_standby(tmp, sshard, pshard, port, out):
    from ringbuf import Ring
    proc = subprocess.Popen(
        [PY, "-m", "engine.cli", "standby", "--config", str(tmp / "s.json"),
         "--listen", "127.0.0.1:%d" % port, "--primary-shard", pshard],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    assert wait_until(lambda: Ring.attach("rm-%s-in" % sshard).close() is None, 30)
    return proc


def start_primary(tmp, out):
    return subprocess.Popen([PY, "-m", "engine.cli", "run", "--config", str(tmp / "p.json")],
                            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def read_json(path):
    with open(str(path)) as f:
        return json.load(f)


def receiver_status(tmp, sshard):
    return read_json(tmp / "standby" / "run" / ("%s.receiver.json" % sshard))


def run_trial(tmp, seed, log, check_fencing=False):
    from engine.client import EngineClient, publish_admin
    from engine.runtime import RuntimeConfig
    from engine.events import ListSink
    from engine.matcher import Matcher
    from journaler import recovery
    from journaler.reader import JournalReader
    from ringbuf import Ring
    from ringbuf.records import CommandKind, EventKind
    from replicator.epoch import EpochStore
    from replicator.promote_cli import promote

    rng = random.Random(seed)
    tag = "%d%d" % (os.getpid() % 100000, seed)
    pshard, sshard = "rpa%s" % tag, "rsb%s" % tag
    port = free_port()
    pconf, sconf = write_configs(tmp, pshard, sshard, port)
    procs = {}
    logs = {n: open(str(tmp / ("%s.log" % n)), "w") for n in ("primary", "standby", "load")}
    try:
        procs["standby"] = start_standby(tmp, sshard, pshard, port, logs["standby"])
        procs["primary"] = start_primary(tmp, logs["primary"])
        status = tmp / "primary" / "run" / ("%s.replication.json" % pshard)
        assert wait_until(lambda: read_json(status)["connected"], 40), \
            open(str(tmp / "primary.log")).read()[-3000:]
        acks = [str(tmp / ("ack%d.txt" % i)) for i in (1, 2)]
        for i, path in enumerate(acks):
            procs["load%d" % i] = subprocess.Popen(
                [PY, os.path.join(HERE, "load_producer.py"), pshard, path, str(100 + i),
                 str(seed * 10 + i)], cwd=ROOT, stdout=logs["load"], stderr=subprocess.STDOUT,
                start_new_session=True)
        time.sleep(rng.uniform(1.0, 3.0))
        kill_group(procs.pop("primary"))                   # kill -9 the whole primary
        for key in [k for k in procs if k.startswith("load")]:
            kill_group(procs.pop(key))
        role = promote(str(tmp / "standby"), sshard, timeout=30)
        assert role["role"] == "primary" and role["epoch"] == 2

        acked = set()
        for path in acks:
            if os.path.exists(path):
                acked.update(int(x) for x in open(path).read().split())
        assert acked, "no command was acknowledged before the kill"
        s_durable = recovery.durable_sequence(str(tmp / "standby"), sshard)
        assert max(acked) <= s_durable, (max(acked), s_durable)
        # the same bytes in both journals for every acknowledged command
        p_reader = JournalReader(str(tmp / "primary"), pshard)
        s_reader = JournalReader(str(tmp / "standby"), sshard)
        p_seqs, p_recs = p_reader.array()
        s_seqs, s_recs = s_reader.array()
        assert s_seqs[0] == 1 and np.all(np.diff(s_seqs) == 1)
        common = min(len(p_seqs), len(s_seqs))
        assert p_recs[:common].tobytes() == s_recs[:common].tobytes()
        assert max(acked) <= len(p_seqs)    # acked => journaled on the primary too

        # the promoted standby's state hash == a replay of its journal
        ring_in = Ring.attach("rm-%s-in" % sshard)
        try:
            hseq = publish_admin(ring_in, CommandKind.STATE_HASH)
        finally:
            ring_in.close()

        def standby_hash():
            ev = read_out_events(sshard)
            sel = ev[(ev["kind"] == int(EventKind.STATE_HASH)) & (ev["seq"] == hseq)]
            return int(sel["aux"][0]) if len(sel) else None
        assert wait_until(lambda: standby_hash() is not None, 20)
        sink = ListSink()
        # the reference data the standby's children run with (its shard's symbols only)
        exchange = RuntimeConfig.load(
            str(tmp / "standby" / "run" / ("%s.json" % sshard))).exchange()
        matcher = Matcher(exchange, sink)
        recovery.replay(matcher, str(tmp / "standby"), sshard, last=hseq)
        assert matcher.state_hash() & ((1 << 63) - 1) == standby_hash()

        # fills: the primary's published fills are all in the replay, none twice
        fills = [e for e in sink.events if e.kind == EventKind.FILL]
        keys = [(e.symbol_id, e.trade_id, e.order_id) for e in fills]
        assert len(keys) == len(set(keys))
        trades = sorted(set((e.symbol_id, e.trade_id) for e in fills))
        assert [t for _, t in trades] == list(range(1, len(trades) + 1))
        p_ev = read_out_events(pshard)
        p_fills = p_ev[p_ev["kind"] == int(EventKind.FILL)]
        p_keys = set(zip(p_fills["symbol_id"].tolist(), p_fills["trade_id"].tolist(),
                         p_fills["order_id"].tolist()))
        assert p_keys <= set(keys)

        # hot standby: the in-band state hashes were compared, none diverged
        assert wait_until(lambda: receiver_status(tmp, sshard)["hash_matched"] >= 1 and
                          receiver_status(tmp, sshard)["promoted"], 5), \
            receiver_status(tmp, sshard)
        rstat = receiver_status(tmp, sshard)
        assert rstat["hash_divergences"] == 0 and rstat["promoted"]

        # promoted = open to producers: the API answers and an order is acknowledged
        api = "http://127.0.0.1:%d/products" % sconf["publisher"]["port"]
        assert wait_until(lambda: urllib.request.urlopen(api, timeout=2).status == 200, 30), \
            open(str(tmp / "standby.log")).read()[-3000:]
        with EngineClient.attach(sshard, data_dir=str(tmp / "standby"), account=1) as client:
            order = client.place_order("BTC-USD", "buy", qty=1, price=2000000)
            assert client.wait_outcome(order, timeout=10).kind == EventKind.ACCEPTED
        assert order > s_durable        # it continues the replicated sequence

        if check_fencing:
            check_old_primary_is_fenced(tmp, pshard, sshard, logs)
        log.append("seed=%d acked=%d max_acked=%d standby_durable=%d primary_journal=%d "
                   "fills=%d primary_fills_seen=%d" % (seed, len(acked), max(acked), s_durable,
                                                      len(p_seqs), len(fills), len(p_keys)))
        return procs, tmp
    finally:
        for key in list(procs):
            kill_group(procs.pop(key), signal.SIGTERM if key == "standby" else signal.SIGKILL)
        for f in logs.values():
            f.close()
        unlink_rings(pshard, sshard)


def outcome_on_output_ring(shard, seq):
    """The kind of the ACCEPTED/REJECTED event of input ``seq`` on the output ring, or None."""
    from engine.events import Event
    from ringbuf import Ring
    from ringbuf.records import EventKind
    try:
        ring = Ring.attach("rm-%s-out" % shard)
    except Exception:
        return None
    with ring:
        cursor = ring.cursor
        for out_seq in range(max(1, cursor - ring.capacity + 1), cursor + 1):
            event = Event.unpack(ring.read(out_seq))
            if event.seq == seq and event.kind in (EventKind.ACCEPTED, EventKind.REJECTED):
                return event.kind
    return None


def check_old_primary_is_fenced(tmp, pshard, sshard, logs):
    """The killed primary is started again with its old config (standby = the promoted node)."""
    from journaler import recovery
    from replicator.epoch import EpochStore
    from ringbuf import Ring
    before = recovery.durable_sequence(str(tmp / "standby"), sshard)
    logs["primary"].write("---- old primary restarted\n")
    logs["primary"].flush()
    old = start_primary(tmp, logs["primary"])
    try:
        code = old.wait(60)
    finally:
        kill_group(old)
    text = open(str(tmp / "primary.log")).read().split("---- old primary restarted")[-1]
    assert code != 0, text[-3000:]
    assert "event=fenced" in text, text[-3000:]
    state = EpochStore(str(tmp / "primary"), pshard).load()
    assert (state.role, state.fenced_by) == ("fenced", 2)
    # (the receiver's status file is rewritten twice a second)
    assert wait_until(lambda: receiver_status(tmp, sshard)["fenced_peers"] >= 1, 5), \
        receiver_status(tmp, sshard)
    # nothing reached the new primary from the old one: what it journaled since
    # are its own supervisor's CLOCK ticks only (docs/engine.md M9)
    from ringbuf.records import CommandKind, SUPERVISOR_PRODUCER_ID
    since = [(int(r.kind), int(r.producer_id))
             for _, r in recovery.journal_records(str(tmp / "standby"), sshard, after=before)]
    assert all(k == (int(CommandKind.CLOCK), SUPERVISOR_PRODUCER_ID) for k in since), since[:10]
    # started once more, it refuses before creating anything
    logs["primary"].write("---- old primary started again\n")
    logs["primary"].flush()
    again = start_primary(tmp, logs["primary"])
    try:
        code = again.wait(30)
    finally:
        kill_group(again)
    text = open(str(tmp / "primary.log")).read().split("---- old primary started again")[-1]
    assert code == 5 and "event=refused_fenced" in text, text[-3000:]
    assert "Traceback" not in text and "refused, this node is fenced" in text
    assert "child_started" not in text
    with pytest.raises(Exception):
        Ring.attach("rm-%s-in" % pshard)


@requires_engine
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_primary_promote_standby_nothing_acknowledged_is_lost(tmp_path, seed):
    log = []
    run_trial(tmp_path, seed, log, check_fencing=seed == 1)
    print("\n".join(log))


@requires_engine
@pytest.mark.slow
@pytest.mark.parametrize("seed", list(range(10, 20)))
def test_kill_primary_promote_standby_more_trials(tmp_path, seed):
    run_trial(tmp_path, seed, [])


@requires_engine
def test_standby_started_late_catches_up_from_the_primary_journal(tmp_path):
    """Async primary, no standby for a while: the ring (1024 slots) is reused many times
    over, so the standby that then connects is served from the primary's journal; it ends
    with the same journal bytes and its hot matcher agrees on the in-band state hashes."""
    from journaler import recovery
    from journaler.reader import JournalReader

    tmp = tmp_path
    tag = "%dj" % (os.getpid() % 100000)
    pshard, sshard = "rpa%s" % tag, "rsb%s" % tag
    port = free_port()
    write_configs(tmp, pshard, sshard, port, mode="async", input_capacity=1 << 10,
                  wait_strategy="blocking")
    procs = {}
    logs = {n: open(str(tmp / ("%s.log" % n)), "w") for n in ("primary", "standby", "load")}
    status = tmp / "primary" / "run" / ("%s.replication.json" % pshard)
    try:
        procs["primary"] = start_primary(tmp, logs["primary"])
        assert wait_until(lambda: not read_json(status)["connected"], 40), \
            open(str(tmp / "primary.log")).read()[-3000:]
        ack = str(tmp / "ack.txt")
        procs["load"] = subprocess.Popen(
            [PY, os.path.join(HERE, "load_producer.py"), pshard, ack, "100", "7"], cwd=ROOT,
            stdout=logs["load"], stderr=subprocess.STDOUT, start_new_session=True)
        # acknowledged without a standby (async), far more than the ring holds
        assert wait_until(lambda: os.path.getsize(ack) > 0 and max(
            int(x) for x in open(ack).read().split()) > 8 * 1024, 30)
        kill_group(procs.pop("load"))
        p_durable = recovery.durable_sequence(str(tmp / "primary"), pshard)
        assert p_durable > 8 * 1024

        procs["standby"] = start_standby(tmp, sshard, pshard, port, logs["standby"])
        assert wait_until(lambda: recovery.durable_sequence(str(tmp / "standby"), sshard)
                          >= p_durable, 40), open(str(tmp / "standby.log")).read()[-3000:]
        # served from the journal (the status file is rewritten twice a second)
        assert wait_until(lambda: read_json(status)["journal_reads"] >= 1, 5), read_json(status)
        assert wait_until(lambda: receiver_status(tmp, sshard)["hash_matched"] >= 2, 15), \
            receiver_status(tmp, sshard)
        rstat = receiver_status(tmp, sshard)
        assert rstat["hash_divergences"] == 0 and rstat["crc_errors"] == 0
        p_seqs, p_recs = JournalReader(str(tmp / "primary"), pshard).array()
        s_seqs, s_recs = JournalReader(str(tmp / "standby"), sshard).array()
        common = min(len(p_seqs), len(s_seqs))
        assert common >= p_durable
        assert np.all(np.diff(s_seqs) == 1) and s_seqs[0] == 1
        assert p_recs[:common].tobytes() == s_recs[:common].tobytes()
    finally:
        for key in list(procs):
            kill_group(procs.pop(key), signal.SIGTERM)
        for f in logs.values():
            f.close()
        unlink_rings(pshard, sshard)


def log_after(path, marker):
    return open(str(path)).read().split(marker)[-1]


@requires_engine
def test_sync_primary_acknowledges_nothing_until_the_standby_has_it(tmp_path):
    """Sync + stall, no standby: the matcher acts on nothing (no outcome reaches the
    producer, a stall warning is logged) -- also not after a kill -9 of the matcher (its
    recovery replays only what its gates passed) nor after a kill -9 of the whole primary
    (the supervisor starts the matcher only once the standby acknowledged the journal,
    supervisor rule 8).  Once the standby is up, the command is acknowledged and is in the
    standby's journal."""
    import re
    from engine.client import EngineClient
    from journaler import recovery
    from ringbuf import Ring
    from ringbuf.records import EventKind

    tmp = tmp_path
    tag = "%ds" % (os.getpid() % 100000)
    pshard, sshard = "rpa%s" % tag, "rsb%s" % tag
    port = free_port()
    write_configs(tmp, pshard, sshard, port, mode="sync")
    plog = tmp / "primary.log"
    procs = {}
    logs = {n: open(str(tmp / ("%s.log" % n)), "w") for n in ("primary", "standby")}
    try:
        procs["primary"] = start_primary(tmp, logs["primary"])
        assert wait_until(lambda: "child=matcher" in open(str(plog)).read(), 40)
        assert wait_until(lambda: Ring.attach("rm-%s-out" % pshard).close() is None, 40)
        with EngineClient.attach(pshard, data_dir=str(tmp / "primary"), account=1) as client:
            seq = client.deposit("USD", 1000)
            with pytest.raises(TimeoutError):
                client.wait_outcome(seq, timeout=2.5)
            assert recovery.durable_sequence(str(tmp / "primary"), pshard) >= seq  # journaled
            with Ring.attach("rm-%s-in" % pshard) as ring_in:
                assert ring_in.consumer_sequence("matcher") < seq                  # not acted on
            assert wait_until(lambda: "event=replication_stalled" in open(str(plog)).read(), 10)
            # kill -9 the matcher: its recovery must not replay the unreplicated command
            matcher_pid = int(re.findall(r"child=matcher child_pid=(\d+)",
                                         open(str(plog)).read())[-1])
            os.kill(matcher_pid, signal.SIGKILL)
            assert wait_until(lambda: "child_restarted child=matcher" in
                              open(str(plog)).read(), 20)
            with pytest.raises(TimeoutError):
                client.wait_outcome(seq, timeout=2.0)
        text = open(str(plog)).read()
        assert "Traceback" not in text
        assert len(re.findall(r"event=child_died .*child=matcher", text)) == 1   # no crash loop
        # kill -9 the whole primary and start it again: still nothing without the standby
        kill_group(procs.pop("primary"))
        logs["primary"].write("---- restarted\n")
        logs["primary"].flush()
        procs["primary"] = start_primary(tmp, logs["primary"])
        assert wait_until(lambda: "event=waiting_for_standby" in log_after(plog, "---- restarted"),
                          40), log_after(plog, "---- restarted")[-3000:]
        time.sleep(1.0)
        assert "child=matcher" not in log_after(plog, "---- restarted")
        procs["standby"] = start_standby(tmp, sshard, pshard, port, logs["standby"])
        # the command's sender is gone; its outcome is on the output ring (a new
        # client would not be given another incarnation's report, engine/client.py rule 3)
        assert wait_until(lambda: outcome_on_output_ring(pshard, seq) is not None, 40), \
            log_after(plog, "---- restarted")[-3000:]
        assert outcome_on_output_ring(pshard, seq) == EventKind.ACCEPTED
        assert recovery.durable_sequence(str(tmp / "standby"), sshard) >= seq
        assert "event=standby_caught_up" in log_after(plog, "---- restarted")
    finally:
        for key in ("primary", "standby"):
            if key in procs:
                kill_group(procs.pop(key), signal.SIGTERM)
        for f in logs.values():
            f.close()
        unlink_rings(pshard, sshard)
