"""The ``ringmatch`` console script: one entry point, subcommands per part.

Each subcommand lives in the package that owns it and is imported lazily, so
``ringmatch ring inspect`` does not import the publisher's web stack.

Theory of operation (where options may stand):

1. An option of a subcommand may stand before the subcommand, after it, or
   after its action: ``ringmatch --data-dir D journal verify``, ``ringmatch
   journal --data-dir D verify`` and ``ringmatch journal verify --data-dir D``
   are one command.  Options before the subcommand are moved to the end
   (``_hoist``); the subcommand's own options are copied into each of its
   actions with a suppressed default (``_propagate``), so given after the
   action they count, and not given they leave the subcommand's value alone.
2. A wrong command line is one line on stderr (``ringmatch journal verify:
   unrecognized arguments: --frob (see --help)``) and exit code 2, never the
   usage text.
"""
import argparse
import importlib
import sys

# subcommand -> (module, help).  The module provides ``add_arguments(parser)``
# and ``run(args) -> int``.
SUBCOMMANDS = {
    "run": ("engine.run_cli", "run the engine (embedded default configuration)"),
    "ring": ("ringbuf.cli", "inspect shared-memory rings"),
    "journal": ("journaler.cli", "inspect, verify, replay, export and truncate journals"),
    "status": ("engine.status_cli", "live view of rings, consumers, journal and books"),
    "halt": ("engine.admin_cli", "halt trading of a symbol (a running engine)"),
    "resume": ("engine.admin_cli", "resume trading of a halted symbol (a running engine)"),
    "bench": ("perf.cli", "list and run the benchmark suites in perf/"),
    "lobster": ("engine.lobster", "replay the LOBSTER sample through the matcher"),
    "standby": ("replicator.cli", "run the engine as a hot standby"),
    "promote": ("replicator.promote_cli", "promote a standby to primary"),
    "keys": ("publisher.keys_cli", "create, list and revoke API keys (view/trade scopes)"),
}

EXIT_USAGE = 2


def _one_line_errors(parser):
    """Rule 2: ``parser.error`` prints one line and exits 2."""
    def error(message):
        sys.stderr.write("%s: %s (see --help)\n" % (parser.prog, message))
        sys.exit(EXIT_USAGE)
    parser.error = error


def _subparsers(parser):
    """The (name, parser) pairs of ``parser``'s subcommands/actions, if any."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield name, sub


def _propagate(parser):
    """Rule 1: copy ``parser``'s options into each action parser below it (recursively)."""
    options = [a for a in parser._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction)]
    for _, sub in _subparsers(parser):
        have = set(s for a in sub._actions for s in a.option_strings)
        for action in options:
            if any(s in have for s in action.option_strings):
                continue        # the action has its own (e.g. keys' --data-dir)
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS, "help": action.help}
            if isinstance(action, argparse._StoreTrueAction):
                kwargs["action"] = "store_true"
            elif isinstance(action, argparse._StoreFalseAction):
                kwargs["action"] = "store_false"
            elif isinstance(action, argparse._AppendAction):
                kwargs.update(action="append", type=action.type, metavar=action.metavar)
            elif isinstance(action, argparse._StoreAction):
                kwargs.update(type=action.type, choices=action.choices, nargs=action.nargs,
                              metavar=action.metavar)
            else:
                continue
            sub.add_argument(*action.option_strings, **kwargs)
        _propagate(sub)


def _all_parsers(parser):
    yield parser
    for _, sub in _subparsers(parser):
        for p in _all_parsers(sub):
            yield p


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ringmatch", description=__doc__.splitlines()[0],
        epilog="Options of a subcommand may also be given before it or after its action "
               "(ringmatch --data-dir D journal verify).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module_name)
        try:
            module = modules.get(module_name) or importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name != module_name:
                raise
            p.set_defaults(_missing=True)
            continue
        modules[module_name] = module
        add = getattr(module, "add_arguments_for", None)
        if add is not None:
            add(name, p)
        else:
            module.add_arguments(p)
        _propagate(p)
    for p in _all_parsers(parser):
        _one_line_errors(p)
    return parser


def _takes_value(parser, option):
    """Whether ``option`` (``--x``) takes a value in any subcommand's parser tree."""
    for p in _all_parsers(parser):
        for action in p._actions:
            if option in action.option_strings:
                return action.nargs != 0
    return None


def _hoist(parser, argv):
    """Rule 1: ``[opts...] COMMAND rest`` -> ``COMMAND rest opts...`` (argv unchanged else).

    At the end (before a ``--``) they reach the deepest parser, which has its
    own options and, copied by ``_propagate``, those of the levels above it.
    """
    leading = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in SUBCOMMANDS:
            if not leading:
                return argv
            rest = argv[i + 1:]
            cut = rest.index("--") if "--" in rest else len(rest)
            return [word] + rest[:cut] + leading + rest[cut:]
        if not word.startswith("-") or word in ("-h", "--help", "--"):
            return argv
        leading.append(word)
        if "=" not in word and _takes_value(parser, word) and i + 1 < len(argv):
            leading.append(argv[i + 1])
            i += 1
        i += 1
    return argv


def main(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(_hoist(parser, argv))
    if extra:
        prog = " ".join(["ringmatch"] + [w for w in (getattr(args, "command", None),) if w])
        sys.stderr.write("%s: unrecognized arguments: %s (see --help)\n" % (prog, " ".join(extra)))
        return EXIT_USAGE
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print("ringmatch %s: not available in this build" % args.command, file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
