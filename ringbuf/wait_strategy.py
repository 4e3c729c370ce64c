"""Wait strategies: how a consumer waits for the seq it wants next.

Every strategy implements ``wait_for(barrier, seq, futex, deadline_ns)``:
it returns the highest available seq (``>= seq`` on success, ``< seq`` when
``deadline_ns`` passed first; ``deadline_ns`` is ``rm_monotonic_ns`` time or
None for no deadline).  ``barrier`` is the C ``rm_barrier_t *``.

========================  ==============================================  =======
strategy                  how it waits                                    signals
========================  ==============================================  =======
BusySpinWaitStrategy      C loop with the CPU pause hint                  no
YieldingWaitStrategy      spin briefly, then ``os.sched_yield``           no
BlockingWaitStrategy      futex in the segment; producers wake only       yes
                          when a waiter is registered
TimeoutBlockingWait...    blocking, but gives up after ``timeout`` s      yes
BackoffWaitStrategy       spin -> yield -> futex (the default: this       yes
                          machine has 2 cores, spinning steals one;
                          ``default_backoff``)
========================  ==============================================  =======

"signals": producers of a ring whose strategy signals pay one seq_cst fence
and a load of the waiter count per publish.

Producers facing a full ring wait through a *space* wait strategy
(``wait_for_space(gating, ngating, needed, futex, deadline_ns)``: returns
``min(gating)``, ``>= needed`` on success).  On a ring whose strategy signals,
the leaf consumers (the ones that gate producers) wake blocked producers when
they commit, through a second futex word in the same line (``futex[2]``, waiter
count ``futex[3]``), so a blocked producer sleeps in the kernel and costs no CPU:

========================  ==============================================
space wait                how a producer waits for a consumer to free slots
========================  ==============================================
BackoffSpaceWait          spin ``spin_ns``, yield until ``yield_ns``, then
                          futex; the default (spin/yield phases are short
                          or zero on machines with few cores)
YieldingSpaceWait         spin, then ``sched_yield`` (rings that do not signal)
SleepPollSpaceWait        the old loop: spin, yield, then ``time.sleep(50 us)``
                          polls (kept to measure against; costs CPU while full)
========================  ==============================================

``RINGMATCH_PRODUCER_WAIT`` (environment) overrides the default for every
producer that does not name its own: ``backoff[:SPIN_NS[:YIELD_NS]]``,
``blocking`` (= ``backoff:0:0``), ``yield`` or ``sleep-poll``.
"""
import os
import time

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object

from ._native import lib
from .errors import RingConfigError

__all__ = ["WaitStrategy", "BusySpinWaitStrategy", "YieldingWaitStrategy",
           "BlockingWaitStrategy", "TimeoutBlockingWaitStrategy", "BackoffWaitStrategy",
           "default_backoff", "make_wait_strategy", "SpaceWaitStrategy", "BackoffSpaceWait",
           "YieldingSpaceWait", "SleepPollSpaceWait", "make_space_wait", "default_space_wait"]

_SPIN_CHUNK = 2000          # pause rounds between deadline checks
_FUTEX_SLICE_NS = 250000000  # a futex sleep never exceeds 250 ms (re-check, deadlines; idle cost)
_monotonic_ns = lib.rm_monotonic_ns


class WaitStrategy(Protocol):
    """Role: wait until ``seq`` is available or ``deadline_ns`` passes."""

    name = "abstract"
    needs_signal = False

    def wait_for(self, barrier, seq, futex, deadline_ns):
        """Highest available seq (``< seq`` on deadline).  O(wait)."""


class BusySpinWaitStrategy(object):
    """Spin in C with the pause hint: lowest latency, burns a core.

    >>> BusySpinWaitStrategy().needs_signal
    False
    """

    name = "busy-spin"
    needs_signal = False

    def wait_for(self, barrier, seq, futex, deadline_ns):
        spin = lib.rm_barrier_spin
        while True:
            a = spin(barrier, seq, _SPIN_CHUNK)
            if a >= seq or (deadline_ns is not None and _monotonic_ns() >= deadline_ns):
                return a


