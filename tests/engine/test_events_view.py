"""BytesSink.take_view(): the zero-copy take gives the same records as take()."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _engine_streams as streams  # noqa: E402

from engine.config import DEFAULT_CONFIG  # noqa: E402
from engine.events import BytesSink, Event  # noqa: E402
from engine.matcher import Matcher  # noqa: E402

pytestmark = [pytest.mark.pypy, pytest.mark.timeout(120)]


def _run(take_name, cmds, every):
    sink = BytesSink(initial_events=8)        # small: the buffer is replaced while growing
    m = Matcher(DEFAULT_CONFIG, sink)
    take = getattr(sink, take_name)
    chunks = []
    for i, (seq, cmd) in enumerate(cmds, 1):
        m.process(seq, cmd)
        if i % every == 0:
            chunks.append(bytes(take()))       # the view is consumed before the next write
    chunks.append(bytes(take()))
    return chunks, sink.count


def test_take_view_same_records_as_take():
    cmds = list(enumerate(streams.random_stream(11, 3000), 1))
    for every in (1, 7, 500):
        view_chunks, n_view = _run("take_view", cmds, every)
        copy_chunks, n_copy = _run("take", cmds, every)
        assert view_chunks == copy_chunks
        assert n_view == n_copy == sum(len(c) for c in copy_chunks) // 128
    events = Event.unpack_all(b"".join(copy_chunks))
    assert events and events[-1].flags & 4       # LAST on the final event


def test_take_view_is_read_only_and_empty_after():
    sink = BytesSink()
    m = Matcher(DEFAULT_CONFIG, sink)
    from engine.commands import Command
    m.process(1, Command.deposit(7, 1, 100))
    view = sink.take_view()
    assert len(view) == 2 * 128 and view.readonly
    with pytest.raises(TypeError):
        view[0] = 0
    assert len(sink.take_view()) == 0 and sink.take() == b""
    assert Event.unpack(view, 128).qty == 100
