"""``ringmatch bench``: list and run the benchmark suites in perf/.

Every module ``perf/<topic>_bench.py`` that exposes ``SUITES = {name: callable(argv)}``
is a suite provider; ``ringmatch bench list`` shows them, ``ringmatch bench run NAME
[-- ARGS]`` runs one (ARGS go to the suite), ``ringmatch bench all`` runs every suite
with its defaults.
"""
import argparse
import importlib
import os
import pkgutil
import sys

__all__ = ["add_arguments", "run", "discover"]


def discover():
    """``{suite name: (module name, callable)}`` for every perf/*_bench.py SUITES entry."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = {}
    for info in sorted(pkgutil.iter_modules([here]), key=lambda i: i.name):
        if not info.name.endswith("_bench"):
            continue
        module_name = "perf." + info.name
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a broken suite must not hide the others
            sys.stderr.write("ringmatch bench: cannot import %s: %s\n" % (module_name, exc))
            continue
        for name, fn in getattr(module, "SUITES", {}).items():
            found[name] = (module_name, fn)
    return found


def add_arguments(parser):
    sub = parser.add_subparsers(dest="bench_command", metavar="ACTION")
    sub.add_parser("list", help="list the suites")
    p = sub.add_parser("run", help="run suites by name; options (--passes 3, --quick...) "
                                   "go to the suites")
    p.add_argument("names", nargs=argparse.REMAINDER)
    sub.add_parser("all", help="run every suite with its defaults")


def _doc(fn):
    doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else ""


def run(args):
    suites = discover()
    action = getattr(args, "bench_command", None)
    if action in (None, "list"):
        for name, (module, fn) in sorted(suites.items()):
            print("%-32s %-22s %s" % (name, module, _doc(fn)))
        return 0
    if action == "all":
        names, extra = sorted(suites), []
    else:
        words = [w for w in args.names if w != "--"]
        split = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        names, extra = words[:split], words[split:]
        if not names:
            print("ringmatch bench run: name at least one suite (see `ringmatch bench list`)")
            return 2
    unknown = [n for n in names if n not in suites]
    if unknown:
        print("unknown suite(s): %s (see `ringmatch bench list`)" % ", ".join(unknown))
        return 2
    status = 0
    for name in names:
        print("== %s" % name)
        rc = suites[name][1](extra)
        if isinstance(rc, int) and rc:
            status = rc
    return status
