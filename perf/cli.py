"""``ringmatch bench``: list and run the benchmark suites in perf/.

Every module ``perf/<topic>_bench.py`` that exposes ``SUITES = {name: callable(argv)}``
is a suite provider; ``ringmatch bench list`` shows them, ``ringmatch bench run NAME
[-- ARGS]`` runs one (ARGS go to the suite), ``ringmatch bench all`` runs every suite
with its defaults.

Results go to ``perf/results`` only with ``--save`` (``--results-dir DIR``: to
DIR); otherwise to a new temporary directory, named at the end, so a trial run
never changes the committed figures.  The redirection replaces, for the run,
every module-level name of the suite modules and ``perf.harness`` that holds
the ``perf/results`` path (``RESULTS``, ``RESULTS_DIR``); a suite that writes
there anyway is named in a warning.
"""
import argparse
import importlib
import os
import pkgutil
import sys
import tempfile

__all__ = ["add_arguments", "run", "discover", "RESULTS_DIR"]

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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
    _save_options(p)
    p.add_argument("names", nargs=argparse.REMAINDER)
    _save_options(sub.add_parser("all", help="run every suite with its defaults"))


def _save_options(parser):
    parser.add_argument("--save", action="store_true",
                        help="write the results to perf/results (default: a temporary directory)")
    parser.add_argument("--results-dir", default=None, metavar="DIR",
                        help="write the results to DIR (implies --save)")


def _listing(directory):
    """{name: (size, mtime_ns)} of the files in ``directory``."""
    out = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        try:
            st = os.stat(os.path.join(directory, name))
        except OSError:
            continue
        out[name] = (st.st_size, st.st_mtime_ns)
    return out


class _Redirect(object):
    """For the run: every module global equal to perf/results points to ``target``."""

    def __init__(self, target, module_names):
        self.target = target
        self.module_names = sorted(set(module_names) | {"perf.harness"})
        self.saved = []

    def __enter__(self):
        real = os.path.realpath(RESULTS_DIR)
        for name in self.module_names:
            module = sys.modules.get(name) or importlib.import_module(name)
            for attr, value in list(vars(module).items()):
                if isinstance(value, str) and value and os.path.isabs(value) and \
                        os.path.realpath(value) == real:
                    self.saved.append((module, attr, value))
                    setattr(module, attr, self.target)
        return self

    def __exit__(self, *exc):
        for module, attr, value in reversed(self.saved):
            setattr(module, attr, value)
        self.saved = []


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
        # --save / --results-dir DIR after the names (REMAINDER keeps them): ours
        cleaned = []
        i = 0
        while i < len(words):
            if words[i] == "--save":
                args.save = True
            elif words[i] == "--results-dir" and i + 1 < len(words):
                args.results_dir = words[i + 1]
                i += 1
            elif words[i].startswith("--results-dir="):
                args.results_dir = words[i].split("=", 1)[1]
            else:
                cleaned.append(words[i])
            i += 1
        words = cleaned
        split = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        names, extra = words[:split], words[split:]
        if not names:
            print("ringmatch bench run: name at least one suite (see `ringmatch bench list`)",
                  file=sys.stderr)
            return 2
    unknown = [n for n in names if n not in suites]
    if unknown:
        print("ringmatch bench %s: unknown suite(s): %s (see `ringmatch bench list`)"
              % (action, ", ".join(unknown)), file=sys.stderr)
        return 2
    if getattr(args, "results_dir", None):
        target = os.path.abspath(args.results_dir)
        try:
            os.makedirs(target, exist_ok=True)
        except OSError as exc:
            print("ringmatch bench %s: --results-dir %s: %s" % (action, target,
                                                              exc.strerror or exc),
                  file=sys.stderr)
            return 2
    elif getattr(args, "save", False):
        target = RESULTS_DIR
    else:
        target = tempfile.mkdtemp(prefix="ringmatch-bench-")
    before = _listing(RESULTS_DIR)
    status = 0
    with _Redirect(target, [suites[n][0] for n in names]):
        for name in names:
            print("== %s" % name, flush=True)
            rc = suites[name][1](extra)
            if isinstance(rc, int) and rc:
                status = rc
    if target == RESULTS_DIR:
        print("results saved in %s" % target)
        return status
    print("results in %s (not saved: --save writes them to perf/results)" % target)
    after = _listing(RESULTS_DIR)
    changed = sorted(n for n, v in after.items() if before.get(n) != v)
    if changed:
        print("warning: perf/results changed during the run (another process, or a suite "
              "that ignores the redirection): %s" % ", ".join(changed[:10]), file=sys.stderr)
    return status
