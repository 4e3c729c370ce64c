"""The I/O layer of the journal writer and the snapshot writer.

Theory of operation:

1. Every call the two writers make that changes a file or a directory entry
   goes through this module: ``open``, ``close``, ``write``, ``writev``,
   ``pwrite``, ``ftruncate``, ``fsync``, ``fdatasync``, ``fsync_dir``,
   ``rename``, ``replace``, ``unlink``.  By default each name IS the ``os``
   function (``writev`` falls back to one joined ``os.write`` where the
   interpreter has no ``os.writev``, PyPy 3.9): no wrapper, no cost.
2. A module that calls through its own module-level aliases (the journal
   writer's ``_writev`` / ``_fsync`` / ..., bound once so the hot path does a
   global lookup and no attribute lookup, and so a test can monkeypatch one
   call site) registers them with ``bind(namespace, alias=name, ...)``.
3. ``install(functions)`` replaces some of these functions, in this module
   and in every registered alias, with others -- the crash-simulation shim
   of ``tests/journaler/_crashsim.py`` records each write not yet covered by
   an fsync and, at a chosen crash point, loses the page cache on the real
   files.  ``uninstall()`` restores the pass-through.  Installation is
   process-wide and not thread-safe: tests only.
4. Reads (the reader, ``listdir``, ``stat``) do not go through here: they
   change nothing a power loss could undo.
"""
import os

__all__ = [
    "open", "close", "write", "writev", "pwrite", "ftruncate", "fsync", "fdatasync",
    "fsync_dir", "rename", "replace", "unlink", "bind", "install", "uninstall", "installed",
    "NAMES",
]

def _write_joined(fd, parts):
    """os.writev stand-in (PyPy 3.9 has no os.writev): one copy, one write."""
    return os.write(fd, b"".join(parts))


def _fsync_dir(path):
    """fsync a directory: makes its entries (creations, renames, unlinks) durable.  O(1)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: the pass-through table (rule 1)
_PASS = {
    "open": os.open,
    "close": os.close,
    "write": os.write,
    "writev": getattr(os, "writev", _write_joined),
    "pwrite": os.pwrite,
    "ftruncate": os.ftruncate,
    "fsync": os.fsync,
    "fdatasync": getattr(os, "fdatasync", os.fsync),
    "fsync_dir": _fsync_dir,
    "rename": os.rename,
    "replace": os.replace,
    "unlink": os.unlink,
}
NAMES = tuple(sorted(_PASS))

open = _PASS["open"]            # noqa: A001 (shadows the builtin on purpose: os.open)
close = _PASS["close"]
write = _PASS["write"]
writev = _PASS["writev"]
pwrite = _PASS["pwrite"]
ftruncate = _PASS["ftruncate"]
fsync = _PASS["fsync"]
fdatasync = _PASS["fdatasync"]
fsync_dir = _PASS["fsync_dir"]
rename = _PASS["rename"]
replace = _PASS["replace"]
unlink = _PASS["unlink"]

_aliases = []       # (namespace dict, alias, name) of rule 2
_installed = [None]


def bind(namespace, **aliases):
    """Bind ``namespace[alias] = <current fsio function name>`` and keep it bound (rule 2).

    >>> ns = {}
    >>> bind(ns, _fsync="fdatasync")
    >>> ns["_fsync"] is fdatasync
    True

    Raises KeyError for a name this module does not have.  O(aliases).
    """
    here = globals()
    for alias, name in aliases.items():
        if name not in _PASS:
            raise KeyError("fsio has no function %r (it has %s)" % (name, ", ".join(NAMES)))
        namespace[alias] = here[name]
        _aliases.append((namespace, alias, name))


def _set(table):
    here = globals()
    for name, function in table.items():
        here[name] = function
    for namespace, alias, name in _aliases:
        if name in table:
            namespace[alias] = table[name]


def install(functions):
    """Replace functions of rule 1 (a dict name -> callable) here and in every alias (rule 3).

    Raises KeyError for an unknown name and RuntimeError when something is
    already installed.  O(aliases).
    """
    unknown = sorted(set(functions) - set(_PASS))
    if unknown:
        raise KeyError("fsio has no function(s) %s" % ", ".join(unknown))
    if _installed[0] is not None:
        raise RuntimeError("an fsio shim is already installed")
    _installed[0] = dict(functions)
    _set(functions)


def uninstall():
    """Restore the pass-through everywhere (safe to call twice).  O(aliases)."""
    _installed[0] = None
    _set(_PASS)


def installed():
    """The installed table (None: pass-through)."""
    return _installed[0]
