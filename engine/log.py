"""One structured line per lifecycle event: ``ts=... proc=... shard=... event=... k=v``.

Shared by every process (journaler, matcher, publisher, replicator, supervisor)
so the terminal shows one readable, greppable stream.
"""
import datetime
import os
import sys

__all__ = ["Logger"]


def _fmt(value):
    text = str(value)
    if not text or any(c in text for c in ' ="'):
        return '"%s"' % text.replace('"', "'")
    return text


class Logger(object):
    """Write ``key=value`` lines for one process to ``stream`` (stderr by default).

    >>> Logger("matcher", "shard0").event("ready", seq=42)   # doctest: +SKIP
    ts=2026-11-22T04:00:00.000Z proc=matcher shard=shard0 pid=123 event=ready seq=42
    """

    def __init__(self, proc, shard="-", stream=None):
        self.proc = proc
        self.shard = shard
        self.stream = stream if stream is not None else sys.stderr

    def event(self, event, **fields):
        now = datetime.datetime.now(datetime.timezone.utc)
        parts = ["ts=%s.%03dZ" % (now.strftime("%Y-%m-%dT%H:%M:%S"), now.microsecond // 1000),
                 "proc=%s" % self.proc, "shard=%s" % self.shard, "pid=%d" % os.getpid(),
                 "event=%s" % event]
        parts.extend("%s=%s" % (k, _fmt(v)) for k, v in fields.items())
        try:
            self.stream.write(" ".join(parts) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not kill a process

    def error(self, event, **fields):
        self.event(event, level="ERROR", **fields)

    def warning(self, event, **fields):
        self.event(event, level="WARN", **fields)
