"""The ``ringmatch`` console script: one entry point, subcommands per part.

Each subcommand lives in the package that owns it and is imported lazily, so
``ringmatch ring inspect`` does not import the publisher's web stack.
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
    "bench": ("perf.cli", "list and run the benchmark suites in perf/"),
    "lobster": ("engine.lobster", "replay the LOBSTER sample through the matcher"),
    "standby": ("replicator.cli", "run the engine as a hot standby"),
    "promote": ("replicator.promote_cli", "promote a standby to primary"),
    "keys": ("publisher.keys_cli", "create, list and revoke API keys (view/trade scopes)"),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="ringmatch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name != module_name:
                raise
            p.set_defaults(_missing=True)
            continue
        module.add_arguments(p)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
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
