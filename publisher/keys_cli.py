"""``ringmatch keys create|list|revoke``: API keys without writing Python.

The store is ``<data_dir>/api_keys.json`` (publisher/key_file.py); a running
publisher of that data dir picks a change up within about a second
(publisher/auth.py rule 10).  ``create`` prints the key, its secret and its
passphrase once (stdout only; they are never logged); ``list`` never shows
a secret.  Every refusal is one line on stderr and a non-zero exit code:
2 for a wrong command line, 1 for a store that cannot be read or changed.
"""
import argparse
import datetime
import json
import os
import sys

__all__ = ["add_arguments", "run"]

EXIT_USAGE = 2
EXIT_FAILED = 1


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the usage and the error; a refusal here is one line."""

    def error(self, message):
        sys.stderr.write("%s: %s (see --help)\n" % (self.prog, message))
        sys.exit(EXIT_USAGE)


def _one_line_error(parser):
    def error(message):
        sys.stderr.write("%s: %s (see --help)\n" % (parser.prog, message))
        sys.exit(EXIT_USAGE)
    parser.error = error


def _where(parser, suppress):
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--data-dir", default=default,
                        help="the engine's data dir (default: the configuration's, ./var)")
    parser.add_argument("--config", default=default,
                        help="runtime configuration (JSON) whose data_dir to use")


def add_arguments(parser):
    _one_line_error(parser)
    _where(parser, suppress=False)
    sub = parser.add_subparsers(dest="keys_action", metavar="ACTION",
                                parser_class=_OneLineParser)
    create = sub.add_parser("create", help="make a key for an account (secret shown once)")
    create.add_argument("--account", required=True, help="account id (1..2^32-1)")
    create.add_argument("--scope", required=True, choices=("view", "trade"),
                        help="view: read orders, fills, accounts; trade: also place and cancel")
    create.add_argument("--label", default=None, help="a note shown by list")
    create.add_argument("--json", action="store_true", help="one JSON object on stdout")
    lister = sub.add_parser("list", help="the keys of the store (never their secrets)")
    lister.add_argument("--json", action="store_true")
    revoke = sub.add_parser("revoke", help="revoke a key (a running publisher: within ~1 s)")
    revoke.add_argument("key")
    for p in (create, lister, revoke):
        _where(p, suppress=True)


def _data_dir(args):
    if args.data_dir:
        return os.path.abspath(args.data_dir)
    from engine.config_schema import load          # checked as every CLI checks --config
    from engine.runtime import ConfigError
    try:
        return load(args.config).data_dir
    except (ConfigError, OSError, ValueError) as exc:
        raise _Refusal(EXIT_USAGE, "cannot read the configuration: %s"
                       % str(exc).splitlines()[0][:200])


class _Refusal(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code


def _account(text):
    if not isinstance(text, str) or not text.isdigit() or not text.isascii() or len(text) > 10:
        raise _Refusal(EXIT_USAGE, "--account %r is not an account id (1..4294967295)"
                       % text[:20])
    value = int(text)
    if not 0 < value < 1 << 32:
        raise _Refusal(EXIT_USAGE, "--account %s is out of range (1..4294967295)" % text)
    return value


def _when(ns):
    if not ns:
        return "-"
    dt = datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args):
    from publisher import key_file
    prog = "ringmatch keys"
    try:
        action = getattr(args, "keys_action", None)
        if not action:
            raise _Refusal(EXIT_USAGE, "give an action: create, list or revoke")
        data_dir = _data_dir(args)
        if action == "create":
            account = _account(args.account)
            rec, secret, passphrase = key_file.create(data_dir, account, args.scope,
                                                      label=args.label)
            if args.json:
                out = dict(rec, secret=secret, passphrase=passphrase)
                print(json.dumps(out, sort_keys=True))
            else:
                print("key         %s" % rec["key"])
                print("secret      %s" % secret)
                print("passphrase  %s" % passphrase)
                print("account     %d" % rec["account_id"])
                print("scope       %s" % rec["scope"])
                print("store the secret and the passphrase now: they are not shown again")
            return 0
        if action == "list":
            if not os.path.isdir(data_dir):
                raise key_file.KeyFileError("data dir %s does not exist" % data_dir)
            data = key_file.load(key_file.key_file_path(data_dir))
            records = [key_file.public_record(r) for r in data["keys"]]
            if args.json:
                print(json.dumps(records, sort_keys=True))
                return 0
            if not records:
                print("no keys in %s" % key_file.key_file_path(data_dir))
                return 0
            print("%-32s %10s %-5s %-7s %-20s %-20s %s" % ("key", "account", "scope", "status",
                                                          "created", "revoked", "label"))
            for r in records:
                print("%-32s %10d %-5s %-7s %-20s %-20s %s" % (
                    r["key"], r["account_id"], r["scope"], r["status"], _when(r["created_ns"]),
                    _when(r["revoked_ns"]), r["label"] or ""))
            return 0
        rec = key_file.revoke(data_dir, args.key)
        print("revoked %s (account %d, %s)" % (rec["key"], rec["account_id"], rec["scope"]))
        return 0
    except _Refusal as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        return exc.code
    except key_file.KeyFileError as exc:
        sys.stderr.write("%s: %s\n" % (prog, str(exc).splitlines()[0]))
        return EXIT_FAILED