class YieldingWaitStrategy(object):
    """Spin ``spins`` rounds, then give the core away with ``sched_yield`` between checks."""

    name = "yield"
    needs_signal = False

    def __init__(self, spins=100):
        self.spins = spins

    def wait_for(self, barrier, seq, futex, deadline_ns):
        a = lib.rm_barrier_spin(barrier, seq, self.spins)
        available = lib.rm_barrier_available
        sched_yield = os.sched_yield
        while a < seq:
            if deadline_ns is not None and _monotonic_ns() >= deadline_ns:
                return a
            sched_yield()
            a = available(barrier, seq)
        return a


class BlockingWaitStrategy(object):
    """Sleep on the segment's futex word; producers wake it only when a waiter is registered."""

    name = "blocking"
    needs_signal = True

    def wait_for(self, barrier, seq, futex, deadline_ns):
        block = lib.rm_barrier_block
        while True:
            if deadline_ns is None:
                slice_ns = _FUTEX_SLICE_NS
            else:
                slice_ns = min(_FUTEX_SLICE_NS, deadline_ns - _monotonic_ns())
                if slice_ns <= 0:
                    return lib.rm_barrier_available(barrier, seq)
            a = block(barrier, seq, futex, slice_ns)
            if a >= seq:
                return a


class TimeoutBlockingWaitStrategy(BlockingWaitStrategy):
    """Blocking, but every wait gives up after ``timeout`` seconds (poll returns None)."""

    name = "timeout-blocking"

    def __init__(self, timeout):
        if timeout <= 0:
            raise RingConfigError("timeout must be > 0, got %r" % (timeout,))
        self.timeout_ns = int(timeout * 1e9)

    def wait_for(self, barrier, seq, futex, deadline_ns):
        own = _monotonic_ns() + self.timeout_ns
        if deadline_ns is None or own < deadline_ns:
            deadline_ns = own
        return BlockingWaitStrategy.wait_for(self, barrier, seq, futex, deadline_ns)


def default_backoff(cpus=None):
    """(spin_ns, yield_ns) of a consumer's backoff wait on this machine.

    On <= 2 cores: spin 1 us, no yield phase (a yield there hands the core to
    another runnable stage for a time slice, and each ``sched_yield`` costs
    ~6 us on this VM; the stage being waited for needs the core); with more
    cores spin 2 us and yield until 10 us.  ``RINGMATCH_CONSUMER_WAIT=
    backoff:SPIN_NS[:YIELD_NS]`` (environment) overrides it.
    """
    spec = os.environ.get("RINGMATCH_CONSUMER_WAIT")
    if spec:
        parts = spec.split(":")
        try:
            if parts[0] != "backoff" or not 2 <= len(parts) <= 3:
                raise ValueError(spec)
            return int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
        except ValueError:
            raise RingConfigError("bad RINGMATCH_CONSUMER_WAIT %r (backoff:SPIN_NS[:YIELD_NS])"
                                  % (spec,))
    cpus = cpus or os.cpu_count() or 1
    return (1000, 0) if cpus <= 2 else (2000, 10000)


_SPIN_ROUNDS = 50    # pause rounds per C spin call (~0.7 us here; 200 were ~2.8 us)


class BackoffWaitStrategy(object):
    """Spin for ``spin_ns``, then yield until ``yield_ns``, then sleep on the futex.

    The default: on 2 cores a consumer that spins forever takes the core its
    producer needs; this one spins only through short gaps
    (``default_backoff``: 1 us and no yield on <= 2 cores).
    """

    name = "backoff"
    needs_signal = True

    def __init__(self, spin_ns=None, yield_ns=None):
        if spin_ns is None or yield_ns is None:
            d_spin, d_yield = default_backoff()
            spin_ns = d_spin if spin_ns is None else spin_ns
            yield_ns = d_yield if yield_ns is None else yield_ns
        self.spin_ns = spin_ns
        self.yield_ns = yield_ns

    def wait_for(self, barrier, seq, futex, deadline_ns):
        spin = lib.rm_barrier_spin
        a = spin(barrier, seq, _SPIN_ROUNDS)
        if a >= seq:
            return a
        spin_ns, yield_ns = self.spin_ns, self.yield_ns
        if spin_ns > 0 or yield_ns > 0:
            start = _monotonic_ns()
            # spin phase
            while True:
                now = _monotonic_ns()
                if deadline_ns is not None and now >= deadline_ns:
                    return a
                if now - start >= spin_ns:
                    break
                a = spin(barrier, seq, _SPIN_ROUNDS)
                if a >= seq:
                    return a
            # yield phase
            available = lib.rm_barrier_available
            sched_yield = os.sched_yield
            while now - start < yield_ns:
                sched_yield()
                a = available(barrier, seq)
                if a >= seq:
                    return a
                now = _monotonic_ns()
                if deadline_ns is not None and now >= deadline_ns:
                    return a
        return BlockingWaitStrategy.wait_for(self, barrier, seq, futex, deadline_ns)


