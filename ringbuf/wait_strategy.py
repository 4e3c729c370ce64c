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
                          machine has 2 cores, spinning steals one)
========================  ==============================================  =======

"signals": producers of a ring whose strategy signals pay one seq_cst fence
and a load of the waiter count per publish.
"""
import os

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object

from ._native import lib
from .errors import RingConfigError

__all__ = ["WaitStrategy", "BusySpinWaitStrategy", "YieldingWaitStrategy",
           "BlockingWaitStrategy", "TimeoutBlockingWaitStrategy", "BackoffWaitStrategy",
           "make_wait_strategy"]

_SPIN_CHUNK = 2000          # pause rounds between deadline checks
_FUTEX_SLICE_NS = 50000000  # a futex sleep never exceeds 50 ms (re-check, deadlines)
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


class BackoffWaitStrategy(object):
    """Spin for ``spin_ns``, then yield until ``yield_ns``, then sleep on the futex.

    The default: on 2 cores a consumer that spins forever takes the core its
    producer needs; this one spins only through short gaps.
    """

    name = "backoff"
    needs_signal = True

    def __init__(self, spin_ns=2000, yield_ns=10000):
        self.spin_ns = spin_ns
        self.yield_ns = yield_ns

    def wait_for(self, barrier, seq, futex, deadline_ns):
        spin = lib.rm_barrier_spin
        start = _monotonic_ns()
        a = spin(barrier, seq, 200)
        if a >= seq:
            return a
        # spin phase
        while True:
            now = _monotonic_ns()
            if deadline_ns is not None and now >= deadline_ns:
                return a
            if now - start >= self.spin_ns:
                break
            a = spin(barrier, seq, 200)
            if a >= seq:
                return a
        # yield phase
        available = lib.rm_barrier_available
        sched_yield = os.sched_yield
        while True:
            sched_yield()
            a = available(barrier, seq)
            if a >= seq:
                return a
            now = _monotonic_ns()
            if deadline_ns is not None and now >= deadline_ns:
                return a
            if now - start >= self.yield_ns:
                break
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
