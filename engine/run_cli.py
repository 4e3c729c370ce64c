"""``ringmatch run``: start the engine's shards in the foreground (all, or ``--shard``)."""
import sys


def add_arguments(parser):
    parser.add_argument("--config", help="runtime configuration (JSON); default: embedded")
    parser.add_argument("--shard", action="append",
                        help="shard to run (repeatable; default: every shard in the config)")
    parser.add_argument("--data-dir", help="override data_dir")
    parser.add_argument("--port", type=int, help="override publisher.port (the first shard's)")
    parser.add_argument("--matcher-interpreter", help="auto | pypy | cpython | PATH")


def run(args):
    from engine.runtime import RuntimeConfig, ConfigError
    from engine.supervisor import Supervisor, AlreadyRunningError, run_supervisors
    from replicator.epoch import FencedError
    from journaler.errors import JournalError
    try:
        runtime = RuntimeConfig.load(args.config)
        raw = dict(runtime.raw)
        if args.data_dir:
            raw["data_dir"] = args.data_dir
        if args.port is not None:
            raw["publisher"] = dict(raw["publisher"], port=args.port)
        if args.matcher_interpreter:
            raw["matcher"] = dict(raw["matcher"], interpreter=args.matcher_interpreter)
        runtime = RuntimeConfig(raw)
        names = args.shard or [s.name for s in runtime.shards]
        supervisors = [Supervisor(runtime, name) for name in names]
    except ConfigError as exc:
        print("ringmatch run: bad configuration: %s" % exc, file=sys.stderr)
        return 2
    started = []
    try:
        for sup in supervisors:
            sup.start()
            started.append(sup)
    except AlreadyRunningError as exc:
        print("ringmatch run: %s" % exc, file=sys.stderr)
        for sup in started:
            sup.stop()
        return 3
    except FencedError as exc:
        print("ringmatch run: refused, this node is fenced: %s" % exc, file=sys.stderr)
        for sup in started:
            sup.stop()
        return 5
    except JournalError as exc:      # damaged journal: one precise line, files untouched
        print("ringmatch run: journal: %s" % exc, file=sys.stderr)
        for sup in started:
            sup.stop()
        return 4
    except OSError as exc:           # e.g. a read-only or missing data dir
        print("ringmatch run: %s: %s" % (exc.strerror or exc, exc.filename or ""), file=sys.stderr)
        for sup in started:
            sup.stop()
        return 6
    except BaseException:
        for sup in started:
            sup.stop()
        raise
    for sup in supervisors:
        if not sup.wait_ready():
            sup.log.warning("not_ready", detail="publisher port not answering yet; supervising anyway")
        pub = sup.runtime.publisher
        url = "http://%s:%s" % (pub["host"], pub["port"])
        sup.log.event("ready", api=url, docs=url + "/docs", page=url + "/",
                      symbols=",".join(sup.shard.symbols),
                      status="ringmatch status --config %s" % sup.config_path)
        print("ringmatch: shard %s (%s) running; API %s (docs %s/docs); "
              "status: ringmatch status --data-dir %s --shard %s; Ctrl-C to stop"
              % (sup.shard.name, ", ".join(sup.shard.symbols), url, url,
                 sup.runtime.data_dir, sup.shard.name), file=sys.stderr)
    return run_supervisors(supervisors)