_BY_NAME = {
    "busy-spin": BusySpinWaitStrategy,
    "yield": YieldingWaitStrategy,
    "blocking": BlockingWaitStrategy,
    "backoff": BackoffWaitStrategy,
}


def make_wait_strategy(spec):
    """A strategy from a name (``"busy-spin" | "yield" | "blocking" | "backoff"``) or instance.

    Raises RingConfigError for an unknown name.
    """
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec]()
        except KeyError:
            raise RingConfigError("unknown wait strategy %r (choose from %s)"
                                  % (spec, ", ".join(sorted(_BY_NAME))))
    if not hasattr(spec, "wait_for"):
        raise RingConfigError("not a wait strategy: %r" % (spec,))
    return spec


# ---------------------------------------------------------------- producers: waiting for space
_SPACE_SLICE_NS = 200000000   # a blocked producer re-checks at least every 200 ms anyway
_INT64_MAX = (1 << 63) - 1


class SpaceWaitStrategy(Protocol):
    """Role: wait until ``min(gating) >= needed`` (a producer facing a full ring)."""

    name = "abstract"
    blocks = False

    def wait_for_space(self, gating, ngating, needed, futex, deadline_ns):
        """``min(gating)`` once it is ``>= needed``, or earlier when ``deadline_ns`` passed."""


class BackoffSpaceWait(object):
    """Spin ``spin_ns``, yield until ``yield_ns``, then sleep on the ring's space futex.

    Needs a ring whose strategy signals (its leaf consumers wake space waiters
    on commit).  A blocked producer costs ~0 CPU; the wake-up costs one futex
    wake in the consumer's commit, issued only when a producer is registered.

    >>> BackoffSpaceWait(0, 0).name
    'blocking'
    """

    blocks = True

    def __init__(self, spin_ns=1000, yield_ns=0):
        if spin_ns < 0 or yield_ns < 0:
            raise RingConfigError("spin_ns and yield_ns must be >= 0")
        self.spin_ns = spin_ns
        self.yield_ns = yield_ns
        self.name = "blocking" if spin_ns == 0 and yield_ns == 0 else "backoff"

    def __repr__(self):
        return "BackoffSpaceWait(spin_ns=%d, yield_ns=%d)" % (self.spin_ns, self.yield_ns)

    def wait_for_space(self, gating, ngating, needed, futex, deadline_ns):
        g = lib.rm_gating_spin(gating, ngating, needed, 100)
        if g >= needed:
            return g
        spin_ns, yield_ns = self.spin_ns, self.yield_ns
        if spin_ns or yield_ns:
            start = _monotonic_ns()
            spin = lib.rm_gating_spin
            while True:
                now = _monotonic_ns()
                if deadline_ns is not None and now >= deadline_ns:
                    return g
                elapsed = now - start
                if elapsed < spin_ns:
                    g = spin(gating, ngating, needed, 100)
                elif elapsed < yield_ns:
                    os.sched_yield()
                    g = spin(gating, ngating, needed, 0)
                else:
                    break
                if g >= needed:
                    return g
        block = lib.rm_gating_block
        while True:
            if deadline_ns is None:
                slice_ns = _SPACE_SLICE_NS
            else:
                slice_ns = min(_SPACE_SLICE_NS, deadline_ns - _monotonic_ns())
                if slice_ns <= 0:
                    return lib.rm_min_sequence(gating, ngating, _INT64_MAX)
            g = block(gating, ngating, needed, futex, slice_ns)
            if g >= needed:
                return g


