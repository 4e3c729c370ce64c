"""One structured line per lifecycle event: ``ts=... proc=... shard=... event=... k=v``.

Shared by every process (journaler, matcher, publisher, replicator, supervisor)
so the terminal shows one readable, greppable stream.

Formats (docs/operations.md): ``text`` (the default, ``key=value`` pairs) or
``json`` (one JSON object per line, the same fields in the same order).  The
format is the environment variable ``RINGMATCH_LOG_FORMAT``: ``ringmatch run
--log-format json`` (or the configuration's ``log.format``) sets it with
:func:`set_format` before any child starts, and every child inherits it, so each
process of the engine writes the same format.  In ``json`` mode the supervisor
wraps any other line a child writes (a traceback, a library's warning) with
:func:`wrap_line`, so the stream stays one JSON object per line.
"""
import datetime
import json
import os
import sys

__all__ = ["Logger", "FORMAT_ENV", "FORMATS", "current_format", "set_format", "wrap_line",
           "parse_json_line"]

FORMAT_ENV = "RINGMATCH_LOG_FORMAT"
FORMATS = ("text", "json")


def current_format():
    """``"json"`` when ``RINGMATCH_LOG_FORMAT`` says so, else ``"text"``.  O(1)."""
    return "json" if os.environ.get(FORMAT_ENV, "").strip().lower() == "json" else "text"


def set_format(fmt):
    """Set this process's format, and its future children's (the environment).  ValueError."""
    if fmt not in FORMATS:
        raise ValueError("log format must be text or json, not %r" % (fmt,))
    os.environ[FORMAT_ENV] = fmt


def _fmt(value):
    text = str(value)
    if not text.isprintable():          # a newline must not split the line (a forged line)
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if not text or any(c in text for c in ' ="'):
        return '"%s"' % text.replace('"', "'")
    return text


def _json_value(value):
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) \
            else str(value)
    return str(value)


def _timestamp():
    now = datetime.datetime.now(datetime.timezone.utc)
    return "%s.%03dZ" % (now.strftime("%Y-%m-%dT%H:%M:%S"), now.microsecond // 1000)


def _json_line(fields):
    return json.dumps(fields, separators=(", ", ": "), ensure_ascii=False) + "\n"


def parse_json_line(line):
    """The object of one JSON log line (bytes or str), or None if it is not one.  O(len)."""
    if isinstance(line, bytes):
        if not line.startswith(b"{"):
            return None
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            return None
    elif not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def wrap_line(line, proc, shard, pid):
    """A line a process wrote outside the Logger, as one JSON log line (bytes).

    ``{"ts", "proc", "shard", "pid", "event": "output", "text"}``; a line that
    is a JSON object already is returned unchanged.  O(len).
    """
    if parse_json_line(line) is not None:
        return line if line.endswith(b"\n") else line + b"\n"
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    return _json_line({"ts": _timestamp(), "proc": proc, "shard": shard, "pid": pid,
                       "event": "output", "text": text}).encode("utf-8")


class Logger(object):
    """Write ``key=value`` (or JSON) lines for one process to ``stream`` (stderr by default).

    >>> Logger("matcher", "shard0").event("ready", seq=42)   # doctest: +SKIP
    ts=2026-11-22T04:00:00.000Z proc=matcher shard=shard0 pid=123 event=ready seq=42
    >>> Logger("matcher", "shard0", fmt="json").event("ready", seq=42)   # doctest: +SKIP
    {"ts": "2026-11-22T04:00:00.000Z", "proc": "matcher", "shard": "shard0", "pid": 123, "event": "ready", "seq": 42}

    ``fmt`` None: :func:`current_format` (the environment) at construction.
    """

    def __init__(self, proc, shard="-", stream=None, fmt=None):
        self.proc = proc
        self.shard = shard
        self.stream = stream if stream is not None else sys.stderr
        self.format = current_format() if fmt is None else fmt
        if self.format not in FORMATS:
            raise ValueError("log format must be text or json, not %r" % (self.format,))

    def line(self, event, **fields):
        """The line ``event`` would write (with its newline)."""
        if self.format == "json":
            out = {"ts": _timestamp(), "proc": self.proc, "shard": self.shard,
                   "pid": os.getpid(), "event": event}
            for k, v in fields.items():
                out[k] = _json_value(v)
            return _json_line(out)
        parts = ["ts=%s" % _timestamp(), "proc=%s" % self.proc, "shard=%s" % self.shard,
                 "pid=%d" % os.getpid(), "event=%s" % event]
        parts.extend("%s=%s" % (k, _fmt(v)) for k, v in fields.items())
        return " ".join(parts) + "\n"

    def event(self, event, **fields):
        text = self.line(event, **fields)
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not kill a process

    def error(self, event, **fields):
        self.event(event, level="ERROR", **fields)

    def warning(self, event, **fields):
        self.event(event, level="WARN", **fields)
