"""``ringmatch promote``: make a running standby the primary.

    ringmatch promote --data-dir DIR [--shard S] [--timeout 30]

Signals the standby supervisor (its pid is in ``<data>/run/<S>.lock``), which
has the receiver persist epoch + 1 as primary, lets the matcher apply all it
received, and opens to producers (replicator/standby.py rule 4).  Waits for
``<data>/run/<S>.role`` and prints the new epoch.  Exit 0 on success, 1 on
timeout, 2 when no standby runs there: no live holder of the lock, or the shard
there is not a standby (its epoch file, replication/<S>.epoch, says primary or
fenced; a primary supervisor is never signalled).
"""
import fcntl
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


def _held(lock):
    """Whether a live process holds the supervisor's exclusive flock on ``lock``.  O(1)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)                        # releases a lock taken here
    return False


def promote(data_dir, shard, timeout=30.0):
    """Signal the standby of ``shard`` in ``data_dir`` and wait; return the role dict.

    Raises RuntimeError (no standby running) or TimeoutError.
    """
    from replicator.epoch import EpochStore
    from replicator.standby import role_path
    data_dir = os.path.abspath(data_dir)
    lock = os.path.join(data_dir, "run", "%s.lock" % shard)
    try:
        with open(lock) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if not pid or not _held(lock):
        raise RuntimeError("no standby supervisor for shard %r in %s (%s)" % (
            shard, data_dir, "no %s" % lock if not pid else "pid %d of %s is gone" % (pid, lock)))
    try:
        role = EpochStore(data_dir, shard).load().role
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError("shard %r in %s: %s" % (shard, data_dir, str(exc).splitlines()[0]))
    if role != "standby":
        # the engine running there is not a standby: a primary supervisor does not handle
        # SIGUSR1, whose default action would kill it
        raise RuntimeError("shard %r in %s is run by pid %d as %s, not as a standby: nothing "
                           "to promote" % (shard, data_dir, pid, role))
    path = role_path(data_dir, shard)
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        raise RuntimeError("no standby supervisor for shard %r in %s (pid %d is gone)"
                           % (shard, data_dir, pid))
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