class YieldingSpaceWait(object):
    """Spin ``spins`` rounds, then ``sched_yield`` between checks (for rings that do not signal)."""

    name = "yield"
    blocks = False

    def __init__(self, spins=100):
        self.spins = spins

    def wait_for_space(self, gating, ngating, needed, futex, deadline_ns):
        spin = lib.rm_gating_spin
        g = spin(gating, ngating, needed, self.spins)
        sched_yield = os.sched_yield
        while g < needed:
            if deadline_ns is not None and _monotonic_ns() >= deadline_ns:
                return g
            sched_yield()
            g = spin(gating, ngating, needed, 0)
        return g


class SleepPollSpaceWait(object):
    """The producer wait before issue 13: 100 spins, yields to round 1000, then 50 us sleeps.

    Kept only to measure against: while the ring stays full it wakes 20,000
    times a second and burns CPU the consumer needs.
    """

    name = "sleep-poll"
    blocks = False

    def wait_for_space(self, gating, ngating, needed, futex, deadline_ns):
        check = lib.rm_gating_spin
        rounds = 0
        while True:
            g = check(gating, ngating, needed, 0)
            if g >= needed:
                return g
            rounds += 1
            if deadline_ns is not None and _monotonic_ns() >= deadline_ns:
                return g
            if rounds < 100:
                continue
            if rounds < 1000:
                os.sched_yield()
            else:
                time.sleep(0.00005)


def default_space_wait(cpus=None):
    """The default producer wait for this machine: no yield phase and a 1 us spin on <= 2 cores.

    With more cores a waiting producer may spin 2 us and yield until 10 us
    first (the consumer it waits for likely runs on another core).
    """
    cpus = cpus or os.cpu_count() or 1
    if cpus <= 2:
        return BackoffSpaceWait(spin_ns=1000, yield_ns=0)
    return BackoffSpaceWait(spin_ns=2000, yield_ns=10000)


def _parse_space_wait(spec):
    parts = spec.strip().split(":")
    name = parts[0]
    try:
        if name == "backoff":
            nums = [int(x) for x in parts[1:]]
            if len(nums) > 2:
                raise ValueError(spec)
            if not nums:
                return default_space_wait()
            return BackoffSpaceWait(nums[0], nums[1] if len(nums) > 1 else 0)
    except ValueError:
        raise RingConfigError("bad producer wait %r (backoff[:SPIN_NS[:YIELD_NS]])" % (spec,))
    if len(parts) == 1:
        if name == "blocking":
            return BackoffSpaceWait(0, 0)
        if name == "yield":
            return YieldingSpaceWait()
        if name == "sleep-poll":
            return SleepPollSpaceWait()
    raise RingConfigError("unknown producer wait %r (choose from backoff[:SPIN_NS[:YIELD_NS]], "
                          "blocking, yield, sleep-poll)" % (spec,))


def make_space_wait(spec, ring_signals):
    """The producer wait for ``spec`` (None, a name as in ``RINGMATCH_PRODUCER_WAIT``, an instance).

    ``None`` takes ``RINGMATCH_PRODUCER_WAIT`` or ``default_space_wait()``.  On a
    ring whose consumers do not signal (busy-spin / yield strategies) a
    blocking wait would never be woken early, so the default there is
    ``YieldingSpaceWait`` and an explicit blocking one is refused
    (RingConfigError).
    """
    explicit = spec is not None
    if spec is None:
        spec = os.environ.get("RINGMATCH_PRODUCER_WAIT") or None
    if spec is None:
        strategy = default_space_wait()
    elif isinstance(spec, str):
        strategy = _parse_space_wait(spec)
    elif hasattr(spec, "wait_for_space"):
        strategy = spec
    else:
        raise RingConfigError("not a producer wait strategy: %r" % (spec,))
    if strategy.blocks and not ring_signals:
        if explicit:
            raise RingConfigError("producer wait %r blocks, but the ring's consumers do not "
                                  "signal (busy-spin / yield ring)" % (strategy.name,))
        return YieldingSpaceWait()
    return strategy
