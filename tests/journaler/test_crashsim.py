"""Power loss, not just kill -9: seeded crash-simulation trials of the journal and snapshots.

kill -9 keeps the page cache; these trials do not.  ``_crashsim.CrashSim``
(installed in ``journaler.fsio``, the I/O layer of the journal writer and the
snapshot writer) records every write not yet covered by a completed fsync and
every directory change not covered by a directory fsync, and at a seeded I/O
operation loses them (dropped, a torn prefix, garbage or zeros).  A trial
(``_crashsim_trial.Trial``) runs three load epochs of journaler + matcher
(snapshots and retention included) under one fsync policy, each ended by a
power loss and followed by ringmatch's start-up, and checks what each policy
promises (docs/journal.md, "Power loss").

Run the long set:  .venv/bin/python -m pytest -q -p no:cacheprovider -m slow -k crashsim tests/journaler
"""
import collections

import pytest

from journaler import fsio, snapshot as snapshots
from journaler.writer import JournalWriter

from _crashsim import OUT_OF_ORDER, CrashSim, PowerLoss
from _crashsim_trial import POLICIES, Trial, TrialFailure

pytestmark = [pytest.mark.timeout(300)]

SHORT = 12          # default suite: 4 trials per policy
LONG = 150          # -m slow: 50 per policy (+ 50 with no unsynced write kept, + 60 out of order)


@pytest.fixture(autouse=True)
def _pass_through():
    yield
    fsio.uninstall()        # whatever a failing test left installed


def run_trials(tmp_path, seeds, **kwargs):
    """Run one Trial per seed; returns (per-policy statistics, [TrialFailure])."""
    totals = collections.defaultdict(collections.Counter)
    failures = []
    for seed in seeds:
        d = tmp_path / ("trial-%d" % seed)
        d.mkdir()
        try:
            stats = Trial(str(d), seed, **kwargs).run()
        except TrialFailure as exc:
            failures.append(exc)
            continue
        t = totals[stats["policy"]]
        t["trials"] += 1
        for key in ("cuts", "stale_refused", "lost", "lost_acknowledged", "crashes",
                    "snapshot_used", "out_of_order", "hole_cuts"):
            t[key] += stats[key]
    return totals, failures


def assert_trials_pass(totals, failures):
    assert not failures, "%d trial(s) failed; first: %s" % (len(failures), failures[0])


def assert_coverage(totals, policies=POLICIES, long=False, out_of_order=True):
    """The trials reached the cases that matter (otherwise a pass proves little)."""
    if out_of_order:        # the seeded writeback choice ran the out-of-order variants too
        assert sum(totals[p]["out_of_order"] for p in policies) > 0, dict(totals)
    for policy in policies:
        t = totals[policy]
        assert t["trials"] and t["crashes"] == 3 * t["trials"], (policy, t)
        assert t["lost"] > 0, "no %s trial lost anything: crash points too tame (%s)" % (policy, t)
        assert t["snapshot_used"] > 0, (policy, t)
        if policy in ("batch", "interval"):
            assert t["lost_acknowledged"] == 0, (policy, t)
    assert sum(totals[p]["cuts"] for p in policies) > 0, "no torn tail was ever cut"
    if long and "off" in policies:     # off's records count durable once written
        assert totals["off"]["lost_acknowledged"] > 0, totals["off"]


@pytest.mark.pypy
def test_power_loss_trials_short(tmp_path):
    totals, failures = run_trials(tmp_path, range(SHORT))
    assert_trials_pass(totals, failures)
    assert_coverage(totals)


@pytest.mark.slow
def test_power_loss_trials_crashsim_long(tmp_path):
    totals, failures = run_trials(tmp_path, range(1000, 1000 + LONG))
    assert_trials_pass(totals, failures)
    assert_coverage(totals, long=True)


