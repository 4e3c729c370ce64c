"""``ringmatch standby``: run this engine as a hot standby of a primary.

    ringmatch standby --config FILE --listen 0.0.0.0:9100 [--primary HOST:PORT]

The primary's replicator connects to the ``--listen`` address (it must be the
primary's ``standby: {host, port}``).  ``--primary`` is only logged (who we
expect).  See replicator/standby.py and docs/replication.md.

Refusals are one line on stderr (a JSON object under ``--log-format json``) with the exit
codes of ``ringmatch run`` (engine/run_cli.py): 2 configuration, 3 already running, 4
journal, 5 fenced, 6 data dir / OS error, 7 port.
"""
import sys

__all__ = ["add_arguments", "run", "parse_address"]

PROG = "ringmatch standby"


def parse_address(text, default_host="127.0.0.1"):
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise ValueError("address %r is not HOST:PORT" % text)
    return (host or default_host), int(port)


def add_arguments(parser):
    parser.add_argument("--config", help="runtime configuration (JSON); default: embedded")
    parser.add_argument("--shard", help="shard (default: the first in the config)")
    parser.add_argument("--data-dir", help="override data_dir (must not be the primary's)")
    parser.add_argument("--listen", default="127.0.0.1:9100",
                        help="HOST:PORT the primary's replicator connects to")
    parser.add_argument("--primary", help="HOST:PORT of the primary (logged only)")
    parser.add_argument("--primary-shard", help="the primary's shard name (default: ours)")
    parser.add_argument("--matcher-interpreter", help="auto | pypy | cpython | PATH")
    parser.add_argument("--log-format", choices=("text", "json"),
                        help="log lines of every process: text (default) or json")


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
    from engine.run_cli import EXIT_CONFIG, _say, start_refusal
    from engine.supervisor import StopRequested
    from replicator.standby import StandbySupervisor
    if getattr(args, "log_format", None):
        engine_log.set_format(args.log_format)
    try:
        runtime = load(args.config, {"data_dir": args.data_dir,
                                     "matcher.interpreter": args.matcher_interpreter,
                                     "replication.primary_shard": args.primary_shard,
                                     "log.format": getattr(args, "log_format", None)})
        fmt = getattr(args, "log_format", None) or (runtime.raw.get("log") or {}).get("format")
        if fmt:
            engine_log.set_format(fmt)              # every child inherits it
        listen = parse_address(args.listen)
        supervisor = StandbySupervisor(runtime, args.shard, listen=listen)
    except ConfigError as exc:
        _say("config error: %s" % exc, EXIT_CONFIG, prog=PROG)
        return EXIT_CONFIG
    except ValueError as exc:
        _say("bad configuration: %s" % exc, EXIT_CONFIG, prog=PROG)
        return EXIT_CONFIG
    if signals:
        return 0
    supervisor.stop_signals = signals
    try:
        supervisor.start()
    except StopRequested as exc:     # start() stopped what it had started (rings, children)
        supervisor.log.event("stopping", signal=exc.signum, during="start-up")
        return 0
    except Exception as exc:         # the refusals of ringmatch run, with its exit codes
        refusal = start_refusal(exc, runtime.data_dir)
        if refusal is None:
            raise
        _say(refusal[0], refusal[1], prog=PROG)
        return refusal[1]
    supervisor.log.event("standby_ready", listen="%s:%d" % listen,
                         primary=args.primary or "-", data_dir=runtime.data_dir)
    if engine_log.current_format() != "json":      # json: the standby_ready line says it
        print("ringmatch: standby running, shard %s, listening on %s:%d for the primary; "
              "promote with: ringmatch promote --data-dir %s"
              % (supervisor.shard.name, listen[0], listen[1], runtime.data_dir), file=sys.stderr)
    return supervisor.run_forever()
