"""Fixtures: unique ring names that are always unlinked, child processes always reaped."""
import itertools
import multiprocessing
import os

import posix_ipc
import pytest

from ringbuf import Ring

_counter = itertools.count()


@pytest.fixture
def ring_name():
    """A unique ``rm-`` segment name; the segment is unlinked after the test, pass or fail."""
    name = "rm-test-%d-%d" % (os.getpid(), next(_counter))
    yield name
    try:
        posix_ipc.unlink_shared_memory("/" + name)
    except posix_ipc.ExistentialError:
        pass


@pytest.fixture
def make_ring(ring_name):
    """``make_ring(**create_kwargs)`` -> Ring; closed and unlinked at teardown."""
    rings = []

    def make(name=None, **kw):
        kw.setdefault("capacity", 16)
        kw.setdefault("consumers", {"a": []})
        r = Ring.create(name or ring_name + "-%d" % len(rings), **kw)
        rings.append(r)
        return r

    yield make
    for r in rings:
        r.unlink()
        r.close()


@pytest.fixture
def processes():
    """``processes.start(target, *args)`` -> Process (fork); every child is killed and joined."""
    ctx = multiprocessing.get_context("fork")
    started = []

    class Starter(object):
        context = ctx

        def start(self, target, *args):
            p = ctx.Process(target=target, args=args, daemon=True)
            p.start()
            started.append(p)
            return p

    yield Starter()
    for p in started:
        if p.is_alive():
            p.kill()
        p.join(5)