@pytest.mark.slow
def test_power_loss_trials_crashsim_long_every_unsynced_write_lost(tmp_path):
    """The strict model: no unsynced write reaches the disk intact (LazyFS's clear-cache)."""
    totals, failures = run_trials(tmp_path, range(2000, 2000 + LONG // 3), writeback="none")
    assert_trials_pass(totals, failures)
    assert_coverage(totals, out_of_order=False)


@pytest.mark.slow
def test_power_loss_trials_crashsim_long_out_of_order_writeback(tmp_path):
    """Out-of-order writeback only (``scattered`` / ``pages``, seeded), in segments of many
    small blocks: holes followed by intact unsynced blocks are frequent, and every one of
    them must be cut as a torn tail (reader rule 5) without losing anything acknowledged."""
    totals, failures = run_trials(tmp_path, range(7000, 7000 + 60), writebacks=OUT_OF_ORDER,
                                  segment_bytes=16384, max_batch=4)
    assert_trials_pass(totals, failures)
    assert_coverage(totals)
    for policy in ("interval", "off"):
        assert totals[policy]["hole_cuts"] > 0, (policy, dict(totals[policy]))


def test_stale_snapshots_are_refused_after_power_loss(tmp_path, monkeypatch):
    """Snapshot fsynced, journal tail not: the snapshot must be refused, never restored.

    The snapshot writer now syncs the journal through the snapshot's seq
    first (snapshot rule 2a), which makes this state unreachable; with that
    sync switched off (and no segment pruning, which would also fail: see the
    next test) the trials reach it and check the journal binding refuses
    every such snapshot (a restored one would give another history's hash).
    """
    monkeypatch.setattr(snapshots, "sync_journal_through", lambda *a: [])
    # in-order writeback (a prefix of the tail, or none of it): the snapshot outlives the
    # journal under it most often that way
    totals, failures = run_trials(tmp_path, range(3000, 3008), policy="off", keep=1000,
                                  writebacks=("ordered", "ordered", "none"))
    assert_trials_pass(totals, failures)
    assert totals["off"]["stale_refused"] > 0, totals["off"]


def history(first, count, tag):
    import numpy as np
    from ringbuf import records
    arr = np.zeros(count, records.COMMAND_DTYPE)
    arr["kind"] = 1
    arr["qty"] = np.arange(first, first + count)
    arr["client_order_id"] = tag
    return arr.tobytes()


@pytest.mark.parametrize("journal_sync", [True, False], ids=["rule-2a", "without-rule-2a"])
def test_snapshot_fsynced_journal_tail_not(tmp_path, monkeypatch, journal_sync):
    """Issue 11 defect 3 under power loss: ``off``, snapshot at 200 written, journal synced to 100.

    With rule 2a the snapshot's journal is synced with it: nothing it needs
    is lost.  Without it (the code before), the snapshot survives the journal:
    start-up must refuse it (beyond the end), and once new commands reuse
    101..250 (another history), refuse it again by its binding.
    """
    from _crashsim_trial import ChainMatcher, Lines
    from journaler import recovery
    if not journal_sync:
        monkeypatch.setattr(snapshots, "sync_journal_through", lambda *a: [])
    d = str(tmp_path)
    with JournalWriter(d, "s0", fsync="batch") as w:
        w.append(1, history(1, 100, 1))
    sim = CrashSim(d, seed=1, writeback="none", tears=("drop",)).install()
    w = JournalWriter(d, "s0", fsync="off")
    a = history(101, 100, 1)
    w.append(101, a)
    matcher = ChainMatcher()
    for seq, raw in recovery.journal_records(d, "s0"):
        matcher.process(seq, raw)
    snapshots.write_snapshot(d, "s0", 200, matcher,
                             binding=snapshots.binding_from_chunks([(101, a)], 200))
    sim.power_loss()
    lines = Lines()
    end = recovery.durable_sequence(d, "s0")
    m, snap_seq = recovery.restore_latest(None, d, "s0", max_seq=end, log=lines,
                                          matcher_class=ChainMatcher)
    if journal_sync:
        assert (end, snap_seq, m.state_hash()) == (200, 200, matcher.state_hash())
        return
    assert (end, snap_seq) == (100, 0)
    assert [f["reason"] for f in lines.named("snapshot_stale")] == ["beyond_journal_end"]
    with JournalWriter(d, "s0", fsync="batch") as w:      # another history reuses 101..250
        assert w.next_sequence == 101
        w.append(101, history(101, 150, 2))
    lines = Lines()
    m, last = recovery.recover(None, d, "s0", log=lines, matcher_class=ChainMatcher)
    assert [f["reason"] for f in lines.named("snapshot_stale")] == ["binding_mismatch"]
    fresh = ChainMatcher()
    for seq, raw in recovery.journal_records(d, "s0"):
        fresh.process(seq, raw)
    assert (last, m.state_hash()) == (250, fresh.state_hash())


# -- the trials can fail ----------------------------------------------------------

def test_trials_fail_when_fsync_lies(tmp_path):
    """A disk whose fsync returns without making anything durable loses acknowledged records."""
    totals, failures = run_trials(tmp_path, range(4000, 4004), policy="batch", writeback="none",
                                  tears=("drop",), fsync_lies=True)
    assert len(failures) == 4, "a lying fsync went unnoticed: %s" % dict(totals)
    assert any("acknowledged records" in str(f) or "refused the journal" in str(f)
               for f in failures), failures[0]


def test_trials_fail_when_a_segment_roll_does_not_fsync(tmp_path, monkeypatch):
    """The writer before this change: under ``off`` a roll left the old segment unsynced."""
    close_segment = JournalWriter._close_segment
    monkeypatch.setattr(JournalWriter, "_close_segment",
                        lambda self, roll=False: close_segment(self, roll=False))
    totals, failures = run_trials(tmp_path, range(5000, 5012), policy="off")
    assert failures, "a roll without fsync went unnoticed: %s" % dict(totals)
    assert any("a segment roll did not make" in str(f) or "refused the journal" in str(f)
               for f in failures), failures[0]


def test_trials_fail_when_snapshots_run_ahead_of_the_synced_journal(tmp_path, monkeypatch):
    """The snapshot writer before this change (no rule 2a) under ``off`` with pruning:
    snapshots beyond the surviving journal are refused, and the segments an older
    snapshot or a full replay needed were already pruned -- start-up fails."""
    monkeypatch.setattr(snapshots, "sync_journal_through", lambda *a: [])
    totals, failures = run_trials(tmp_path, range(2, 36, 3), policy="off")
    assert failures, "snapshots ahead of the journal went unnoticed: %s" % dict(totals)
    assert any("JournalGapError" in str(f) for f in failures), failures[0]


@pytest.mark.pypy
@pytest.mark.parametrize("writeback", ["scattered", "pages"])
@pytest.mark.parametrize("policy", ["interval", "off"])
def test_out_of_order_writeback_in_the_last_segment_is_a_torn_tail(tmp_path, policy, writeback):
    """A hole, then intact blocks that were never synced (reader rule 5): cut, nothing
    acknowledged lost under interval; before the watermark start-up stopped (journal_corrupt)."""
    totals, failures = run_trials(tmp_path, range(6000, 6012), writeback=writeback,
                                  segment_bytes=16384, max_batch=4, policy=policy, page_size=256)
    assert_trials_pass(totals, failures)
    t = totals[policy]
    assert t["hole_cuts"] > 0, "no hole followed by intact blocks was reached: %s" % t
    if policy == "interval":
        assert t["lost_acknowledged"] == 0, t


def test_trials_fail_without_the_watermark_rule(tmp_path, monkeypatch):
    """The reader before this change (format 1 rule for every segment): an out-of-order
    writeback hole stops start-up (the strict xfail this test suite had)."""
    from journaler import reader
    monkeypatch.setattr(reader, "WATERMARK_VERSION", 99)
    totals, failures = run_trials(tmp_path, range(6000, 6006), writeback="scattered",
                                  segment_bytes=16384, max_batch=4, policy="interval")
    assert failures, "holes went unnoticed: %s" % dict(totals)
    assert any("refused the journal" in str(f) and "JournalCorruptError" in str(f)
               for f in failures), failures[0]


def test_trials_fail_when_the_writer_claims_unsynced_bytes_durable(tmp_path, monkeypatch):
    """A watermark that lies (every byte written counted synced): a writeback hole looks like
    damage and start-up stops -- the claim is what the rule trusts, so it must be true."""
    write_block = JournalWriter._write_block

    def overclaiming(self, first_seq, count, parts):
        synced, self._synced_offset = self._synced_offset, self._size
        try:
            return write_block(self, first_seq, count, parts)
        finally:
            self._synced_offset = synced
    monkeypatch.setattr(JournalWriter, "_write_block", overclaiming)
    totals, failures = run_trials(tmp_path, range(6000, 6006), writeback="pages",
                                  segment_bytes=16384, max_batch=4, policy="off")
    assert failures, "a lying watermark went unnoticed: %s" % dict(totals)
    assert any("JournalCorruptError" in str(f) for f in failures), failures[0]


# -- the shim itself ----------------------------------------------------------

@pytest.mark.pypy
def test_fsio_is_the_os_by_default_and_after_a_shim(tmp_path):
    """No wrapper on the hot path: the writer's aliases are the os functions themselves."""
    import os
    from journaler import writer
    plain = (getattr(os, "writev", fsio._write_joined), getattr(os, "fdatasync", os.fsync))
    assert (writer._writev, writer._fsync, writer._open) == plain + (os.open,)
    sim = CrashSim(str(tmp_path), seed=0).install()
    assert writer._writev == sim.writev and fsio.fdatasync == sim.fsync
    with pytest.raises(RuntimeError):
        CrashSim(str(tmp_path), seed=0).install()
    sim.power_loss()
    assert (writer._writev, writer._fsync, writer._open) == plain + (os.open,)
    assert fsio.installed() is None


def test_shim_keeps_synced_data_and_loses_unsynced_data(tmp_path):
    path = str(tmp_path / "f")
    sim = CrashSim(str(tmp_path), seed=1, writeback="none", tears=("drop",)).install()
    fd = fsio.open(path, fsio_flags(), 0o644)
    fsio.write(fd, b"durable")
    fsio.fdatasync(fd)
    fsio.fsync_dir(str(tmp_path))
    fsio.write(fd, b"-lost")
    assert open(path, "rb").read() == b"durable-lost"      # the page cache has it
    sim.power_loss()
    assert open(path, "rb").read() == b"durable"
    assert fsio.installed() is None


def test_shim_undoes_a_rename_and_a_create_not_covered_by_a_directory_fsync(tmp_path):
    old = tmp_path / "old"
    old.write_bytes(b"previous")
    sim = CrashSim(str(tmp_path), seed=3, writeback="none", tears=("drop",)).install()
    sim.rng.randint = lambda a, b: a            # keep none of the unsynced directory changes
    fd = fsio.open(str(tmp_path / "tmp"), fsio_flags(), 0o644)
    fsio.write(fd, b"next")
    fsio.fsync(fd)
    fsio.close(fd)
    fsio.replace(str(tmp_path / "tmp"), str(old))
    fd = fsio.open(str(tmp_path / "new"), fsio_flags(), 0o644)
    fsio.fsync(fd)
    fsio.close(fd)
    assert old.read_bytes() == b"next"
    sim.power_loss()
    assert old.read_bytes() == b"previous"
    assert not (tmp_path / "tmp").exists() and not (tmp_path / "new").exists()


def test_shim_crash_point_stops_every_later_operation(tmp_path):
    sim = CrashSim(str(tmp_path), seed=5, crash_after=2).install()
    fd = fsio.open(str(tmp_path / "f"), fsio_flags(), 0o644)
    fsio.write(fd, b"x")
    with pytest.raises(PowerLoss):
        fsio.fsync(fd)
    with pytest.raises(PowerLoss):
        fsio.close(fd)
    sim.power_loss()
    assert sim.ops == 2


def fsio_flags():
    import os
    return os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def test_shim_pages_writeback_keeps_synced_bytes_and_can_leave_a_hole_before_later_pages(tmp_path):
    """``writeback="pages"``: each dirty page written back or not, out of order."""
    durable = bytes(range(256)) * 3                  # 768 bytes, fsynced
    later = [bytes([0xA0 + i]) * 512 for i in range(6)]
    outcomes = set()
    for seed in range(40):
        path = str(tmp_path / ("f%d" % seed))
        sim = CrashSim(str(tmp_path), seed=seed, writeback="pages", page_size=512).install()
        fd = fsio.open(path, fsio_flags(), 0o600)
        fsio.write(fd, durable)
        fsio.fdatasync(fd)
        fsio.fsync_dir(str(tmp_path))
        for chunk in later:                          # 3072 unsynced bytes: pages 1..7
            fsio.write(fd, chunk)
        cached = durable + b"".join(later)
        sim.power_loss()
        got = open(path, "rb").read()
        assert got[:len(durable)] == durable, seed
        assert len(got) in (len(durable), len(cached)) or len(got) % 512 == 0, (seed, len(got))
        pages = []
        for p in range(1, (len(got) + 511) // 512):
            lo, hi = p * 512, min((p + 1) * 512, len(got))
            if got[lo:hi] == cached[lo:hi]:
                pages.append("kept")
            else:
                # not written back: what the disk had (the durable bytes, zeros beyond)
                assert got[lo:hi] == (durable + b"\0" * len(cached))[lo:hi], (seed, p)
                pages.append("lost")
        if "lost" in pages and "kept" in pages[pages.index("lost"):]:
            outcomes.add("hole before a later page")
        outcomes.add("all kept" if pages and set(pages) == {"kept"} else "some lost")
    assert outcomes == {"hole before a later page", "all kept", "some lost"}, outcomes
