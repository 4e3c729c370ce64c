"""``ringmatch run``: start the engine's shards in the foreground (all, or ``--shard``).

Exit codes (docs/operations.md):

== ==========================================================================
0  stopped by SIGINT/SIGTERM -- at any point, start-up included -- cleanly:
   children reaped, rings unlinked, locks released
1  a child gave up restarting (crash loop), or an unexpected error
2  bad configuration
3  the shard is already run: by an engine on this data dir, or (host-wide)
   by an engine on another data dir that owns the shard's ring names
4  the journal is damaged (docs/journal.md); no file was changed
5  refused: this node is fenced (docs/replication.md)
6  the data dir cannot be written (read-only, permissions) or another OS error
7  the publisher's port is in use (or cannot be bound)
== ==========================================================================

Every refusal is one line on stderr starting ``ringmatch run:``, no traceback
(a JSON object with ``exit_code`` under ``--log-format json``).  The configuration
is checked by engine/config_schema.py first: ``ringmatch run: config error:
publisher.port: must be 1..65535, got 70000``; ``--check-config`` stops there.
"""
import errno
import sys

EXIT_STOPPED = 0
EXIT_CHILD_FAILED = 1
EXIT_CONFIG = 2
EXIT_ALREADY_RUNNING = 3
EXIT_JOURNAL = 4
EXIT_FENCED = 5
EXIT_OS = 6
EXIT_PORT = 7


def add_arguments(parser):
    parser.add_argument("--config", help="runtime configuration (JSON); default: embedded")
    parser.add_argument("--shard", action="append",
                        help="shard to run (repeatable; default: every shard in the config)")
    parser.add_argument("--data-dir", help="override data_dir")
    parser.add_argument("--port", type=int, help="override publisher.port (the first shard's)")
    parser.add_argument("--matcher-interpreter", help="auto | pypy | cpython | PATH")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration (schema, exchange, shards), print "
                             "one line and exit: 0 valid, 2 not")
    parser.add_argument("--log-format", choices=("text", "json"),
                        help="log lines of every process: text (key=value, the default) or "
                             "json (one object per line); overrides log.format")


def _log_format(args, runtime=None):
    """``--log-format``, else the configuration's ``log.format``, else the environment's."""
    from engine.log import current_format
    if getattr(args, "log_format", None):
        return args.log_format
    conf = ((runtime.raw.get("log") or {}) if runtime is not None else {}).get("format")
    return conf or current_format()


def _say(message, code=None, prog="ringmatch run"):
    """One refusal line on stderr: ``ringmatch run: ...`` (a JSON object in json mode)."""
    from engine.log import Logger, current_format
    if current_format() == "json":
        fields = {"message": "%s: %s" % (prog, message)}
        if code is not None:
            fields["exit_code"] = code
        Logger("ringmatch", "-").event("refused" if code else "info", **fields)
    else:
        print("%s: %s" % (prog, message), file=sys.stderr)


def _refuse(message, code, started):
    _say(message, code)
    return _stop_all(started, code)


def _stop_all(started, code):
    for sup in started:
        if not sup.stopping:        # the one that failed stopped itself already
            sup.stop()
    return code


def _print_running(sup):
    from engine.log import current_format
    pub = sup.runtime.publisher
    url = "http://%s:%s" % (pub["host"], pub["port"])
    if current_format() == "json":
        sup.log.event("running", symbols=",".join(sup.shard.symbols), api=url,
                      docs=url + "/docs", data_dir=sup.runtime.data_dir)
        return
    print("ringmatch: shard %s (%s) running; API %s (docs %s/docs); "
          "status: ringmatch status --data-dir %s --shard %s; Ctrl-C to stop"
          % (sup.shard.name, ", ".join(sup.shard.symbols), url, url,
             sup.runtime.data_dir, sup.shard.name), file=sys.stderr)


def run(args):
    from engine.supervisor import StopSignals
    signals = StopSignals().install()       # supervisor rule 6: before the first step
    try:
        return _run(args, signals)
    finally:
        signals.restore()


def _run(args, signals):
    from engine import log as engine_log
    from engine.config_schema import load
    from engine.runtime import ConfigError
    from engine.supervisor import Supervisor, StopRequested, run_supervisors
    if getattr(args, "log_format", None):
        engine_log.set_format(args.log_format)   # also for a refusal of the configuration
    try:
        runtime = load(args.config, {"data_dir": args.data_dir, "publisher.port": args.port,
                                     "matcher.interpreter": args.matcher_interpreter,
                                     "log.format": getattr(args, "log_format", None)})
        # every process of the engine logs in this format: children inherit the environment
        engine_log.set_format(_log_format(args, runtime))
        names = args.shard or [s.name for s in runtime.shards]
        for name in names:
            runtime.shard(name)
        if getattr(args, "check_config", False):
            print("ringmatch run: configuration OK: data_dir %s, shards %s" % (
                runtime.data_dir, ", ".join("%s (%s)" % (s.name, ", ".join(s.symbols) or "-")
                                           for s in runtime.shards if s.name in names)))
            return EXIT_STOPPED
        supervisors = [Supervisor(runtime, name) for name in names]
    except ConfigError as exc:
        _say("config error: %s" % exc, EXIT_CONFIG)
        return EXIT_CONFIG
    if signals:
        return EXIT_STOPPED
    started = []
    try:
        for sup in supervisors:
            sup.stop_signals = signals
            sup.on_ready = _print_running
            started.append(sup)         # stop() is safe on a partly started supervisor
            sup.start()
    except StopRequested as exc:    # start() already stopped the one it was starting
        for sup in started:
            if not sup.stopping:
                sup.log.event("stopping", signal=exc.signum, during="start-up")
        return _stop_all(started, EXIT_STOPPED)
    except Exception as exc:
        refusal = start_refusal(exc, runtime.data_dir)
        if refusal is None:
            _stop_all(started, None)
            raise
        return _refuse(refusal[0], refusal[1], started)
    except BaseException:
        _stop_all(started, None)
        raise
    return run_supervisors(supervisors, signals=signals)


def start_refusal(exc, data_dir):
    """(one-line message, exit code) for an exception a supervisor's start raised, or None
    when it is not one of the refusals of the table above (also ``ringmatch standby``'s)."""
    from engine.supervisor import AlreadyRunningError, DataDirError, PortInUseError
    from journaler.errors import JournalError
    from replicator.epoch import FencedError
    if isinstance(exc, AlreadyRunningError):
        return str(exc), EXIT_ALREADY_RUNNING
    if isinstance(exc, FencedError):
        return "refused, this node is fenced: %s" % exc, EXIT_FENCED
    if isinstance(exc, JournalError):     # damaged journal: one precise line, files untouched
        return "journal: %s" % exc, EXIT_JOURNAL
    if isinstance(exc, DataDirError):
        return str(exc), EXIT_OS
    if isinstance(exc, PortInUseError):
        return str(exc), EXIT_PORT
    if isinstance(exc, OSError):          # e.g. a read-only or missing data dir
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return ("data dir %s is not writable (%s: %s)"
                    % (data_dir, exc.filename or "?", exc.strerror or exc)), EXIT_OS
        return "%s: %s" % (exc.strerror or exc, exc.filename or ""), EXIT_OS
    return None
