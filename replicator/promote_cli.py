"""``ringmatch promote``: make a running standby the primary.

    ringmatch promote --data-dir DIR [--shard S] [--timeout 30]

Signals the standby supervisor (its pid is in ``<data>/run/<S>.lock``), which
has the receiver persist epoch + 1 as primary, lets the matcher apply all it
received, and opens to producers (replicator/standby.py rule 4).  Waits for
``<data>/run/<S>.role`` and prints the new epoch.  Exit 0 on success, 1 on
timeout, 2 when no standby runs there.
"""
import json
import os
import signal
import sys
import time

__all__ = ["add_arguments", "run", "promote"]


def add_arguments(parser):
    parser.add_argument("--data-dir", default=None,
                        help="the standby's data dir (default: the configuration's, ./var)")
    parser.add_argument("--config", help="runtime configuration (for data_dir and shard)")
    parser.add_argument("--shard", help="shard (default: the first in the config)")
    parser.add_argument("--timeout", type=float, default=30.0)


def promote(data_dir, shard, timeout=30.0):
    """Signal the standby of ``shard`` in ``data_dir`` and wait; return the role dict.

    Raises RuntimeError (no standby running) or TimeoutError.
    """
    from replicator.standby import role_path
    data_dir = os.path.abspath(data_dir)
    lock = os.path.join(data_dir, "run", "%s.lock" % shard)
    try:
        with open(lock) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if not pid:
        raise RuntimeError("no standby supervisor for shard %r in %s (no %s)" % (shard, data_dir,
                                                                             lock))
    path = role_path(data_dir, shard)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            time.sleep(0.02)
    raise TimeoutError("standby pid %d did not report promotion within %.0f s" % (pid, timeout))


def run(args):
    from engine.config_schema import load
    from engine.runtime import ConfigError
    try:
        runtime = load(args.config)
    except ConfigError as exc:
        print("ringmatch promote: config error: %s" % exc, file=sys.stderr)
        return 2
    data_dir = args.data_dir if args.data_dir else runtime.data_dir
    shard = args.shard or runtime.shards[0].name
    try:
        role = promote(data_dir, shard, args.timeout)
    except RuntimeError as exc:
        print("ringmatch promote: %s" % exc, file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print("ringmatch promote: %s" % exc, file=sys.stderr)
        return 1
    print("promoted: shard %s is primary at epoch %d (sequence %d)"
          % (shard, role["epoch"], role["seq"]))
    return 0
